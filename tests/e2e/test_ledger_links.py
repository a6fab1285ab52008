"""Fills always reach their trade (issue 9, first case), with real processes: an
order whose send timed out fills while the user stream is down; the gap fill stores
the REST fill (Binance userTrades carry no clientOrderId) before the ledger knows the
order id; the reconciler must still link it and open the trade."""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.conftest import make_pg_database
from tests.e2e.conftest import wait_until
from tests.support.server import start_server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, sim, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A server without the periodic reconciler: only the stream's reconnect and
    ``POST /admin/reconcile`` settle trades, so the order of events is the issue's."""
    tmp = tmp_path_factory.mktemp("links")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'links.sqlite3'}"
    else:
        url, drop = make_pg_database(request.getfixturevalue("pg_server"))
    srv = start_server(url, sim.url, sim.ws_url, tmp,
                       extra_env={"EXCHANGE_TIMEOUT_S": "3", "RECONCILE_INTERVAL_S": "0"})
    yield srv
    srv.stop()
    if drop:
        drop()


def _faults_left(sim, api_key: str) -> int:  # type: ignore[no-untyped-def]
    return len([f for f in sim.state()["faults"] if f["api_key"] == api_key])


def test_timed_out_order_filled_while_the_stream_is_down_ends_open(account, listen, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    lst = listen(account.token)
    lst.call("subscribe", {"types": ["orders", "positions"]})
    lst.wait_for("stream_status", lambda d: d["state"] == "live" and d["key_id"] == account.key_id)
    order = {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT"}
    # a first order caches the symbol's rules, so the next exchange call is the order itself
    assert account.post("/api/orders", {**order, "quantity": "0.010", "price": "50000"}).status_code == 201
    mark = lst.mark()
    # hold the stream's reconnect back (its first REST reply), then the order's reply
    sim.add_fault(kind="timeout", api_key=account.api_key, count=1, ms=8000)
    sim.add_fault(kind="drop_ws", api_key=account.api_key)
    wait_until(lambda: _faults_left(sim, account.api_key) == 0, timeout=10)
    sim.add_fault(kind="timeout", api_key=account.api_key, count=1, ms=8000)
    r = account.post("/api/orders", {**order, "quantity": "0.020", "price": "61000"})  # marketable
    assert r.status_code == 504 and r.json()["error"]["code"] == "exchange_timeout", r.text
    filled = [o for o in sim.state(account.api_key)["orders"] if o["orig_qty"] == "0.020"]
    assert filled and filled[0]["status"] == "FILLED"
    lst.wait_for("stream_status", lambda d: d["state"] == "live", timeout=30, since=mark)
    account.admin("POST", "/admin/reconcile", json={"user_id": account.user_id})
    t = wait_until(lambda: [x for x in account.get("/api/trades").json()
                            if x["quantity"] == "0.02" and x["status"] == "open"], timeout=10)[0]
    assert t["filled_quantity"] == "0.02" and Decimal(t["entry_price"]) > 0
    assert t["entry_order_id"] == str(filled[0]["order_id"])
