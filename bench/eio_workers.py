"""Client worker processes of the fan-out and storm benchmarks.

Each worker (``python -m bench.eio_workers``) is one asyncio loop holding many
``bench.eio_client.RawClient`` connections; the benchmark drives it with one JSON
command per line on stdin and reads one JSON reply per line from stdout
(``Workers`` below does that for several workers at once, client ``cid`` going to
worker ``cid % n``). Commands (``op``):

- ``config`` ``{symbol, base, step, entry?, size?, split?}`` (receive counts of clients
  with ``cid >= split`` are kept as ``bare:<event>``): how a ``pnl`` push is mapped to a
  price move: the client's row of ``symbol`` gives ``price = entry + unrealized_pnl /
  size`` (entry and size from the client's latest ``positions`` push with that symbol,
  else the configured ones), and
  ``k = (price - base) / step`` must be an integer (moves set ``base + k * step``). A
  ``pnl`` push carrying ``round`` (the bare server's) is its round ``k`` directly.
- ``connect`` ``{url, clients: [{cid, auth, subs: [[event, data], ...], url?}], concurrency,
  timeout}`` (a client's own ``url`` wins; a query in it, e.g. ``?affinity=7`` for the
  balancer, is kept): connect each, then emit each ``subs`` entry with acknowledgement in order.
  A client counts as ok when it connected and its first ack has ``ok: true``; ``acks``
  summarises every entry's answers (``ok`` or the error ``code``).
- ``emit`` ``{cids|null, subs, concurrency, timeout}``: the same emits on connected clients.
- ``disconnect`` ``{cids|null, abort}``: Socket.IO disconnect (or a TCP abort).
- ``ready`` ``{below}``: how many clients (with ``cid < below``) are connected and have
  received a ``pnl`` push. ``count``: how many ``pnl`` records are held.
- ``watched``: how many clients have their watched ``positions`` / ``fills`` push.
- ``watch`` ``{symbol}``: from now on note per client the first ``positions`` push that
  holds ``symbol`` (and its ``source``) and the first ``fills`` push with a non-empty list.
- ``collect`` ``{since}``: the ``pnl`` records ``[cid, k, t_recv, t0_ms, sent_at_ms]``
  received at or after ``since``, per-second receive counts by event, bytes by event,
  loop-lag samples, watch results, close reasons. ``reset`` forgets all of that.
- ``quit``.
"""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from bench.eio_client import RawClient

ROOT = Path(__file__).resolve().parents[1]


class Worker:
    """The state of one worker process (see the module docstring)."""

    def __init__(self) -> None:
        self.clients: dict[int, RawClient] = {}
        self.session: aiohttp.ClientSession | None = None
        self.symbol, self.base, self.step = "XRPUSDT", 0.0, 1.0
        self.watch_symbol: str | None = None
        self.default_pos: tuple[float, float] | None = None
        self.split = 1 << 62  # clients from this cid on count as "bare:<event>"
        self.reset()

    def reset(self) -> None:
        self.records: list[list] = []
        self.buckets: dict[str, Counter] = {}
        self.nbytes: Counter = Counter()
        self.unmatched = 0
        self.lag: list[list[float]] = []

    # ---- receiving -------------------------------------------------------------------------
    def on_event(self, c: RawClient, name: str, text: str, t: float) -> None:
        key = name if c.cid < self.split else "bare:" + name
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Counter()
        bucket[int(t)] += 1
        self.nbytes[key] += len(text)
        if name == "pnl":
            self._pnl(c, json.loads(text[2:])[1], t)
        elif name == "positions":
            if "pos" not in c.state or self.watch_symbol is not None:
                env = json.loads(text[2:])[1]
                self._positions(c, env.get("data") or [], t, env.get("source"))
        elif name == "fills" and self.watch_symbol is not None and "w_fill" not in c.state:
            if json.loads(text[2:])[1].get("data"):
                c.state["w_fill"] = t

    def _row(self, rows: list, symbol: str) -> dict | None:
        return next((r for r in rows if r.get("symbol") == symbol), None)

    def _positions(self, c: RawClient, rows: list, t: float, source: str | None) -> None:
        row = self._row(rows, self.symbol)
        if row is not None and row.get("entry_price") and row.get("size"):
            c.state["pos"] = (float(row["entry_price"]), float(row["size"]))
        if self.watch_symbol is not None and "w_pos" not in c.state and \
                self._row(rows, self.watch_symbol) is not None:
            c.state["w_pos"], c.state["w_src"] = t, source

    def _pnl(self, c: RawClient, env: dict, t: float) -> None:
        c.state["pnl"] = True
        if "round" in env:
            self.records.append([c.cid, env["round"], t, env["t0"], env.get("sent_at")])
            return
        pos = c.state.get("pos") or self.default_pos
        row = self._row((env.get("data") or {}).get("positions") or [], self.symbol)
        if pos is None or row is None:
            self.unmatched += 1
            return
        if not pos[1]:
            self.unmatched += 1
            return
        price = pos[0] + float(row["unrealized_pnl"]) / pos[1]
        k = round((price - self.base) / self.step)
        if abs(self.base + k * self.step - price) < self.step / 4:
            self.records.append([c.cid, k, t, None, env.get("sent_at")])
        else:
            self.unmatched += 1

    # ---- commands ----------------------------------------------------------------------------
    async def _emits(self, c: RawClient, subs: list, timeout: float, acks: list[Counter]) -> bool:
        first_ok = True
        for i, (event, data) in enumerate(subs):
            try:
                ack = await c.call(event, data, timeout)
            except Exception as e:  # counted
                ack = {"ok": False, "error": {"code": type(e).__name__}}
            ok = isinstance(ack, dict) and ack.get("ok") is True
            code = "ok" if ok else str(((ack or {}).get("error") or {}).get("code", ack))[:80] \
                if isinstance(ack, dict) else repr(ack)[:80]
            while len(acks) <= i:
                acks.append(Counter())
            acks[i][code] += 1
            if i == 0:
                first_ok = ok
        return first_ok

    async def connect(self, cmd: dict) -> dict:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sem = asyncio.Semaphore(cmd.get("concurrency", 50))
        timeout = cmd.get("timeout", 60.0)
        times: list[float] = []
        errors: Counter = Counter()
        acks: list[Counter] = []
        spans: list[float] = []

        async def one(spec: dict) -> None:
            async with sem:
                c = RawClient(spec["cid"], self.on_event)
                self.clients[c.cid] = c
                t0 = time.time()
                try:
                    await c.connect(self.session, spec.get("url") or cmd["url"], spec.get("auth"),
                                    timeout)
                    ok = await self._emits(c, spec.get("subs") or [], timeout, acks)
                except Exception as e:  # counted and reported
                    errors[f"{type(e).__name__}: {str(e)[:100]}"] += 1
                    c.abort()
                    return
                t1 = time.time()
                spans.extend((t0, t1))
                if ok:
                    times.append(t1 - t0)
                else:
                    errors["first ack not ok"] += 1
        await asyncio.gather(*(one(s) for s in cmd["clients"]))
        return {"ok": len(times), "failed": sum(errors.values()), "errors": dict(errors.most_common(5)),
                "times": times, "acks": [dict(a) for a in acks],
                "t_first": min(spans, default=None), "t_last": max(spans, default=None)}

    def _selected(self, cids: list | None) -> list[RawClient]:
        if cids is None:
            return list(self.clients.values())
        return [self.clients[c] for c in cids if c in self.clients]

    async def emit(self, cmd: dict) -> dict:
        sem = asyncio.Semaphore(cmd.get("concurrency", 100))
        acks: list[Counter] = []

        async def one(c: RawClient) -> None:
            async with sem:
                await self._emits(c, cmd["subs"], cmd.get("timeout", 60.0), acks)
        await asyncio.gather(*(one(c) for c in self._selected(cmd.get("cids")) if c.connected))
        return {"acks": [dict(a) for a in acks]}

    async def disconnect(self, cmd: dict) -> dict:
        chosen = self._selected(cmd.get("cids"))
        if cmd.get("abort"):
            for c in chosen:
                c.abort()
        else:
            await asyncio.gather(*(c.close() for c in chosen))
        for c in chosen:
            self.clients.pop(c.cid, None)
        return {"disconnected": len(chosen)}

    def collect(self, cmd: dict) -> dict:
        since = cmd.get("since", 0.0)
        closed = Counter(c.closed_reason for c in self.clients.values() if not c.connected)
        return {"records": [r for r in self.records if r[2] >= since],
                "buckets": {n: {str(s): k for s, k in b.items()} for n, b in self.buckets.items()},
                "bytes": dict(self.nbytes), "unmatched": self.unmatched,
                "lag": [x for x in self.lag if x[0] >= since],
                "watch": {str(c.cid): [c.state.get("w_pos"), c.state.get("w_fill"), c.state.get("w_src")]
                          for c in self.clients.values()},
                "connected": sum(1 for c in self.clients.values() if c.connected),
                "handler_errors": sum(c.handler_errors for c in self.clients.values()),
                "handler_error": next((c.last_handler_error for c in self.clients.values()
                                       if c.last_handler_error), None),
                "closed": {str(k): v for k, v in closed.items()}}

    async def handle(self, cmd: dict) -> Any:
        op = cmd["op"]
        if op == "config":
            self.symbol, self.base, self.step = cmd["symbol"], float(cmd["base"]), float(cmd["step"])
            self.split = int(cmd.get("split", self.split))
            if cmd.get("entry") and cmd.get("size"):
                self.default_pos = (float(cmd["entry"]), float(cmd["size"]))
            return {}
        if op in ("connect", "emit", "disconnect"):
            return await getattr(self, op)(cmd)
        if op == "ready":
            live = [c for c in self.clients.values() if c.connected and c.cid < cmd.get("below", 1 << 62)]
            return {"connected": len(live), "ready": sum(1 for c in live if c.state.get("pnl"))}
        if op == "count":
            return {"records": len(self.records)}
        if op == "watched":
            return {"positions": sum(1 for c in self.clients.values() if "w_pos" in c.state),
                    "fills": sum(1 for c in self.clients.values() if "w_fill" in c.state)}
        if op == "watch":
            self.watch_symbol = cmd["symbol"]
            for c in self.clients.values():
                c.state.pop("w_pos", None)
                c.state.pop("w_fill", None)
                c.state.pop("w_src", None)
            return {}
        if op == "collect":
            return self.collect(cmd)
        if op == "reset":
            self.reset()
            return {}
        raise ValueError(f"unknown op {op!r}")

    async def lag_loop(self, period: float = 0.05) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(period)
            self.lag.append([time.time(), time.monotonic() - t - period])


async def _main() -> None:
    worker = Worker()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lag = asyncio.create_task(worker.lag_loop())
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            reply = await worker.handle(cmd)
        except Exception as e:  # reported to the driver, which raises
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    lag.cancel()
    await asyncio.gather(*(c.close() for c in worker.clients.values()), return_exceptions=True)
    if worker.session is not None:
        await worker.session.close()


class Workers:
    """``n`` worker processes driven from a (synchronous) benchmark. Client ``cid`` lives
    in worker ``cid % n``. Worker stderr goes to ``log_path``."""

    def __init__(self, n: int, log_path: Path) -> None:
        self.n = n
        self._log = log_path.open("ab")
        self.procs = [subprocess.Popen([sys.executable, "-m", "bench.eio_workers"], cwd=str(ROOT),
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=self._log) for _ in range(n)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def request(self, cmds: list[dict | None]) -> list[dict | None]:
        """Send ``cmds[i]`` to worker i (None: nothing), then read each reply."""
        for p, cmd in zip(self.procs, cmds):
            if cmd is not None:
                p.stdin.write((json.dumps(cmd) + "\n").encode())
                p.stdin.flush()
        replies: list[dict | None] = []
        for p, cmd in zip(self.procs, cmds):
            if cmd is None:
                replies.append(None)
                continue
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"client worker {p.pid} exited (rc={p.poll()})")
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(f"client worker {p.pid}: {reply['error']}")
            replies.append(reply)
        return replies

    def all(self, cmd: dict) -> list[dict]:
        return self.request([cmd] * self.n)  # type: ignore[return-value]

    def by_client(self, op: str, items: list[dict], **kw: Any) -> list[dict]:
        """``op`` with ``clients`` = the items (each with ``cid``) of each worker."""
        parts: list[list[dict]] = [[] for _ in range(self.n)]
        for it in items:
            parts[it["cid"] % self.n].append(it)
        return self.request([{"op": op, "clients": p, **kw} if p else None for p in parts])  # type: ignore

    def cids(self, op: str, cids: list[int] | None, **kw: Any) -> list[dict]:
        """``op`` with ``cids`` split by worker (None: every client of every worker)."""
        if cids is None:
            return self.all({"op": op, "cids": None, **kw})
        parts: list[list[int]] = [[] for _ in range(self.n)]
        for c in cids:
            parts[c % self.n].append(c)
        return self.request([{"op": op, "cids": p, **kw} if p else None for p in parts])  # type: ignore

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.stdin.write(b'{"op": "quit"}\n')
                    p.stdin.flush()
                except OSError:
                    pass
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self._log.close()


if __name__ == "__main__":
    asyncio.run(_main())
