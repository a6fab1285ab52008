"""Push latency benchmark: N Socket.IO clients, each with its own account, against the
real server (``python app.py``, eventlet) and the exchange simulator, on 127.0.0.1.

    .venv/bin/python -m bench.push_latency --clients 200 [--db sqlite|postgresql] [--duration-s 30]

Prints ``section.figure: value`` lines and writes the same as JSON to
``bench/results/push_latency_<clients>.json``; logs in ``bench/results/logs_<clients>_<db>/``.
Units are in the names: ``_s`` seconds, ``_ms`` milliseconds, ``_mb`` MiB, ``per_s`` per second.
Latency blocks are ``{n, p50_ms, p99_ms, max_ms}`` (nearest-rank percentiles).

Figures:

- ``setup``: N accounts made on 16 threads, each = simulator account (control API) +
  register + login + ``POST /api/exchange/keys`` (one signed exchange call). ``wall_s``
  total; ``per_account`` latency of one account; ``steps_p50_ms`` the median of each call.
- ``connect``: N ``AsyncClient``s in this process (at most ``--connect-concurrency`` at
  once) connect (websocket), ``subscribe`` to the four types and receive one push of
  each. ``wall_s`` until all are done; ``per_client`` connect + ack + first snapshot.
- ``fill``: for ``min(N, --fill-sample)`` accounts a resting LIMIT BUY 10 XRPUSDT @ 1.0
  (market 1.19) is placed and seen in an ``orders`` push; then each is filled with
  ``POST /_sim/orders/{id}/fill``, one after another ``--fill-gap-ms`` apart. Latency from
  just before the fill call to the client receiving the ``orders`` push without the
  order (``orders_gone``) and the ``positions`` push with the XRPUSDT position
  (``position_shown``); ``*_server_ms`` is ``sent_at - as_of`` of those envelopes;
  ``*_missing`` counts fills whose push did not come within 30 s (``position_missing``
  shows up to 3 such clients and the events they got after the fill).
- ``price``: every account holds a MARKET BUY 10 XRPUSDT; during the measuring window
  (``--duration-s``) the price is set every ``--move-every-s`` to a new value. Per client
  and move: from just before ``POST /_sim/price`` to the first ``pnl`` push whose XRPUSDT
  unrealized PnL equals size * (new price - entry) (``pnl``) and to the first
  ``positions`` push with that ``mark_price`` (``positions``); ``*_missed`` = (client, move)
  pairs for which no such push came by 5 s after the window (a late refresh may already
  carry the next price). ``pnl_server_ms.sources`` tells mark-price stream from REST poll.
- ``window``: events received by all clients during the window, ``msgs_per_s`` = that /
  window seconds; ``cpu.<process>_pct`` CPU time / window time (100 = one core busy; the
  eventlet server runs on one thread); ``bench_loop_lag_ms``: how late this process's
  asyncio loop woke up (a delay contained in every client-side latency above).
- ``rss_mb``: server (and simulator) VmRSS after connect and at the end.
- ``sim_requests``: simulator REST calls made by the server per key per minute during the
  window (``GET /_sim/state`` ``requests`` diffed), mean and max over keys; ``top`` the
  busiest endpoints as calls per key per minute.
- ``admin``: ``GET /admin/stats`` at the end: connections, push totals, stream latency.
- ``server_log``: ERROR / Traceback / WARNING lines in the server log, ``run`` up to the
  end of the measurements, ``shutdown`` while the clients disconnect and the server stops.

Clocks: clients, server and simulator run on this machine; all use ``time.time()``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from bench.common import RESULTS_DIR, Listener, Stack, create_account, first_events, loop_lag, rest, run_pool
from bench.measure import cpu_s, lat_ms, lat_s, log_problems, pct, rss_mb, write_results

SYMBOL, QTY, LIMIT_PRICE, BASE_PRICE, PRICE_STEP = "XRPUSDT", "10", "1.0", Decimal("1.2"), Decimal("0.001")
WAIT_S = 120.0  # the longest any single wait phase may take
FILL_WAIT_S = 30.0  # how long a push caused by a fill is waited for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.push_latency", description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=200, help="accounts = Socket.IO clients")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--duration-s", type=float, default=30.0, help="measuring window, seconds")
    p.add_argument("--move-every-s", type=float, default=2.0, help="seconds between price moves")
    p.add_argument("--fill-sample", type=int, default=200, help="accounts in the fill test")
    p.add_argument("--fill-gap-ms", type=float, default=20.0, help="pause between two fills")
    p.add_argument("--connect-concurrency", type=int, default=50, help="connects in flight")
    p.add_argument("--setup-workers", type=int, default=16)
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration_s < args.move_every_s:
        p.error("--clients must be >= 1 and --duration-s >= --move-every-s")
    return args


def xrp(rows: list | None) -> dict | None:
    """The XRPUSDT row of a ``positions`` data list or a ``pnl`` data ``positions`` list."""
    return next((r for r in rows or [] if r.get("symbol") == SYMBOL), None)


def server_part(found: list) -> dict:
    """``sent_at - as_of`` (ms) of the matched envelopes, and how many came from each
    ``source`` (stream = exchange push, rest = poll)."""
    return {**lat_ms([f[1]["sent_at"] - f[1]["as_of"] for f in found if f]),
            "sources": dict(Counter(f[1]["source"] for f in found if f))}


async def in_thread(pool: ThreadPoolExecutor, fn, *args):  # type: ignore[no-untyped-def]
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def connect_all(url: str, listeners: list[Listener], concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    times: list[float] = []
    errors: Counter = Counter()

    async def one(lst: Listener) -> None:
        async with sem:
            try:
                times.append(await lst.open(url, timeout=WAIT_S / 2))
            except Exception as e:  # counted and reported
                errors[f"{type(e).__name__}: {str(e)[:120]}"] += 1
    t0 = time.time()
    await asyncio.gather(*(one(lst) for lst in listeners))
    return {"ok": len(times), "failed": sum(errors.values()), "wall_s": round(time.time() - t0, 2),
            "per_client": lat_s(times), "errors": dict(errors.most_common(5))}


async def fill_test(url: str, stack: Stack, sample: list[Listener], gap_s: float,
                    pool: ThreadPoolExecutor) -> dict:
    def place(i: int) -> dict:
        a = sample[i].account
        r = rest("POST", url + "/api/orders", a.token, {
            "key_id": a.key_id, "symbol": SYMBOL, "side": "BUY", "type": "LIMIT",
            "quantity": QTY, "price": LIMIT_PRICE, "time_in_force": "GTC"})
        if r.status_code != 201:
            raise RuntimeError(f"LIMIT order: HTTP {r.status_code}: {r.text[:200]}")
        return r.json()["trade"]
    trades, errors = await in_thread(pool, run_pool, place, len(sample), 16)
    if any(t and not t.get("entry_order_id") for t in trades):  # fall back to the simulator
        by_coid = {o["client_order_id"]: o["order_id"] for o in stack.sim.state()["orders"]}
        for t in trades:
            if t and not t.get("entry_order_id"):
                t["entry_order_id"] = by_coid.get(t["client_order_id"])
    live = [(lst, t) for lst, t in zip(sample, trades) if t and t.get("entry_order_id")]
    has = lambda coid: lambda d: any(o["client_order_id"] == coid for o in d["data"])  # noqa: E731
    seen = await first_events([(lst, 0.0, "orders", has(t["client_order_id"])) for lst, t in live],
                              WAIT_S)
    live = [pair for pair, s in zip(live, seen) if s]

    def fill_all() -> tuple[list, list[float], list[str]]:
        done, starts, errs = [], [], []
        for pair in live:
            t0 = time.time()
            try:
                stack.sim.fill(pair[1]["entry_order_id"])
            except Exception as e:  # counted and reported
                errs.append(f"{type(e).__name__}: {str(e)[:200]}")
            else:
                done.append(pair)
                starts.append(t0)
            time.sleep(gap_s)
        return done, starts, errs
    live, starts, fill_errors = await in_thread(pool, fill_all)
    gone = await first_events([(lst, t0, "orders", lambda d, c=t["client_order_id"]: not has(c)(d))
                               for (lst, t), t0 in zip(live, starts)], FILL_WAIT_S)
    shown = await first_events([(lst, t0, "positions", lambda d: xrp(d["data"]) is not None)
                                for (lst, _), t0 in zip(live, starts)], FILL_WAIT_S)
    return {"accounts": len(sample), "order_errors": len(errors),
            "order_not_pushed": len(seen) - sum(1 for x in seen if x), "fill_errors": len(fill_errors),
            "filled": len(live), "orders_gone_missing": sum(1 for f in gone if f is None),
            "position_shown_missing": sum(1 for f in shown if f is None),
            "orders_gone": lat_s([f[0] - t0 for f, t0 in zip(gone, starts) if f]),
            "orders_gone_server_ms": server_part(gone),
            "position_shown": lat_s([f[0] - t0 for f, t0 in zip(shown, starts) if f]),
            "position_shown_server_ms": server_part(shown),
            "position_missing": [{"user_id": lst.account.user_id, "key_id": lst.account.key_id,
                                  "events_after_fill": [n for t, n, _ in lst.events if t >= t0]}
                                 for (lst, _), t0, f in zip(live, starts, shown) if f is None][:3],
            "errors": (errors + fill_errors)[:3]}


async def open_positions(url: str, listeners: list[Listener], pool: ThreadPoolExecutor) -> dict:
    def market(i: int) -> None:
        a = listeners[i].account
        r = rest("POST", url + "/api/orders", a.token, {"key_id": a.key_id, "symbol": SYMBOL,
                                                        "side": "BUY", "type": "MARKET", "quantity": QTY})
        if r.status_code != 201:
            raise RuntimeError(f"MARKET order: HTTP {r.status_code}: {r.text[:200]}")
    def held(lst: Listener) -> Decimal:
        p = xrp((lst.last("positions") or {}).get("data"))
        return Decimal(p["size"]) if p else Decimal(0)
    target = {id(lst): held(lst) + Decimal(QTY) for lst in listeners}  # filled LIMITs count
    t0 = time.time()
    _, errors = await in_thread(pool, run_pool, market, len(listeners), 16)
    placed_s = time.time() - t0
    # wait until each client's latest positions push shows the position it now holds
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        missing = [lst for lst in listeners if held(lst) < target[id(lst)]]
        if not missing:
            break
        await asyncio.sleep(0.5)
    return {"placed_wall_s": round(placed_s, 2), "order_errors": len(errors),
            "positions_not_pushed": len(missing), "errors": errors[:3]}


async def price_window(stack: Stack, listeners: list[Listener], args: argparse.Namespace,
                       pool: ThreadPoolExecutor, lags: list) -> dict:
    held = {}
    for lst in listeners:
        p = xrp((lst.last("positions") or {}).get("data"))
        if p:
            held[id(lst)] = (Decimal(p["size"]), Decimal(p["entry_price"]))
    before = await in_thread(pool, lambda: stack.sim.state()["requests"])
    pids = {"server": stack.server.proc.pid, "sim": stack.sim.proc.pid, "bench": os.getpid()}
    cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
    t_start = time.time()
    moves: list[tuple[float, Decimal]] = []
    for k in range(int(args.duration_s // args.move_every_s)):  # prices never repeat
        await asyncio.sleep(max(0.0, t_start + k * args.move_every_s - time.time()))
        price = BASE_PRICE + PRICE_STEP * k
        t_move = await in_thread(pool, lambda p=price: (time.time(), stack.sim.set_price(SYMBOL, p))[0])
        moves.append((t_move, price))
    await asyncio.sleep(max(0.0, t_start + args.duration_s - time.time()))
    t_end = time.time()
    cpu = {f"{name}_pct": round((cpu_s(pid) - cpu0[name]) * 100 / (t_end - t_start), 1)
           for name, pid in pids.items() if cpu0[name] is not None}
    after = await in_thread(pool, lambda: stack.sim.state()["requests"])
    window_s = t_end - t_start

    def pnl_is(lst: Listener, price: Decimal):  # type: ignore[no-untyped-def]
        size, entry = held[id(lst)]
        want = size * (price - entry)
        return lambda d: (r := xrp(d["data"]["positions"])) is not None and \
            abs(Decimal(r["unrealized_pnl"]) - want) < Decimal("0.0005")
    with_pos = [lst for lst in listeners if id(lst) in held]
    pnl = await first_events([(lst, t, "pnl", pnl_is(lst, p)) for t, p in moves for lst in with_pos], 5)
    pos = await first_events([(lst, t, "positions", lambda d, p=p: (r := xrp(d["data"])) is not None
                               and Decimal(r["mark_price"]) == p) for t, p in moves for lst in with_pos], 0)
    t_moves = [t for t, _ in moves for _ in with_pos]
    keys = [lst.account.api_key for lst in listeners]
    per_key, endpoints = [], Counter()
    for key in keys:
        b, a = before.get(key, {}), after.get(key, {})
        diff = {ep: n - b.get(ep, 0) for ep, n in a.items() if n - b.get(ep, 0)}
        per_key.append(sum(diff.values()) * 60 / window_s)
        endpoints.update(diff)
    in_window = [lag * 1000 for t, lag in lags if t_start <= t < t_end]
    received = sum(lst.count(t_start, t_end) for lst in listeners)
    return {
        "price": {"moves": len(moves), "clients_with_position": len(with_pos),
                  "pnl": lat_s([f[0] - t for f, t in zip(pnl, t_moves) if f]),
                  "pnl_server_ms": server_part(pnl),
                  "pnl_missed": sum(1 for f in pnl if f is None),
                  "positions": lat_s([f[0] - t for f, t in zip(pos, t_moves) if f]),
                  "positions_missed": sum(1 for f in pos if f is None)},
        "window": {"seconds": round(window_s, 2), "events_received": received, "cpu": cpu,
                   "msgs_per_s": round(received / window_s, 1),
                   "bench_loop_lag_ms": {"p99": round(pct(in_window, 0.99) or 0, 1),
                                         "max": round(max(in_window, default=0), 1)}},
        "sim_requests": {
            "keys": len(keys), "all_calls_in_window": sum(
                n - before.get(k, {}).get(ep, 0) for k, eps in after.items() for ep, n in eps.items()),
            "per_key_per_min_mean": round(sum(per_key) / len(per_key), 1),
            "per_key_per_min_max": round(max(per_key), 1),
            "top": {ep: round(n * 60 / window_s / len(keys), 1) for ep, n in endpoints.most_common(5)}},
    }


async def run(args: argparse.Namespace, stack: Stack, results: dict) -> None:
    url = stack.server.url
    pool = ThreadPoolExecutor(4)
    t0 = time.time()
    tag = f"{int(t0) % 100000}_{{}}"
    accounts, errors = await in_thread(pool, run_pool, lambda i: create_account(url, stack.sim, tag.format(i)),
                                       args.clients, args.setup_workers)
    accounts = [a for a in accounts if a]
    results["setup"] = {
        "accounts": len(accounts), "failed": len(errors), "wall_s": round(time.time() - t0, 2),
        "per_account": lat_s([a.setup_s for a in accounts]),
        "steps_p50_ms": {k: round(pct([a.steps_s[k] for a in accounts], 0.5) * 1000, 1)
                         for k in (accounts[0].steps_s if accounts else {})},
        "errors": errors[:3]}
    listeners = [Listener(a) for a in accounts]
    lags: list = []
    admin = {"X-Admin-Token": stack.server.admin_token}
    lag_task = asyncio.create_task(loop_lag(lags))
    try:
        results["connect"] = await connect_all(url, listeners, args.connect_concurrency)
        results["rss_mb"] = {"server_after_connect": rss_mb(stack.server.proc.pid),
                             "sim_after_connect": rss_mb(stack.sim.proc.pid)}
        ready = [lst for lst in listeners if lst.sio.connected]
        results["fill"] = await fill_test(url, stack, ready[:args.fill_sample],
                                          args.fill_gap_ms / 1000, pool)
        results["positions_setup"] = await open_positions(url, ready, pool)
        await asyncio.sleep(2)  # let the post-order refreshes settle
        results.update(await price_window(stack, ready, args, pool, lags))
        results["rss_mb"].update(server_end=rss_mb(stack.server.proc.pid),
                                 sim_end=rss_mb(stack.sim.proc.pid))
        stats = await in_thread(pool, lambda: rest("GET", url + "/admin/stats", headers=admin).json())
        results["admin"] = {"connections": stats.get("connections"),
                            "users_online": stats.get("users_online"),
                            "push_total": stats.get("push", {}).get("total"),
                            "push_by_type": stats.get("push", {}).get("by_type"),
                            "stream_latency_ms": stats.get("push", {}).get("stream_latency_ms"),
                            "streams": stats.get("streams")}
        results["still_connected"] = sum(1 for lst in listeners if lst.sio.connected)
    finally:
        results["_log_end"] = stack.server.log_path.stat().st_size
        lag_task.cancel()
        await asyncio.wait([asyncio.create_task(lst.sio.disconnect()) for lst in listeners
                            if lst.sio.connected] or [asyncio.sleep(0)], timeout=30)
        for _ in range(60):  # let the server finish its disconnect handlers before SIGTERM
            try:
                stats = (await in_thread(pool, lambda: rest("GET", url + "/admin/stats", headers=admin))).json()
                if stats["connections"] == 0 and stats["streams"]["running"] == 0:
                    size = stack.server.log_path.stat().st_size
                    await asyncio.sleep(1.0)  # streams still close their listenKeys: wait for quiet
                    if stack.server.log_path.stat().st_size == size:
                        break
                    continue
            except Exception:  # the server may be gone; stopping follows anyway
                break
            await asyncio.sleep(0.5)
        pool.shutdown(wait=False, cancel_futures=True)


def print_lines(prefix: str, value: object) -> None:
    if isinstance(value, dict) and not (value.keys() >= {"p50_ms", "p99_ms"} or prefix.endswith("by_state")):
        for k, v in value.items():
            print_lines(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        print(f"{prefix}: {json.dumps(value)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    log_dir = RESULTS_DIR / f"logs_{args.clients}_{args.db}"
    results: dict = {"clients": args.clients, "db": args.db, "duration_s": args.duration_s}
    stack = Stack(args.db, log_dir)
    try:
        budget = 4 * WAIT_S + args.clients * 1.0 + args.duration_s + 120
        asyncio.run(asyncio.wait_for(run(args, stack, results), budget))
    except (TimeoutError, Exception) as e:
        results["failure"] = f"{type(e).__name__}: {e}"
    finally:
        log_path = stack.server.log_path
        stack.stop()
        end = results.pop("_log_end", None)
        results["server_log"] = {"path": str(log_path), "run": log_problems(log_path, 0, end),
                                 "shutdown": log_problems(log_path, end) if end else None}
        results["sim_log"] = {"path": str(log_dir / "simulator.log"),
                              **log_problems(log_dir / "simulator.log")}
    print_lines("", results)
    write_results(results, f"push_latency_{args.clients}")


if __name__ == "__main__":
    main()
