"""Issue 20, third round, end to end with the real server and simulator processes:

- a triggered leg's fills say ``stop_loss`` / ``take_profit`` / ``trailing_stop`` on the
  LIVE ``fills`` push (not only in the replay), in exchange mode on both venues and in
  server mode;
- risk alerts: ``margin_call`` (Binance ``MARGIN_CALL``), ``liquidation`` / ``adl``
  (the venue's closes, on both venues) and ``liquidation_near`` (the mark within the
  user's ``liquidation_warning_pct`` of the liquidation price, once until it moves back
  out), each an ``alerts`` push and stored (the replay has it);
- ``liquidation_price`` in ``positions`` is known within 5 s of the position opening.
"""
from __future__ import annotations

import time
from decimal import Decimal as D

import pytest

from tests.e2e.conftest import Listener, wait_until
from tests.e2e.test_protection_exchange import VenueAccount

pytestmark = pytest.mark.timeout(180)
PATH = "/api/positions/protection"


class RiskListener(Listener):
    """A Listener that also records ``fills`` and ``alerts``."""

    EVENTS = Listener.EVENTS + ("fills", "alerts")


@pytest.fixture
def listen_all(server):  # type: ignore[no-untyped-def]
    opened: list[Listener] = []

    def open_listener(token: str) -> RiskListener:
        lst = RiskListener(server.url, token)
        opened.append(lst)
        return lst
    yield open_listener
    for lst in opened:
        lst.close()


@pytest.fixture(params=["binance", "bybit"])
def venue_account(request, server, sim):  # type: ignore[no-untyped-def]
    return VenueAccount(server, sim, request.param)


def _open(acct, symbol: str = "BTCUSDT", side: str = "BUY", qty: str = "0.010") -> None:  # type: ignore[no-untyped-def]
    r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": symbol, "side": side,
                                  "type": "MARKET", "quantity": qty})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text


def _position(acct, symbol: str = "BTCUSDT") -> dict | None:  # type: ignore[no-untyped-def]
    data = acct.get(f"/api/account/positions?key_id={acct.key_id}").json()["data"]
    return next((p for p in data if p["symbol"] == symbol), None)


def _subscribe(lst, acct, types) -> None:  # type: ignore[no-untyped-def]
    ack = lst.call("subscribe", {"types": types, "key_id": acct.key_id})
    assert ack["ok"], ack


def _alert(lst, kind: str, timeout: float = 15.0) -> dict:  # type: ignore[no-untyped-def]
    env = lst.wait_for("alerts", lambda d: any(a["kind"] == kind for a in d["data"]), timeout)
    return next(a for a in env["data"] if a["kind"] == kind)


@pytest.mark.parametrize("kind,trigger,move", [("stop_loss", "59000", "58900"),
                                               ("take_profit", "61000", "61100")])
def test_exchange_leg_fill_pushed_with_its_reason(venue_account, sim, listen_all, kind,  # type: ignore[no-untyped-def]
                                                   trigger, move) -> None:
    acct = venue_account
    sim.set_price("BTCUSDT", "60000")
    _open(acct)
    lst = listen_all(acct.token)
    _subscribe(lst, acct, ["positions", "fills"])
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "BTCUSDT",
                        kind: {"trigger_price": trigger}})
    assert r.status_code == 200 and r.json()["legs"][kind]["status"] == "active", r.text
    since = lst.mark()
    sim.set_price("BTCUSDT", move)
    # the first fills push of the leg's order already names the leg (live, not replayed)
    env = lst.wait_for("fills", lambda d: any(f["side"] == "SELL" for f in d["data"]),
                       since=since)
    sells = [f for f in env["data"] if f["side"] == "SELL"]
    assert env["source"] != "cache"
    assert {f["reason"] for f in sells} == {kind}, env
    wait_until(lambda: _position(acct) is None)


def test_server_leg_fill_pushed_with_its_reason(account, sim, listen_all) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    _open(account)
    lst = listen_all(account.token)
    _subscribe(lst, account, ["positions", "fills"])
    r = account.put(PATH, {"key_id": account.key_id, "symbol": "BTCUSDT", "mode": "server",
                           "trailing_stop": {"callback_rate": "1"}})
    assert r.status_code == 200, r.text
    time.sleep(0.5)  # the guard's market stream is up
    since = lst.mark()
    sim.set_price("BTCUSDT", "60600")  # a new high: the stop follows it
    time.sleep(0.3)
    sim.set_price("BTCUSDT", "59900")  # more than 1 % below the high: fires
    env = lst.wait_for("fills", lambda d: any(f["side"] == "SELL" for f in d["data"]),
                       since=since)
    assert env["source"] != "cache"
    assert {f["reason"] for f in env["data"] if f["side"] == "SELL"} == {"trailing_stop"}, env


def test_liquidation_and_adl_alerts(venue_account, sim, listen_all) -> None:  # type: ignore[no-untyped-def]
    acct = venue_account
    sim.set_price("BTCUSDT", "60000")
    lst = listen_all(acct.token)
    _subscribe(lst, acct, ["positions", "fills"])
    assert lst.call("subscribe", {"types": ["alerts"]})["ok"]
    lst.wait_for("alerts", lambda d: d["data"] == [])
    for kind in ("liquidation", "adl"):
        _open(acct)
        wait_until(lambda: _position(acct) is not None)
        since = lst.mark()
        sim._call("POST", "/_sim/liquidate", {"api_key": acct.api_key, "symbol": "BTCUSDT",
                                               "kind": kind})
        fills = lst.wait_for("fills", lambda d, kind=kind: any(f["reason"] == kind for f in d["data"]),
                             since=since)
        alert = _alert(lst, kind)
        assert alert["symbol"] == "BTCUSDT" and alert["key_id"] == acct.key_id
        order_ids = {f["order_id"] for f in fills["data"] if f["reason"] == kind}
        assert alert["detail"]["order_id"] in order_ids
        wait_until(lambda: _position(acct) is None)
    time.sleep(1.0)  # no second alert for the same venue order (e.g. a gap fill)
    kinds = [a["kind"] for _, d in lst.all if _ == "alerts" for a in d["data"]]
    assert sorted(kinds) == ["adl", "liquidation"]


def test_margin_call_alert_binance(account, sim, listen_all) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    _open(account)
    lst = listen_all(account.token)
    _subscribe(lst, account, ["positions"])
    assert lst.call("subscribe", {"types": ["alerts"]})["ok"]
    lst.wait_for("positions", lambda d: bool(d["data"]))
    sim._call("POST", "/_sim/margin_call", {"api_key": account.api_key})
    alert = _alert(lst, "margin_call")
    assert alert["symbol"] == "BTCUSDT" and alert["detail"]["side"] == "LONG"
    assert D(alert["detail"]["mark_price"]) == D("60000")
    # durable: a new subscriber resuming from the start gets it again
    again = listen_all(account.token)
    assert again.call("subscribe", {"types": ["alerts"], "since": {"alerts": {"epoch": "durable", "seq": 0}}})["ok"]
    _alert(again, "margin_call")


def test_liquidation_near_once_until_it_moves_out(venue_account, sim, listen_all) -> None:  # type: ignore[no-untyped-def]
    account = venue_account
    sim.set_price("BTCUSDT", "60000")
    _open(account, qty="1.000")   # 60k notional on a 10k wallet: liquidation ~17 % below
    lst = listen_all(account.token)
    _subscribe(lst, account, ["positions"])
    assert lst.call("subscribe", {"types": ["alerts"]})["ok"]
    started = time.monotonic()
    pos = lst.wait_for("positions", lambda d: bool(d["data"]) and
                       d["data"][0]["liquidation_price"] not in (None, "0"), timeout=10)
    # the liquidation price is known within 5 s of the position opening
    assert time.monotonic() - started < 5.0, pos
    liq = D(pos["data"][0]["liquidation_price"])
    assert D(0) < liq < D(60000)
    near = (liq * D("1.05")).quantize(D("0.1"))       # within 10 % (the default)
    far = (liq * D("1.20")).quantize(D("0.1"))
    time.sleep(1.0)
    assert not [a for name, d in lst.all if name == "alerts" for a in d["data"]]  # far yet
    since = lst.mark()
    sim.set_price("BTCUSDT", near)
    alert = _alert(lst, "liquidation_near")
    assert alert["symbol"] == "BTCUSDT" and D(alert["detail"]["liquidation_price"]) > 0
    sim.set_price("BTCUSDT", near - 10)  # still near: no second alert
    time.sleep(1.0)
    count = lambda: sum(1 for name, d in lst.all[since:] if name == "alerts"  # noqa: E731
                        for a in d["data"] if a["kind"] == "liquidation_near")
    assert count() == 1
    sim.set_price("BTCUSDT", far)        # back out ...
    time.sleep(1.0)
    sim.set_price("BTCUSDT", near)       # ... and in again: a second alert
    wait_until(lambda: count() == 2)
