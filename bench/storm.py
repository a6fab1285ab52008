"""Connection storm benchmark: thousands of Socket.IO connections of ONE user, each
subscribed to ``pnl``, held by the real server; then a storm of more of them.

    .venv/bin/python -m bench.storm [--held 4000] [--storm 2000] [--workers 2] [--tag NAME]

Prints ``section.figure: value`` lines and writes them as JSON to
``bench/results/storm_<tag>.json`` (logs in ``bench/results/logs_storm_<tag>/``).

One account (simulator account with 10,000 USDT, a MARKET BUY 10 XRPUSDT placed at
the simulator, register, login, key) on the server started as ``bench.fanout`` starts
it (real limits, production mode, SQLite), ``MAX_WS_CONNECTIONS`` raised to fit and the
file-descriptor limit raised to its hard limit. Clients are ``bench.eio_client``
connections in ``--workers`` processes; each connects with the user's token and
emits ``subscribe {"types": ["pnl"]}`` with acknowledgement.

- ``hold``: ``--held`` connections opened with ``--concurrency`` connects in flight per
  worker. ``connect``: ok / failed, per-client connect + subscribe ack latency and
  ``per_s`` = ok / (last ack - first connect), ``server_cpu_pct`` / ``client_cpu_pct``
  the server's and the workers' CPU meanwhile (100 = one core), ``listen_drops`` the
  SYNs the kernel dropped meanwhile because an accept queue was full (machine-wide; the
  eventlet listener that ``socketio.run`` opens has a backlog of 50). ``ready``: how many got their ``pnl``
  snapshot (and when). ``rss_mb``: server VmRSS with one connection and with all held;
  ``rss_kb_per_connection`` = the difference / held (target <= 100 KB).
- ``delivery_held``: ``--moves`` price moves one second apart; per (connection, move)
  the latency from just before ``POST /_sim/price`` to the ``pnl`` push of that price and
  the missing fraction (the ``bench.fanout_stats.delivery`` figures).
- ``storm``: while those are held, ``--storm`` more connections of the same user all
  at once (every connect in flight together): the same ``connect`` figures; ``per_s``
  is the reconnect-storm rate (target >= 500 a second). ``delivery_after`` repeats
  the moves for held + storm connections.
- ``bare``: the same hold and storm against ``bench.bare_server`` (same clients,
  same counts): the floor of the library stack on this machine.
- ``load``: ``os.getloadavg()`` at start and end (2 cores shared with other work).

``--users N`` measures another storm instead: N users, each with its own key holding
a position (written straight into the database, ``bench.fanout_accounts.direct``),
all connecting at once to a server that has never seen them (what a deploy or a
network blip causes: every key's stream starts in the storm). ``users``: ``connect``
(as above), ``ready`` (how many had their ``pnl`` snapshot and ``s`` from the first
connect until the last one did), ``closed`` the connections the server closed,
``server_log`` its ERROR lines and tracebacks. ``--db postgresql`` and ``--queue
REDIS_URL`` (``MESSAGE_QUEUE_URL``) give the production configuration.

``--users N --procs P`` (P > 1, needs ``--queue``): the same storm on P server
processes behind nginx (``deploy.nginx``, the balancer of ``make deploy``; started as
``bench.scaleout`` starts them, after the accounts are written), client ``i``
connecting with ``?affinity=i`` (spread over the processes as real clients' addresses
would be). ``users.per_process``: each process's connections and running and followed
streams (``/admin/stats``), its CPU seconds from the first connect until the last
snapshot (``cpu_s``) and its log's errors. ``server_cpu_s`` is the sum over the
processes and ``cpu_ms_per_user`` = ``server_cpu_s`` / N (P = 1 too; when not every
user got a snapshot before ``--ready-timeout-s``, ``cpu_ms_per_ready_user`` divides by
those that did): the storm's server CPU per user, the figure that decides how many users a core admits at once
(the wall time to all-ready, ``ready.s``, moves with whatever else the 2 cores run).
``simulator_cpu_s``, ``nginx_cpu_s`` and ``client_cpu_s``: the other processes' CPU over
the same span; ``machine_busy_s`` / ``machine_idle_s``: the whole machine's (/proc/stat,
every core): idle near 0 means the storm waited for cores, whoever used them;
``named_cpu_s`` the machine's ``postgres`` and ``redis-server`` processes' CPU and
``bench_cpu_s`` this process's own.
``--mark FILE``: the file exists from the first connect until the last snapshot (an
external sampling profiler of the server can limit itself to the storm with it).
``--profile PREFIX``: each server samples its CPU time during the storm
(``bench/cpu_sampler``) into ``PREFIX.<pid>.txt``; ``python -m bench.cpu_sampler
PREFIX.*.txt`` sums them up.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench.common import RESULTS_DIR, Stack, create_account
from bench.eio_workers import Workers
from bench.fanout import P0, QTY, SYMBOL, sim_market_order, start_bare
from bench.fanout_run import BASE, STEP, Run
from bench.fanout_stats import delivery
from bench.measure import cpu_s, prepare_long_run, print_lines, rss_mb, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n")[0])
    p.add_argument("--held", type=int, default=4000, help="connections held")
    p.add_argument("--storm", type=int, default=2000, help="connections of the storm on top")
    p.add_argument("--concurrency", type=int, default=100, help="connects in flight per worker (hold)")
    p.add_argument("--moves", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-bare", action="store_true", help="skip the bare-server reference")
    p.add_argument("--users", type=int, default=0,
                   help="N > 0: a storm of N users with a key each instead (see above)")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--queue", metavar="REDIS_URL", default="", help="MESSAGE_QUEUE_URL")
    p.add_argument("--accounts-per-ip", type=int, default=30, help="--users: per egress address")
    p.add_argument("--ready-timeout-s", type=float, default=180.0)
    p.add_argument("--procs", type=int, default=1,
                   help="--users: server processes (P > 1: behind nginx, needs --queue)")
    p.add_argument("--mark", metavar="FILE", default="",
                   help="--users: a file that exists while the storm runs (for a profiler)")
    p.add_argument("--profile", metavar="PREFIX", default="",
                   help="--users: CPU-time samples of each server during the storm (bench/cpu_sampler)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting (repeatable), e.g. DB_POOL_SIZE=5")
    p.add_argument("--tag", default="run")
    args = p.parse_args(argv)
    if args.procs < 1 or (args.procs > 1 and not (args.users and args.queue)):
        p.error("--procs P: P >= 1; P > 1 needs --users and --queue (several processes share Redis)")
    return args


def machine_cpu_s() -> tuple[float, float] | None:
    """The whole machine's CPU seconds so far (/proc/stat ``cpu`` line, every core):
    ``(busy, idle)``, idle including I/O wait; None when unreadable. Between two calls
    it tells whether the storm's wall time waited for a core (idle near 0) or for
    something else (idle left over)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle   # user nice system idle iowait irq softirq steal
    return busy / tick, idle / tick


def named_cpu_s(names: tuple[str, ...] = ("postgres", "redis-server")) -> dict[str, float]:
    """CPU seconds so far of every process whose command name is one of ``names``
    (``/proc/<pid>/stat``), summed per name: the machine's PostgreSQL backends and Redis,
    shared with whatever else uses them (a process that ends between two calls drops
    out of the difference)."""
    out = dict.fromkeys(names, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
        except OSError:
            continue
        name = head.split("(", 1)[-1]
        if name in out:
            fields = rest.split()
            out[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def listen_drops() -> int | None:
    """The machine's ``TcpExt ListenDrops`` (/proc/net/netstat): SYNs dropped because a
    listening socket's accept queue was full (each costs the client a SYN retransmit,
    1 s, then 3 s, ...). Machine-wide: other work on the machine counts too."""
    try:
        lines = [ln.split() for ln in open("/proc/net/netstat") if ln.startswith("TcpExt:")]
        return int(dict(zip(lines[0], lines[1]))["ListenDrops"])
    except (OSError, IndexError, KeyError, ValueError):
        return None


class Storm:
    """One target server (product or bare) and the clients connected to it."""

    def __init__(self, workers: Workers, url: str, token: str, pid: int, sim, cid0: int) -> None:  # type: ignore[no-untyped-def]
        self.workers, self.url, self.token, self.pid, self.sim = workers, url, token, pid, sim
        self.next_cid = cid0
        self.bare = cid0 > 0
        self.cids: list[int] = []
        self.k = 0

    def connect(self, n: int, concurrency: int) -> dict:
        items = [{"cid": self.next_cid + i, "auth": {"token": self.token},
                  "subs": [["subscribe", {"types": ["pnl"]}]]} for i in range(n)]
        self.next_cid += n
        cpu0, t0, drops0 = self._cpu(), time.time(), listen_drops()
        replies = self.workers.by_client("connect", items, url=self.url, timeout=180.0,
                                         concurrency=concurrency)
        cpu1, span, drops1 = self._cpu(), max(1e-3, time.time() - t0), listen_drops()
        self.cids += [it["cid"] for it in items]
        return {**Run._connect_summary(replies, n),
                "server_cpu_pct": round((cpu1[0] - cpu0[0]) * 100 / span, 1),
                "client_cpu_pct": round((cpu1[1] - cpu0[1]) * 100 / span, 1),
                "listen_drops": None if drops0 is None or drops1 is None else drops1 - drops0}

    def _cpu(self) -> tuple[float, float]:
        return cpu_s(self.pid) or 0.0, sum(cpu_s(p) or 0.0 for p in self.workers.pids)

    def wait_ready(self, n: int, timeout: float = 120.0) -> dict | None:
        """Until n clients got their ``pnl`` snapshot (None for the bare server: it sends none)."""
        if self.bare:
            return None
        t0 = time.time()
        while True:
            got = self.workers.all({"op": "ready", "below": self.next_cid})
            ready = sum(r["ready"] for r in got)
            if ready >= n or time.time() - t0 > timeout:
                return {"ready": ready, "of": n, "s": round(time.time() - t0, 1)}
            time.sleep(0.5)

    def moves(self, count: int, bare_url: str | None = None) -> dict:
        """``count`` price moves (product) or bare rounds, one a second; delivery figures."""
        import requests
        self.workers.all({"op": "reset"})
        t_start = time.time()
        events: dict[int, float] = {}
        if bare_url is None:
            for j in range(count):
                time.sleep(max(0.0, t_start + j - time.time()))
                k, self.k = self.k, self.k + 1
                events[k] = time.time()
                self.sim.set_price(SYMBOL, BASE + STEP * k)
            time.sleep(3.0)
        else:
            done = requests.get(bare_url + "/stats", timeout=10).json()["rounds"]
            requests.post(bare_url + "/rounds", json={"rate": 1, "rounds": count, "k0": done},
                          timeout=10).raise_for_status()
            time.sleep(count + 3.0)
        got = self.workers.all({"op": "collect", "since": t_start - 1})
        records = [r for g in got for r in g["records"]]
        if bare_url is not None:
            events = {r[1]: r[3] / 1000 for r in records if r[3] is not None}
        out = delivery(records, set(self.cids), events)
        out["still_connected"] = sum(g["connected"] for g in got)
        out["client_handler_errors"] = sum(g["handler_errors"] for g in got)
        return out

    def drop_all(self) -> None:
        self.workers.cids("disconnect", self.cids)
        self.cids = []


def measure(target: Storm, args: argparse.Namespace, bare_url: str | None) -> dict:
    out: dict = {"hold": {}}
    hold = out["hold"]
    hold["first"] = target.connect(1, 1)
    target.wait_ready(1, 60.0)
    time.sleep(1.0)
    rss0 = rss_mb(target.pid)
    hold["connect"] = target.connect(args.held - 1, args.concurrency)
    hold["ready"] = target.wait_ready(args.held)
    time.sleep(2.0)
    rss1 = rss_mb(target.pid)
    hold["rss_mb"] = {"one_connection": rss0, "held": rss1}
    hold["rss_kb_per_connection"] = round((rss1 - rss0) * 1024 / max(1, args.held - 1), 1) \
        if rss0 and rss1 else None
    out["delivery_held"] = target.moves(args.moves, bare_url)
    storm_conc = max(1, args.storm // args.workers)  # every connect in flight at once
    out["storm"] = {"connect": target.connect(args.storm, storm_conc),
                    "ready": target.wait_ready(args.held + args.storm),
                    "rss_mb": rss_mb(target.pid)}
    out["delivery_after"] = target.moves(args.moves, bare_url)
    target.drop_all()
    return out


def users_storm(args: argparse.Namespace, log_dir) -> dict:  # type: ignore[no-untyped-def]
    """``--users N [--procs P]``: N users with a key each connect at once (see the module doc)."""
    import math
    from pathlib import Path

    from bench import fanout_accounts
    from bench.fanout import log_errors

    n = args.users
    ips = max(1, math.ceil(n / args.accounts_per_ip))
    secrets = fanout_accounts.new_env()
    env = {"EGRESS_IPS": ",".join(f"127.0.0.{i}" for i in range(1, ips + 1)),
           "MAX_WS_CONNECTIONS": str(max(10_000, n + 1000)), **secrets}
    if args.queue:
        env.update(MESSAGE_QUEUE_URL=args.queue,
                   MESSAGE_QUEUE_CHANNEL=f"bench-{os.getpid()}-{int(time.time())}")
    if args.profile:
        args.mark = args.mark or f"{args.profile}.on"
        env.update(PYTHONPATH=str(Path(__file__).with_name("cpu_sampler")),
                   PUSHSRV_CPU_SAMPLES=args.profile, PUSHSRV_CPU_SAMPLES_MARK=args.mark)
    env.update(dict(item.split("=", 1) for item in args.env))
    out: dict = {"users": n, "procs": args.procs, "db": args.db, "queue": bool(args.queue),
                 "egress_ips": ips, "settings": dict(item.split("=", 1) for item in args.env)}
    stack = Stack(args.db, log_dir, extra_env=env)
    workers = cluster = None
    mark = Path(args.mark) if args.mark else None
    try:
        stack.sim.set_price(SYMBOL, P0)
        t0 = time.time()
        accounts = fanout_accounts.direct(
            stack.db_url, stack.sim, n, secrets, str(int(time.time()) % 100000),
            lambda a: sim_market_order(stack.sim.url, a, SYMBOL, "BUY", QTY))
        out["setup_s"] = round(time.time() - t0, 1)
        if args.procs > 1:
            from bench.scaleout import Cluster
            stack.server.stop()  # the accounts are in the database: P fresh servers instead
            cluster = Cluster(stack, env, log_dir, args.procs, False, n + 1000)
            servers, url = cluster.servers, cluster.url
        else:
            servers, url = [stack.server], stack.server.url
        workers = Workers(args.workers, log_dir / "workers.log")
        workers.all({"op": "config", "symbol": SYMBOL, "base": str(BASE), "step": str(STEP)})
        items = [{"cid": i, "auth": {"token": a.token}, "subs": [["subscribe", {"types": ["pnl"]}]],
                  **({"url": f"{url}/?affinity={i}"} if cluster is not None else {})}
                 for i, a in enumerate(accounts)]
        client_cpu0 = sum(cpu_s(p) or 0.0 for p in workers.pids)
        nginx_pids = cluster.nginx.worker_pids() if cluster is not None and cluster.nginx is not None else []
        sim_pid = stack.sim.proc.pid if stack.sim is not None else None
        others0 = (cpu_s(sim_pid) or 0.0, sum(cpu_s(p) or 0.0 for p in nginx_pids), machine_cpu_s())
        named0, self0 = named_cpu_s(), sum(os.times()[:2])
        if mark is not None:
            mark.touch()
        cpu0, began = [cpu_s(s.proc.pid) or 0.0 for s in servers], time.time()
        replies = workers.by_client("connect", items, url=url, timeout=180.0,
                                    concurrency=max(1, math.ceil(n / args.workers)))
        out["connect"] = Run._connect_summary(replies, n)
        deadline = max(began + args.ready_timeout_s, time.time() + 10)
        while True:
            ready = sum(r["ready"] for r in workers.all({"op": "ready", "below": n}))
            if ready >= n or time.time() > deadline:
                break
            time.sleep(0.25)
        out["ready"] = {"ready": ready, "of": n, "s": round(time.time() - began, 1)}
        cpu = [(cpu_s(s.proc.pid) or 0.0) - c0 for s, c0 in zip(servers, cpu0, strict=True)]
        if mark is not None:
            mark.unlink(missing_ok=True)
        out["server_cpu_s"] = round(sum(cpu), 1)
        out["cpu_ms_per_user"] = round(sum(cpu) * 1000 / n, 2)
        out["cpu_ms_per_ready_user"] = round(sum(cpu) * 1000 / ready, 2) if ready else None
        out["client_cpu_s"] = round(sum(cpu_s(p) or 0.0 for p in workers.pids) - client_cpu0, 1)
        machine1 = machine_cpu_s()
        out["simulator_cpu_s"] = round((cpu_s(sim_pid) or 0.0) - others0[0], 1)
        out["nginx_cpu_s"] = round(sum(cpu_s(p) or 0.0 for p in nginx_pids) - others0[1], 1)
        out["bench_cpu_s"] = round(sum(os.times()[:2]) - self0, 1)
        out["named_cpu_s"] = {k: round(v - named0[k], 1) for k, v in named_cpu_s().items()}
        if machine1 is not None and others0[2] is not None:
            out["machine_busy_s"] = round(machine1[0] - others0[2][0], 1)
            out["machine_idle_s"] = round(machine1[1] - others0[2][1], 1)
        time.sleep(2.0)
        got = workers.all({"op": "collect", "since": time.time()})
        out["still_connected"] = sum(g["connected"] for g in got)
        closed: dict = {}
        for g in got:
            for k, v in g["closed"].items():
                closed[k] = closed.get(k, 0) + v
        out["closed"] = closed
        logs = [log_errors(s.log()) for s in servers]
        out["server_log"] = {"errors": sum(g["errors"] for g in logs),
                             "tracebacks": sum(g["tracebacks"] for g in logs),
                             "first": next((g["first"] for g in logs if g["first"]), None)}
        out["per_process"] = {s.url.removeprefix("http://"): {
            **_process_stats(s), "cpu_s": round(c, 1), "log_errors": g["errors"]}
            for s, c, g in zip(servers, cpu, logs, strict=True)}
        out["rss_mb"] = round(sum(rss_mb(s.proc.pid) or 0.0 for s in servers), 1)
        if cluster is not None and cluster.nginx is not None:
            out["nginx_rss_mb"] = round(sum(rss_mb(p) or 0.0 for p in cluster.nginx.worker_pids()), 1)
    finally:
        if mark is not None:
            mark.unlink(missing_ok=True)
        if workers is not None:
            workers.stop()
        if cluster is not None:
            cluster.stop()
        stack.stop()
    return out


def _process_stats(server) -> dict:  # type: ignore[no-untyped-def]
    """One server's ``/admin/stats`` figures of the storm: connections, streams running
    here and followed (run by another process); {} when it does not answer."""
    import requests
    try:
        st = requests.get(server.url + "/admin/stats", headers={"X-Admin-Token": server.admin_token},
                          timeout=30).json()
    except (requests.RequestException, ValueError):
        return {}
    streams = st.get("streams") or {}
    return {"connections": st.get("connections"), "streams_running": streams.get("running"),
            "streams_followed": streams.get("followed")}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hard = prepare_long_run()  # SIGTERM runs the finally below; file limit raised
    if args.users:
        log_dir = RESULTS_DIR / f"logs_storm_{args.tag}"
        results: dict = {"tag": args.tag, "nofile": hard,
                         "load": {"start": [round(x, 2) for x in os.getloadavg()]}}
        try:
            results["users"] = users_storm(args, log_dir)
            print_lines("users", results["users"])
        except (Exception, KeyboardInterrupt) as e:
            results["failure"] = f"{type(e).__name__}: {e}"
        results["load"]["end"] = [round(x, 2) for x in os.getloadavg()]
        for k in ("load", "failure"):
            if k in results:
                print_lines(k, results[k])
        write_results(results, f"storm_{args.tag}")
        return
    log_dir = RESULTS_DIR / f"logs_storm_{args.tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    total = args.held + args.storm
    results: dict = {"tag": args.tag, "held": args.held, "storm": args.storm, "nofile": hard,
                     "load": {"start": [round(x, 2) for x in os.getloadavg()]}}
    stack = Stack(args.db, log_dir, extra_env={"MAX_WS_CONNECTIONS": str(max(10_000, total + 1000)),
                                               **({"MESSAGE_QUEUE_URL": args.queue} if args.queue else {})})
    bare_proc = workers = None
    try:
        bare_proc, bare_url = start_bare(log_dir)
        stack.sim.set_price(SYMBOL, P0)
        acct = create_account(stack.server.url, stack.sim, f"storm{int(time.time()) % 100000}",
                              lambda a: sim_market_order(stack.sim.url, a, SYMBOL, "BUY", QTY))
        pos = next(p for p in stack.sim.state(acct.api_key)["positions"] if p["symbol"] == SYMBOL)
        results["position"] = {"entry": pos["entry_price"], "size": pos["amount"]}
        workers = Workers(args.workers, log_dir / "workers.log")
        workers.all({"op": "config", "symbol": SYMBOL, "base": str(BASE), "step": str(STEP),
                     "entry": pos["entry_price"], "size": pos["amount"]})
        product = Storm(workers, stack.server.url, acct.token, stack.server.proc.pid, stack.sim, 0)
        results["project"] = measure(product, args, None)
        print_lines("project", results["project"])
        if not args.no_bare:
            bare = Storm(workers, bare_url, acct.token, bare_proc.pid, stack.sim, 10_000_000)
            results["bare"] = measure(bare, args, bare_url)
            print_lines("bare", results["bare"])
            p, b = results["project"], results["bare"]
            results["ratio"] = {
                "storm_per_s": _ratio(p["storm"]["connect"]["per_s"], b["storm"]["connect"]["per_s"]),
                "rss_kb_per_connection": _ratio(p["hold"]["rss_kb_per_connection"],
                                                b["hold"]["rss_kb_per_connection"])}
    except (Exception, KeyboardInterrupt) as e:  # reported with what was measured so far
        results["failure"] = f"{type(e).__name__}: {e}"
    finally:
        results["load"]["end"] = [round(x, 2) for x in os.getloadavg()]
        if workers is not None:
            workers.stop()
        if bare_proc is not None:
            bare_proc.terminate()
            bare_proc.wait(10)
        stack.stop()
    for k in ("ratio", "load", "failure"):
        if k in results:
            print_lines(k, results[k])
    write_results(results, f"storm_{args.tag}")


def _ratio(a, b):  # type: ignore[no-untyped-def]
    return None if a is None or not b else round(a / b, 2)


if __name__ == "__main__":
    main()
