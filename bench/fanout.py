"""Fan-out benchmark: N users' pushes on mark price moves, against baseline servers
doing the same job, in alternating windows of one run.

    .venv/bin/python -m bench.fanout [--plan 200x2,1000x2,2000x2,1000x10,1000x10hz2]
        [--reps 5] [--baselines bare,node] [--duration-s 20] [--workers 2]
        [--db sqlite|postgresql] [--queue redis://127.0.0.1:6379/0]
        [--events-clients 200] [--tag NAME]

``make bench`` runs it in the production configuration (``--db postgresql --queue
redis://127.0.0.1:6379/0``). Prints ``section.figure: value`` lines and writes them as
JSON to ``bench/results/fanout_<tag>.json`` (logs in ``bench/results/logs_fanout_<tag>/``).
Units are in the names (``_ms``, ``_mb``, ``_pct``: 100 = one core, ``per_s``).
Latency blocks are ``{n, p50_ms, p99_ms, max_ms}`` (nearest-rank percentiles).

Baselines (``--baselines``, comma-separated):

- ``bare``: ``bench.bare_server``, Flask-SocketIO on eventlet from the project's venv,
  encoding packets with the project's own orjson codec (``ws.packet.OrjsonCodec`` as
  python-socketio's packet ``json``, as ``app.py`` sets it up);
- ``bare_stdlib``: the same with python-socketio's stdlib JSON (the comparison this
  benchmark made before);
- ``node``: ``bench/node_bare/server.js`` on Node's socket.io 4.8 (the ceiling this
  stack is measured against). It needs ``node`` (18 or later) and the folder's
  node_modules, installed once with ``cd bench/node_bare && npm ci`` (``npm install``
  re-resolves within ``package.json``); without them it is skipped and
  ``node_skipped`` says why. ``make bench`` runs ``npm ci`` there when ``npm`` exists;
  ``make test`` never needs Node.

Each baseline answers the same clients (``bench.eio_client``), sends one ~500-byte
``pnl`` message per client per round at R rounds a second and stamps the round's
scheduled time, so every side is timed the same way: from the move (the round's
time) to the client's receive.

Repetitions (``--reps``, default 5): each configuration measures the project window
and one window per baseline, ``reps`` times, the order alternating: project first
(then the baselines), then the baselines first and the project last, and so on. A
baseline window runs with the project stack stopped: its server is started, its N
clients connected, then the product server and the simulator are suspended (SIGSTOP;
PostgreSQL and Redis are the machine's shared services and keep running), the rounds
run and drain, both are resumed (SIGCONT), the clients dropped and the baseline server
stopped; then the project is given time to ``settle`` (until its server uses under
20 % of a core over a second, at most 30 s: a resume fires its overdue timers,
refreshes and retries, and the pings it owes its clients, at once). During a project
window no baseline process exists. The product's clients stay connected throughout,
which bounds a suspension: eventlet times a socket read out after engine.io's ping
interval + ping timeout (45 s) and a client writes only when pinged (every 25 s), so
past 20 s suspended the server would drop its clients on resume. A suspension lasts at
most 18 s (``SUSPEND_MAX_S``: the baseline's drain is cut there) and ``--duration-s``
at most 14 (default 10); ``reps[i].<baseline>.suspended_s`` and ``settle`` are
recorded.
With ``--queue``, ``LEASE_TTL_S`` is set to 300 s so that the suspended server keeps
its stream leases (one process: nobody competes for them).
``<cfg>.summary.<side>.<figure>: median [min-max] (n=reps)`` gives, per side
(``project``, each baseline), the median and range over the repetitions of p50, p99,
max and ``p99_fresh`` (ms), ``missing_fraction``, ``server_cpu_ms_per_msg``,
``server_cpu_pct``, ``pnl_per_s`` and ``server_rss_mb``;
``<cfg>.summary.ratio_<baseline>.<figure>`` the median and range of the
per-repetition ratios project / baseline. Each repetition's full figures are in the
JSON (``<cfg>.reps``).

Setup (once per run): the simulator, the server (``python app.py``, production mode,
SQLite unless ``--db postgresql``) with its real exchange weight limits (2,400 per IP
a minute) and one loopback egress address (``EGRESS_IPS``) per ``--accounts-per-ip``
accounts, so that the Binance streams of 2,000 accounts start within a minute or two
as README advises. Each of max(N)
accounts = simulator account funded with 10,000 USDT + a MARKET BUY 10 XRPUSDT placed
at the simulator (signed ``POST /fapi/v1/order``) + register + login + key, so the
key's first snapshot already holds the position. Accounts are kept for the next run
(``--accounts-cache``, SQLite only, see ``bench.fanout_accounts``): that run starts its
server on a copy of the database with the same secrets and only remakes the simulator
side (``setup.from_cache``); ``--setup direct`` writes them straight into the database
(fast on PostgreSQL). Clients are ``bench.eio_client``
connections in ``--workers`` processes (``bench.eio_workers``), each product client
subscribed to ``balance, positions, pnl, orders`` (then, separately, ``fills``: the
ack tells whether the server knows the type).

Each plan entry ``<N>x<R>[hz<H>]`` is one configuration, measured in turn on the same
processes (clients are added or dropped to reach N). Figures of one window (in
``<cfg>.reps[i].<side>``):

- ``<cfg>.project``: N product clients, each holding XRPUSDT; for ``--duration-s``
  seconds the mark price is set R times a second (``POST /_sim/price``, every price
  new). The event time is ``time.time()`` just before that call. ``pnl.exact``: from
  the event to each client's first ``pnl`` push of exactly that price (its XRPUSDT
  unrealized PnL = size * (price - entry)); ``missing_fraction`` = (client, move)
  pairs that never got one by ``--grace-s`` after the last move. ``pnl.fresh``: to
  the first push of that move or a later one (the conflation promise);
  ``pnl.server_ms``: the envelope's ``sent_at`` minus the event. ``msgs_per_s`` all
  events received by the clients a second, ``pnl_per_s`` the ``pnl`` ones (``due_per_s``
  = N * R). ``server_cpu_pct`` over the moves, ``server_cpu_ms_per_pnl`` = server CPU
  from the first move until deliveries stopped / ``pnl`` pushes delivered then (the
  server's balance and positions pushes of the same ticks are part of that cost).
  ``server_rss_mb`` VmRSS after the window. ``bytes_per_msg`` mean size of each event.
  ``server_gc``: the server's garbage collector during the window (``/admin/stats``
  ``gc``): per generation the collections, their total ms, how many took 50 ms or more,
  and the longest since the server started.
  ``hz<H>``: the clients first re-subscribe with ``"max_hz": H``; ``max_hz_ack`` says
  how the server answered (the current server refuses the unknown field: the window
  is then skipped and reported as not supported).
- ``<cfg>.reps[i].<baseline>``: N clients of the same workers on that baseline, which
  runs the same number of rounds at R a second, one ~500-byte message per client per
  round; event = the round's scheduled start stamped in it. Same figures
  (``cpu_ms_per_pnl`` per message there); ``connect`` its clients' connects;
  ``project_server_idle_pct``: the product server's CPU meanwhile (0: suspended).
- ``<cfg>.reps[i].ratio_<baseline>``: project / baseline of p50, p99, max, pnl_per_s,
  server CPU per update, RSS. ``clients``: the workers' CPU (``cpu_pct`` summed, 100 =
  one core) and event-loop lag (p99/max ms, contained in every latency above);
  ``load``: ``os.getloadavg()`` before and after (2 cores shared with other work).
- ``<cfg>.reps[i].protect`` (``--protect``): a project window with every holder's
  XRPUSDT protected in server mode (``PUT /api/positions/protection``, ``"mode":
  "server"``): a stop-loss at 0.1 and a trailing stop (callback 1 %) activating at 100,
  both far from the price (~1.2), set just before the window and removed (``DELETE``)
  after it (each followed by ``settle``), so that the window measures what the rules
  add to the ticks; ``protect.rules`` says
  how many PUT / DELETE answered 200 and how long they took. The order alternates
  (project first, then protect first, ...); ``ratio_protect`` = protect / project,
  summarised as ``summary.ratio_protect``.
- ``events`` (configuration with N = ``--events-clients``, after its first project window):
  each client's account places a MARKET BUY 0.002 BTCUSDT through ``POST /api/orders``
  one after another (``--order-gap-ms`` apart); from just before that call to the
  client's first ``positions`` push holding BTCUSDT (``new_position``) and its first
  non-empty ``fills`` push (``fill``), waited for up to 20 s. ``fills_supported`` is
  false when the server refused the ``fills`` subscription (current server).
- ``connect``: per configuration, the clients added: ok / failed, connect + subscribe
  acks per client, and the rate (added / wall seconds).

Configurations run one after another on the same processes: a window that saturates
the server leaves a backlog the next one inherits (waited for at most ``--grace-s``). For a clean
figure of one configuration run it alone (``--plan 1000x10hz2``); the account cache
makes that cheap. ``make bench`` runs the default plan.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

from bench import fanout_accounts
from bench.common import RESULTS_DIR, Account, Stack, create_account, run_pool
from bench.eio_workers import Workers
from bench.fanout_run import Run
from bench.measure import prepare_long_run, print_lines, write_results

SYMBOL, QTY, P0 = "XRPUSDT", "10", Decimal("1.1")
PLAN_RE = re.compile(r"^(\d+)x(\d+(?:\.\d+)?)(?:hz(\d+(?:\.\d+)?))?$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n")[0])
    p.add_argument("--plan", default="200x2,1000x2,2000x2,1000x10,1000x10hz2",
                   help="comma-separated <clients>x<moves per s>[hz<max_hz>]")
    p.add_argument("--duration-s", type=float, default=10.0,
                   help="measuring window per configuration (at most 14: a baseline window "
                        "suspends the product server, see the module docstring)")
    p.add_argument("--grace-s", type=float, default=15.0, help="longest wait for late pushes")
    p.add_argument("--workers", type=int, default=2, help="client worker processes")
    p.add_argument("--reps", type=int, default=5,
                   help="repetitions per configuration, the order alternating (project first, "
                        "then the baselines first, ...)")
    p.add_argument("--baselines", default="bare,node",
                   help="comma-separated, of bare (orjson), bare_stdlib, node; node is skipped "
                        "when node or its node_modules are missing")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--queue", metavar="REDIS_URL", default="",
                   help="run the server with MESSAGE_QUEUE_URL (a fresh channel), e.g. "
                        "redis://127.0.0.1:6379/0: the production configuration")
    p.add_argument("--setup", choices=("api", "direct"), default="api",
                   help="make the accounts through the API (as a user would) or write "
                        "them straight into the database (bench.fanout_accounts.direct)")
    p.add_argument("--accounts-per-ip", type=int, default=30, help="accounts per egress address")
    p.add_argument("--events-clients", type=int, default=200, help="0 = no new-position/fill test")
    p.add_argument("--order-gap-ms", type=float, default=20.0)
    p.add_argument("--connect-concurrency", type=int, default=100, help="connects in flight per worker")
    p.add_argument("--setup-workers", type=int, default=16)
    p.add_argument("--ready-timeout-s", type=float, default=300.0)
    p.add_argument("--pad", type=int, default=120, help="bare message padding (about 500 bytes total)")
    p.add_argument("--protect", action="store_true",
                   help="each repetition also measures a project window with every holder "
                        "holding server-mode rules far from the price (side ``protect``, "
                        "ratio_protect = protect / project; the order alternates)")
    p.add_argument("--tag", default="run", help="names the result file")
    p.add_argument("--profile", metavar="DIR", help="py-spy the server in each window (collapsed stacks)")
    p.add_argument("--cpu-samples", metavar="PREFIX", default="",
                   help="the server samples its own CPU time (bench/cpu_sampler) during the "
                        "project and protect windows: PREFIX.<pid>.project.txt / .protect.txt "
                        "(python -m bench.cpu_sampler FILE)")
    p.add_argument("--accounts-cache", default=str(RESULTS_DIR / "fanout_accounts"),
                   help="reuse/save accounts here (bench.fanout_accounts); '' = always make new ones")
    args = p.parse_args(argv)
    args.baseline_kinds = [b.strip() for b in args.baselines.split(",") if b.strip()]
    for b in args.baseline_kinds:
        if b not in BASELINES:
            p.error(f"unknown baseline {b!r} (one of {', '.join(BASELINES)})")
    if args.duration_s > 14:
        p.error("--duration-s over 14 s: the product server would stay suspended past engine.io's "
                "socket read timeout during a baseline window and drop its clients")
    if args.reps < 1:
        p.error("--reps must be at least 1")
    args.configs = []
    for item in args.plan.split(","):
        m = PLAN_RE.match(item.strip())
        if not m:
            p.error(f"bad plan entry {item!r}")
        args.configs.append({"name": item.strip(), "n": int(m.group(1)), "rate": float(m.group(2)),
                             "max_hz": float(m.group(3)) if m.group(3) else None})
    return args


def sim_order(sim_url: str, acct: Account, params: dict[str, Any]) -> dict[str, Any]:
    """A signed Binance ``POST /fapi/v1/order`` of ``params`` straight to the simulator
    (HMAC-SHA256 of the query string, Binance USD-M docs "SIGNED endpoint security").
    Raises RuntimeError on refusal."""
    params = {**params, "timestamp": int(time.time() * 1000), "recvWindow": 10000}
    query = urlencode(params)
    sig = hmac.new(acct.api_secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    r = requests.post(f"{sim_url}/fapi/v1/order?{query}&signature={sig}",
                      headers={"X-MBX-APIKEY": acct.api_key}, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"sim order: HTTP {r.status_code}: {r.text[:200]}")
    return r.json()


def sim_market_order(sim_url: str, acct: Account, symbol: str, side: str, qty: str) -> dict[str, Any]:
    """A MARKET order straight to the simulator (``sim_order``). Raises on refusal."""
    return sim_order(sim_url, acct, {"symbol": symbol, "side": side, "type": "MARKET",
                                     "quantity": qty})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NODE_DIR = Path(__file__).resolve().parent / "node_bare"
BASELINES = ("bare", "bare_stdlib", "node")


def node_available() -> str | None:
    """None when the Node baseline can run (``node`` on PATH and
    ``bench/node_bare/node_modules/socket.io`` installed), else why not."""
    if shutil.which("node") is None:
        return "node not found on PATH"
    if not (NODE_DIR / "node_modules" / "socket.io").is_dir():
        return "bench/node_bare/node_modules missing: run `npm ci` in bench/node_bare"
    return None


def start_bare(log_dir: Path, kind: str = "bare") -> tuple[subprocess.Popen[bytes], str]:
    """Start a baseline server on a free port; ``(process, url)`` once it answers.
    ``kind``: ``bare`` (``bench.bare_server`` with the project's orjson codec),
    ``bare_stdlib`` (the same with python-socketio's stdlib JSON) or ``node``
    (``bench/node_bare/server.js``, socket.io 4.8). Raises RuntimeError if it does
    not answer within 10 s."""
    port = free_port()
    if kind == "node":
        cmd = ["node", str(NODE_DIR / "server.js"), "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "bench.bare_server", "--port", str(port),
               "--json", "stdlib" if kind == "bare_stdlib" else "orjson"]
    with (log_dir / f"{kind}.log").open("ab") as log:
        proc = subprocess.Popen(cmd, cwd=str(RESULTS_DIR.parents[1]), stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(url + "/stats", timeout=1).ok:
                return proc, url
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("bare server did not start")


def log_errors(log: str) -> dict[str, Any]:
    """``{"errors", "tracebacks", "first"}``: the server log's ERROR lines, its
    tracebacks and the first ERROR line (None: none)."""
    errors = [ln for ln in log.splitlines() if " ERROR " in ln]
    return {"errors": len(errors), "tracebacks": log.count("Traceback"),
            "first": errors[0][:300] if errors else None}


def remake_sim_accounts(stack: Stack, accounts: list[Account], workers: int) -> dict[str, Any]:
    """A cached run: the simulator accounts and their XRPUSDT positions made again."""
    stack.sim.set_price(SYMBOL, P0)

    def one(i: int) -> None:
        a = accounts[i]
        stack.sim.create_account(a.api_key, a.api_secret, balances={"USDT": "10000"})
        sim_market_order(stack.sim.url, a, SYMBOL, "BUY", QTY)
    t0 = time.time()
    _, errors = run_pool(one, len(accounts), workers)
    return {"accounts": len(accounts) - len(errors), "failed": len(errors), "from_cache": True,
            "wall_s": round(time.time() - t0, 1), "errors": errors[:3]}


def setup_accounts(stack: Stack, n: int, workers: int) -> tuple[list[Account], dict[str, Any]]:
    stack.sim.set_price(SYMBOL, P0)
    url, sim_url = stack.server.url, stack.sim.url
    tag = f"{int(time.time()) % 100000}_{{}}"
    before = lambda a: sim_market_order(sim_url, a, SYMBOL, "BUY", QTY)  # noqa: E731
    t0 = time.time()
    accounts, errors = run_pool(lambda i: create_account(url, stack.sim, tag.format(i), before),
                                n, workers)
    ok = [a for a in accounts if a]
    steps = {k: round(sorted(a.steps_s[k] for a in ok)[len(ok) // 2] * 1000, 1)
             for k in (ok[0].steps_s if ok else {})}
    return ok, {"accounts": len(ok), "failed": len(errors), "wall_s": round(time.time() - t0, 1),
                "steps_p50_ms": steps, "errors": errors[:3]}


def print_summary(prefix: str, summary: dict[str, dict[str, dict[str, Any]]]) -> None:
    """One line per side (or ratio) and figure: ``median [min-max] (n)``."""
    for side, figures in summary.items():
        for name, s in figures.items():
            if s["n"]:
                print(f"{prefix}.summary.{side}.{name}: {s['median']:g} [{s['min']:g}-{s['max']:g}] "
                      f"(n={s['n']})", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hard = prepare_long_run()  # SIGTERM runs the finally below; file limit raised
    log_dir = RESULTS_DIR / f"logs_fanout_{args.tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    n_max = max(c["n"] for c in args.configs)
    ips = max(1, math.ceil(n_max / args.accounts_per_ip))
    results: dict = {"tag": args.tag, "plan": args.plan, "duration_s": args.duration_s,
                     "db": args.db, "queue": bool(args.queue), "egress_ips": ips, "nofile": hard,
                     "load_at_start": [round(x, 2) for x in os.getloadavg()]}
    env = {"EGRESS_IPS": ",".join(f"127.0.0.{i}" for i in range(1, ips + 1)),
           "MAX_WS_CONNECTIONS": str(max(10_000, 2 * n_max + 1000))}
    if args.queue:
        # LEASE_TTL_S: the server is stopped (SIGSTOP) during each baseline window and
        # must not lose its stream leases meanwhile (one process: nobody competes)
        env.update(MESSAGE_QUEUE_URL=args.queue, LEASE_TTL_S="300",
                   MESSAGE_QUEUE_CHANNEL=f"bench-{os.getpid()}-{int(time.time())}")
    if args.cpu_samples:
        env.update(PYTHONPATH=str(Path(__file__).with_name("cpu_sampler")),
                   PUSHSRV_CPU_SAMPLES=args.cpu_samples,
                   PUSHSRV_CPU_SAMPLES_MARK=args.cpu_samples + ".mark")
    if "node" in args.baseline_kinds and (why := node_available()):
        args.baseline_kinds.remove("node")
        results["node_skipped"] = why
    results["baselines"] = list(args.baseline_kinds)
    results["reps"] = args.reps
    cache = (Path(args.accounts_cache) if args.accounts_cache and args.db == "sqlite"
             and args.setup == "api" else None)
    cached = fanout_accounts.load(cache, n_max) if cache else None
    secrets = cached[1] if cached else fanout_accounts.new_env()
    stack = Stack(args.db, log_dir, extra_env={**env, **secrets},
                  sqlite_template=fanout_accounts.paths(cache)[1] if cached else None)
    workers = None
    try:
        if cached:
            accounts = cached[0][:n_max]
            results["setup"] = remake_sim_accounts(stack, accounts, args.setup_workers)
        elif args.setup == "direct":
            t0 = time.time()
            stack.sim.set_price(SYMBOL, P0)
            accounts = fanout_accounts.direct(
                stack.db_url, stack.sim, n_max, secrets, str(int(time.time()) % 100000),
                lambda a: sim_market_order(stack.sim.url, a, SYMBOL, "BUY", QTY),
                args.setup_workers)
            results["setup"] = {"accounts": len(accounts), "direct": True,
                                "wall_s": round(time.time() - t0, 1)}
        else:
            accounts, results["setup"] = setup_accounts(stack, n_max, args.setup_workers)
            if cache and stack.sqlite_path is not None and len(accounts) == n_max:
                fanout_accounts.save(cache, accounts, secrets, stack.sqlite_path)
        print_lines("setup", results["setup"])
        workers = Workers(args.workers, log_dir / "workers.log")
        run = Run(args, stack, workers, accounts, results, lambda kind: start_bare(log_dir, kind))
        for cfg in args.configs:
            results[cfg["name"]] = out = run.configuration(cfg)
            print_lines(cfg["name"], {k: v for k, v in out.items() if k not in ("reps", "summary")})
            print_summary(cfg["name"], out["summary"])
    except (Exception, KeyboardInterrupt) as e:  # reported with what was measured so far
        results["failure"] = f"{type(e).__name__}: {e}"
    finally:
        results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        if stack.server is not None:
            results["server_log"] = log_errors(stack.server.log())
        if workers is not None:
            workers.stop()
        stack.stop()
    for k in ("tag", "node_skipped", "failure", "load_at_start", "load_at_end", "egress_ips", "server_log"):
        if k in results:
            print_lines(k, results[k])
    write_results(results, f"fanout_{args.tag}")


if __name__ == "__main__":
    main()
