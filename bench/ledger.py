"""Ledger benchmark: fills reaching PostgreSQL through the write-behind queue, at about
``--rate`` fills/s, with a database outage in the middle, while other users' pushes are
timed. Real server (``python app.py``, eventlet), simulator and PostgreSQL, on 127.0.0.1.

    .venv/bin/python -m bench.ledger [--rate 1000] [--burst-s 10] [--outage-s 10]

Prints ``section.figure: value`` lines and the outage series, writes the same as JSON to
``bench/results/ledger.json`` (``ledger_<rate>.json`` for another ``--rate``); logs in ``bench/results/logs_ledger/``. Units are in the
names (``_s``, ``_ms``, ``per_s``); latency blocks are ``{n, p50_ms, p99_ms, max_ms}``.

Setup: a fresh database (``tests/conftest.make_pg_database``) that the server reaches only
through a ``tests/support/tcpproxy.TcpProxy`` in a child process (its pipe patched to shut
sockets down before closing them, see ``ProxyProcess``; ``--raw-proxy`` not); periodic reconciliation off
(``RECONCILE_INTERVAL_S=0``: every fill in the ledger came through the stream and the
write-behind, nothing was repaired from the exchange). ``--accounts`` Binance accounts get
resting LIMIT BUY XRPUSDT orders (``POST /api/orders``, 0.5 * ``--fills-per-order`` @ 1.0,
market 1.19), each followed by a Socket.IO client subscribed to ``balance`` only (the
account stream runs, this process is spared ~1000 order pushes/s). ``--observers`` other
accounts hold 0.1 ETHUSDT and are subscribed to the four types.

Timeline: from ``t0`` the orders get partial fills of 0.5 XRP (``POST /_sim/orders/{id}/
fill``, from ``--workers`` threads, paced to ``--rate``, round robin over the accounts)
for ``--burst-s`` (phase ``burst``), then the proxy is cut for ``--outage-s`` while fills
keep coming (``outage``), then restored, fills stop, and the queue drains (``drain``).
ETHUSDT moves by 0.1 every 100 ms throughout.

Figures:

- ``fills``: fills made per phase and ``per_s`` achieved (the target is ``--rate``).
- ``durable.<phase>``: fill time at the simulator (the fill's ``time``) -> the row is
  visible in ``fills`` to a reader polling the database directly every 50 ms (an upper
  bound: up to ~50 ms of it is the poll), by the phase the fill was made in.
- ``write_behind_at_burst_end``: ``/admin/stats`` ``write_behind`` after the burst:
  ``write_latency_ms`` p50/p99 is the server's enqueue -> commit of its last 10,000
  queued events (fills and order updates, two per partial fill); it counts only events
  already committed, so when the writer is behind it hides the backlog: read it with
  ``depth``, ``written`` and ``oldest_unwritten_age_ms`` (the age of the oldest waiting one).
- ``push.<phase>``: per observer and price move, from just before ``POST /_sim/price`` to
  the first ``pnl`` push with the ETHUSDT unrealized PnL of that price (the hub's stalls
  show here as ``max_ms``); ``max_gap_ms`` the longest time an observer got no ``pnl``
  push (moves come every 100 ms); ``missed`` moves never pushed.
- ``server_cpu_pct_burst``, ``simulator_cpu_pct_burst``, ``bench_cpu_pct_burst``: CPU
  time / burst time per process (100 = one core; the machine has two, so when the three
  add up to about 200 the fill rate is bounded by the machine, not by the server).
- ``--profile PATH``: ``py-spy record`` of the server during the burst, collapsed stacks
  (py-spy is not a dependency: ``pip install py-spy`` into the venv first).
- ``admin_rtt_ms.<phase>``: round trip of ``GET /admin/stats`` (sampled every 0.5 s; it
  touches no database), another view of how responsive the server stayed.
- ``series``: every ~0.5 s from 0.5 s before the cut to 5 s after the restore, then every
  ~5 s: write-behind ``depth``, ``oldest_unwritten_age_ms``,
  ``written``, ``retries``; ``drain_s``: restore -> depth 0 and nothing in flight;
  ``db_caught_up_s``: restore -> the row count equals the simulator's fill count.
- ``db_sessions_at_30s``: only when the queue has not drained 30 s after the restore: the
  server's non-idle sessions in ``pg_stat_activity`` (pid, state, wait event, transaction
  age, query); a session "idle in transaction" for the whole time means a wedged writer.
- ``check``: fills the simulator made for the accounts vs rows in ``fills`` for their keys
  (``lost`` = made - stored; ``distinct_trade_ids`` must equal the rows).
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import socketio
from requests.adapters import HTTPAdapter
from sqlalchemy import create_engine, make_url, text

from bench.common import RESULTS_DIR, ROOT, Listener, _expect, create_account, first_events, rest, run_pool
from bench.measure import cpu_s, lat_ms, lat_s, log_problems, profile, write_results
from bench.streams import admin_stats, print_lines, row, sampler, th
from tests.conftest import PG_ADMIN_URL, make_pg_database
from tests.support.server import free_port, start_server
from tests.support.simulator import start_simulator

FILL_QTY, ETH0, ETH_STEP = "0.5", Decimal("3400"), Decimal("0.1")
PROXY = """
import socket, sys
from tests.support.tcpproxy import TcpProxy

def pipe(src, dst):  # the helper's _pipe, but shut down before close (see ProxyProcess)
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
if {patch}:
    TcpProxy._pipe = staticmethod(pipe)
p = TcpProxy(({host!r}, {port}), {listen})
p.restore()
print("ready", flush=True)
for line in sys.stdin:
    getattr(p, line.strip())()
    print("ok", flush=True)
"""
ACTIVITY = text("SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 100) "
                "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND query NOT LIKE 'SELECT id, time FROM fills%' AND state <> 'idle'")


class ProxyProcess:
    """``TcpProxy`` run in a child process (its threads then do not compete with this
    process's fill threads for the GIL): ``port``, ``cut()``, ``restore()``, ``stop()``.

    ``patch``: the helper's ``_pipe`` closes both sockets when one direction ends; when
    that close of the upstream socket comes before ``cut()`` reaches it, ``cut()``'s
    ``shutdown`` fails (EBADF, swallowed) and the other pipe thread, blocked in ``recv``
    on it, keeps the descriptor alive: no FIN reaches PostgreSQL, whose session stays
    "idle in transaction" with its row locks. The patched pipe shuts down first."""

    def __init__(self, host: str, port: int, patch: bool = True) -> None:
        self.port = free_port()
        script = PROXY.format(host=host, port=port, listen=self.port, patch=patch)
        self.proc = subprocess.Popen([sys.executable, "-c", script],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("proxy did not start")
        self.is_cut = False

    def _send(self, cmd: str) -> None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def cut(self) -> None:
        self._send("cut")
        self.is_cut = True

    def restore(self) -> None:
        self._send("restore")
        self.is_cut = False

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def place_orders(url: str, acct, n: int, qty: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """``n`` resting LIMIT BUY XRPUSDT @ 1.0 of ``qty`` for one account (the trades)."""
    return [_expect(rest("POST", url + "/api/orders", acct.token, {
        "key_id": acct.key_id, "symbol": "XRPUSDT", "side": "BUY", "type": "LIMIT",
        "quantity": qty, "price": "1.0", "time_in_force": "GTC"}), 201, "LIMIT order")["trade"]
        for _ in range(n)]


class Filler:
    """Threads making the fills of ``plan`` (order ids), paced to ``rate`` from ``t0``
    until ``stop_at``; ``done`` holds the time each successful fill call started."""

    def __init__(self, sim, plan: list[str], rate: float, workers: int) -> None:  # type: ignore[no-untyped-def]
        self.sim, self.plan, self.rate, self.workers = sim, plan, rate, workers
        self.done: list[float] = []
        self.errors: Counter = Counter()
        self._next = itertools.count()

    def run(self, t0: float, stop_at: float) -> None:
        threads = [threading.Thread(target=self._work, args=(t0, stop_at)) for _ in range(self.workers)]
        [t.start() for t in threads]
        [t.join() for t in threads]

    def _work(self, t0: float, stop_at: float) -> None:
        while (k := next(self._next)) < len(self.plan):  # itertools.count is atomic under the GIL
            due = t0 + k / self.rate
            if due >= stop_at or time.time() >= stop_at:
                return
            time.sleep(max(0.0, due - time.time()))
            t = time.time()
            try:
                self.sim.fill(self.plan[k], quantity=FILL_QTY)
                self.done.append(t)
            except Exception as e:  # counted and reported
                self.errors[f"{type(e).__name__}: {str(e)[:120]}"] += 1


def poll_db(engine, key_ids: list[int], since_ms: int, stop: threading.Event, out: list) -> None:  # type: ignore[no-untyped-def]
    """Every 50 ms: new ``fills`` rows of ``key_ids`` -> ``out`` ``(fill time ms, seen - fill time ms)``."""
    last = 0
    q = text("SELECT id, time FROM fills WHERE id > :last AND key_id = ANY(:keys) AND time >= :since ORDER BY id")
    while not stop.is_set():
        seen = time.time() * 1000
        with engine.connect() as c:
            for rid, t in c.execute(q, {"last": last, "keys": key_ids, "since": since_ms}):
                out.append((t, seen - t))
                last = rid
        stop.wait(0.05)


async def open_balance_client(url: str, acct) -> socketio.AsyncClient:  # type: ignore[no-untyped-def]
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(url, auth={"token": acct.token}, transports=["websocket"], wait_timeout=60)
    ack = await sio.call("subscribe", {"types": ["balance"]}, timeout=60)
    if not ack.get("ok"):
        raise RuntimeError(f"subscribe refused: {ack}")
    return sio


async def run(args: argparse.Namespace, ctx: dict, res: dict) -> None:
    url, sim, engine = ctx["url"], ctx["sim"], ctx["engine"]
    tag = f"{int(time.time()) % 100000}_{{}}"
    n_acc = args.accounts + args.observers
    accts, errors = await th(ctx, run_pool, lambda i: create_account(url, sim, "l" + tag.format(i)), n_acc, 16)
    if errors:
        raise RuntimeError(f"account setup failed: {errors[:3]}")
    fillers, observers = accts[:args.accounts], accts[args.accounts:]
    total = math.ceil(args.rate * (args.burst_s + args.outage_s) * 1.1)
    per_acct = math.ceil(total / args.fills_per_order / args.accounts)
    qty = str(Decimal(FILL_QTY) * args.fills_per_order)
    t = time.time()
    trades, errors = await th(ctx, run_pool, lambda i: place_orders(url, fillers[i], per_acct, qty), args.accounts, 16)
    if errors:
        raise RuntimeError(f"orders failed: {errors[:3]}")
    by_coid = {o["client_order_id"]: o["order_id"] for o in (await th(ctx, sim.state))["orders"]}
    ids = [[tr.get("entry_order_id") or by_coid[tr["client_order_id"]] for tr in ts] for ts in trades]
    # round robin over accounts, each order filled fills_per_order times
    plan = [ids[a][o] for o in range(per_acct) for _ in range(args.fills_per_order) for a in range(args.accounts)]
    for o in observers:
        await th(ctx, lambda a=o: _expect(rest("POST", url + "/api/orders", a.token, {
            "key_id": a.key_id, "symbol": "ETHUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.1"}),
            201, "MARKET order"))
    res["setup"] = {"accounts": args.accounts, "observers": args.observers, "orders": per_acct * args.accounts,
                    "planned_fills": len(plan), "orders_wall_s": round(time.time() - t, 1)}
    sios = [await open_balance_client(url, a) for a in fillers]
    lsts = [Listener(a) for a in observers]
    for lst in lsts:
        await lst.open(url, 60)
    ctx["sios"], ctx["lsts"] = sios, lsts
    for _ in range(240):
        if (await admin_stats(ctx))["streams"]["by_state"].get("live") == n_acc:
            break
        await asyncio.sleep(0.5)
    held = {id(lst): (Decimal(r["size"]), Decimal(r["entry_price"]))
            for lst in lsts if (r := row((lst.last("positions") or {}).get("data"), "ETHUSDT"))}
    admins, stop, durable, moves = [], asyncio.Event(), [], []
    db_stop = threading.Event()
    t0 = time.time() + 1.0
    t_cut, t_restore = t0 + args.burst_s, t0 + args.burst_s + args.outage_s
    db_thread = threading.Thread(target=poll_db, args=(engine, [a.key_id for a in fillers], int(t0 * 1000) - 1000,
                                                       db_stop, durable), daemon=True)
    db_thread.start()
    sampling = asyncio.create_task(sampler(admins, lambda: admin_stats(ctx), stop))

    async def mover() -> None:
        for k in itertools.count(1):
            if stop.is_set():
                return
            await asyncio.sleep(max(0.0, t0 + k * 0.1 - time.time()))
            price, t = ETH0 + ETH_STEP * k, time.time()
            await th(ctx, sim.set_price, "ETHUSDT", price)
            moves.append((t, price))
    moving = asyncio.create_task(mover())
    filler = Filler(sim, plan, args.rate, args.workers)
    filling = asyncio.get_running_loop().run_in_executor(None, filler.run, t0, t_restore)
    pid = ctx["server"].proc.pid
    cpu0, sim_cpu0, load0 = cpu_s(pid), cpu_s(sim.proc.pid), os.times()
    if args.profile:
        await asyncio.sleep(max(0.0, t0 - time.time()))
        profile(pid, args.burst_s, Path(args.profile))
    await asyncio.sleep(max(0.0, t_cut - time.time()))
    res["write_behind_at_burst_end"] = (await admin_stats(ctx))["write_behind"]
    res["server_cpu_pct_burst"] = round((cpu_s(pid) - cpu0) * 100 / (time.time() - t0), 1)
    res["simulator_cpu_pct_burst"] = round((cpu_s(sim.proc.pid) - sim_cpu0) * 100 / (time.time() - t0), 1)
    load1 = os.times()
    res["bench_cpu_pct_burst"] = round((load1.user + load1.system - load0.user - load0.system)
                                       * 100 / (time.time() - t0), 1)
    ctx["proxy"].cut()
    await asyncio.sleep(max(0.0, t_restore - time.time()))
    ctx["proxy"].restore()
    t_restored = time.time()
    await filling
    made = await th(ctx, lambda: sum(len(sim.state(a.api_key)["fills"]) for a in fillers))
    count_q = text("SELECT count(*), count(DISTINCT exchange_trade_id) FROM fills WHERE key_id = ANY(:k)")
    drain_s = caught_s = None
    while time.time() - t_restored < args.drain_timeout_s and (drain_s is None or caught_s is None):
        await asyncio.sleep(0.25)
        wb = (await admin_stats(ctx))["write_behind"]
        if drain_s is None and wb["depth"] == 0 and wb["oldest_unwritten_age_ms"] == 0:
            drain_s = round(time.time() - t_restored, 2)
        with engine.connect() as c:
            if caught_s is None and c.execute(count_q, {"k": [a.key_id for a in fillers]}).one()[0] >= made:
                caught_s = round(time.time() - t_restored, 2)
            if drain_s is None and time.time() - t_restored > 30 and "db_sessions_at_30s" not in res:
                res["db_sessions_at_30s"] = [" ".join(map(str, r)) for r in c.execute(ACTIVITY)]
    t_end = time.time()
    await asyncio.sleep(1.0)
    stop.set()
    db_stop.set()
    await asyncio.gather(sampling, moving)
    db_thread.join(5)
    with engine.connect() as c:
        stored, distinct = c.execute(count_q, {"k": [a.key_id for a in fillers]}).one()
    phases = {"burst": (t0, t_cut), "outage": (t_cut, t_restore), "drain": (t_restore, t_end)}
    res["fills"] = {p: {"made": sum(1 for t in filler.done if a <= t < b),
                        "per_s": round(sum(1 for t in filler.done if a <= t < b) / (b - a), 1)}
                    for p, (a, b) in list(phases.items())[:2]} | {"errors": dict(filler.errors.most_common(3))}
    res["durable"] = {p: lat_ms([d for t, d in durable if a * 1000 <= t < b * 1000]) for p, (a, b) in phases.items()}

    def pnl_is(lst: Listener, price: Decimal):  # type: ignore[no-untyped-def]
        want = held[id(lst)][0] * (price - held[id(lst)][1])
        return lambda d: (r := row(d["data"]["positions"], "ETHUSDT")) is not None and \
            abs(Decimal(r["unrealized_pnl"]) - want) < Decimal("0.0005")
    items = [(lst, t, p) for t, p in moves for lst in lsts if id(lst) in held]
    found = await first_events([(lst, t, "pnl", pnl_is(lst, p)) for lst, t, p in items], 10)
    res["push"] = {}
    for p, (a, b) in phases.items():
        lat = [f[0] - t for (_, t, _), f in zip(items, found) if f and a <= t < b]
        gaps = [y - x for lst in lsts for x, y in itertools.pairwise(
            [t for t, n, _ in lst.events if n == "pnl" and a <= t < b])]
        res["push"][p] = {**lat_s(lat), "missed": sum(1 for (_, t, _), f in zip(items, found) if not f and a <= t < b),
                          "max_gap_ms": round(max(gaps, default=0) * 1000, 1)}
    res["admin_rtt_ms"] = {p: lat_s([d for t, _, d in admins if a <= t < b]) for p, (a, b) in phases.items()}
    res["series"] = [f"t={t - t_cut:+6.1f}s depth={s['write_behind']['depth']} oldest_ms="
                     f"{s['write_behind']['oldest_unwritten_age_ms']} written={s['write_behind']['written']} "
                     f"retries={s['write_behind']['retries']}" for t, s, _ in admins
                     if t_cut - 0.5 <= t <= t_restore + 5 or (t > t_restore + 5 and int(t * 2) % 10 == 0)]
    res["drain_s"], res["db_caught_up_s"] = drain_s, caught_s
    res["check"] = {"sim_fills": made, "db_rows": stored, "distinct_trade_ids": distinct, "lost": made - stored}
    res["write_behind_end"] = (await admin_stats(ctx))["write_behind"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__.split("\n")[0])
    p.add_argument("--rate", type=float, default=1000.0, help="target fills per second")
    p.add_argument("--burst-s", type=float, default=10.0)
    p.add_argument("--outage-s", type=float, default=10.0)
    p.add_argument("--accounts", type=int, default=20, help="accounts whose orders get filled")
    p.add_argument("--fills-per-order", type=int, default=20)
    p.add_argument("--observers", type=int, default=5)
    p.add_argument("--workers", type=int, default=8, help="threads making fills")
    p.add_argument("--drain-timeout-s", type=float, default=120.0)
    p.add_argument("--profile", metavar="PATH", help="py-spy the server during the burst (collapsed stacks)")
    p.add_argument("--raw-proxy", action="store_true", help="TcpProxy exactly as in tests/support (see ProxyProcess)")
    args = p.parse_args(argv)
    log_dir = RESULTS_DIR / "logs_ledger"
    log_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"rate": args.rate, "burst_s": args.burst_s, "outage_s": args.outage_s, "raw_proxy": args.raw_proxy}
    db_url, drop = make_pg_database(PG_ADMIN_URL)
    proxy = ProxyProcess(make_url(db_url).host, make_url(db_url).port or 5432, patch=not args.raw_proxy)
    engine = create_engine(db_url)
    sim = server = None
    ctx: dict = {"proxy": proxy, "engine": engine, "pool": ThreadPoolExecutor(8)}
    try:
        sim = start_simulator()
        sim._session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=64))
        server = start_server(make_url(db_url).set(port=proxy.port).render_as_string(hide_password=False),
                              sim.url, sim.ws_url, log_dir, extra_env={"RECONCILE_INTERVAL_S": "0"})
        ctx.update(sim=sim, server=server, url=server.url)
        budget = 600 + args.burst_s + args.outage_s + args.drain_timeout_s
        asyncio.run(asyncio.wait_for(run_and_close(args, ctx, res), budget))
    except (TimeoutError, Exception) as e:
        res["failure"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if proxy.is_cut:  # the run failed mid-outage
            proxy.restore()
        if server is not None:
            res["_log_end"] = server.log_path.stat().st_size
            server.stop()
            end = res.pop("_log_end")
            res["server_log"] = {"path": str(server.log_path), "run": log_problems(server.log_path, 0, end),
                                 "shutdown": log_problems(server.log_path, end)}
        if sim is not None:
            (log_dir / "simulator.log").write_bytes(sim.log_path.read_bytes())
            sim.stop()
            res["sim_log"] = log_problems(log_dir / "simulator.log")
        ctx["pool"].shutdown(wait=False, cancel_futures=True)
        engine.dispose()
        proxy.stop()
        drop()
    print_lines("", res)
    write_results(res, "ledger" if args.rate == 1000 else f"ledger_{args.rate:g}")


async def run_and_close(args: argparse.Namespace, ctx: dict, res: dict) -> None:
    try:
        await run(args, ctx, res)
    finally:
        clients = ctx.get("sios", []) + [lst.sio for lst in ctx.get("lsts", [])]
        await asyncio.wait_for(asyncio.gather(*(c.disconnect() for c in clients if c.connected),
                                              return_exceptions=True), 30)
        for _ in range(40):  # let the server stop the streams and write what is queued
            s = await admin_stats(ctx)
            if s["streams"]["running"] == 0 and s["write_behind"]["depth"] == 0:
                break
            await asyncio.sleep(0.5)


if __name__ == "__main__":
    main()
