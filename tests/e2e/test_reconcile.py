"""Reconciliation with real processes: a crash between "order sent" and "fill", and
positions that differ between the exchange and the ledger."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet

from tests.e2e.conftest import Account, wait_until
from tests.support.server import start_server


@pytest.fixture
def restartable(sim, tmp_path, pg_server):  # type: ignore[no-untyped-def]
    """A server on a real PostgreSQL database that a test may kill and start again."""
    from tests.conftest import make_pg_database
    url, drop = make_pg_database(pg_server)
    env = {"RECONCILE_INTERVAL_S": "2", "RECONCILE_REPAIR": "true", "EXCHANGE_TIMEOUT_S": "3",
           # kept across restarts: tokens stay valid and stored secrets stay readable
           "SECRET_KEY": uuid.uuid4().hex, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
           "ADMIN_TOKEN": uuid.uuid4().hex}
    servers = []

    def start():  # type: ignore[no-untyped-def]
        srv = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env,
                           port=servers[0].port if servers else None)
        srv.port = int(srv.url.rsplit(":", 1)[1])
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        srv.stop()
    drop()


def test_kill_9_between_order_sent_and_fill_ends_open_after_restart(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    server = restartable()
    acct = Account(server, sim)
    sim.set_price("BTCUSDT", "60000")
    r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                  "type": "LIMIT", "quantity": "0.010", "price": "58000"})
    trade = r.json()["trade"]
    assert trade["status"] == "pending"
    server.kill()                        # SIGKILL: no shutdown, no flush
    sim.fill(trade["entry_order_id"])    # the fill happens while the server is dead
    server = restartable()
    acct.server = server
    t = wait_until(lambda: [x for x in acct.get("/api/trades?status=open").json()
                       if x["client_order_id"] == trade["client_order_id"]], timeout=20)[0]
    assert t["filled_quantity"] == "0.01" and Decimal(t["entry_price"]) == Decimal("58000")
    # settled by the reconciler (its log line may follow the commit by a moment)
    wait_until(lambda: "reconcile" in server.log(), timeout=5)


def test_position_made_outside_the_ledger_is_reported_and_repaired(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    server = restartable()
    acct = Account(server, sim)
    sim.set_price("ETHUSDT", "3400")
    outside = sim.binance_client(acct.api_key, acct.api_secret)
    outside.futures_create_order(symbol="ETHUSDT", side="SELL", type="MARKET", quantity="0.020")
    result = acct.admin("POST", "/admin/reconcile", json={"user_id": acct.user_id}).json()
    diff = [d for d in result["details"] if d.get("symbol") == "ETHUSDT" and "difference" in d]
    assert diff == [{"key_id": acct.key_id, "symbol": "ETHUSDT", "difference": "exchange_only",
                     "exchange": "-0.02", "ledger": "0", "repaired": True}]
    recon = [t for t in acct.get("/api/trades?status=open").json() if t["type"] == "RECONCILED"]
    assert len(recon) == 1 and recon[0]["side"] == "SELL" and recon[0]["quantity"] == "0.02"
    again = acct.admin("POST", "/admin/reconcile", json={"user_id": acct.user_id}).json()
    assert not [d for d in again["details"] if "difference" in d]
    stats = acct.admin("GET", "/admin/stats").json()["reconcile"]
    assert stats["differences"] >= 1 and stats["repaired"] >= 1
    metrics = acct.admin("GET", "/metrics").text
    line = [m for m in metrics.splitlines() if m.startswith("pushsrv_reconcile_differences_total")]
    assert line and float(line[0].split()[-1]) >= 1
