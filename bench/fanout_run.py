"""The measuring steps of ``bench.fanout`` (see its docstring for the figures): one
``Run`` holds the processes and the connected clients across configurations."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import requests

from bench.common import ACCOUNT_TYPES, Account, Stack, rest, run_pool
from bench.eio_workers import Workers
from bench.fanout_stats import delivery, lag_ms, ratios, summary, watch_latency, window_counts
from bench.measure import cpu_s, profile, rss_mb

SYMBOL, BASE, STEP = "XRPUSDT", Decimal("1.2"), Decimal("0.0005")
NEW_SYMBOL, NEW_QTY = "BTCUSDT", "0.002"  # 128 USDT: over the 100 minimum notional
BARE = 1_000_000  # bare clients' cids start here
# Longest suspension of the product server: eventlet times out a socket read after
# engine.io's ping interval + ping timeout (25 + 20 s) and the client writes only when
# pinged (every 25 s), so a suspension past 45 - 25 = 20 s closes its sockets on resume.
SUSPEND_MAX_S = 18.0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Run:
    """Processes, accounts and connected clients of one ``bench.fanout`` run."""

    def __init__(self, args, stack: Stack, workers: Workers, accounts: list[Account],  # type: ignore[no-untyped-def]
                 results: dict[str, Any],
                 start_baseline: Callable[[str], tuple[subprocess.Popen[bytes], str]]) -> None:
        self.args, self.stack, self.workers, self.accounts = args, stack, workers, accounts
        self.results = results
        self.start_baseline = start_baseline  # kind -> (process, url)
        self.baseline_proc = None  # the baseline server of the current window, if any
        self.connected: set[int] = set()
        self.k = 0  # next move index (prices never repeat within a run)
        self.bare_k = 0
        self.hz: float | None = None  # max_hz the product clients are subscribed with
        self.fills_ack: dict | None = None
        workers.all({"op": "config", "symbol": SYMBOL, "base": str(BASE), "step": str(STEP),
                     "split": BARE})

    # ---- clients -----------------------------------------------------------------------------
    def _subs(self, max_hz: float | None) -> list:
        sub: dict = {"types": ACCOUNT_TYPES}
        if max_hz is not None:
            sub["max_hz"] = max_hz
        return [["subscribe", sub], ["subscribe", {"types": ["fills"]}]]

    def ensure(self, n: int) -> dict:
        """Connect product clients ``0..n-1`` that are not yet connected; disconnect
        those beyond n. (Baseline clients are connected per window: ``connect_baseline``.)"""
        n = min(n, len(self.accounts))
        want = set(range(n))
        extra = sorted(self.connected - want)
        if extra:
            self.workers.cids("disconnect", extra)
            self.connected -= set(extra)
        out = {}
        assert self.stack.server is not None
        for kind, base, url in (("project", 0, self.stack.server.url),):
            items = [{"cid": base + i, "auth": {"token": self.accounts[i].token},
                      "subs": self._subs(self.hz) if kind == "project" else [["subscribe", {"types": ["pnl"]}]]}
                     for i in range(n) if base + i not in self.connected]
            if not items:
                continue
            replies = self.workers.by_client("connect", items, url=url, timeout=120.0,
                                             concurrency=self.args.connect_concurrency)
            out[kind] = self._connect_summary(replies, len(items))
            for it in items:
                self.connected.add(it["cid"])
            if kind == "project" and self.fills_ack is None:
                self.fills_ack = out[kind]["acks"][1] if len(out[kind]["acks"]) > 1 else {}
        return out

    @staticmethod
    def _connect_summary(replies: list, asked: int) -> dict:
        replies = [r for r in replies if r]
        times = [t for r in replies for t in r["times"]]
        first = min((r["t_first"] for r in replies if r["t_first"]), default=None)
        last = max((r["t_last"] for r in replies if r["t_last"]), default=None)
        acks: list[dict] = []
        for r in replies:
            for i, a in enumerate(r["acks"]):
                while len(acks) <= i:
                    acks.append({})
                for code, n in a.items():
                    acks[i][code] = acks[i].get(code, 0) + n
        ok = sum(r["ok"] for r in replies)
        errors: dict = {}
        for r in replies:
            for e, n in r["errors"].items():
                errors[e] = errors.get(e, 0) + n
        from bench.measure import lat_s
        return {"asked": asked, "ok": ok, "failed": sum(r["failed"] for r in replies),
                "per_client": lat_s(times), "acks": acks, "errors": errors,
                "per_s": round(ok / (last - first), 1) if first and last and last > first else None}

    def wait_ready(self, n: int) -> dict:
        """Until the n product clients each received a ``pnl`` push (their snapshot)."""
        t0 = time.time()
        while True:
            got = self.workers.all({"op": "ready", "below": BARE})
            ready = sum(r["ready"] for r in got)
            if ready >= n or time.time() - t0 > self.args.ready_timeout_s:
                return {"ready": ready, "of": n, "s": round(time.time() - t0, 1)}
            time.sleep(1.0)

    def resubscribe(self, max_hz: float | None) -> dict:
        """Unsubscribe and subscribe again, with ``max_hz`` (None: without)."""
        replies = self.workers.cids("emit", sorted(c for c in self.connected if c < BARE),
                                    subs=[["unsubscribe", {"types": ACCOUNT_TYPES}],
                                          self._subs(max_hz)[0]], timeout=20.0, concurrency=500)
        acks: dict = {}
        for r in replies:
            if r and len(r["acks"]) > 1:
                for code, n in r["acks"][1].items():
                    acks[code] = acks.get(code, 0) + n
        return acks

    # ---- windows -----------------------------------------------------------------------------
    def _drain(self, t_last: float, deadline: float | None = None) -> float:
        """After the last event: until the records stop growing for 1.5 s (at least 2 s,
        at most ``--grace-s``, never past ``deadline``); returns when."""
        seen, since = -1, time.time()
        end = min(t_last + self.args.grace_s, deadline or float("inf"))
        while time.time() < end:
            n = sum(r["records"] for r in self.workers.all({"op": "count"}))
            if n != seen:
                seen, since = n, time.time()
            elif time.time() - since >= 1.5 and time.time() >= t_last + 2:
                break
            time.sleep(0.25)
        return time.time()

    def _cpu(self) -> dict:
        pids = {"server": self.stack.server.proc.pid, "sim": self.stack.sim.proc.pid,
                "bare": self.baseline_proc.pid if self.baseline_proc is not None else None}
        out = {name: cpu_s(pid) for name, pid in pids.items()}
        out["workers"] = sum(cpu_s(p) or 0 for p in self.workers.pids)
        return out

    def _figures(self, kind: str, cids: set[int], events: dict[int, float], t_start: float,
                 t_end: float, t_drain: float, cpu0: dict, cpu1: dict, cpu2: dict,
                 server: str, n: int, rate: float) -> dict:
        got = self.workers.all({"op": "collect", "since": t_start - 1})
        records = [r for g in got for r in g["records"]]
        pnl = delivery(records, cids, events)
        per_s = window_counts([g["buckets"] for g in got], t_start, t_end, bare=kind == "bare")
        delivered = sum(1 for r in records if r[0] in cids and t_start <= r[2] <= t_drain)
        span = t_end - t_start
        nbytes: dict = {}
        counts: dict = {}
        for g in got:
            for name, b in g["bytes"].items():
                if name.startswith("bare:") == (kind == "bare"):
                    name = name[5:] if kind == "bare" else name
                    nbytes[name] = nbytes.get(name, 0) + b
            for name, b in g["buckets"].items():
                if name.startswith("bare:") == (kind == "bare"):
                    name = name[5:] if kind == "bare" else name
                    counts[name] = counts.get(name, 0) + sum(b.values())
        assert self.stack.server is not None and (server == "server" or self.baseline_proc is not None)
        srv_pid = self.stack.server.proc.pid if server == "server" else self.baseline_proc.pid  # type: ignore[union-attr]
        return {
            "clients": len(cids), "moves": len(events), "pnl": pnl,
            "due_per_s": round(n * rate, 1), "pnl_per_s": per_s.get("pnl"),
            "msgs_per_s": round(sum(per_s.values()), 1), "by_event_per_s": per_s,
            "server_cpu_pct": round((cpu1[server] - cpu0[server]) * 100 / span, 1),
            "server_cpu_ms_per_pnl": round((cpu2[server] - cpu0[server]) * 1000 / delivered, 3)
            if delivered else None,
            "delivered_until_drained": delivered, "drain_s": round(t_drain - t_end, 1),
            "server_rss_mb": rss_mb(srv_pid),
            "bytes_per_msg": {k: round(v / counts[k]) for k, v in nbytes.items() if counts.get(k)},
            "unmatched_pnl": sum(g["unmatched"] for g in got) if kind == "project" else None,
            "client_cpu_pct": round((cpu1["workers"] - cpu0["workers"]) * 100 / span, 1),
            "client_loop_lag_ms": lag_ms([x for g in got for x in g["lag"] if t_start <= x[0] <= t_end]),
            "still_connected": sum(g["connected"] for g in got),
            "client_handler_errors": sum(g["handler_errors"] for g in got),
        }

    def _gc(self) -> dict:
        """The product server's garbage collector figures (``/admin/stats`` ``gc``)."""
        srv = self.stack.server
        return rest("GET", srv.url + "/admin/stats",
                    headers={"X-Admin-Token": srv.admin_token}).json()["gc"]

    @staticmethod
    def _gc_window(before: dict, after: dict) -> dict:
        """Per generation, the collections, their total ms and those of 50 ms or more
        during the window; ``max_ms`` is the longest since the server started."""
        return {g: {"collections": after[g]["collections"] - before[g]["collections"],
                    "total_ms": round(after[g]["total_ms"] - before[g]["total_ms"], 1),
                    "long": after[g]["long"] - before[g]["long"],
                    "max_ms_since_start": after[g]["max_ms"]}
                for g in ("gen0", "gen1", "gen2")} | {"thresholds": after["thresholds"]}

    def project_window(self, n: int, rate: float, side: str = "project") -> dict:
        self.workers.all({"op": "reset"})
        gc0 = self._gc()
        cpu0, load0 = self._cpu(), _load()
        self._profile(f"{n}x{rate:g}_{side}", self.args.duration_s)
        mark = Path(self.args.cpu_samples + ".mark") if self.args.cpu_samples else None
        if mark is not None:  # the server's own sampler counts this window under `side`
            mark.write_text(side)
        t_start = time.time() + 0.2
        events: dict[int, float] = {}
        for j in range(int(rate * self.args.duration_s)):
            time.sleep(max(0.0, t_start + j / rate - time.time()))
            k, self.k = self.k, self.k + 1
            events[k] = time.time()
            self.stack.sim.set_price(SYMBOL, BASE + STEP * k)
        t_end = t_start + self.args.duration_s
        time.sleep(max(0.0, t_end - time.time()))
        if mark is not None:
            mark.unlink(missing_ok=True)
        cpu1 = self._cpu()
        t_drain = self._drain(max(events.values()))
        cpu2 = self._cpu()
        out = self._figures("project", set(range(n)), events, t_start, t_end, t_drain,
                            cpu0, cpu1, cpu2, "server", n, rate)
        out["sim_cpu_pct"] = round((cpu1["sim"] - cpu0["sim"]) * 100 / (t_end - t_start), 1)
        out["load"] = [load0, _load()]
        out["server_gc"] = self._gc_window(gc0, self._gc())
        return out

    def _profile(self, name: str, seconds: float) -> None:
        """``--profile DIR``: py-spy the product server for ``seconds`` from now
        (collapsed stacks ``DIR/<name>.txt``; ``python -m bench.measure DIR/<name>.txt``
        ranks them)."""
        if self.args.profile:
            Path(self.args.profile).mkdir(parents=True, exist_ok=True)
            profile(self.stack.server.proc.pid, max(1.0, seconds), Path(self.args.profile) / f"{name}.txt")

    def _pause_project(self, stop: bool) -> None:
        """SIGSTOP (``stop``) or SIGCONT the product server and the simulator: a
        baseline window runs with the project stack stopped (PostgreSQL and Redis are
        the machine's shared services and keep running)."""
        sig = signal.SIGSTOP if stop else signal.SIGCONT
        assert self.stack.server is not None and self.stack.sim is not None
        for proc in (self.stack.server.proc, self.stack.sim.proc):
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass

    def baselines(self, kinds: list[str], n: int, rate: float) -> dict[str, Any]:
        """The windows of baselines ``kinds`` one after another; after each, ``settle``."""
        out: dict[str, Any] = {}
        for kind in kinds:
            out[kind] = self.baseline_window(kind, n, rate)
            out[kind]["settle"] = self.settle()
        return out

    def settle(self, quiet_pct: float = 20.0, longest_s: float = 30.0) -> dict[str, Any]:
        """After a resume: until the product server used less than ``quiet_pct`` of a
        core over one second (its overdue timers, refreshes and retries done), at most
        ``longest_s``. ``{"s", "last_cpu_pct"}``."""
        assert self.stack.server is not None
        pid, t0, pct = self.stack.server.proc.pid, time.time(), None
        while time.time() - t0 < longest_s:
            c0 = cpu_s(pid) or 0.0
            time.sleep(1.0)
            pct = ((cpu_s(pid) or 0.0) - c0) * 100
            if pct < quiet_pct:
                break
        return {"s": round(time.time() - t0, 1), "last_cpu_pct": round(pct or 0.0, 1)}

    def baseline_window(self, kind: str, n: int, rate: float) -> dict[str, Any]:
        """One window of baseline ``kind`` (``bare``, ``bare_stdlib``, ``node``), run
        while the project is suspended (``baselines``): its server started, n clients
        ``BARE..BARE+n-1`` connected, the rounds run and measured, the clients dropped
        and the baseline server stopped."""
        proc, url = self.start_baseline(kind)
        self.baseline_proc = proc
        cids = [BARE + i for i in range(n)]
        try:
            items = [{"cid": c, "auth": {}, "subs": [["subscribe", {"types": ["pnl"]}]]} for c in cids]
            replies = self.workers.by_client("connect", items, url=url, timeout=120.0,
                                             concurrency=self.args.connect_concurrency)
            connect = self._connect_summary(replies, len(items))
            self._pause_project(True)
            t0 = time.time()
            try:
                out = self._rounds(url, n, rate, t0 + SUSPEND_MAX_S)
            finally:
                self._pause_project(False)
            out["suspended_s"] = round(time.time() - t0, 1)
            out["connect"] = {k: connect[k] for k in ("asked", "ok", "failed", "per_s")}
        finally:
            self.workers.cids("disconnect", cids)
            proc.terminate()
            try:
                proc.wait(10)
            except Exception:
                proc.kill()
            self.baseline_proc = None
        return out

    def _rounds(self, url: str, n: int, rate: float, deadline: float) -> dict[str, Any]:
        self.workers.all({"op": "reset"})
        rounds = int(rate * self.args.duration_s)
        k0, self.bare_k = self.bare_k, self.bare_k + rounds
        cpu0, load0 = self._cpu(), _load()
        t_start = time.time()
        requests.post(url + "/rounds", json={"rate": rate, "rounds": rounds, "k0": k0,
                                             "pad": self.args.pad}, timeout=10).raise_for_status()
        t_end = t_start + self.args.duration_s
        time.sleep(max(0.0, t_end + 0.1 - time.time()))
        cpu1 = self._cpu()
        while requests.get(url + "/stats", timeout=10).json()["rounds"] < rounds and \
                time.time() < min(t_end + self.args.grace_s, deadline):
            time.sleep(0.25)
        t_drain = self._drain(time.time(), deadline)
        cpu2 = self._cpu()
        got = self.workers.all({"op": "collect", "since": t_start - 1})
        stamps = {r[1]: r[3] / 1000 for g in got for r in g["records"] if r[0] >= BARE and r[3] is not None}
        first = min(stamps.items(), default=(k0, t_start))
        events = {k0 + j: stamps.get(k0 + j, first[1] + (k0 + j - first[0]) / rate) for j in range(rounds)}
        out = self._figures("bare", {BARE + i for i in range(n)}, events, t_start, t_end, t_drain,
                            cpu0, cpu1, cpu2, "bare", n, rate)
        out["rounds_stats"] = requests.get(url + "/stats", timeout=10).json()
        out["project_server_idle_pct"] = round((cpu1["server"] - cpu0["server"]) * 100 / (t_end - t_start), 1)
        out["load"] = [load0, _load()]
        return out

    def events_test(self, n: int, symbol: str, qty: str, via: str) -> dict:
        """New position and fill pushes after a MARKET BUY ``qty`` ``symbol`` of each of n
        accounts, placed through the server's ``POST /api/orders`` (``via="server"``) or
        straight at the exchange (``via="exchange"``: signed simulator call)."""
        from bench.fanout import sim_market_order
        self.workers.all({"op": "watch", "symbol": symbol})
        starts: dict[int, float] = {}
        statuses: dict[str, int] = {}
        refused: list[str] = []
        self._profile(f"{n}_events_{via}", n * self.args.order_gap_ms / 1000 + 2)
        t_begin = time.time()
        for i in range(n):
            a = self.accounts[i]
            t0 = time.time()
            if via == "server":
                r = rest("POST", self.stack.server.url + "/api/orders", a.token,
                         {"key_id": a.key_id, "symbol": symbol, "side": "BUY", "type": "MARKET",
                          "quantity": qty})
                status, ok, text = str(r.status_code), r.status_code == 201, r.text
            else:
                try:
                    sim_market_order(self.stack.sim.url, a, symbol, "BUY", qty)
                    status, ok, text = "200", True, ""
                except RuntimeError as e:
                    status, ok, text = "refused", False, str(e)
            statuses[status] = statuses.get(status, 0) + 1
            if ok:
                starts[i] = t0
            elif len(refused) < 3:
                refused.append(text[:200])
            time.sleep(self.args.order_gap_ms / 1000)
        placed_s = time.time() - t_begin
        deadline = time.time() + 20
        while time.time() < deadline:
            got = self.workers.all({"op": "watched"})
            if sum(g["positions"] for g in got) >= len(starts) and sum(g["fills"] for g in got) >= len(starts):
                break
            time.sleep(0.5)
        got = self.workers.all({"op": "collect", "since": time.time()})
        watch = {k: v for g in got for k, v in g["watch"].items()}
        self.workers.all({"op": "watch", "symbol": None})
        lat = watch_latency(watch, starts)
        ack = self.fills_ack or {}
        return {"symbol": symbol, "orders": len(starts), "order_status": statuses, "refused": refused,
                "placed_wall_s": round(placed_s, 1), "new_position": lat["positions"],
                "fill": lat["fills"], "fills_supported": bool(ack.get("ok")),
                "fills_subscribe_acks": ack}

    def set_rules(self, n: int, on: bool) -> dict[str, Any]:
        """``--protect``: holders ``0..n-1`` get (``on``) or lose their XRPUSDT server-mode
        rules far from the price (stop-loss 0.1, trailing stop 1 % activating at 100).
        ``{"ok", "failed", "wall_s", "statuses", "first_error"}``."""
        url = self.stack.server.url + "/api/positions/protection"  # type: ignore[union-attr]
        statuses: dict[str, int] = {}
        errors: list[str] = []

        def one(i: int) -> None:
            a = self.accounts[i]
            if on:
                r = rest("PUT", url, a.token, {
                    "key_id": a.key_id, "symbol": SYMBOL, "mode": "server",
                    "stop_loss": {"trigger_price": "0.1"},
                    "trailing_stop": {"callback_rate": "1", "activation_price": "100"}})
            else:
                r = rest("DELETE", f"{url}?key_id={a.key_id}&symbol={SYMBOL}", a.token)
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if r.status_code != 200 and not errors:
                errors.append(r.text[:200])
        t0 = time.time()
        _, exc = run_pool(one, n, 8)
        return {"on": on, "ok": statuses.get("200", 0), "failed": n - statuses.get("200", 0),
                "wall_s": round(time.time() - t0, 1), "statuses": statuses,
                "first_error": (errors or exc or [None])[0]}

    def protect_window(self, n: int, rate: float) -> dict[str, Any]:
        """A project window with every holder's rules set (``set_rules``), removed after;
        after each, ``settle`` (the server's work for the PUTs / DELETEs is not the
        window's)."""
        put = self.set_rules(n, True)
        put["settle"] = self.settle()  # the positions pushes the PUTs caused, done
        try:
            out = self.project_window(n, rate, "protect")
        finally:
            delete = self.set_rules(n, False)
            delete["settle"] = self.settle()  # before whatever window comes next
        out["rules"] = {"put": put, "delete": delete}
        return out

    def configuration(self, cfg: dict) -> dict:
        n, rate, hz = cfg["n"], cfg["rate"], cfg["max_hz"]
        out: dict = {"connect": self.ensure(n)}
        out["ready"] = self.wait_ready(min(n, len(self.accounts)))
        if hz != self.hz:
            acks = self.resubscribe(hz)
            out["max_hz_ack"] = acks
            if hz is not None and not acks.get("ok"):
                out["max_hz_supported"] = False
                out["note"] = "the server refused subscribe with max_hz; window skipped"
                self.resubscribe(None)
                return out
            self.hz = hz
            if hz is not None:
                out["max_hz_supported"] = True
            out["ready_after_resubscribe"] = self.wait_ready(min(n, len(self.accounts)))
        reps = []
        for rep in range(self.args.reps):
            kinds = list(self.args.baseline_kinds)
            order = ["project", "baselines"] if rep % 2 == 0 else ["baselines", "project"]
            if self.args.protect:
                order = ["project", "protect", "baselines"] if rep % 2 == 0 \
                    else ["baselines", "protect", "project"]
            one: dict[str, Any] = {"order": [x for s in order for x in (kinds if s == "baselines" else [s])]}
            for side in order:
                if side == "project":
                    time.sleep(2.0)  # let snapshot pushes and refreshes settle
                    one["project"] = self.project_window(n, rate)
                    if n == self.args.events_clients and "events" not in out:
                        out["events"] = {
                            "via_server": self.events_test(n, NEW_SYMBOL, NEW_QTY, "server"),
                            "via_exchange": self.events_test(n, "ETHUSDT", "0.01", "exchange")}
                elif side == "protect":
                    time.sleep(2.0)
                    one["protect"] = self.protect_window(n, rate)
                elif kinds:
                    one.update(self.baselines(kinds, n, rate))
            for side in self.args.baseline_kinds:
                one[f"ratio_{side}"] = ratios(one["project"], one[side])
            if self.args.protect:
                one["ratio_protect"] = ratios(one["protect"], one["project"])
            reps.append(one)
        out["reps"] = reps
        out["summary"] = summary(reps, ["project", *(["protect"] if self.args.protect else []),
                                        *self.args.baseline_kinds])
        return out
