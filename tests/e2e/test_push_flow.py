"""The main flow on real processes: subscribe, snapshots, order -> pushes, price -> pnl."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest
import socketio

from tests.e2e.conftest import wait_until


def test_subscribe_snapshot_order_fill_and_price_move(account, listen, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    lst = listen(account.token)
    ack = lst.call("subscribe", {"types": ["balance", "positions", "pnl", "orders"]})
    uid = account.user_id
    assert ack == {"ok": True, "subscribed": ["balance", "orders", "pnl", "positions"],
                   "rooms": [f"balance_{uid}", f"orders_{uid}", f"pnl_{uid}", f"positions_{uid}"]}
    balance = lst.wait_for("balance")
    assert balance["data"]["total_wallet_balance"] == "10000"
    assert balance["key_id"] == account.key_id and balance["exchange"] == "binance"
    assert balance["seq"] >= 1 and not balance["stale"] and balance["as_of"] > 0
    assert lst.wait_for("positions")["data"] == []
    assert lst.wait_for("orders")["data"] == []
    assert lst.wait_for("pnl")["data"]["unrealized_pnl"] == "0"
    lst.wait_for("stream_status", lambda d: d["state"] == "live")
    # the stream started with this subscribe: its first state is "live", with no
    # "reconnecting" flashed before it
    states = [d["state"] for name, d in lst.all if name == "stream_status"]
    assert states[0] == "live", states

    # a resting LIMIT buy appears in orders
    mark = lst.mark()
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": "0.010", "price": "59000"})
    assert r.status_code == 201, r.text
    trade = r.json()["trade"]
    assert trade["status"] == "pending" and trade["client_order_id"]
    orders = lst.wait_for("orders", lambda d: len(d["data"]) == 1, since=mark)
    row = orders["data"][0]
    assert row["client_order_id"] == trade["client_order_id"] and row["status"] == "NEW"
    assert row["price"] == "59000" and row["quantity"] == "0.01"
    assert orders["source"] == "stream"

    # the price falls through it: the order fills, positions, balance and pnl follow
    mark = lst.mark()
    sim.set_price("BTCUSDT", "58990")
    lst.wait_for("orders", lambda d: d["data"] == [], since=mark)
    pos = lst.wait_for("positions", lambda d: len(d["data"]) == 1, since=mark)["data"][0]
    assert pos["symbol"] == "BTCUSDT" and pos["side"] == "LONG" and pos["size"] == "0.01"
    assert Decimal(pos["entry_price"]) == Decimal("59000")
    lst.wait_for("balance", lambda d: d["data"]["total_wallet_balance"] != "10000", since=mark)
    pnl = lst.wait_for("pnl", lambda d: len(d["data"]["positions"]) == 1, since=mark)

    # the ledger shows the trade open at the fill price
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        trades = account.get(f"/api/trades?status=open&key_id={account.key_id}").json()
        if trades:
            break
        time.sleep(0.2)
    assert trades and trades[0]["client_order_id"] == trade["client_order_id"]
    assert Decimal(trades[0]["entry_price"]) == Decimal("59000")

    # a price move changes the unrealized PnL: +1000 * 0.01 = +10 (mark 60000 vs entry 59000)
    sim.set_price("BTCUSDT", "60000")
    moved = lst.wait_for("pnl", lambda d: d["data"]["positions"] and
                         Decimal(d["data"]["unrealized_pnl"]) == Decimal("10"))
    assert moved["seq"] > pnl["seq"]
    snap = account.get(f"/api/account/positions?key_id={account.key_id}").json()
    assert snap["type"] == "positions" and snap["data"][0]["size"] == "0.01"


def test_market_order_is_confirmed_open_in_the_response(account) -> None:  # type: ignore[no-untyped-def]
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "ETHUSDT", "side": "SELL",
                                     "type": "MARKET", "quantity": "0.050"})
    assert r.status_code == 201, r.text
    t = r.json()["trade"]
    assert t["status"] == "open" and t["filled_quantity"] == "0.05" and t["entry_order_id"]
    assert Decimal(t["entry_price"]) > 0 and Decimal(t["fees"]) > 0


def test_cancel_resting_order_and_unknown_cancel(account) -> None:  # type: ignore[no-untyped-def]
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": "0.010", "price": "10000"})
    assert r.status_code == 201, r.text
    coid = r.json()["trade"]["client_order_id"]
    r = account.delete(f"/api/orders/{coid}?key_id={account.key_id}")
    assert r.status_code == 200 and r.json()["trade"]["status"] == "canceled"
    assert account.delete(f"/api/orders/nope?key_id={account.key_id}").status_code == 404


def test_exchange_rejection_is_422_with_the_exchange_code(account) -> None:  # type: ignore[no-untyped-def]
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "MARKET", "quantity": "50"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["exchange_code"] == -2019 and "binance" in err["message"]
    failed = account.get("/api/trades?status=failed").json()
    assert failed and failed[0]["error_code"] == "-2019"


def test_rule_violations_are_400_before_any_order(account, sim) -> None:  # type: ignore[no-untyped-def]
    before = sim.state()["requests"].get(account.api_key, {})
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": "0.0015", "price": "50000"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "quantity"
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": "0.001", "price": "50000.05"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "price"
    after = sim.state()["requests"].get(account.api_key, {})
    assert after.get("POST /fapi/v1/order", 0) == before.get("POST /fapi/v1/order", 0)
    assert account.get("/api/trades").json() == []


def test_no_token_no_connection(server) -> None:  # type: ignore[no-untyped-def]
    """Refused with message "unauthorized" (CONTRACT.md) and a code that tells an app
    whether to refresh its token or log in again."""
    import jwt
    now = int(time.time())
    expired = jwt.encode({"sub": "1", "iat": now - 7200, "exp": now - 3600}, server.secret_key,
                         algorithm="HS256")
    for auth, code in ((None, "missing_token"), ({"token": "forged"}, "invalid_token"),
                       ({"token": ""}, "missing_token"), ({"token": expired}, "token_expired")):
        client = socketio.Client(reconnection=False)
        errors: list = []
        client.on("connect_error", errors.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(server.url, auth=auth, transports=["websocket"], wait_timeout=5)
        assert errors == [{"message": "unauthorized", "data": {"code": code}}], (auth, errors)


def test_query_token_is_accepted_for_older_clients(account, server) -> None:  # type: ignore[no-untyped-def]
    client = socketio.Client(reconnection=False)
    client.connect(f"{server.url}?token={account.token}", transports=["websocket"], wait_timeout=5)
    assert client.call("subscribe", {"types": ["balance"]}, timeout=10)["ok"] is True
    client.disconnect()


def test_bad_subscriptions_get_a_not_ok_ack(account, listen) -> None:  # type: ignore[no-untyped-def]
    lst = listen(account.token)
    for payload, field in [({"types": ["everything"]}, "types.0"), ({"types": []}, "types"),
                           ({"types": ["balance"], "key_id": "x"}, "key_id"), ({}, "types")]:
        ack = lst.call("subscribe", payload)
        assert ack["ok"] is False and ack["error"]["field"] == field, ack
    ack = lst.call("subscribe", {"types": ["balance"], "key_id": 999999})
    assert ack["ok"] is False and ack["error"]["code"] == "key_not_found"
    ack = lst.call("unsubscribe", {"types": ["balance"]})
    assert ack == {"ok": True, "subscribed": []}


def test_cancel_that_raced_a_fill_ends_open_with_the_fill(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": "0.010", "price": "55000"})
    trade = r.json()["trade"]
    sim.fill(trade["entry_order_id"])  # the fill lands just before our cancel
    r = account.delete(f"/api/orders/{trade['client_order_id']}?key_id={account.key_id}")
    assert r.status_code == 200, r.text
    t = r.json()["trade"]
    assert t["status"] == "open" and t["filled_quantity"] == "0.01"
    assert Decimal(t["entry_price"]) == Decimal("55000")


def test_limit_order_timeout_cancels_it(account) -> None:  # type: ignore[no-untyped-def]
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": "0.010", "price": "20000",
                                     "timeout_s": 1})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "pending"
    coid = r.json()["trade"]["client_order_id"]
    done = wait_until(lambda: [t for t in account.get("/api/trades?status=canceled").json()
                               if t["client_order_id"] == coid], timeout=10)
    assert done[0]["filled_quantity"] == "0"
    bad = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                       "type": "MARKET", "quantity": "0.010", "timeout_s": 5})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "timeout_s"


def test_limit_order_timeout_that_races_a_fill_ends_open(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "LIMIT", "quantity": "0.010", "price": "30000",
                                     "timeout_s": 2})
    trade = r.json()["trade"]
    sim.fill(trade["entry_order_id"])      # fills just before the timeout's cancel
    done = wait_until(lambda: [t for t in account.get("/api/trades?status=open").json()
                               if t["client_order_id"] == trade["client_order_id"]], timeout=10)
    assert done[0]["filled_quantity"] == "0.01"
    assert account.get("/api/trades?status=canceled").json() == []
