"""Scale-out benchmark: P server processes behind nginx on PostgreSQL + Redis, driven
by the clients of ``bench.fanout`` through the balancer.

    .venv/bin/python -m bench.scaleout [--plan 1x100x2w,2x200x2,2x100x2w,4x100x2w]
        [--duration-s 10] [--failover-n 100] [--failover-runs 1] [--storm-n 2000]
        [--workers 2] [--tag NAME]

Failover alone, three runs; 10,000 connections over two processes alone::

    .venv/bin/python -m bench.scaleout --plan none --failover-n 100 --failover-runs 3 --storm-n 0
    .venv/bin/python -m bench.scaleout --plan none --failover-n 0 --storm-n 10000

The issue's full plan (4,000 accounts are set up first: written straight into the
database by default, ``--setup direct``, a few minutes; ``--setup api`` registers and
logs each in through the API, two Argon2 hashes each: 400 took 473 s on this shared
2-core machine, so over an hour for 4,000)::

    .venv/bin/python -m bench.scaleout --plan 1x2000x2w,2x4000x2,2x2000x2w,4x2000x2w \\
        --duration-s 20 --failover-n 2000 --storm-n 10000 --tag full

Prints ``section.figure: value`` lines and writes them as JSON to
``bench/results/scaleout_<tag>.json`` (logs in ``bench/results/logs_scaleout_<tag>/``).
Units are in the names (``_ms``, ``_pct``: 100 = one core, ``per_s``, ``_kb``).

Setup (once): the simulator, a fresh PostgreSQL database, max(N) accounts (simulator
account, MARKET BUY 10 XRPUSDT, then the user and its key: ``--setup direct`` writes
them into the database with tokens signed by the servers' ``SECRET_KEY``,
``bench.fanout_accounts.direct``; ``--setup api`` registers and logs in through a
setup server as ``bench.fanout`` does; the setup server is stopped afterwards), Redis at
``--redis-url`` with a channel of this run (leases and relay namespaced by it).

Each plan entry ``<P>x<N>x<R>[w]`` is one configuration, on processes started for it
and stopped after it: P servers (``python app.py``, production, real exchange
limits, ``MESSAGE_QUEUE_URL`` set) behind nginx (``deploy.nginx``, the configuration
of ``make deploy``); ``w`` adds a witness: one more server on the same database and
Redis that holds no client at all. N clients (``bench.eio_client``, subscribed to
``balance, positions, pnl, orders``) connect through nginx, client ``i`` with
``?affinity=i`` (the balancer hashes it: spread over the P processes as real clients'
addresses would be; the split is reported as ``clients_per_process``). Then the mark
price moves R times a second for ``--duration-s`` (as ``bench.fanout``):

- ``pnl``: ``bench.fanout_stats.delivery`` (``exact``/``fresh`` latency from the move
  at the simulator to the client's receive, ``missing_fraction``).
- ``cpu_pct``: each process's CPU over the window (100 = one core) and ``sum``;
  ``cpu_ms_per_pnl_sum``: CPU of the P processes from the first move until deliveries
  stopped / ``pnl`` pushes delivered then (their balance and positions pushes of the
  same ticks are part of that cost, as in ``bench.fanout``).
- ``witness``: the witness's CPU over the window. A process receives the relay
  messages only of keys it has subscribers for, and the witness has none: its CPU
  over the moves less its CPU over the idle window before them
  (``witness_idle_cpu_pct``, nothing moving) is what the other processes' key moves
  cost it; ``cpu_ms_per_key_move`` = its whole CPU / (N x moves), an upper bound.
- ``rss_mb`` per process, ``nginx_cpu_pct``, ``client_cpu_pct``, ``load``.
- ``cpu_ms_per_msg_sum``: the same CPU / every message the clients received from the
  first move until deliveries stopped (``pnl``, ``positions``, ``balance``, ``orders``).
- ``idle_cpu_pct_sum``: the servers' CPU over ``--idle-s`` before the moves, clients
  held, nothing moving (pings, keep-alives, timers, lease upkeep);
  ``cpu_ms_per_msg_net``: ``cpu_ms_per_msg_sum`` with that idle rate taken out.

``<P>x<N>x<R>b`` is the baseline of the same job: P bare Flask-SocketIO/eventlet
servers (``bench.bare_server``, the project's orjson codec) behind the same nginx, N
clients connected with the same ``?affinity=i`` (so the same split), each server sending
each of its clients a ``pnl`` message per round and, once all have theirs, a
``positions`` one every second round and a ``balance`` one every fourth (``mix``: the
1.75 messages a ``pnl`` costs the product at R = 2 with its defaults, in the product's
order: a tick's ``pnl`` pushes go out first), R rounds a second, every process's rounds at the
same scheduled times; no product server runs then (each configuration stops its own)
and the simulator is suspended (SIGSTOP) for the window. Timed the same way: from the
round's scheduled time to the receive. ``--reps K`` runs the plan K times, every other
time in reverse order, so a product entry and its bare one alternate which runs first;
``summary`` then gives per entry the median [min-max] of ``pnl`` p99 and
``cpu_ms_per_msg_sum`` over the repetitions, and per repetition the ratios product /
bare and P = 2 / P = 1 (the per-message CPU a second process adds, for the product and
for the bare server on the same machine).

``failover`` (P = 2, ``--failover-n`` clients, R = 2, ``--lease-ttl-s``), ``--failover-runs``
times on new processes (then ``summary``: median [min-max] over the runs): moves for
``--failover-window-s``; one process gets SIGKILL ``--failover-kill-at`` s into a new
minute (Binance counts request weight per IP per minute: a kill in the minute the
clients' connects spent finds most of its budget gone, see docs/push-stream.md
"Failover"; < 0: 3 s after the moves start, whatever the minute). Its clients reconnect at once
through nginx (now to the survivor) and subscribe again; meanwhile ``--failover-orders``
of its accounts place a MARKET BUY of ``GAP_SYMBOL`` (their streams run nowhere
then). A client's resume time: from the kill until pushes flow again
(``resume_times``: the first move after the kill from which on every move reached it
within 1.5 s; a REST snapshot followed by silence does not count). p50/p99/max over
clients (``resume_reconnected``: those of the killed process; ``resume_stayed``: the
survivor's own), ``missing``: clients with none by the end of the window
(``not_resumed``: which, with their pushes after the kill). ``fills``: each order in
the ledger exactly once and filled (``lost``: not). ``survivor_streams`` and
``survivor_rate_limits`` (calls its rate governor held back, the highest weight of
the minute): why a take-over waited. The survivor takes the dead process's streams
over once its heartbeat is gone (``services.leases.ALIVE_MS``).

``storm`` (P = 2, ``--storm-n`` connections, the tokens of ``--storm-users`` accounts
round robin, each subscribing to ``pnl``, all connects in flight at once through
nginx): ok / failed, connect + subscribe ack latency, ``per_s_wall`` (ok / wall
seconds), how many got their snapshot and when, ``rss_kb_per_connection`` per process
(VmRSS after - before, over the connections it holds), ``closed_after_ok`` (with
the clients' ``closed_reasons``), nginx's error-log lines by level, and the stream
leases each process lost to the other (``leases_lost``: ``stream lease lost`` in its
log; with it ``leases_taken_over`` and ``heartbeat_failed``); ``heartbeat``: the lowest
remaining life of each process's heartbeat key seen during the storm (sampled every
0.1 s: ``ALIVE_MS`` minus the longest gap between two beats) and how often it was gone. The file limit
is raised to its hard limit (``prepare_long_run``); nginx gets room for every
connection in either worker.

The machine has 2 cores shared with other work: every process of the run (servers,
nginx, simulator, PostgreSQL, Redis, the client workers) competes for them; ``load``
shows how busy it was.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench import fanout_accounts
from bench.common import ACCOUNT_TYPES, RESULTS_DIR, Stack, rest
from bench.eio_workers import Workers
from bench.fanout import P0, QTY, setup_accounts, sim_market_order, start_bare
from bench.fanout_run import BARE, BASE, STEP, SYMBOL, Run
from bench.fanout_stats import lag_ms
from bench.measure import (
    cpu_s,
    lat_s,
    prepare_long_run,
    print_lines,
    rss_mb,
    write_results,
)
from bench.scaleout_figures import (
    failover_summary,
    idle_pct,
    not_resumed,
    rate_limit_summary,
    resume_times,
    summary,
    window_figures,
)
from deploy.nginx import Nginx, available
from tests.support.server import ServerProcess, free_port, start_server

# the orders placed during a failover (a symbol of its own: the clients' pnl -> move
# mapping reads the XRPUSDT row only)
GAP_SYMBOL, GAP_QTY = "BTCUSDT", "0.002"
WEIGHT_WINDOW_S = 60.0  # Binance's request weight window (per IP, aligned to the minute)
PLAN_RE = re.compile(r"^(\d+)x(\d+)x(\d+(?:\.\d+)?)([wb]?)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__.split("\n")[0])
    p.add_argument("--plan", default="1x100x2w,2x200x2,2x100x2w,4x100x2w",
                   help="comma-separated <processes>x<clients>x<moves per s>[w: with a witness]; "
                        "'' or none: no latency configuration (only failover and storm)")
    p.add_argument("--duration-s", type=float, default=10.0, help="measuring window per configuration")
    p.add_argument("--grace-s", type=float, default=10.0, help="longest wait for late pushes")
    p.add_argument("--failover-n", type=int, default=100, help="clients of the failover test; 0 = skip")
    p.add_argument("--failover-window-s", type=float, default=30.0)
    p.add_argument("--failover-runs", type=int, default=1,
                   help="failover runs (each on new processes); > 1 adds a median [min-max] summary")
    p.add_argument("--failover-kill-at", type=float, default=5.0,
                   help="kill this many seconds into a new minute (the venue's weight window), "
                        "not in the one the clients' connects spent; < 0: 3 s after the moves start")
    p.add_argument("--failover-orders", type=int, default=10,
                   help="accounts of the killed process that place an order right after the kill")
    p.add_argument("--lease-ttl-s", type=float, default=None,
                   help="LEASE_TTL_S of the servers (default: the server's own, 15)")
    p.add_argument("--storm-n", type=int, default=2000, help="connections of the storm; 0 = skip")
    p.add_argument("--storm-users", type=int, default=100,
                   help="accounts the storm's connections log in as (round robin)")
    p.add_argument("--workers", type=int, default=2, help="client worker processes")
    p.add_argument("--redis-url", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--accounts-per-ip", type=int, default=30, help="accounts per egress address")
    p.add_argument("--connect-concurrency", type=int, default=10,
                   help="connects in flight per worker (the storm section sends all at once)")
    p.add_argument("--setup-workers", type=int, default=16)
    p.add_argument("--setup", choices=("direct", "api"), default="direct",
                   help="accounts written into the database (direct) or registered through the API")
    p.add_argument("--ready-timeout-s", type=float, default=90.0)
    p.add_argument("--idle-s", type=float, default=5.0,
                   help="CPU of the servers measured this long with the clients held and no move "
                        "(idle_cpu_pct_sum; cpu_ms_per_msg_net takes it out); 0 = skip")
    p.add_argument("--cpu-samples", metavar="PREFIX", default="",
                   help="the product servers sample their own CPU time (bench/cpu_sampler): "
                        "PREFIX.<pid>.idle.txt over the idle window, PREFIX.<pid>.moves.txt over "
                        "the moves (python -m bench.cpu_sampler FILE)")
    p.add_argument("--reps", type=int, default=1,
                   help="runs of the plan, every other one in reverse order (a bare entry and "
                        "its product entry alternate which goes first)")
    p.add_argument("--tag", default="run", help="names the result file")
    args = p.parse_args(argv)
    plan = []
    for item in [] if args.plan.strip() in ("", "none") else args.plan.split(","):
        m = PLAN_RE.match(item.strip())
        if not m:
            p.error(f"bad plan entry {item!r}")
        plan.append({"name": item.strip(), "p": int(m.group(1)), "n": int(m.group(2)),
                     "rate": float(m.group(3)), "witness": m.group(4) == "w",
                     "bare": m.group(4) == "b"})
    args.configs = []
    for rep in range(max(1, args.reps)):
        for cfg in plan if rep % 2 == 0 else plan[::-1]:
            args.configs.append({**cfg, "rep": rep,
                                 "name": cfg["name"] if args.reps <= 1 else f"{cfg['name']}#{rep + 1}"})
    return args


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Cluster:
    """P servers (+ an optional witness) and nginx in front of the P, for one
    configuration; ``stop`` ends them all."""

    def __init__(self, stack: Stack, env: dict[str, str], log_dir: Path, p: int, witness: bool,
                 max_connections: int) -> None:
        self.servers: list[ServerProcess] = []
        self.witness: ServerProcess | None = None
        self.nginx: Nginx | None = None
        try:
            # one after another: each gets start_server's 30 s to become healthy on its
            # own (started together on a busy 2-core machine, some did not)
            for i in range(p + (1 if witness else 0)):
                srv = start_server(stack.db_url, stack.sim.url, stack.sim.ws_url, log_dir,
                                   extra_env=env, real_limits=True)
                if i < p:
                    self.servers.append(srv)
                else:
                    self.witness = srv
            self.nginx = Nginx(log_dir / f"nginx-{free_port()}", f"127.0.0.1:{free_port()}",
                               [s.url.removeprefix("http://") for s in self.servers],
                               max_connections=max_connections, workers=2).start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def backend_of(self, affinity: str) -> str:
        """The ``host:port`` nginx sends clients with ``?affinity=<affinity>`` to."""
        r = requests.get(f"{self.url}/healthz", params={"affinity": affinity}, timeout=10)
        return r.headers.get("X-Upstream", "")

    def cpu(self) -> dict[str, float]:
        out = {s.url.removeprefix("http://"): cpu_s(s.proc.pid) or 0.0 for s in self.servers}
        if self.witness is not None:
            out["witness"] = cpu_s(self.witness.proc.pid) or 0.0
        out["nginx"] = sum(cpu_s(p) or 0.0 for p in (self.nginx.worker_pids() if self.nginx else []))
        return out

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for s in [*self.servers, *([self.witness] if self.witness else [])]:
            s.stop()


class Bench:
    """The run: stack, accounts, client workers, results."""

    def __init__(self, args: argparse.Namespace, stack: Stack, env: dict[str, str], accounts: list[Any],
                 workers: Workers, log_dir: Path) -> None:
        self.args, self.stack, self.env, self.accounts = args, stack, env, accounts
        self.workers, self.log_dir = workers, log_dir
        self.k = 1  # next move index (prices never repeat within a run; BASE, move 0, is set below)
        self.bare_k = 0  # next bare round (the bare clients' records are keyed by it)
        workers.all({"op": "config", "symbol": SYMBOL, "base": str(BASE), "step": str(STEP),
                     "split": BARE})
        self.stack.sim.set_price(SYMBOL, BASE)

    # ---- clients -----------------------------------------------------------------------
    def connect(self, cluster: Cluster, cids: list[int], types: list[str], concurrency: int,
                token_of: Callable[[int], str] | None = None) -> dict[str, Any]:
        token_of = token_of or (lambda cid: self.accounts[cid].token)
        items = [{"cid": cid, "auth": {"token": token_of(cid)},
                  "url": f"{cluster.url}/?affinity={cid}",
                  "subs": [["subscribe", {"types": types}]]} for cid in cids]
        replies = self.workers.by_client("connect", items, url=cluster.url, timeout=120.0,
                                         concurrency=concurrency)
        return Run._connect_summary(replies, len(items))

    def wait_ready(self, n: int) -> dict[str, Any]:
        t0 = time.time()
        while True:
            ready = sum(r["ready"] for r in self.workers.all({"op": "ready"}))
            if ready >= n or time.time() - t0 > self.args.ready_timeout_s:
                return {"ready": ready, "of": n, "s": round(time.time() - t0, 1)}
            time.sleep(1.0)

    def disconnect_all(self) -> None:
        self.workers.cids("disconnect", None, abort=True)
        self.workers.all({"op": "reset"})

    def _drain(self, t_last: float) -> float:
        seen, since = -1, time.time()
        while time.time() < t_last + self.args.grace_s:
            n = sum(r["records"] for r in self.workers.all({"op": "count"}))
            if n != seen:
                seen, since = n, time.time()
            elif time.time() - since >= 1.5 and time.time() >= t_last + 2:
                break
            time.sleep(0.25)
        return time.time()

    def _move(self) -> tuple[int, float]:
        k, self.k = self.k, self.k + 1
        t = time.time()
        self.stack.sim.set_price(SYMBOL, BASE + STEP * k)
        return k, t

    def split(self, cluster: Cluster, cids: list[int]) -> dict[str, list[int]]:
        """Which process nginx sends each client to (by its affinity key)."""
        with ThreadPoolExecutor(8) as pool:
            where = list(pool.map(lambda c: cluster.backend_of(str(c)), cids))
        out: dict[str, list[int]] = {}
        for cid, backend in zip(cids, where, strict=True):
            out.setdefault(backend, []).append(cid)
        return out

    # ---- one configuration ---------------------------------------------------------------
    def configuration(self, cfg: dict[str, Any]) -> dict[str, Any]:
        p, n, rate = cfg["p"], min(cfg["n"], len(self.accounts)), cfg["rate"]
        cluster = Cluster(self.stack, self.env, self.log_dir, p, cfg["witness"], n + 1000)
        out: dict[str, Any] = {"processes": p, "clients": n, "rate": rate}
        servers = [s.url.removeprefix("http://") for s in cluster.servers]
        try:
            cids = list(range(n))
            out["clients_per_process"] = {b: len(c) for b, c in self.split(cluster, cids).items()}
            out["connect"] = self.connect(cluster, cids, ACCOUNT_TYPES, self.args.connect_concurrency)
            out["ready"] = self.wait_ready(n)
            time.sleep(2.0)  # snapshot pushes and refreshes settle
            self._mark("idle")
            idle_keys = servers + (["witness"] if cluster.witness is not None else [])
            idle = idle_pct(cluster.cpu, idle_keys, self.args.idle_s, each=True)
            out["idle_cpu_pct_sum"] = None if idle is None else round(sum(idle[s] for s in servers), 1)
            if idle is not None and cluster.witness is not None:
                out["witness_idle_cpu_pct"] = idle["witness"]
            self._mark("moves")
            self.workers.all({"op": "reset"})
            cpu0, load0, t_cpu0 = cluster.cpu(), _load(), time.time()
            w0 = cpu_s(self.workers.pids[0]) or 0.0
            wcpu0 = sum(cpu_s(x) or 0 for x in self.workers.pids)
            t_start = time.time() + 0.2
            events: dict[int, float] = {}
            for j in range(int(rate * self.args.duration_s)):
                time.sleep(max(0.0, t_start + j / rate - time.time()))
                k, t = self._move()
                events[k] = t
            t_end = t_start + self.args.duration_s
            time.sleep(max(0.0, t_end - time.time()))
            cpu1 = cluster.cpu()
            self._mark(None)
            wcpu1 = sum(cpu_s(x) or 0 for x in self.workers.pids)
            t_drain = self._drain(max(events.values()))
            cpu2, t_cpu2 = cluster.cpu(), time.time()
            del w0
            got = self.workers.all({"op": "collect", "since": t_start - 1})
            records = [r for g in got for r in g["records"]]
            span = t_end - t_start
            out.update(window_figures(got, [r for r in records if r[0] < n], set(cids), events, servers,
                                      (cpu0, cpu1, cpu2), (t_start, t_end, t_drain),
                                      out["idle_cpu_pct_sum"], t_cpu2 - t_cpu0, bare=False))
            if cluster.witness is not None:
                w = cpu1["witness"] - cpu0["witness"]
                out["witness"] = {"cpu_pct": round(w * 100 / span, 1),
                                  "cpu_ms_per_key_move": round(w * 1000 / (n * len(events)), 4),
                                  "rss_mb": rss_mb(cluster.witness.proc.pid)}
            out["nginx_cpu_pct"] = round((cpu1["nginx"] - cpu0["nginx"]) * 100 / span, 1)
            out["rss_mb"] = {s.url.removeprefix("http://"): rss_mb(s.proc.pid) for s in cluster.servers}
            out["client_cpu_pct"] = round((wcpu1 - wcpu0) * 100 / span, 1)
            out["client_loop_lag_ms"] = lag_ms([x for g in got for x in g["lag"] if t_start <= x[0] <= t_end])
            out["still_connected"] = sum(g["connected"] for g in got)
            out["load"] = [load0, _load()]
        finally:
            self.disconnect_all()
            cluster.stop()
        return out

    def _mark(self, window: str | None) -> None:
        """``--cpu-samples``: the servers' samples go to ``window``'s file from now
        (None: none are counted)."""
        if self.args.cpu_samples:
            mark = Path(self.args.cpu_samples + ".mark")
            if window is None:
                mark.unlink(missing_ok=True)
            else:
                mark.write_text(window)

    # ---- the bare baseline of a configuration ---------------------------------------------
    def _suspend_sim(self, stop: bool) -> None:
        assert self.stack.sim is not None
        try:
            os.kill(self.stack.sim.proc.pid, signal.SIGSTOP if stop else signal.SIGCONT)
        except ProcessLookupError:
            pass

    def bare_configuration(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """``<P>x<N>x<R>b`` (module docstring): P ``bench.bare_server`` processes behind
        nginx, N clients ``BARE + i`` with ``?affinity=i``, R rounds a second of the
        product's message mix for ``--duration-s``, the simulator suspended. Figures as
        ``configuration``'s (``pnl`` delivery, ``cpu_pct``, ``cpu_ms_per_pnl_sum``,
        ``cpu_ms_per_msg_sum``, nginx and client CPU, ``load``)."""
        p, n, rate = cfg["p"], cfg["n"], cfg["rate"]
        out: dict[str, Any] = {"processes": p, "clients": n, "rate": rate, "baseline": "bare"}
        procs: list[tuple[Any, str]] = []
        nginx: Nginx | None = None
        cids = [BARE + i for i in range(n)]
        try:
            for _ in range(p):
                procs.append(start_bare(self.log_dir))
            servers = [u.removeprefix("http://") for _, u in procs]
            nginx = Nginx(self.log_dir / f"nginx-{free_port()}", f"127.0.0.1:{free_port()}", servers,
                          max_connections=n + 1000, workers=2).start()
            items = [{"cid": c, "auth": {}, "url": f"{nginx.url}/?affinity={c - BARE}",
                      "subs": [["subscribe", {"types": ACCOUNT_TYPES}]]} for c in cids]
            replies = self.workers.by_client("connect", items, url=nginx.url, timeout=120.0,
                                             concurrency=self.args.connect_concurrency)
            out["connect"] = {k: v for k, v in Run._connect_summary(replies, n).items()
                              if k in ("asked", "ok", "failed", "per_s")}
            out["clients_per_process"] = {s: requests.get(u + "/stats", timeout=10).json()["connections"]
                                          for s, (_, u) in zip(servers, procs, strict=True)}
            time.sleep(2.0)
            rounds = int(rate * self.args.duration_s)
            k0, self.bare_k = self.bare_k, self.bare_k + rounds

            proxy = nginx

            def cpu() -> dict[str, float]:
                c = {s: cpu_s(proc.pid) or 0.0 for s, (proc, _) in zip(servers, procs, strict=True)}
                c["nginx"] = sum(cpu_s(x) or 0.0 for x in proxy.worker_pids())
                c["workers"] = sum(cpu_s(x) or 0.0 for x in self.workers.pids)
                return c

            self._suspend_sim(True)
            try:
                out["idle_cpu_pct_sum"] = idle_pct(cpu, servers, self.args.idle_s)
                self.workers.all({"op": "reset"})
                cpu0, load0, t_cpu0 = cpu(), _load(), time.time()
                t_start = time.time() + 0.3
                for _, u in procs:
                    requests.post(u + "/rounds", json={"rate": rate, "rounds": rounds, "k0": k0, "pad": 120,
                                                       "start": t_start, "mix": True},
                                  timeout=10).raise_for_status()
                events = {k0 + j: t_start + j / rate for j in range(rounds)}
                t_end = t_start + self.args.duration_s
                time.sleep(max(0.0, t_end - time.time()))
                cpu1 = cpu()
                while time.time() < t_end + self.args.grace_s and any(
                        requests.get(u + "/stats", timeout=10).json()["rounds"] < rounds for _, u in procs):
                    time.sleep(0.25)
                t_drain = self._drain(time.time() - 2)
                cpu2, t_cpu2 = cpu(), time.time()
                load1 = _load()
            finally:
                self._suspend_sim(False)
            got = self.workers.all({"op": "collect", "since": t_start - 1})
            records = [r for g in got for r in g["records"] if r[0] >= BARE]
            span = t_end - t_start
            out.update(window_figures(got, records, set(cids), events, servers, (cpu0, cpu1, cpu2),
                                      (t_start, t_end, t_drain), out["idle_cpu_pct_sum"],
                                      t_cpu2 - t_cpu0, bare=True))
            out["nginx_cpu_pct"] = round((cpu1["nginx"] - cpu0["nginx"]) * 100 / span, 1)
            out["client_cpu_pct"] = round((cpu1["workers"] - cpu0["workers"]) * 100 / span, 1)
            out["rss_mb"] = {s: rss_mb(proc.pid) for s, (proc, _) in zip(servers, procs, strict=True)}
            out["rounds_stats"] = [requests.get(u + "/stats", timeout=10).json() for _, u in procs]
            out["client_loop_lag_ms"] = lag_ms([x for g in got for x in g["lag"] if t_start <= x[0] <= t_end])
            out["load"] = [load0, load1]
        finally:
            self.workers.cids("disconnect", cids, abort=True)
            self.workers.all({"op": "reset"})
            if nginx is not None:
                nginx.stop()
            for proc, _ in procs:
                proc.terminate()
                try:
                    proc.wait(10)
                except Exception:
                    proc.kill()
        return out

    # ---- failover --------------------------------------------------------------------------
    def failover(self, n: int, rate: float = 2.0) -> dict[str, Any]:
        """``--failover-runs`` runs of ``failover_once`` (each on a cluster of its own);
        with more than one, ``summary``: median [min-max] of each run's figures."""
        runs = self.args.failover_runs
        if runs <= 1:
            return self.failover_once(n, rate)
        out: dict[str, Any] = {}
        for i in range(runs):
            try:
                out[f"run_{i + 1}"] = self.failover_once(n, rate)
            except Exception as e:  # recorded; the next run goes on
                out[f"run_{i + 1}"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        out["summary"] = failover_summary([v for v in out.values() if "error" not in v])
        return out

    def _gap_orders(self, cluster: Cluster, cids: list[int], placed: list[tuple[int, Any, str]]) -> None:
        """A MARKET BUY of ``GAP_QTY`` ``GAP_SYMBOL`` for each of ``cids`` through nginx
        (to the survivor: the killed process refuses connections) while their keys'
        streams run nowhere; appends ``(cid, status, client_order_id or the error
        text)`` to ``placed``."""
        def one(cid: int) -> tuple[int, Any, str]:
            a = self.accounts[cid]
            try:
                r = rest("POST", f"{cluster.url}/api/orders", a.token,
                         {"key_id": a.key_id, "symbol": GAP_SYMBOL, "side": "BUY",
                          "type": "MARKET", "quantity": GAP_QTY})
            except requests.RequestException as e:
                return cid, "error", f"{type(e).__name__}: {e}"[:200]
            if r.status_code == 201:
                return cid, 201, r.json()["trade"]["client_order_id"]
            return cid, r.status_code, r.text[:200]
        with ThreadPoolExecutor(8) as pool:
            placed.extend(pool.map(one, cids))

    def _ledger_check(self, cluster: Cluster, placed: list[tuple[int, Any, str]],
                      timeout_s: float = 30.0) -> dict[str, Any]:
        """Each order placed (201) in the ledger exactly once and filled (``open``), read
        with GET /api/trades through nginx: ``{"orders", "refused", "in_ledger_once",
        "lost", "lost_cids"}`` (``lost``: placed and not there as one filled row by
        ``timeout_s``)."""
        want = {cid: coid for cid, status, coid in placed if status == 201}
        found: set[int] = set()
        deadline = time.time() + timeout_s
        while len(found) < len(want) and time.time() < deadline:
            for cid, coid in want.items():
                if cid in found:
                    continue
                a = self.accounts[cid]
                r = rest("GET", f"{cluster.url}/api/trades?key_id={a.key_id}", a.token)
                rows = [t for t in r.json() if t["client_order_id"] == coid] \
                    if r.status_code == 200 else []
                if len(rows) == 1 and rows[0]["status"] == "open":
                    found.add(cid)
            if len(found) < len(want):
                time.sleep(1.0)
        refused = [(cid, status, text) for cid, status, text in placed if status != 201]
        return {"orders": len(placed), "refused": len(refused), "refused_first": refused[:3],
                "in_ledger_once": len(found), "lost": len(want) - len(found),
                "lost_cids": sorted(set(want) - found)}

    def failover_once(self, n: int, rate: float = 2.0) -> dict[str, Any]:
        n = min(n, len(self.accounts))
        cluster = Cluster(self.stack, self.env, self.log_dir, 2, False, n + 1000)
        out: dict[str, Any] = {"processes": 2, "clients": n, "rate": rate,
                     "lease_ttl_s": self.args.lease_ttl_s or 15.0}
        try:
            cids = list(range(n))
            where = self.split(cluster, cids)
            out["clients_per_process"] = {b: len(c) for b, c in where.items()}
            out["connect"] = self.connect(cluster, cids, ACCOUNT_TYPES, self.args.connect_concurrency)
            out["ready"] = self.wait_ready(n)
            time.sleep(2.0)
            kill_at = self.args.failover_kill_at
            if kill_at >= 0:  # the kill kill_at s into a weight window of its own
                t_kill_plan = (time.time() + 3.0 - kill_at) // WEIGHT_WINDOW_S * WEIGHT_WINDOW_S \
                    + WEIGHT_WINDOW_S + kill_at
                time.sleep(max(0.0, t_kill_plan - 3.0 - time.time()))
            self.workers.all({"op": "reset"})
            events: dict[int, float] = {}
            stop = threading.Event()

            def mover() -> None:
                t0 = time.time()
                j = 0
                while not stop.is_set():
                    time.sleep(max(0.0, t0 + j / rate - time.time()))
                    k, t = self._move()
                    events[k] = t
                    j += 1
            th = threading.Thread(target=mover, daemon=True)
            th.start()
            t_begin = time.time()
            time.sleep(3.0)
            victim = cluster.servers[0]
            lost = where.get(victim.url.removeprefix("http://"), [])
            victim.kill()                                   # SIGKILL: no lease released
            t_kill = time.time()
            out["kill_s_into_minute"] = round(t_kill % 60, 1)  # the venues' weight windows
            # orders of some of its accounts while their streams run nowhere (before the
            # survivor takes them over): each fill must reach the ledger once
            placed: list[tuple[int, Any, str]] = []
            orders = threading.Thread(target=self._gap_orders, daemon=True,
                                      args=(cluster, lost[:self.args.failover_orders], placed))
            orders.start()
            # its clients reconnect at once through nginx (to the survivor now)
            reconnect = self.connect(cluster, lost, ACCOUNT_TYPES, self.args.connect_concurrency) \
                if lost else {}
            while time.time() < t_begin + self.args.failover_window_s:
                time.sleep(0.5)
            stop.set()
            th.join(5)
            orders.join(60)
            t_until = t_begin + self.args.failover_window_s - 2.0
            got = self.workers.all({"op": "collect", "since": t_kill})
            records = [r for g in got for r in g["records"]]
            first = resume_times(records, events, t_kill, t_until)
            moved = set(lost)
            out["killed"] = victim.url.removeprefix("http://")
            out["reconnect"] = reconnect
            out["resume"] = {**lat_s(list(first.values())), "missing": n - len(first)}
            out["resume_reconnected"] = {**lat_s([v for c, v in first.items() if c in moved]),
                                         "missing": len(moved - set(first))}
            out["resume_stayed"] = {**lat_s([v for c, v in first.items() if c not in moved]),
                                    "missing": len(set(cids) - moved - set(first))}
            out["not_resumed"] = not_resumed(records, set(cids) - set(first), moved, t_kill)
            survivor = cluster.servers[1]
            stats = requests.get(survivor.url + "/admin/stats", timeout=10,
                                 headers={"X-Admin-Token": survivor.admin_token}).json()
            st = stats["streams"]
            out["survivor_streams"] = {k: st.get(k) for k in ("running", "followed", "takeovers",
                                                              "by_state")}
            out["survivor_rate_limits"] = rate_limit_summary(stats.get("rate_limits") or {})
            out["fills"] = self._ledger_check(cluster, placed)
        finally:
            self.disconnect_all()
            cluster.stop()
        return out

    # ---- storm -------------------------------------------------------------------------------
    def storm(self, m: int) -> dict[str, Any]:
        # nginx: 2 x m so that either worker could hold every connection (the kernel
        # does not split accepts evenly), within the open-file limit (deploy.nginx)
        cluster = Cluster(self.stack, self.env, self.log_dir, 2, False, 2 * m + 1000)
        users = min(len(self.accounts), self.args.storm_users)
        out: dict[str, Any] = {"processes": 2, "connections": m, "users": users}
        beats = HeartbeatWatch(self.env["MESSAGE_QUEUE_URL"], self.env["MESSAGE_QUEUE_CHANNEL"])
        try:
            rss0 = {s.url.removeprefix("http://"): rss_mb(s.proc.pid) for s in cluster.servers}
            cids = list(range(m))
            where = self.split(cluster, cids)
            accounts = self.accounts
            per_worker = math.ceil(m / self.args.workers)
            t0 = time.time()
            out["connect"] = self.connect(cluster, cids, ["pnl"], per_worker,
                                          token_of=lambda c: accounts[c % users].token)
            out["wall_s"] = round(time.time() - t0, 1)
            out["per_s_wall"] = round(out["connect"]["ok"] / (time.time() - t0), 1)
            out["ready"] = self.wait_ready(m)
            time.sleep(2.0)
            per: dict[str, Any] = {}
            for s in cluster.servers:
                b = s.url.removeprefix("http://")
                gc_max: list[float | None] | None = None
                try:  # the connections it holds (a client that failed holds none)
                    st = requests.get(s.url + "/admin/stats", timeout=30, headers={
                        "X-Admin-Token": s.admin_token}).json()
                    held = st["connections"]
                    gc_max = [st.get("gc", {}).get(f"gen{g}", {}).get("max_ms") for g in range(3)]
                except (requests.RequestException, ValueError, KeyError):
                    held = len(where.get(b, []))
                after = rss_mb(s.proc.pid)
                log = s.log()
                per[b] = {"connections": held, "rss_mb_before": rss0[b], "rss_mb_after": after,
                          "rss_kb_per_connection": round((after - rss0[b]) * 1024 / held, 1)
                          if held and after and rss0[b] else None,
                          # a live process's streams taken by the other (its heartbeat
                          # seemed gone, or its lease expired unrenewed), and its take-overs
                          "leases_lost": log.count("stream lease lost"),
                          "leases_taken_over": log.count("stream lease taken over"),
                          "heartbeat_failed": log.count("lease heartbeat failed"),
                          # the longest collector pause per generation (every thread of
                          # the process waits for it: the GIL is held throughout)
                          "gc_max_ms": gc_max}
            out["per_process"] = per
            out["leases_lost"] = sum(v["leases_lost"] for v in per.values())
            out["nginx_rss_mb"] = sum(rss_mb(p) or 0 for p in cluster.nginx.worker_pids())
            got = self.workers.all({"op": "collect", "since": time.time()})
            out["still_connected"] = sum(g["connected"] for g in got)
            # connected and acknowledged, then closed (by a server, nginx or a timeout)
            out["closed_after_ok"] = out["connect"]["ok"] - out["still_connected"]
            closed: dict[str, int] = {}
            for g in got:
                for reason, k in g["closed"].items():
                    closed[reason] = closed.get(reason, 0) + k
            out["closed_reasons"] = closed
            log = cluster.nginx.error_log() if cluster.nginx else ""
            out["nginx_log"] = {level: log.count(f"[{level}]") for level in ("warn", "error", "alert", "crit")}
            out["nginx_log"]["worker_connections_short"] = log.count("worker_connections are not enough")
            out["load"] = _load()
        finally:
            out["heartbeat"] = beats.stop()
            self.disconnect_all()
            cluster.stop()
        return out


class HeartbeatWatch:
    """Samples the remaining life (PTTL) of every process's heartbeat key
    (``<channel>:alive:<owner>``, services.leases) every ``period_s`` on a thread of
    its own until ``stop()``: ``min_ttl_ms`` per owner is ``ALIVE_MS`` minus the
    longest gap between two of its beats (within ``period_s``), ``gone``: samples that
    found a key seen before missing (its leases could then be taken as a dead
    process's)."""

    def __init__(self, url: str, channel: str, period_s: float = 0.1) -> None:
        import redis
        self._redis = redis.Redis.from_url(url, socket_timeout=5, decode_responses=True)
        self._pattern = f"{channel}:alive:*"
        self._period_s = period_s
        self._min: dict[str, int] = {}
        self._gone: dict[str, int] = {}
        self._samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import redis
        while not self._stop.wait(self._period_s):
            try:
                keys = {str(k) for k in self._redis.keys(self._pattern)} | set(self._min)
                pipe = self._redis.pipeline(transaction=False)
                for k in keys:
                    pipe.pttl(k)
                for k, ttl in zip(keys, pipe.execute(), strict=True):
                    if ttl == -2:
                        self._gone[k] = self._gone.get(k, 0) + 1
                    elif ttl >= 0:
                        self._min[k] = min(self._min.get(k, ttl), ttl)
                self._samples += 1
            except redis.RedisError:
                continue

    def stop(self) -> dict[str, Any]:
        """``{"min_ttl_ms": [per owner, lowest first], "gone": [samples], "samples"}``
        (the owners' order is the same in both lists)."""
        self._stop.set()
        self._thread.join(10)
        owners = sorted(self._min, key=lambda k: self._min[k])
        return {"min_ttl_ms": [self._min[k] for k in owners],
                "gone": [self._gone.get(k, 0) for k in owners], "samples": self._samples}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hard = prepare_long_run()
    if not available():
        raise SystemExit("bench.scaleout: nginx missing (sh scripts/install-nginx.sh)")
    log_dir = RESULTS_DIR / f"logs_scaleout_{args.tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    n_max = max([c["n"] for c in args.configs if not c["bare"]] + [args.failover_n]
                + [args.storm_users if args.storm_n else 0])
    ips = max(1, math.ceil(n_max / args.accounts_per_ip))
    results: dict = {"tag": args.tag, "plan": args.plan, "duration_s": args.duration_s,
                     "db": "postgresql", "egress_ips": ips, "nofile": hard,
                     "load_at_start": _load()}
    secrets = fanout_accounts.new_env()
    env = {**secrets, "ADMIN_TOKEN": uuid.uuid4().hex,
           "EGRESS_IPS": ",".join(f"127.0.0.{i}" for i in range(1, ips + 1)),
           "MAX_WS_CONNECTIONS": str(max(10_000, 2 * max(n_max, args.storm_n) + 1000)),
           "LOGIN_RATE_LIMIT": "100000 per minute"}
    stack = Stack("postgresql", log_dir, extra_env=env)
    env.update({"MESSAGE_QUEUE_URL": args.redis_url,
                "MESSAGE_QUEUE_CHANNEL": f"scaleout-{uuid.uuid4().hex[:8]}"})
    if args.lease_ttl_s:
        env["LEASE_TTL_S"] = str(args.lease_ttl_s)
    if args.cpu_samples:
        Path(args.cpu_samples).parent.mkdir(parents=True, exist_ok=True)
        Path(args.cpu_samples + ".mark").unlink(missing_ok=True)  # nothing counted until a window
        env.update(PYTHONPATH=str(Path(__file__).with_name("cpu_sampler")),
                   PUSHSRV_CPU_SAMPLES=args.cpu_samples,
                   PUSHSRV_CPU_SAMPLES_MARK=args.cpu_samples + ".mark")
    workers = None
    try:
        if args.setup == "api":
            accounts, results["setup"] = setup_accounts(stack, n_max, args.setup_workers)
        else:
            sim = stack.sim
            assert sim is not None
            sim.set_price(SYMBOL, P0)
            t0 = time.time()
            accounts = fanout_accounts.direct(
                stack.db_url, sim, n_max, secrets, str(int(time.time()) % 100000),
                lambda a: sim_market_order(sim.url, a, SYMBOL, "BUY", QTY), args.setup_workers)
            results["setup"] = {"accounts": len(accounts), "direct": True,
                                "wall_s": round(time.time() - t0, 1)}
        print_lines("setup", results["setup"])
        stack.server.stop()  # the setup server; each configuration starts its own
        workers = Workers(args.workers, log_dir / "workers.log")
        bench = Bench(args, stack, env, accounts, workers, log_dir)
        sections: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            (cfg["name"], lambda cfg=cfg: (bench.bare_configuration if cfg["bare"] else bench.configuration)(cfg))
            for cfg in args.configs]
        if args.failover_n:
            sections.append(("failover", lambda: bench.failover(args.failover_n)))
        if args.storm_n:
            sections.append(("storm", lambda: bench.storm(args.storm_n)))
        for name, run in sections:
            try:
                results[name] = run()
            except Exception as e:
                results[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print_lines(name, results[name])
        if args.reps > 1 or any(c["bare"] for c in args.configs):
            results["summary"] = summary(args.configs, results)
            print_lines("summary", results["summary"])
    except (Exception, KeyboardInterrupt) as e:
        results["failure"] = f"{type(e).__name__}: {e}"
    finally:
        results["load_at_end"] = _load()
        if workers is not None:
            workers.stop()
        stack.stop()
    for k in ("tag", "failure", "load_at_start", "load_at_end", "egress_ips"):
        if k in results:
            print_lines(k, results[k])
    write_results(results, f"scaleout_{args.tag}")


if __name__ == "__main__":
    main()
