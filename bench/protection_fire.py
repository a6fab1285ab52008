"""Server-mode protection: a tick crossing a stop -> the exit's first order, with real
processes (simulator, server).

    python -m bench.protection_fire [--holders 1000] [--crossed 1,20,100] [--reps 3]
                                    [--db sqlite|postgresql] [--far 1] [--streams N]
                                    [--tag NAME]

``--holders`` accounts each hold a BTCUSDT long (MARKET BUY 0.002) with a server-mode
stop-loss, and ``--far`` more rules far from the price each (a trailing stop waiting
for an activation price far above; more far stop-losses on ETHUSDT / XRPUSDT). For
each K of ``--crossed`` and each repetition, K holders get their stop-loss at 59000
(a position re-opened first when an earlier repetition closed it); every other
holder's stop-loss sits at 30000. The price is moved from 60000 to 58900 once through
``/_sim/price``: exactly K stops are crossed by one tick (every exit starts at once,
the worst case) while the others are armed too. For each crossed holder the figure is
the time from that call to its exit's first order (the simulator's order time, ms).

``--streams N``: the first N holders (the crossed ones come first) register a device,
so the server keeps their account streams running with no socket open (the standby
streams of ``services.notify.standby``; their fills are notified through the
simulator's FCM): a rule whose key's stream is live takes its positions from it
instead of asking the venue. The measurement starts once the server logged N streams
live. 0 (the default): no stream runs, every position is asked from the venue.

Prints per repetition ``{n, p50_ms, p99_ms, max_ms}`` (nearest rank) and, per K, the
median and range over the repetitions of p50 and p99 (target p99 < 100 ms at 1,000
holders, issue 20), and the server's own part (rule fired -> exit row committed, from
its log). Writes ``bench/results/protection_fire_<tag>.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from requests.adapters import HTTPAdapter

from bench.common import Account, create_account, rest, run_pool
from bench.measure import lat_ms, print_lines, write_results
from tests.conftest import PG_ADMIN_URL, make_pg_database
from tests.support import fcm
from tests.support.server import start_server
from tests.support.simulator import start_simulator

SYMBOL, QTY, START, CROSS = "BTCUSDT", "0.002", "60000", "58900"
NEAR, FAR = "59000", "30000"  # the crossed holders' stop-loss; everyone else's
STARTED = "protection exit started"  # the server's log line per fired rule's exit
LIVE = "account stream live key_id="  # the server's log line per stream gone live


def _call(server, acct: Account, method: str, path: str, body: dict[str, Any], status: int) -> None:  # type: ignore[no-untyped-def]
    r = rest(method, server.url + path, acct.token, body)
    if r.status_code != status:
        raise RuntimeError(f"{method} {path}: HTTP {r.status_code}: {r.text[:200]}")


def _stop(server, acct: Account, trigger: str, far: int) -> None:  # type: ignore[no-untyped-def]
    body: dict[str, Any] = {"key_id": acct.key_id, "symbol": SYMBOL, "mode": "server",
                            "stop_loss": {"trigger_price": trigger}}
    if far:
        body["trailing_stop"] = {"callback_rate": "1", "activation_price": "90000"}
    _call(server, acct, "PUT", "/api/positions/protection", body, 200)


def _holder(server, sim, far: int) -> Account:  # type: ignore[no-untyped-def]
    """A user with a BTCUSDT long, its far stop-loss and ``far`` far rules."""
    acct = create_account(server.url, sim, uuid.uuid4().hex[:10])
    _call(server, acct, "POST", "/api/orders", {"key_id": acct.key_id, "symbol": SYMBOL,
                                                "side": "BUY", "type": "MARKET", "quantity": QTY}, 201)
    _stop(server, acct, FAR, far)
    for i in range(far - 1):  # more far rules on other symbols of the same key
        symbol = ("ETHUSDT", "XRPUSDT")[i % 2]
        _call(server, acct, "POST", "/api/orders", {
            "key_id": acct.key_id, "symbol": symbol, "side": "BUY", "type": "MARKET",
            "quantity": "0.05" if symbol == "ETHUSDT" else "60"}, 201)
        _call(server, acct, "PUT", "/api/positions/protection", {
            "key_id": acct.key_id, "symbol": symbol, "mode": "server",
            "stop_loss": {"trigger_price": "1000" if symbol == "ETHUSDT" else "0.5"}}, 200)
    return acct


def _device(server, acct: Account) -> None:  # type: ignore[no-untyped-def]
    """Register a device for ``acct``: the server keeps its account stream running."""
    _call(server, acct, "POST", "/api/devices", {"token": fcm.new_token(),
                                                 "platform": "android"}, 201)


def _arm_near(server, sim, acct: Account, far: int) -> None:  # type: ignore[no-untyped-def]
    """Give ``acct`` a BTCUSDT long (when an earlier repetition closed it) and its
    stop-loss at NEAR."""
    held = [p for p in sim.state(acct.api_key).get("positions", [])
            if p.get("symbol") == SYMBOL and float(p.get("amount") or 0)]
    if not held:
        _call(server, acct, "POST", "/api/orders", {"key_id": acct.key_id, "symbol": SYMBOL,
                                                    "side": "BUY", "type": "MARKET", "quantity": QTY}, 201)
    _stop(server, acct, NEAR, far)


def _arm_near_at(server, sim, accts: list[Account], far: int, i: int) -> None:  # type: ignore[no-untyped-def]
    _arm_near(server, sim, accts[i], far)


def _one(server, sim, crossed: list[Account], timeout_s: float) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Cross the K stops with one tick; the time to each holder's first exit order."""
    for price in ("60010", "59990", "60005"):  # ticks that cross nothing
        sim.set_price(SYMBOL, price)
        time.sleep(0.3)
    before = server.log().count(STARTED)
    t0 = int(time.time() * 1000)
    sim.set_price(SYMBOL, CROSS)
    # the simulator stamps each order: it is asked once the server logged every exit
    # started (asking it meanwhile would load the process that handles the orders)
    deadline = time.monotonic() + timeout_s
    while server.log().count(STARTED) - before < len(crossed) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # the last first orders reach the simulator
    firsts: dict[str, int] = {}
    for acct in crossed:
        exits = [o["time"] for o in sim.state(acct.api_key)["orders"]
                 if (o.get("client_order_id") or "").startswith("exit-") and o["time"] >= t0]
        if exits:
            firsts[acct.api_key] = min(exits)
    return dict(lat_ms([t - t0 for t in firsts.values()]), missing=len(crossed) - len(firsts))


def _summary(reps: list[dict[str, Any]], field: str) -> dict[str, Any]:
    values = sorted(r[field] for r in reps if r.get(field) is not None)
    if not values:
        return {}
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protection_fire")
    parser.add_argument("--holders", type=int, default=1000)
    parser.add_argument("--crossed", default="1,20,100", help="K values: stops crossed by one tick")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--far", type=int, default=1, help="far rules per holder besides its stop")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--workers", type=int, default=8, help="setup threads")
    parser.add_argument("--streams", type=int, default=0,
                        help="holders (the first ones) whose account streams run")
    parser.add_argument("--tag", default="run")
    args = parser.parse_args()
    ks = [int(k) for k in args.crossed.split(",") if k]
    if max(ks) > args.holders:
        parser.error("--crossed may not exceed --holders")
    tmp = Path(tempfile.mkdtemp(prefix="bench-protect-"))
    sim = start_simulator()
    sim._session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=64))
    drop = None
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    if args.db == "postgresql":
        url, drop = make_pg_database(PG_ADMIN_URL)
    creds = fcm.write_service_account(tmp, sim.url)
    server = start_server(url, sim.url, sim.ws_url, tmp, extra_env={
        "RECONCILE_INTERVAL_S": "0", "LOGIN_RATE_LIMIT": "100000 per minute",
        "GOOGLE_APPLICATION_CREDENTIALS": str(creds), "FCM_URL": sim.url})
    results: dict[str, Any] = {"holders": args.holders, "far_rules_per_holder": args.far,
                               "streams": args.streams,
                               "db": args.db, "load_at_start": [round(x, 2) for x in os.getloadavg()],
                               "by_k": {}}
    try:
        for symbol, price in ((SYMBOL, START), ("ETHUSDT", "3000"), ("XRPUSDT", "2")):
            sim.set_price(symbol, price)
        t_setup = time.time()
        made, errors = run_pool(lambda _: _holder(server, sim, args.far), args.holders, args.workers)
        holders = [h for h in made if h is not None]
        results["setup_s"], results["setup_errors"] = round(time.time() - t_setup, 1), errors[:5]
        print(f"holders={len(holders)} setup_s={results['setup_s']} errors={len(errors)}")
        if args.streams:
            run_pool(lambda i: _device(server, holders[i]), min(args.streams, len(holders)),
                     args.workers)
            deadline = time.monotonic() + 180
            while server.log().count(LIVE) < min(args.streams, len(holders)) \
                    and time.monotonic() < deadline:
                time.sleep(1.0)
            results["streams_live"] = server.log().count(LIVE)
            print(f"streams live={results['streams_live']}")
        pool = holders[:max(ks)]
        for k in ks:
            reps = []
            for rep in range(args.reps):
                sim.set_price(SYMBOL, START)
                crossed = pool[:k]
                run_pool(partial(_arm_near_at, server, sim, crossed, args.far), k, args.workers)
                time.sleep(1.0)
                one = _one(server, sim, crossed, 60.0)
                reps.append(one)
                print_lines(f"k={k} rep{rep}", one)
                sim.set_price(SYMBOL, START)
                time.sleep(2.0)  # the chases and their alerts end before the next move
            results["by_k"][str(k)] = {"reps": reps, "p50_ms": _summary(reps, "p50_ms"),
                                       "p99_ms": _summary(reps, "p99_ms")}
            print_lines(f"k={k} p50_ms over reps", results["by_k"][str(k)]["p50_ms"])
            print_lines(f"k={k} p99_ms over reps", results["by_k"][str(k)]["p99_ms"])
        log = server.log().splitlines()
        started = [float(line.rsplit("after_ms=", 1)[1]) for line in log if STARTED in line]
        # the server's line per batch: its figures as name=value
        batches = [dict(kv.split("=", 1) for kv in ln.split("protection batch ")[1].split())
                   for ln in log if "protection batch rules=" in ln]
        if batches:  # keys whose positions came from their streams / from the venue
            results["batch_keys"] = {"streamed": sum(int(f["keys_streamed"]) for f in batches),
                                     "asked": sum(int(f["keys_asked"]) for f in batches)}
            print_lines("batch keys", results["batch_keys"])
            steps: dict[str, list[tuple[float, float, float]]] = {}
            for f in batches:  # the server's steps: legs read, venue calls, transaction
                steps.setdefault(f["rules"], []).append(
                    (float(f["read_ms"]), float(f["venue_ms"]), float(f["write_ms"])))
            results["batch_steps_ms"] = {
                rules: {name: statistics.median(v[i] for v in rows)
                        for i, name in enumerate(("read", "venue", "write"))} | {"n": len(rows)}
                for rules, rows in steps.items()}
            print_lines("batch steps median ms by rules", results["batch_steps_ms"])
        if started:
            results["server_fired_to_exit_row_ms"] = {"median": statistics.median(started),
                                                      "max": max(started), "n": len(started)}
            print_lines("in the server, rule fired -> exit rows committed ms",
                        results["server_fired_to_exit_row_ms"])
    except (Exception, KeyboardInterrupt) as e:
        results["failure"] = f"{type(e).__name__}: {e}"
    finally:
        results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["server_log_errors"] = sum(1 for ln in server.log().splitlines() if " ERROR " in ln)
        server.stop()
        sim.stop()
        if drop:
            drop()
    print_lines("load", {"start": results["load_at_start"], "end": results["load_at_end"]})
    write_results(results, f"protection_fire_{args.tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
