"""Protection legs end to end (CONTRACT.md "Protection"), with the real server and
simulator processes: server-mode rules fire on the shared market stream's ticks and
close the position by the exit; bad input is refused naming the field and changes
nothing; a rule (and a trailing stop's extreme) outlives a kill -9."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet

from tests.conftest import make_pg_database
from tests.e2e.conftest import Account, wait_until
from tests.support.server import start_server

PATH = "/api/positions/protection"


def _open(account, side: str = "BUY", qty: str = "0.010", symbol: str = "BTCUSDT") -> dict:  # type: ignore[no-untyped-def]
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": symbol, "side": side,
                                     "type": "MARKET", "quantity": qty})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text
    return r.json()["trade"]


def _protection(account, symbol: str = "BTCUSDT") -> dict | None:  # type: ignore[no-untyped-def]
    r = account.get(f"{PATH}?key_id={account.key_id}")
    assert r.status_code == 200, r.text
    return next((p for p in r.json() if p["symbol"] == symbol), None)


def _legs_of(account, symbol: str) -> dict:  # type: ignore[no-untyped-def]
    """The newest leg of each kind, canceled ones included (DELETE's view is not used:
    the server's own rows through GET, plus what GET hides)."""
    p = _protection(account, symbol)
    return p["legs"] if p else {}


def _position(account, symbol: str) -> dict | None:  # type: ignore[no-untyped-def]
    data = account.get(f"/api/account/positions?key_id={account.key_id}").json()["data"]
    return next((p for p in data if p["symbol"] == symbol), None)


def _sim_orders(sim, account, prefix: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [o for o in sim.state(account.api_key)["orders"]
            if (o.get("client_order_id") or "").startswith(prefix)]


def test_server_stop_loss_fires_closes_by_the_exit_and_cancels_the_others(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    _open(account)
    r = account.put(PATH, {"key_id": account.key_id, "symbol": "BTCUSDT", "mode": "server",
                           "stop_loss": {"trigger_price": "59000"},
                           "take_profit": {"trigger_price": "62000"},
                           "trailing_stop": {"callback_rate": "2", "activation_price": "61000"}})
    assert r.status_code == 200, r.text
    prot = r.json()
    assert prot["mode"] == "server" and prot["side"] == "LONG" and prot["working_type"] == "MARK_PRICE"
    assert {k: v["status"] for k, v in prot["legs"].items()} == {
        "stop_loss": "active", "take_profit": "active", "trailing_stop": "active"}
    assert prot["legs"]["stop_loss"]["trigger_price"] == "59000"
    assert prot["legs"]["trailing_stop"]["callback_rate"] == "2"
    time.sleep(0.5)                      # the guard's market stream is up
    sim.set_price("BTCUSDT", "59500")    # above the stop: nothing
    time.sleep(1.0)
    assert _sim_orders(sim, account, "exit-") == []
    before_ms = int(time.time() * 1000)
    sim.set_price("BTCUSDT", "58900")    # crosses the stop-loss
    legs = wait_until(lambda: (lambda p: p["legs"] if p and p["legs"]["stop_loss"]["status"]
                               == "triggered" else None)(_protection(account)))
    assert legs["take_profit"] is None and legs["trailing_stop"] is None  # canceled: not shown
    wait_until(lambda: _position(account, "BTCUSDT") is None)
    first = min(_sim_orders(sim, account, "exit-"), key=lambda o: o["time"])
    assert first["side"] == "SELL" and first["time_in_force"] == "FOK"
    print(f"tick -> exit's first order: {first['time'] - before_ms} ms (machine shared)")
    assert first["time"] - before_ms < 1000
    removed = account.delete(f"{PATH}?key_id={account.key_id}&symbol=BTCUSDT").json()
    assert removed["legs"]["stop_loss"]["status"] == "triggered"
    assert removed["legs"]["take_profit"]["status"] == "canceled"
    assert removed["legs"]["trailing_stop"]["status"] == "canceled"
    closed = account.get("/api/trades?status=closed").json()
    assert closed and closed[0]["symbol"] == "BTCUSDT"


def test_server_take_profit_of_a_short_and_a_leg_removed_with_null(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("ETHUSDT", "3000")
    _open(account, side="SELL", symbol="ETHUSDT")
    body = {"key_id": account.key_id, "symbol": "ETHUSDT", "mode": "server",
            "stop_loss": {"trigger_price": "3100"}, "take_profit": {"trigger_price": "2900"}}
    assert account.put(PATH, body).status_code == 200
    r = account.put(PATH, {"key_id": account.key_id, "symbol": "ETHUSDT", "stop_loss": None})
    assert r.status_code == 200, r.text
    legs = r.json()["legs"]
    assert legs["stop_loss"] is None and legs["take_profit"]["status"] == "active"
    assert r.json()["mode"] == "server"  # kept from the live legs
    time.sleep(0.5)
    sim.set_price("ETHUSDT", "3200")     # the removed stop would have fired
    time.sleep(1.0)
    assert _position(account, "ETHUSDT") is not None
    sim.set_price("ETHUSDT", "2899")
    wait_until(lambda: _position(account, "ETHUSDT") is None)
    assert _legs_of(account, "ETHUSDT")["take_profit"]["status"] == "triggered"


def test_server_trailing_stop_follows_the_high(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("XRPUSDT", "2.0000")
    _open(account, qty="10", symbol="XRPUSDT")
    r = account.put(PATH, {"key_id": account.key_id, "symbol": "XRPUSDT", "mode": "server",
                           "trailing_stop": {"callback_rate": "5", "activation_price": "2.1000"}})
    assert r.status_code == 200, r.text
    time.sleep(0.5)
    for price in ("2.0500", "2.1500", "2.4000"):   # activated at 2.15, new high 2.40
        sim.set_price("XRPUSDT", price)
        time.sleep(0.4)
    sim.set_price("XRPUSDT", "2.2900")             # 2.40 * 0.95 = 2.28: not yet
    time.sleep(1.0)
    assert _position(account, "XRPUSDT") is not None
    sim.set_price("XRPUSDT", "2.2700")
    wait_until(lambda: _position(account, "XRPUSDT") is None)
    assert _legs_of(account, "XRPUSDT")["trailing_stop"]["status"] == "triggered"


def test_bad_input_is_refused_naming_the_field_and_changes_nothing(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    base = {"key_id": account.key_id, "symbol": "BTCUSDT", "mode": "server"}
    r = account.put(PATH, {**base, "stop_loss": {"trigger_price": "59000"}})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_position"
    _open(account)
    assert account.put(PATH, {**base, "stop_loss": {"trigger_price": "58000"}}).status_code == 200
    cases = [
        ({"stop_loss": {"trigger_price": "60500"}}, "stop_loss.trigger_price", "below the mark"),
        ({"take_profit": {"trigger_price": "59500"}}, "take_profit.trigger_price", "above the mark"),
        ({"stop_loss": {"trigger_price": "59000.05"}}, "stop_loss.trigger_price", "tick size 0.1"),
        ({"trailing_stop": {"callback_rate": "0.05"}}, "trailing_stop.callback_rate", "between 0.1 and 10"),
        ({"trailing_stop": {"callback_rate": "10.5"}}, "trailing_stop.callback_rate", "between 0.1 and 10"),
        ({"trailing_stop": {"callback_rate": "1", "activation_price": "59000"}},
         "trailing_stop.activation_price", "above the mark"),
        ({"stop_loss": {"trigger_price": 59000}}, "stop_loss.trigger_price", "decimal string"),
        ({"mode": "paper"}, "mode", ""),
        # a valid leg beside a bad one: neither is written
        ({"take_profit": {"trigger_price": "65000"}, "stop_loss": {"trigger_price": "61000"}},
         "stop_loss.trigger_price", "below the mark"),
    ]
    for extra, field, words in cases:
        r = account.put(PATH, {**base, **extra})
        assert r.status_code == 400, (extra, r.text)
        err = r.json()["error"]
        assert err["field"] == field and words in err["message"], (extra, err)
    legs = _protection(account)["legs"]
    assert legs["stop_loss"]["trigger_price"] == "58000" and legs["take_profit"] is None
    assert legs["trailing_stop"] is None
    r = account.get(f"{PATH}?key_id=999999")
    assert r.status_code == 404
    r = account.delete(f"{PATH}?key_id={account.key_id}")
    assert r.status_code == 400 and r.json()["error"]["field"] == "symbol"
    account.delete(f"{PATH}?key_id={account.key_id}&symbol=BTCUSDT")
    account.post("/api/positions/close", {"key_id": account.key_id, "symbol": "BTCUSDT"})
    wait_until(lambda: _position(account, "BTCUSDT") is None)


# ---- restart ---------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def restartable(request, sim, tmp_path):  # type: ignore[no-untyped-def]
    """``start()`` a server on one database and port, again after a kill."""
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'protect.sqlite3'}"
    else:
        url, drop = make_pg_database(request.getfixturevalue("pg_server"))
    env = {"EXCHANGE_TIMEOUT_S": "2", "RECONCILE_INTERVAL_S": "0", "SECRET_KEY": uuid.uuid4().hex,
           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": uuid.uuid4().hex}
    servers: list = []

    def start():  # type: ignore[no-untyped-def]
        port = int(servers[0].url.rsplit(":", 1)[1]) if servers else None
        servers.append(start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env, port=port))
        return servers[-1]
    start.url = url  # type: ignore[attr-defined]
    yield start
    for srv in servers:
        srv.stop()
    if drop:
        drop()


def test_rules_and_a_trailing_extreme_outlive_a_kill(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    server = restartable()
    acct = Account(server, sim)
    sim.set_price("ETHUSDT", "3000")
    _open(acct, qty="0.100", symbol="ETHUSDT")
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "ETHUSDT", "mode": "server",
                        "stop_loss": {"trigger_price": "2500"},
                        "trailing_stop": {"callback_rate": "1", "activation_price": "3100"}})
    assert r.status_code == 200, r.text
    time.sleep(0.5)
    sim.set_price("ETHUSDT", "3150")          # activates the trailing stop
    time.sleep(0.5)
    sim.set_price("ETHUSDT", "3300")          # new high: stop at 3267
    # the extreme is written (about every second): wait for its row to say so
    from sqlalchemy import create_engine, text
    engine = create_engine(restartable.url)

    def extreme():  # type: ignore[no-untyped-def]
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT extreme_price FROM protection_legs WHERE key_id = :k AND symbol = 'ETHUSDT' "
                "AND kind = 'trailing_stop'"), {"k": acct.key_id}).scalar()
    try:
        wait_until(lambda: extreme() is not None and Decimal(extreme()) == Decimal(3300))
    finally:
        engine.dispose()
    server.kill()
    sim.set_price("ETHUSDT", "3280")          # while down: above the stop, nothing to do
    server = restartable()
    time.sleep(1.0)
    assert _position(acct, "ETHUSDT") is not None
    sim.set_price("ETHUSDT", "3266")          # under 3300 * 0.99: fires only if 3300 was kept
    wait_until(lambda: _position(acct, "ETHUSDT") is None)
    legs = _legs_of(acct, "ETHUSDT")
    assert legs["trailing_stop"]["status"] == "triggered" and legs["stop_loss"] is None
    exits = [o for o in sim.state(acct.api_key)["orders"]
             if (o.get("client_order_id") or "").startswith("exit-")]
    assert exits and all(Decimal(o["price"]) < Decimal(3300) for o in exits)


def test_oco_after_a_manual_close_cancels_the_server_rules(account, sim, listen) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("ETHUSDT", "3000")
    _open(account, qty="0.100", symbol="ETHUSDT")
    lst = listen(account.token)   # the account stream reports the position's end at once
    assert lst.call("subscribe", {"types": ["positions"], "key_id": account.key_id})["ok"]
    r = account.put(PATH, {"key_id": account.key_id, "symbol": "ETHUSDT", "mode": "server",
                           "stop_loss": {"trigger_price": "2900"},
                           "take_profit": {"trigger_price": "3100"}})
    assert r.status_code == 200, r.text
    pos = lst.wait_for("positions", lambda d: any(p["symbol"] == "ETHUSDT" and p["stop_loss"] == "2900"
                                                  for p in d["data"]))
    assert [p["take_profit"] for p in pos["data"] if p["symbol"] == "ETHUSDT"] == ["3100"]
    time.sleep(2.1)   # older than a PUT's own grace
    account.post("/api/positions/close", {"key_id": account.key_id, "symbol": "ETHUSDT"})
    wait_until(lambda: _position(account, "ETHUSDT") is None)
    wait_until(lambda: _protection(account, "ETHUSDT") is None, timeout=8)  # both canceled
    removed = account.delete(f"{PATH}?key_id={account.key_id}&symbol=ETHUSDT").json()
    assert removed["legs"]["stop_loss"]["status"] == "canceled"
    assert removed["legs"]["stop_loss"]["error_code"] == "position_closed"
    sim.set_price("ETHUSDT", "2800")   # nothing left to fire
    time.sleep(1.0)
    assert [o for o in sim.state(account.api_key)["orders"]
            if (o.get("client_order_id") or "").startswith("exit-")
            and o["symbol"] == "ETHUSDT"].__len__() == 1   # the manual close only


def test_an_exchange_leg_that_fired_while_the_server_was_down_is_recorded_at_restart(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    server = restartable()
    acct = Account(server, sim)
    sim.set_price("BTCUSDT", "60000")
    trade = _open(acct)
    r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "BTCUSDT",
                        "stop_loss": {"trigger_price": "59000"},
                        "take_profit": {"trigger_price": "61000"}})
    assert r.status_code == 200 and r.json()["mode"] == "exchange", r.text
    server.kill()
    sim.set_price("BTCUSDT", "61050")        # the take-profit fires on the venue meanwhile
    time.sleep(1.0)
    server = restartable()
    legs = wait_until(lambda: (lambda p: p["legs"] if p and p["legs"]["take_profit"]
                               and p["legs"]["take_profit"]["status"] == "triggered" else None)(
        _protection(acct, "BTCUSDT")))
    assert legs["stop_loss"] is None                    # canceled (OCO)
    closed = wait_until(lambda: [t for t in acct.get("/api/trades?status=closed").json()
                                 if t["client_order_id"] == trade["client_order_id"]])
    assert Decimal(closed[0]["exit_price"]) >= Decimal(61000)
    assert Decimal(closed[0]["realized_pnl"]) > 0


def test_pending_legs_left_by_a_kill_are_settled_at_restart(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    """kill -9 between a leg's row and the venue's answer: one leg reached the venue
    (pending -> active), one never did (placed again while the position lasts)."""
    from sqlalchemy import create_engine, text

    from exchanges.binance.client import BinanceFuturesClient
    from exchanges.types import ProtectionKind, VenueEndpoints

    server = restartable()
    acct = Account(server, sim)
    sim.set_price("BTCUSDT", "60000")
    _open(acct)
    server.kill()
    now = int(time.time() * 1000)
    engine = create_engine(restartable.url)
    with engine.begin() as conn:
        for kind, coid, price, age_ms in (("stop_loss", "psl-reached-" + uuid.uuid4().hex[:8], "59000", 0),
                                          ("take_profit", "ptp-lost-" + uuid.uuid4().hex[:8], "61000", 60_000)):
            conn.execute(text(
                "INSERT INTO protection_legs (user_id, key_id, exchange, symbol, side, kind, mode, "
                "working_type, trigger_price, status, client_order_id, created_at, updated_at) VALUES "
                "(:u, :k, 'binance', 'BTCUSDT', 'LONG', :kind, 'exchange', 'MARK_PRICE', :p, 'pending', "
                ":c, :t, :t)"), {"u": acct.user_id, "k": acct.key_id, "kind": kind, "p": price,
                                 "c": coid, "t": now - age_ms})
            if kind == "stop_loss":
                reached = coid
    engine.dispose()
    venue = BinanceFuturesClient(acct.api_key, acct.api_secret, testnet=False,
                                 endpoints=VenueEndpoints(sim.url, sim.ws_url), timeout_s=5)
    held = venue.place_protection_leg("BTCUSDT", "LONG", ProtectionKind.STOP_LOSS, reached,
                                      trigger_price=Decimal(59000))
    venue.close()
    restartable()
    legs = wait_until(lambda: (lambda p: p["legs"] if p and p["legs"]["stop_loss"]
                               and p["legs"]["stop_loss"]["status"] == "active"
                               and p["legs"]["take_profit"]
                               and p["legs"]["take_profit"]["status"] == "active" else None)(
        _protection(acct)), timeout=30)
    assert legs["stop_loss"]["client_order_id"] == reached
    assert legs["stop_loss"]["order_id"] == held.order_id
    assert legs["take_profit"]["client_order_id"] != reached and legs["take_profit"]["order_id"]
    types = sorted(o["type"] for o in sim.state(acct.api_key)["orders"]
                   if o.get("trigger_price") and o["status"] == "NEW")
    assert types == ["STOP_MARKET", "TAKE_PROFIT_MARKET"]
