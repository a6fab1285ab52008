"""Account stream benchmark: N Socket.IO clients, half on Binance keys and half on Bybit
keys, against the real server (``python app.py``) and the simulator, all on 127.0.0.1.

    .venv/bin/python -m bench.streams --clients 1000 [--window-s 30] [--outage private|all]

Prints ``section.figure: value`` lines (plus the storm time series) and writes the same
as JSON to ``bench/results/streams_<clients>.json``; logs in
``bench/results/logs_streams_<clients>/``. Units are in the names: ``_s`` seconds,
``_ms`` milliseconds, ``per_s`` per second, ``per_min`` per minute. Latency blocks are
``{n, p50_ms, p99_ms, max_ms}`` (nearest-rank), measured on the client side (receipt
time in this process minus the time just before the simulator control call).

Setup: each account = simulator account + register + login + ``POST /api/exchange/keys``
(binance or bybit) + a MARKET BUY 10 XRPUSDT (the open position) + a resting LIMIT BUY
0.1 ETHUSDT @ 1700 (market 3400: it only fills when told to). Every client subscribes to
the four types. The simulator's WebSocket URL handed to the server is a small gate
process (``bench.gate``) that forwards every exchange WebSocket to the
simulator and can refuse the private ones (HTTP 503 on the handshake, open ones reset):
that is the outage used for the polling fallback. The simulator is not told anything,
REST keeps working: this is what a venue's user data stream being down looks like to the
server. ``--outage all`` refuses the market streams too (then positions are polled).

``connect``: per client, Socket.IO connect plus the ``subscribe`` ack (the server starts
the account's stream then). ``initial_live``: from the end of the connects until every
stream is ``live`` (each first snapshot costs about 50 of Binance's 2400 weight a
minute, paced by the server's governor, so 500 Binance accounts behind one IP take
minutes); ``initial_live.first_data``: per client, from its connect to the first push
of every account type (its snapshot).

Figures, per phase ``live`` (streams up) and ``polling`` (private streams refused):

- ``<phase>.pnl.<venue>``: every ``--move-every-s`` XRPUSDT is set to a new price; per
  (client, move) the time to the first ``pnl`` push whose XRPUSDT unrealized PnL equals
  size * (price - entry); ``missing`` = pairs never pushed within 5 s of the window end.
- ``<phase>.fill.<venue>``: ``--fills-per-s`` partial fills of 0.001 ETH (one account
  after another) via ``POST /_sim/orders/{id}/fill``; time to the first ``orders`` push
  showing the new ``filled_quantity``; ``missing`` = not pushed within 15 s.
- ``<phase>.msgs``: events delivered to all clients in the window, ``per_s``, by type.
- ``<phase>.rest_per_key_per_min.<venue>``: simulator REST calls made by the server for
  each key during the window (``/_sim/state`` ``requests`` diffed), mean and max over
  keys, ``top`` endpoints (calls per key per minute).
- ``<phase>.cpu_pct``: CPU time / window time per process (100 = one core).
- ``<phase>.by_state``: ``/admin/stats`` ``streams.by_state`` at the end of the window;
  ``bench_loop_lag_ms``: this process's asyncio loop lateness (inside every latency above).
- ``switch.to_polling_s`` / ``switch.back_to_live_s``: from the gate change until no
  stream / every running stream is ``live`` (``/admin/stats``, sampled every 0.5 s; a
  user whose socket was dropped has no stream any more). ``disconnected``: clients whose
  Socket.IO connection ended (``at_s`` after the outage began), and during the storm.

Reconnect storm (``storm``): ``POST /_sim/faults {"kind": "drop_ws"}`` without an api key
closes every private and market stream at once. ``all_live_s``: from the fault until
every running stream is ``live`` again (``/admin/stats``); ``clients_live_s``: per key, from the
fault to its last ``stream_status`` ``live`` seen by its client (``not_recovered`` = no
``live`` after its drop). ``rest.<venue>``: simulator request counts sampled every ~0.5 s
(``state_call_ms`` says how long one ``/_sim/state`` took, i.e. the real sample spacing):
``peak_per_s`` the highest rate between two samples, ``calls_first_60s`` the calls in the
60 s after the fault, ``governor`` the diff of ``/admin/stats`` ``rate_limits`` over the
storm (``limited_by_exchange``: 429s the simulator answered).

Request weight: the simulator counts Binance weight per IP with each endpoint's real
weight and, once every stream is live after setup, enforces ``--ip-weight-limit`` (2400,
Binance USD-M's; 0 = off) with 429 ``-1003``. ``<phase>.binance_ip_weight_per_min`` and
``storm.binance_ip_weight_per_min``: the simulator's per-minute weight of the server's
busiest IP in the minutes the phase touched (max), beside ``polling_refresh_s``, the server's
interval between two REST refreshes of one polling account (``/admin/stats``). ``series``: per
~1 s, REST calls/s by venue and ``streams.by_state``. The database is a SQLite file.

``--egress-ips N``: the server gets ``EGRESS_IPS=127.0.0.1,...,127.0.0.N`` (loopback
addresses, so no setup is needed on Linux): each key's REST and private stream leave
from one of them and each address has its own weight budget (the simulator counts and
enforces the limit per address). Results then go to ``streams_<clients>_ips<N>.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import tempfile
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

from requests.adapters import HTTPAdapter

from bench.common import (
    RESULTS_DIR,
    VENUES,
    Account,
    Listener,
    _expect,
    admin_stats,
    all_live,
    calls_at,
    first_events,
    loop_lag,
    per_venue,
    rest,
    row,
    run_pool,
    sampler,
    th,
    wait_states,
)
from bench.gate import Gate
from bench.measure import cpu_s, lat_s, log_problems, pct, print_lines, write_results
from tests.support.server import start_server
from tests.support.simulator import start_simulator

PRICE0, PRICE_STEP = Decimal("1.2"), Decimal("0.001")
ETH_PRICE, ETH_QTY, FILL_QTY = "1700", "0.1", Decimal("0.001")
# ---- setup --------------------------------------------------------------------------------
class Client:
    """One account's Socket.IO listener plus its venue and resting ETHUSDT order."""

    def __init__(self, account: Account, exchange: str, order_id: str, coid: str) -> None:
        self.lst, self.exchange, self.order_id, self.coid = Listener(account), exchange, order_id, coid
        self.filled, self.gone_at = Decimal(0), None  # gone_at: time.time() of a disconnect
        self.held: tuple[Decimal, Decimal] | None = None  # XRPUSDT (size, entry)
        self.lst.sio.on("disconnect", lambda *_: setattr(self, "gone_at", self.gone_at or time.time()))


def make_client(url: str, sim, tag: str, exchange: str) -> Client:  # type: ignore[no-untyped-def]
    """Account, key of ``exchange``, the XRPUSDT position and the resting ETHUSDT order."""
    hexs = uuid.uuid4().hex
    a = Account("s" + tag, "pw-" + hexs, "sk" + hexs, "ss" + hexs)
    sim.create_account(a.api_key, a.api_secret, balances={"USDT": "10000"})
    creds = {"username": a.username, "password": a.password}
    a.user_id = _expect(rest("POST", url + "/api/auth/register", body=creds), 201, "register")["id"]
    a.token = _expect(rest("POST", url + "/api/auth/login", body=creds), 200, "login")["access_token"]
    a.key_id = _expect(rest("POST", url + "/api/exchange/keys", a.token, {
        "exchange": exchange, "api_key": a.api_key, "api_secret": a.api_secret,
        "testnet": False, "label": "bench"}), 201, "add key")["id"]
    _expect(rest("POST", url + "/api/orders", a.token, {"key_id": a.key_id, "symbol": "XRPUSDT",
            "side": "BUY", "type": "MARKET", "quantity": "10"}), 201, "MARKET order")
    trade = _expect(rest("POST", url + "/api/orders", a.token, {
        "key_id": a.key_id, "symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT",
        "quantity": ETH_QTY, "price": ETH_PRICE, "time_in_force": "GTC"}), 201, "LIMIT order")["trade"]
    return Client(a, exchange, trade.get("entry_order_id") or "", trade["client_order_id"])


# ---- one measuring window -----------------------------------------------------------------


def rest_rates(clients: list[Client], before: dict, after: dict, seconds: float) -> dict:
    out = {}
    for venue in VENUES:
        keys = [c.lst.account.api_key for c in clients if c.exchange == venue]
        per_key, eps = [], Counter()
        for k in keys:
            diff = {ep: n - before.get(k, {}).get(ep, 0) for ep, n in after.get(k, {}).items()}
            per_key.append(sum(diff.values()) * 60 / seconds)
            eps.update(diff)
        out[venue] = {"keys": len(keys), "mean": round(sum(per_key) / max(1, len(keys)), 1),
                      "max": round(max(per_key, default=0), 1),
                      "top": {ep: round(n * 60 / seconds / max(1, len(keys)), 1)
                              for ep, n in eps.most_common(4) if n}}
    return out


async def ip_weight(ctx: dict, t_start: float, t_end: float) -> int:
    """The highest per-minute Binance weight the simulator counted for an IP in the
    minutes overlapping [t_start, t_end]."""
    hist = (await th(ctx, ctx["sim"].state))["weight_per_minute"]
    return max((w for k, h in hist.items() if k.startswith("binance ")
                for m, w in h.items() if int(m) + 60 > t_start and int(m) < t_end), default=0)


async def window(ctx: dict, clients: list[Client], args: argparse.Namespace) -> dict:
    sim, lags = ctx["sim"], ctx["lags"]
    for c in clients:
        r = row((c.lst.last("positions") or {}).get("data"))
        c.held = (Decimal(r["size"]), Decimal(r["entry_price"])) if r else None
    before = (await th(ctx, sim.state))["requests"]
    pids = {"server": ctx["server"].proc.pid, "sim": sim.proc.pid, "bench": os.getpid()}
    cpu0 = {n: cpu_s(p) for n, p in pids.items()}
    t_start, moves, fills = time.time(), [], []  # moves (t, price), fills (client, t, filled)

    async def mover() -> None:
        for k in range(int(args.window_s // args.move_every_s)):
            await asyncio.sleep(max(0.0, t_start + k * args.move_every_s - time.time()))
            price, t = PRICE0 + PRICE_STEP * next(ctx["step"]), time.time()
            await th(ctx, sim.set_price, "XRPUSDT", price)
            moves.append((t, price))

    async def filler() -> None:
        order = itertools.cycle(clients)  # the venues alternate
        for k in range(int(args.window_s * args.fills_per_s)):
            await asyncio.sleep(max(0.0, t_start + k / args.fills_per_s - time.time()))
            c, t = next(order), time.time()
            try:
                await th(ctx, sim.fill, c.order_id, quantity=FILL_QTY)
            except Exception as e:  # counted below
                ctx["errors"][f"fill: {type(e).__name__}: {str(e)[:100]}"] += 1
                continue
            c.filled += FILL_QTY
            fills.append((c, t, c.filled))
    await asyncio.gather(mover(), filler())
    await asyncio.sleep(max(0.0, t_start + args.window_s - time.time()))
    seconds = (t_end := time.time()) - t_start
    cpu = {n: round((cpu_s(p) - cpu0[n]) * 100 / seconds, 1) for n, p in pids.items() if cpu0[n] is not None}
    after = (await th(ctx, sim.state))["requests"]
    stats = await admin_stats(ctx)
    by_state = stats["streams"]["by_state"]
    weight = {"binance_ip_weight_per_min": await ip_weight(ctx, t_start, t_end),
              "polling_refresh_s": stats["streams"].get("polling_refresh_s"),
              "rate_limits": stats["rate_limits"]}

    def pnl_is(c: Client, price: Decimal):  # type: ignore[no-untyped-def]
        want = c.held[0] * (price - c.held[1])
        return lambda d: (r := row(d["data"]["positions"])) is not None and \
            abs(Decimal(r["unrealized_pnl"]) - want) < Decimal("0.0005")
    held = [c for c in clients if c.held]
    pairs = [(c, t, p) for t, p in moves for c in held]
    pnl = await first_events([(c.lst, t, "pnl", pnl_is(c, p)) for c, t, p in pairs], 5)

    def filled(coid: str, want: Decimal):  # type: ignore[no-untyped-def]
        return lambda d: any(o["client_order_id"] == coid and Decimal(o["filled_quantity"]) >= want
                             for o in d["data"])
    orders = await first_events([(c.lst, t, "orders", filled(c.coid, q)) for c, t, q in fills], 15)
    names = Counter(n for c in clients for t, n, _ in c.lst.events if t_start <= t < t_end)
    in_win = [lag * 1000 for t, lag in lags if t_start <= t < t_end]
    return {"seconds": round(seconds, 2), "moves": len(moves), "fills": len(fills),
            "pnl": per_venue(pairs, pnl), "fill": per_venue(fills, orders),
            "msgs": {"total": sum(names.values()), "per_s": round(sum(names.values()) / seconds, 1),
                     "by_type": dict(names)},
            "rest_per_key_per_min": rest_rates(clients, before, after, seconds),
            **weight, "cpu_pct": cpu, "by_state": by_state, "bench_loop_lag_ms": {
                "p99": round(pct(in_win, 0.99) or 0, 1), "max": round(max(in_win, default=0), 1)}}


# ---- the reconnect storm ------------------------------------------------------------------


def venue_governor(rate_limits: dict, venue: str) -> dict:
    """The venue's governors of ``/admin/stats`` ``rate_limits`` (one per egress
    address, ``binance@127.0.0.2``) as one: counters summed, ``used_weight`` and
    ``blocked_for_ms`` of the busiest address, ``weight_limit`` per address."""
    govs = [g for k, g in rate_limits.items() if k == venue or k.startswith(venue + "@")]
    out = {k: sum(g.get(k, 0) for g in govs) for k in ("requests", "refused_locally", "limited_by_exchange")}
    out |= {k: max((g.get(k, 0) for g in govs), default=0) for k in ("used_weight", "blocked_for_ms")}
    out["weight_limit"] = govs[0].get("weight_limit") if govs else None
    out["addresses"] = len(govs)
    return out


async def storm(ctx: dict, clients: list[Client], args: argparse.Namespace) -> dict:
    sim, n = ctx["sim"], len(clients)
    venue_of = {c.lst.account.api_key: c.exchange for c in clients}

    async def sim_calls() -> dict:
        out = dict.fromkeys(VENUES, 0)
        for key, eps in (await th(ctx, sim.state))["requests"].items():
            if key in venue_of:
                out[venue_of[key]] += sum(eps.values())
        return out
    sims, admins, stop = [], [], asyncio.Event()  # (time, calls by venue | /admin/stats, call s)
    tasks = [asyncio.create_task(sampler(sims, sim_calls, stop)),
             asyncio.create_task(sampler(admins, lambda: admin_stats(ctx), stop))]
    for _ in range(120):  # a baseline of both before the fault
        if len(sims) >= 2 and admins:
            break
        await asyncio.sleep(0.25)
    t_fault = time.time()
    affected = (await th(ctx, sim.add_fault, kind="drop_ws")).get("affected")
    all_live_s, seen_drop = None, False
    while time.time() - t_fault < args.storm_timeout_s:
        await asyncio.sleep(0.5)
        states = [s["streams"] for t, s, _ in admins if t > t_fault]
        seen_drop = seen_drop or any(not all_live(st) for st in states)
        if seen_drop and all_live(states[-1]):
            all_live_s = round(admins[-1][0] - t_fault, 2)
            break
    await asyncio.sleep(max(3.0, t_fault + 61 - time.time()))  # a whole minute of REST counts
    stop.set()
    await asyncio.gather(*tasks)
    per_client = []
    for c in clients:  # the last "live" after the client's first non-live status
        st = [(t, d["state"]) for t, name, d in c.lst.events if name == "stream_status" and t >= t_fault]
        drop = next((t for t, s in st if s != "live"), None)
        if drop is not None and st[-1][1] == "live":
            per_client.append(st[-1][0] - t_fault)
    g0 = max((a for a in admins if a[0] <= t_fault), key=lambda a: a[0])[1]["rate_limits"]
    rest_out = {}
    for v in VENUES:
        pairs = [(a, b) for a, b in zip(sims, sims[1:]) if b[0] > t_fault]
        gov = [venue_governor(a[1]["rate_limits"], v) for a in admins]
        rest_out[v] = {
            "peak_per_s": round(max(((b[1][v] - a[1][v]) / (b[0] - a[0]) for a, b in pairs), default=0), 1),
            "calls_first_60s": round(calls_at(sims, t_fault + 60, v) - calls_at(sims, t_fault, v)),
            "covered_s": round(sims[-1][0] - t_fault, 1), "weight_limit_per_min": gov[-1].get("weight_limit"),
            "governor": {k: gov[-1].get(k, 0) - venue_governor(g0, v).get(k, 0)
                         for k in ("requests", "refused_locally", "limited_by_exchange")}
            | {f"max_{k}": max(g.get(k, 0) for g in gov) for k in ("used_weight", "blocked_for_ms")}}
    series, last = [], None
    for s in sims:
        if s[0] >= t_fault - 1 and (last is None or s[0] - last[0] >= 0.9):
            st = min(admins, key=lambda a: abs(a[0] - s[0]))[1]["streams"]["by_state"]
            rates = " ".join(f"{v}_per_s={(s[1][v] - last[1][v]) / (s[0] - last[0]):.0f}"
                             for v in VENUES) if last else ""
            series.append(f"t={s[0] - t_fault:+6.1f}s {rates} " + " ".join(f"{k}={x}" for k, x in sorted(st.items())))
            last = s
    return {"dropped_sockets": affected, "all_live_s": all_live_s, "seen_drop": seen_drop,
            "binance_ip_weight_per_min": await ip_weight(ctx, t_fault, time.time()),
            "clients_live_s": lat_s(per_client), "not_recovered": n - len(per_client),
            "end_by_state": admins[-1][1]["streams"]["by_state"], "rest": rest_out,
            "state_call_ms": {"p50": round((pct([s[2] for s in sims], 0.5) or 0) * 1000),
                              "max": round(max(s[2] for s in sims) * 1000)},
            "series": series}


# ---- the run ------------------------------------------------------------------------------
async def connect_all(ctx: dict, clients: list[Client], concurrency: int) -> dict:
    sem, times, errors = asyncio.Semaphore(concurrency), [], Counter()

    async def one(c: Client) -> None:
        async with sem:
            try:
                times.append(await c.lst.open(ctx["url"], timeout=60, wait_data=False))
            except Exception as e:  # counted and reported
                errors[f"{type(e).__name__}: {str(e)[:100]}"] += 1
    t0 = time.time()
    await asyncio.gather(*(one(c) for c in clients))
    return {"ok": len(times), "wall_s": round(time.time() - t0, 1), "per_client": lat_s(times),
            "errors": dict(errors.most_common(3))}


async def run(args: argparse.Namespace, ctx: dict, res: dict) -> None:
    url, sim = ctx["url"], ctx["sim"]
    await th(ctx, sim.set_price, "XRPUSDT", PRICE0)
    t0 = time.time()
    tag = f"{int(t0) % 100000}_{{}}"
    made, errors = await th(ctx, run_pool, lambda i: make_client(url, sim, tag.format(i), VENUES[i % 2]),
                            args.clients, args.setup_workers)
    clients = [c for c in made if c]
    if any(not c.order_id for c in clients):  # LIMIT answers may lack the exchange id
        ids = {o["client_order_id"]: o["order_id"] for o in (await th(ctx, sim.state))["orders"]}
        for c in clients:
            c.order_id = c.order_id or ids.get(c.coid, "")
    res["setup"] = {"accounts": len(clients), "failed": len(errors),
                    "wall_s": round(time.time() - t0, 1), "errors": errors[:3]}
    ctx["lags"], ctx["step"], ctx["errors"] = [], itertools.count(1), Counter()
    lag_task = asyncio.create_task(loop_lag(ctx["lags"]))
    try:
        res["connect"] = await connect_all(ctx, clients, args.connect_concurrency)
        n = len(clients := [c for c in clients if c.lst.sio.connected])
        res["initial_live"] = await wait_states(ctx, lambda s: s["by_state"].get("live") == n,
                                                args.initial_timeout_s)
        first = [c.lst.first_data_s() for c in clients]
        res["initial_live"]["first_data"] = lat_s([x for x in first if x is not None]) | {
            "missing": sum(1 for x in first if x is None)}
        if args.ip_weight_limit:
            await th(ctx, lambda: _expect(sim._session.put(
                f"{sim.url}/_sim/limits", json={"ip_weight_limit": args.ip_weight_limit}, timeout=10),
                200, "limits"))
        await asyncio.sleep(3)
        res["live"] = await window(ctx, clients, args)
        t = time.time()
        reset = await th(ctx, ctx["gate"].set, args.outage)
        res["switch"] = {"reset_connections": reset, "to_polling_s": (await wait_states(
            ctx, lambda s: not s["by_state"].get("live"), 120))["s"]}
        await asyncio.sleep(3)
        res["polling"] = await window(ctx, clients, args)
        await th(ctx, ctx["gate"].set, "none")
        back = await wait_states(ctx, all_live, args.storm_timeout_s)
        res["switch"].update(back_to_live_s=back["s"], back_reached=back["reached"], back_by_state=back["by_state"],
                             outage_s=round(time.time() - t, 1))
        await asyncio.sleep(5)
        gone = [c.gone_at - t for c in clients if c.gone_at]
        res["disconnected"] = {"after_outage_start": len(gone), "at_s": lat_s(gone)}
        res["storm"] = await storm(ctx, [c for c in clients if not c.gone_at], args)
        res["disconnected"]["in_storm"] = sum(1 for c in clients if c.gone_at) - len(gone)
        res["fill_errors"] = dict(ctx["errors"].most_common(3))
    finally:
        res["_log_end"] = ctx["server"].log_path.stat().st_size
        lag_task.cancel()
        res["bench_loop_lag_ms_all_run"] = {"max": round(max((x for _, x in ctx["lags"]), default=0) * 1000, 1)}
        await asyncio.wait_for(asyncio.gather(*(c.lst.sio.disconnect() for c in clients
                                                if c.lst.sio.connected), return_exceptions=True), 30)
        for _ in range(60):  # let the server stop its streams before SIGTERM
            try:
                s = await admin_stats(ctx)
                if s["connections"] == 0 and s["streams"]["running"] == 0:
                    break
            except Exception:  # the server may be gone; stopping follows anyway
                break
            await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=200, help="accounts = Socket.IO clients (half per venue)")
    p.add_argument("--window-s", type=float, default=30.0, help="each measuring window")
    p.add_argument("--move-every-s", type=float, default=2.0, help="seconds between XRPUSDT moves")
    p.add_argument("--fills-per-s", type=float, default=20.0, help="partial fills per second")
    p.add_argument("--outage", choices=("private", "all"), default="private",
                   help="which exchange WebSockets the gate refuses in the polling phase")
    p.add_argument("--storm-timeout-s", type=float, default=600.0,
                   help="how long to wait for every stream to be live again (after the outage, in the storm)")
    p.add_argument("--initial-timeout-s", type=float, default=1200.0,
                   help="how long to wait for every stream to be live after setup")
    p.add_argument("--ip-weight-limit", type=int, default=2400,
                   help="Binance weight per IP per minute the simulator enforces after setup (0: off)")
    p.add_argument("--reconcile-interval-s", type=float, default=0.0, help="server RECONCILE_INTERVAL_S")
    p.add_argument("--egress-ips", type=int, default=1,
                   help="loopback source addresses the server spreads its keys over "
                        "(EGRESS_IPS=127.0.0.1..127.0.0.N; each has its own weight budget)")
    p.add_argument("--connect-concurrency", type=int, default=50)
    p.add_argument("--setup-workers", type=int, default=16)
    args = p.parse_args(argv)
    name = f"streams_{args.clients}" + (f"_ips{args.egress_ips}" if args.egress_ips > 1 else "")
    log_dir = RESULTS_DIR / f"logs_{name}"
    log_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"clients": args.clients, "window_s": args.window_s, "outage": args.outage,
                 "egress_ips": args.egress_ips}
    tmp, ctx, sim, gate, server = Path(tempfile.mkdtemp(prefix="bench-streams-")), {}, None, None, None
    try:
        sim = start_simulator()
        sim._session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=64))
        gate = Gate(sim.port)
        server = start_server(f"sqlite:///{tmp / 'bench.sqlite3'}", sim.url, gate.ws_url, log_dir,
                              extra_env={"LOGIN_RATE_LIMIT": "100000 per minute",  # setup threads
                                         "RECONCILE_INTERVAL_S": str(args.reconcile_interval_s),
                                         "EGRESS_IPS": ",".join(f"127.0.0.{i}" for i in
                                                                range(1, args.egress_ips + 1))},
                              real_limits=True)
        ctx = {"sim": sim, "gate": gate, "server": server, "url": server.url, "pool": ThreadPoolExecutor(8)}
        budget = args.clients * 1.5 + 4 * args.window_s + args.storm_timeout_s + 900
        asyncio.run(asyncio.wait_for(run(args, ctx, res), budget))
    except (TimeoutError, Exception) as e:
        res["failure"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if server is not None:
            server.stop()
            end = res.pop("_log_end", None)
            res["server_log"] = {"path": str(server.log_path), "run": log_problems(server.log_path, 0, end),
                                 "shutdown": log_problems(server.log_path, end) if end else None}
        if gate is not None:
            gate.stop()
        if sim is not None:
            (log_dir / "simulator.log").write_bytes(sim.log_path.read_bytes())
            sim.stop()
            res["sim_log"] = log_problems(log_dir / "simulator.log")
        if ctx.get("pool"):
            ctx["pool"].shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print_lines("", res)
    write_results(res, name)


if __name__ == "__main__":
    main()
