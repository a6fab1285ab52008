"""Server-mode protection: a tick crossing a stop -> the exit's first order, with real
processes (simulator, server).

    python -m bench.protection_fire [--holders 50] [--db sqlite|postgresql] [--far 2]

``--holders`` accounts each hold a BTCUSDT long with a server-mode stop-loss at 59000
(all crossed by one price move, the worst case: every exit starts at once) and
``--far`` more rules far from the price (trailing stops waiting for an activation
price far above, which the tick must not touch). The price is moved from 60000 to
58900 once through ``/_sim/price``; for each holder the time from that call to its
exit's first order (the simulator's order time) is measured. Prints the count and
p50 / p90 / p99 / max in ms, and how many rules the server's ticks touched.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import create_account, rest
from tests.conftest import PG_ADMIN_URL, make_pg_database
from tests.support.server import start_server
from tests.support.simulator import start_simulator


def _holder(server, sim, far: int) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A user with a BTCUSDT long and its rules; returns (api_key, token)."""
    acct = create_account(server.url, sim, uuid.uuid4().hex[:10])

    def call(method: str, path: str, body: dict[str, Any], status: int) -> None:
        r = rest(method, server.url + path, acct.token, body)
        assert r.status_code == status, r.text
    call("POST", "/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                 "type": "MARKET", "quantity": "0.002"}, 201)
    body: dict[str, Any] = {"key_id": acct.key_id, "symbol": "BTCUSDT", "mode": "server",
            "stop_loss": {"trigger_price": "59000"}}
    if far:
        body["trailing_stop"] = {"callback_rate": "1", "activation_price": "90000"}
    call("PUT", "/api/positions/protection", body, 200)
    for i in range(far - 1):  # more far rules on other symbols of the same key
        symbol = ("ETHUSDT", "XRPUSDT")[i % 2]
        call("POST", "/api/orders", {"key_id": acct.key_id, "symbol": symbol, "side": "BUY",
                                     "type": "MARKET", "quantity": "0.05" if symbol == "ETHUSDT" else "60"}, 201)
        call("PUT", "/api/positions/protection", {
            "key_id": acct.key_id, "symbol": symbol, "mode": "server",
            "stop_loss": {"trigger_price": "1000" if symbol == "ETHUSDT" else "0.5"}}, 200)
    return acct.api_key, acct.token


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--holders", type=int, default=50)
    parser.add_argument("--far", type=int, default=2, help="far rules per holder")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-protect-"))
    sim = start_simulator()
    drop = None
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    if args.db == "postgresql":
        url, drop = make_pg_database(PG_ADMIN_URL)
    server = start_server(url, sim.url, sim.ws_url, tmp, extra_env={"RECONCILE_INTERVAL_S": "0"})
    try:
        for symbol, price in (("BTCUSDT", "60000"), ("ETHUSDT", "3000"), ("XRPUSDT", "2")):
            sim.set_price(symbol, price)
        holders = [_holder(server, sim, args.far) for _ in range(args.holders)]
        time.sleep(2.0)
        for price in ("60010", "59990", "60005"):  # ticks that cross nothing
            sim.set_price("BTCUSDT", price)
            time.sleep(0.3)
        t0 = int(time.time() * 1000)
        sim.set_price("BTCUSDT", "58900")
        firsts: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while len(firsts) < len(holders) and time.monotonic() < deadline:
            time.sleep(0.5)
            for api_key, _ in holders:
                if api_key in firsts:
                    continue
                exits = [o["time"] for o in sim.state(api_key)["orders"]
                         if (o.get("client_order_id") or "").startswith("exit-")]
                if exits:
                    firsts[api_key] = min(exits)
        lat = sorted(t - t0 for t in firsts.values())
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 99
        print(f"holders={len(holders)} far_rules_per_holder={args.far} db={args.db} "
              f"exits_started={len(lat)}")
        print(f"tick -> exit's first order ms: p50={q[49]:.0f} p90={q[89]:.0f} p99={q[98]:.0f} "
              f"max={lat[-1]:.0f}")
        started = [float(line.rsplit("after_ms=", 1)[1]) for line in server.log().splitlines()
                   if "protection exit started" in line]
        if started:
            print(f"in the server, rule fired -> exit row written (close_position returned) ms: "
                  f"median={statistics.median(started):.0f} max={max(started):.0f}")
        return 0 if len(lat) == len(holders) else 1
    finally:
        server.stop()
        sim.stop()
        if drop:
            drop()


if __name__ == "__main__":
    raise SystemExit(main())
