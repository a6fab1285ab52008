"""CONTRACT.md "Risk figures that are true" on real processes: ``pnl.realized_pnl`` (push
and GET /api/account/pnl) is the sum of the trades' ``realized_pnl`` plus the funding
fees, with the stream live, with no stream, and after a restart; on SQLite and
PostgreSQL. Trades say what they still hold (``open_quantity``)."""
from __future__ import annotations

import time
from decimal import Decimal

from tests.e2e.conftest import Account, Listener, queued_pair, wait_until
from tests.e2e.test_ledger_restart import restartable  # noqa: F401 (the fixture)

SYMBOL = "XRPUSDT"
# the write-behind finds a change within 0.25 s; the stream manager then re-reads the
# figure after REALIZED_REFRESH_S (1 s today); the rest is the database and the push
PUSH_WITHIN_S = 2.5


def _ledger_figure(acct: Account) -> Decimal:
    trades = acct.get(f"/api/trades?key_id={acct.key_id}").json()
    funding = acct.get(f"/api/funding?key_id={acct.key_id}").json()
    return (sum((Decimal(t["realized_pnl"]) for t in trades if t["realized_pnl"] is not None),
                Decimal(0)) + sum((Decimal(f["amount"]) for f in funding), Decimal(0)))


def _rest_realized(acct: Account) -> Decimal:
    r = acct.get(f"/api/account/pnl?key_id={acct.key_id}")
    assert r.status_code == 200, r.text
    return Decimal(r.json()["data"]["realized_pnl"])


def _pushed_realized(lst: Listener, acct: Account, figure: Decimal, since: int,
                     timeout: float) -> dict:
    return lst.wait_for("pnl", lambda d: d["key_id"] == acct.key_id
                        and Decimal(d["data"]["realized_pnl"]) == figure, timeout, since)


def _open(acct: Account, qty: str = "100") -> dict:
    r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": SYMBOL, "side": "BUY",
                                  "type": "MARKET", "quantity": qty})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text
    return r.json()["trade"]


def _close_by_exit(acct: Account) -> None:
    r = acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": SYMBOL})
    assert r.status_code == 202, r.text
    exit_id = r.json()["exit"]["id"]
    def finished() -> dict | None:
        exit_ = acct.get(f"/api/exits/{exit_id}").json()["exit"]
        return exit_ if exit_["status"] != "working" else None
    done = wait_until(finished)
    assert done["status"] == "filled", done


def _close_by_order(acct: Account, qty: str = "100") -> dict:
    r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": SYMBOL, "side": "SELL",
                                  "type": "MARKET", "quantity": qty, "reduce_only": True})
    assert r.status_code == 201 and r.json()["trade"]["status"] in ("open", "closed"), r.text
    return r.json()["trade"]


def _closed_out(acct: Account) -> bool:
    trades = acct.get(f"/api/trades?key_id={acct.key_id}").json()
    return bool(trades) and all(t["open_quantity"] == "0" for t in trades) and all(
        t["status"] in ("closed", "canceled", "failed") for t in trades)


def test_realized_pnl_is_the_ledgers_live_without_a_stream_and_after_a_restart(sim, restartable) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = restartable()
    acct = Account(server, sim)
    sim.set_price(SYMBOL, "1.0000")
    lst = Listener(server.url, acct.token)
    try:
        assert lst.call("subscribe", {"types": ["positions", "pnl"]})["ok"]
        lst.wait_for("stream_status", lambda d: d["key_id"] == acct.key_id and d["state"] == "live")
        lst.wait_for("pnl", lambda d: d["key_id"] == acct.key_id)

        # round trip 1: open, part of it held, then closed by the exit chase
        first = _open(acct)
        trade = next(t for t in acct.get("/api/trades").json() if t["id"] == first["id"])
        assert trade["open_quantity"] == "100"
        sim.set_price(SYMBOL, "1.0500")
        mark = lst.mark()
        _close_by_exit(acct)
        closed_at = time.monotonic()
        wait_until(lambda: _closed_out(acct), timeout=10)
        figure = _ledger_figure(acct)
        assert figure != 0
        _pushed_realized(lst, acct, figure, mark, PUSH_WITHIN_S + 1)
        assert time.monotonic() - closed_at < PUSH_WITHIN_S + 1
        assert _rest_realized(acct) == figure

        # round trip 2: closed by a reduce-only order, at a loss
        sim.set_price(SYMBOL, "1.0000")
        _open(acct)
        sim.set_price(SYMBOL, "0.9800")
        mark = lst.mark()
        _close_by_order(acct)
        sent = time.monotonic()
        wait_until(lambda: _closed_out(acct), timeout=10)
        second = _ledger_figure(acct)
        assert second != figure
        pushed = _pushed_realized(lst, acct, second, mark, PUSH_WITHIN_S + 1)
        latency = time.monotonic() - sent
        assert latency < PUSH_WITHIN_S, f"pnl push {latency:.2f} s after the close"
        assert Decimal(pushed["data"]["realized_pnl_today"]) == second
        assert _rest_realized(acct) == second
    finally:
        lst.close()

    # the same figure from a server that never ran the stream (REST only), then live
    server.kill()
    acct.server = restartable()
    assert _rest_realized(acct) == second
    lst = Listener(acct.server.url, acct.token)
    try:
        assert lst.call("subscribe", {"types": ["positions", "pnl"]})["ok"]
        _pushed_realized(lst, acct, second, 0, 15)
        assert _rest_realized(acct) == second == _ledger_figure(acct)
    finally:
        lst.close()


def test_two_processes_push_the_ledgers_figure_whichever_wrote_the_fills(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    """The stream runs in A; the orders go through B, whose order service stores the
    fills first: A's copy of them writes nothing, yet A's push (relayed to both) and
    both processes' REST answer carry the new figure."""
    with queued_pair(sim, pg_server, redis_url, tmp_path) as (a, b, listeners):
        acct = Account(a, sim)
        sim.set_price(SYMBOL, "1.0000")
        la = Listener(a.url, acct.token)
        listeners.append(la)
        assert la.call("subscribe", {"types": ["positions", "pnl"]})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        lb = Listener(b.url, acct.token)
        listeners.append(lb)
        assert lb.call("subscribe", {"types": ["positions", "pnl"]})["ok"]
        lb.wait_for("pnl")
        acct.server = b
        _open(acct)
        sim.set_price(SYMBOL, "1.0300")
        mark_a, mark_b = la.mark(), lb.mark()
        _close_by_order(acct)
        wait_until(lambda: _closed_out(acct), timeout=10)
        figure = _ledger_figure(acct)
        assert figure != 0
        for lst, mark in ((la, mark_a), (lb, mark_b)):
            _pushed_realized(lst, acct, figure, mark, PUSH_WITHIN_S + 1)
        for server in (a, b):
            acct.server = server
            assert _rest_realized(acct) == figure


def test_a_bybit_key_pushes_the_ledgers_figure(sim, restartable) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    import uuid
    server = restartable()
    acct = Account(server, sim)
    api_key, secret = "byk" + uuid.uuid4().hex, "bys" + uuid.uuid4().hex
    sim.create_account(api_key, secret, balances={"USDT": "5000"})
    r = acct.post("/api/exchange/keys", {"exchange": "bybit", "api_key": api_key,
                                         "api_secret": secret, "label": "bybit"})
    assert r.status_code == 201, r.text
    acct.key_id = r.json()["id"]
    sim.set_price(SYMBOL, "1.0000")
    lst = Listener(server.url, acct.token)
    try:
        assert lst.call("subscribe", {"types": ["positions", "pnl"], "key_id": acct.key_id})["ok"]
        lst.wait_for("stream_status", lambda d: d["key_id"] == acct.key_id and d["state"] == "live")
        for up, down in (("1.0400", "1.0000"), ("0.9700", "1.0000")):
            _open(acct)
            sim.set_price(SYMBOL, up)
            mark = lst.mark()
            _close_by_order(acct)
            wait_until(lambda: _closed_out(acct), timeout=10)
            figure = _ledger_figure(acct)
            assert figure != 0
            _pushed_realized(lst, acct, figure, mark, PUSH_WITHIN_S + 1)
            assert _rest_realized(acct) == figure
            sim.set_price(SYMBOL, down)
    finally:
        lst.close()


def _sim_control(sim, path: str, body: dict):  # type: ignore[no-untyped-def]
    import pytest
    import requests
    r = requests.post(sim.url + path, json=body, timeout=10)
    if r.status_code == 404 and path in ("/_sim/funding", "/_sim/liquidate"):
        pytest.skip(f"the simulator has no {path} (the venue work adds it)")
    assert r.status_code == 200, r.text
    return r.json()


def test_funding_and_a_liquidation_reach_the_ledger_and_the_figure(sim, restartable) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """The venue charges funding (Binance ACCOUNT_UPDATE FUNDING_FEE and an income row)
    and then liquidates the position (``autoclose-`` order): a funding row, a fill
    marked ``liquidation`` in ``fills`` and in the ledger, the trade closed, and the
    pushed figure = trades + funding."""
    from tests.e2e.test_push_continuity import FillsListener
    server = restartable()
    acct = Account(server, sim)
    sim.set_price(SYMBOL, "1.0000")
    lst = FillsListener(server.url, acct.token)
    try:
        assert lst.call("subscribe", {"types": ["positions", "pnl", "fills"]})["ok"]
        lst.wait_for("stream_status", lambda d: d["key_id"] == acct.key_id and d["state"] == "live")
        _open(acct)
        mark = lst.mark()
        _sim_control(sim, "/_sim/funding", {"symbol": SYMBOL, "rate": "0.001"})
        rows = wait_until(lambda: acct.get(f"/api/funding?key_id={acct.key_id}").json(), timeout=10)
        assert len(rows) == 1 and rows[0]["symbol"] in (SYMBOL, "") and Decimal(rows[0]["amount"]) < 0
        _pushed_realized(lst, acct, _ledger_figure(acct), mark, PUSH_WITHIN_S + 1)

        mark = lst.mark()
        _sim_control(sim, "/_sim/liquidate", {"api_key": acct.api_key, "symbol": SYMBOL})
        pushed = lst.wait_for("fills", lambda d: any(r["reason"] == "liquidation" for r in d["data"]),
                              timeout=10, since=mark)
        assert pushed["data"][0]["symbol"] == SYMBOL
        wait_until(lambda: _closed_out(acct), timeout=10)
        figure = _ledger_figure(acct)
        _pushed_realized(lst, acct, figure, mark, PUSH_WITHIN_S + 1)
        assert _rest_realized(acct) == figure
        # the replay from the ledger says the same
        replay = FillsListener(server.url, acct.token)
        try:
            ack = replay.call("subscribe", {"types": ["fills"], "key_id": acct.key_id,
                                            "since": {"fills": {"time": 1}}})
            assert ack["ok"], ack
            got = replay.wait_for("fills", lambda d: any(r["reason"] == "liquidation" for r in d["data"]))
            assert sum(r["reason"] == "liquidation" for r in got["data"]) >= 1
        finally:
            replay.close()
    finally:
        lst.close()
