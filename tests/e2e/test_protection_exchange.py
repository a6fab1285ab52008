"""Exchange-held legs end to end on both venues (Binance Algo Service, Bybit trading-stop),
with the real server and simulator processes: placed pending-first, active with the
venue's id, fired by the venue as the price moves (learned from the account stream and
the reconcile), the other legs canceled, the close recorded; a refusal is a 422 that
leaves the venue and the rows as they were."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal as D

import pytest

from exchanges.binance.client import BinanceFuturesClient
from exchanges.types import ProtectionKind, VenueEndpoints
from tests.e2e.conftest import Account, wait_until

PATH = "/api/positions/protection"
LEG_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")


class VenueAccount(Account):
    """An Account whose key is on ``exchange``."""

    def __init__(self, server, sim, exchange: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__(server, sim)
        self.exchange = exchange
        if exchange == "binance":
            return
        api_key, secret = "key" + uuid.uuid4().hex, "sec" + uuid.uuid4().hex
        sim.create_account(api_key, secret, balances={"USDT": "10000"})
        r = self.post("/api/exchange/keys", {"exchange": exchange, "api_key": api_key,
                                             "api_secret": secret, "label": exchange})
        assert r.status_code == 201, r.text
        self.api_key, self.api_secret, self.key_id = api_key, secret, r.json()["id"]


@pytest.fixture(params=["binance", "bybit"])
def venue_account(request, server, sim):  # type: ignore[no-untyped-def]
    return VenueAccount(server, sim, request.param)


def _open(acct, symbol: str, side: str = "BUY", qty: str = "0.010") -> None:  # type: ignore[no-untyped-def]
    r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": symbol, "side": side,
                                  "type": "MARKET", "quantity": qty})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text


def _protection(acct, symbol: str) -> dict | None:  # type: ignore[no-untyped-def]
    r = acct.get(f"{PATH}?key_id={acct.key_id}")
    assert r.status_code == 200, r.text
    return next((p for p in r.json() if p["symbol"] == symbol), None)


def _position(acct, symbol: str) -> dict | None:  # type: ignore[no-untyped-def]
    data = acct.get(f"/api/account/positions?key_id={acct.key_id}").json()["data"]
    return next((p for p in data if p["symbol"] == symbol), None)


def _venue_legs(sim, acct, symbol: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """The simulator's held legs of the account (``GET /_sim/state`` orders of a
    conditional type)."""
    return [o for o in sim.state(acct.api_key)["orders"]
            if o.get("symbol") == symbol and o.get("type") in LEG_TYPES]


def test_exchange_stop_loss_fires_on_the_venue_and_the_take_profit_is_canceled(venue_account, sim, listen) -> None:  # type: ignore[no-untyped-def]
    acct = venue_account
    sim.set_price("BTCUSDT", "60000")
    _open(acct, "BTCUSDT")
    lst = listen(acct.token)   # a subscriber: the account stream runs and reports the legs
    assert lst.call("subscribe", {"types": ["positions", "orders"], "key_id": acct.key_id})["ok"]
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "BTCUSDT",
                        "stop_loss": {"trigger_price": "59000"},
                        "take_profit": {"trigger_price": "62000"}})
    assert r.status_code == 200, r.text
    prot = r.json()
    assert prot["mode"] == "exchange"
    for kind in ("stop_loss", "take_profit"):
        assert prot["legs"][kind]["status"] == "active" and prot["legs"][kind]["order_id"]
    held = _venue_legs(sim, acct, "BTCUSDT")
    assert sorted(o["status"] for o in held) == ["NEW", "NEW"]
    # the pushes: the position row carries the legs, the orders rows hold them
    pos = lst.wait_for("positions", lambda d: d["data"] and d["data"][0]["stop_loss"] == "59000")
    assert pos["data"][0]["take_profit"] == "62000" and pos["data"][0]["trailing_stop"] is None
    orders = lst.wait_for("orders", lambda d: len([o for o in d["data"] if o["trigger_price"]]) == 2)
    legs_rows = sorted((o["type"], o["trigger_price"], o["side"]) for o in orders["data"]
                       if o["trigger_price"])
    assert legs_rows == [("STOP_MARKET", "59000", "SELL"), ("TAKE_PROFIT_MARKET", "62000", "SELL")]
    snap = acct.get(f"/api/account/positions?key_id={acct.key_id}").json()["data"][0]
    assert snap["stop_loss"] == "59000"
    sim.set_price("BTCUSDT", "58900")
    wait_until(lambda: _position(acct, "BTCUSDT") is None)
    legs = wait_until(lambda: (lambda p: p["legs"] if p and p["legs"]["stop_loss"]
                               and p["legs"]["stop_loss"]["status"] == "triggered" else None)(
        _protection(acct, "BTCUSDT")))
    assert legs["take_profit"] is None                     # canceled (OCO): not shown
    assert all(o["status"] != "NEW" for o in _venue_legs(sim, acct, "BTCUSDT"))
    lst.wait_for("orders", lambda d: not any(o["trigger_price"] for o in d["data"]))
    closed = wait_until(lambda: [t for t in acct.get("/api/trades?status=closed").json()
                                 if t["symbol"] == "BTCUSDT"])
    assert closed[0]["realized_pnl"] is not None


def test_exchange_legs_removed_and_a_refusal_changes_nothing(venue_account, sim) -> None:  # type: ignore[no-untyped-def]
    acct = venue_account
    sim.set_price("ETHUSDT", "3000")
    _open(acct, "ETHUSDT", side="SELL", qty="0.100")
    base = {"key_id": acct.key_id, "symbol": "ETHUSDT", "mode": "exchange"}
    r = acct.put(PATH, {**base, "stop_loss": {"trigger_price": "3100"}})
    assert r.status_code == 200, r.text
    first = r.json()["legs"]["stop_loss"]
    if acct.exchange == "bybit":   # one leg per kind on the position: nothing to clash with
        r = acct.put(PATH, {**base, "stop_loss": None})
        assert r.status_code == 200 and r.json()["legs"]["stop_loss"] is None
        assert [o for o in _venue_legs(sim, acct, "ETHUSDT") if o["status"] == "NEW"] == []
        acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": "ETHUSDT"})
        wait_until(lambda: _position(acct, "ETHUSDT") is None)
        return
    # a take-profit placed on the venue by another client: ours is refused (-4130)
    foreign = BinanceFuturesClient(acct.api_key, acct.api_secret, testnet=False,
                                   endpoints=VenueEndpoints(sim.url, sim.ws_url), timeout_s=5)
    foreign.place_protection_leg("ETHUSDT", "SHORT", ProtectionKind.TAKE_PROFIT, "foreign-tp-1",
                                 trigger_price=D(2800))
    foreign.close()
    r = acct.put(PATH, {**base, "stop_loss": {"trigger_price": "3150"},
                        "take_profit": {"trigger_price": "2900"}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["exchange_code"] == -4130
    legs = _protection(acct, "ETHUSDT")["legs"]
    assert legs["take_profit"] is None
    assert legs["stop_loss"]["status"] == "active" and legs["stop_loss"]["trigger_price"] == "3100"
    held = [o for o in _venue_legs(sim, acct, "ETHUSDT") if o["status"] == "NEW"]
    assert sorted((o["type"], D(o["trigger_price"])) for o in held) == [
        ("STOP_MARKET", D(3100)), ("TAKE_PROFIT_MARKET", D(2800))]   # ours as before, theirs
    r = acct.delete(f"{PATH}?key_id={acct.key_id}&symbol=ETHUSDT")
    assert r.status_code == 200 and r.json()["legs"]["stop_loss"]["status"] == "canceled"
    assert [o["type"] for o in _venue_legs(sim, acct, "ETHUSDT") if o["status"] == "NEW"] == [
        "TAKE_PROFIT_MARKET"]
    assert first["client_order_id"]
    acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": "ETHUSDT"})
    wait_until(lambda: _position(acct, "ETHUSDT") is None)


def test_exchange_trailing_stop_and_no_position(venue_account, sim) -> None:  # type: ignore[no-untyped-def]
    acct = venue_account
    sim.set_price("XRPUSDT", "2.0000")
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "XRPUSDT",
                        "trailing_stop": {"callback_rate": "1"}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_position"
    _open(acct, "XRPUSDT", qty="10")
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "XRPUSDT",
                        "trailing_stop": {"callback_rate": "1", "activation_price": "2.1000"}})
    assert r.status_code == 200, r.text
    leg = r.json()["legs"]["trailing_stop"]
    assert leg["status"] == "active" and leg["callback_rate"] == "1"
    assert leg["activation_price"] == "2.1"
    assert len([o for o in _venue_legs(sim, acct, "XRPUSDT") if o["status"] == "NEW"]) == 1
    acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": "XRPUSDT"})
    wait_until(lambda: _position(acct, "XRPUSDT") is None)
    time.sleep(0.5)


def test_oco_after_a_manual_close_takes_the_venue_legs_off(venue_account, sim, listen) -> None:  # type: ignore[no-untyped-def]
    acct = venue_account
    sim.set_price("ETHUSDT", "3000")
    _open(acct, "ETHUSDT", qty="0.100")
    lst = listen(acct.token)
    assert lst.call("subscribe", {"types": ["positions"], "key_id": acct.key_id})["ok"]
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "ETHUSDT",
                        "stop_loss": {"trigger_price": "2900"},
                        "trailing_stop": {"callback_rate": "2", "activation_price": "3100"}})
    assert r.status_code == 200, r.text
    acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": "ETHUSDT"})
    wait_until(lambda: _position(acct, "ETHUSDT") is None)
    wait_until(lambda: _protection(acct, "ETHUSDT") is None, timeout=10)
    assert [o for o in _venue_legs(sim, acct, "ETHUSDT") if o["status"] == "NEW"] == []


def test_exchange_trailing_stop_fires_after_following_the_high(venue_account, sim, listen) -> None:  # type: ignore[no-untyped-def]
    acct = venue_account
    sim.set_price("XRPUSDT", "2.0000")
    _open(acct, "XRPUSDT", qty="10")
    lst = listen(acct.token)
    assert lst.call("subscribe", {"types": ["positions"], "key_id": acct.key_id})["ok"]
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "XRPUSDT",
                        "trailing_stop": {"callback_rate": "5", "activation_price": "2.1000"}})
    assert r.status_code == 200, r.text
    for price in ("2.1500", "2.4000"):       # activated, then a new high: stop near 2.28
        sim.set_price("XRPUSDT", price)
        time.sleep(0.3)
    sim.set_price("XRPUSDT", "2.3000")
    time.sleep(0.8)
    assert _position(acct, "XRPUSDT") is not None
    sim.set_price("XRPUSDT", "2.2500")
    wait_until(lambda: _position(acct, "XRPUSDT") is None)
    legs = wait_until(lambda: (lambda p: p["legs"] if p and p["legs"]["trailing_stop"]
                               and p["legs"]["trailing_stop"]["status"] == "triggered" else None)(
        _protection(acct, "XRPUSDT")))
    assert legs["trailing_stop"]["callback_rate"] == "5"
    closed = wait_until(lambda: [t for t in acct.get("/api/trades?status=closed").json()
                                 if t["symbol"] == "XRPUSDT"])
    assert D(closed[0]["exit_price"]) > D("2.2")
