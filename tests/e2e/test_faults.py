"""Injected exchange faults with real processes: dropped streams, expired listenKeys,
rate limits, timeouts and clock skew."""
from __future__ import annotations

import time
from decimal import Decimal

from tests.e2e.conftest import wait_until


def _live(lst, account, since: int = 0) -> None:  # type: ignore[no-untyped-def]
    lst.wait_for("stream_status", lambda d: d["state"] == "live" and d["key_id"] == account.key_id,
                 since=since)


def _limit_buy(account, price: str = "50000", qty: str = "0.010") -> dict:  # type: ignore[no-untyped-def]
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": qty, "price": price})
    assert r.status_code == 201, r.text
    return r.json()["trade"]


def test_fill_while_the_stream_is_down_arrives_once_after_reconnect(account, listen, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    lst = listen(account.token)
    lst.call("subscribe", {"types": ["orders", "positions"]})
    _live(lst, account)
    trade = _limit_buy(account)
    lst.wait_for("orders", lambda d: len(d["data"]) == 1)
    mark = lst.mark()
    sim.add_fault(kind="drop_ws", api_key=account.api_key)
    sim.fill(trade["entry_order_id"])          # fills while no stream is connected
    lst.wait_for("stream_status", lambda d: d["state"] == "reconnecting", since=mark)
    _live(lst, account, since=mark)
    pos = lst.wait_for("positions", lambda d: len(d["data"]) == 1, since=mark)["data"][0]
    assert pos["size"] == "0.01"
    lst.wait_for("orders", lambda d: d["data"] == [], since=mark)
    t = wait_until(lambda: [x for x in account.get("/api/trades?status=open").json()
                       if x["client_order_id"] == trade["client_order_id"]])[0]
    assert t["filled_quantity"] == "0.01" and Decimal(t["entry_price"]) == Decimal("50000")
    time.sleep(1.0)  # a duplicate would have been written by now
    t = account.get("/api/trades?status=open").json()[0]
    assert t["filled_quantity"] == "0.01"
    assert all(p["data"][0]["size"] == "0.01" for n, p in lst.all[mark:] if n == "positions" and p["data"])


def test_expired_listen_key_reconnects_and_pushes_go_on(account, listen, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    lst = listen(account.token)
    lst.call("subscribe", {"types": ["orders"]})
    _live(lst, account)
    mark = lst.mark()
    sim.add_fault(kind="expire_listen_key", api_key=account.api_key)
    lst.wait_for("stream_status", lambda d: d["state"] == "reconnecting", since=mark)
    _live(lst, account, since=mark)
    mark = lst.mark()
    trade = _limit_buy(account)
    lst.wait_for("orders", lambda d: any(o["client_order_id"] == trade["client_order_id"]
                                         for o in d["data"]), since=mark)


def test_rate_limit_storm_backs_off_without_hammering(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.add_fault(kind="http_429", api_key=account.api_key, duration_s=2, ms=2000)
    before = sum(sim.state()["requests"].get(account.api_key, {}).values())
    codes = []
    for _ in range(10):
        r = account.get(f"/api/account/balance?key_id={account.key_id}")
        codes.append(r.status_code)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
        assert r.json()["error"]["code"] == "exchange_rate_limited"
    sent = sum(sim.state()["requests"].get(account.api_key, {}).values()) - before
    assert sent <= 2, f"{sent} requests reached the exchange during the back-off"
    stats = account.admin("GET", "/admin/stats").json()["rate_limits"]["binance"]
    assert stats["refused_locally"] >= 9 and stats["blocked_for_ms"] > 0
    sim.clear_faults()
    # the back-off is per venue (Binance limits per IP): it ends for everyone together
    wait_until(lambda: account.admin("GET", "/admin/stats").json()["rate_limits"]["binance"]
          ["blocked_for_ms"] == 0, timeout=10)
    assert account.get(f"/api/account/balance?key_id={account.key_id}").status_code == 200


def test_order_timeout_stays_pending_and_reconcile_settles_it(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("ETHUSDT", "3400")
    order = {"key_id": account.key_id, "symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT"}
    # a first order caches the symbol's rules, so the next exchange call is the order itself
    assert account.post("/api/orders", {**order, "quantity": "0.030", "price": "1000"}).status_code == 201
    sim.add_fault(kind="timeout", api_key=account.api_key, count=1, ms=6000)
    r = account.post("/api/orders", {**order, "quantity": "0.010", "price": "3500"})  # marketable
    assert r.status_code == 504 and r.json()["error"]["code"] == "exchange_timeout", r.text
    pending = [t for t in account.get("/api/trades?status=pending").json() if t["price"] == "3500"]
    assert len(pending) == 1, "the order's fate is unknown: it must stay pending"
    result = account.admin("POST", "/admin/reconcile", json={"user_id": account.user_id}).json()
    assert {"client_order_id": pending[0]["client_order_id"], "key_id": account.key_id,
            "from": "pending", "to": "open"} in result["details"]
    t = [x for x in account.get("/api/trades?status=open").json()
         if x["client_order_id"] == pending[0]["client_order_id"]][0]
    assert t["filled_quantity"] == "0.01" and Decimal(t["entry_price"]) > 0


def test_clock_skew_resamples_and_the_order_goes_through(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.add_fault(kind="clock_skew", api_key=account.api_key, ms=-5000, count=1)
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "ETHUSDT", "side": "SELL",
                                     "type": "MARKET", "quantity": "0.010"})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text
    sim.clear_faults()
