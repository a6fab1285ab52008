"""PostgreSQL unavailable for 10 s while fills arrive: no event lost, the write-behind
queue drains afterwards (fills, order states and the position), and pushes never
stop meanwhile."""
from __future__ import annotations

import re
import time
import uuid
from decimal import Decimal

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from tests.conftest import make_pg_database
from tests.e2e.conftest import Account, Listener, wait_until
from tests.support.server import free_port, start_server
from tests.support.tcpproxy import TcpProxy


def _live_account(server, sim):  # type: ignore[no-untyped-def]
    """A new account on ``server`` with BTCUSDT at 60000 and a socket subscribed to
    orders and positions, once its stream is live; ``(account, listener)``."""
    acct = Account(server, sim)
    sim.set_price("BTCUSDT", "60000")
    lst = Listener(server.url, acct.token)
    lst.call("subscribe", {"types": ["orders", "positions"]})
    lst.wait_for("stream_status", lambda d: d["state"] == "live")
    return acct, lst


def test_database_outage_loses_no_fill_and_pushes_go_on(sim, pg_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, drop = make_pg_database(pg_server)
    proxy = TcpProxy(("127.0.0.1", 5432), free_port())
    proxy.restore()
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    server = start_server(proxied, sim.url, sim.ws_url, tmp_path,
                          extra_env={"RECONCILE_INTERVAL_S": "0"})  # only write-behind may help
    lst = None
    try:
        acct, lst = _live_account(server, sim)
        trades = []
        for price in ("50000", "50100", "50200"):
            r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                          "type": "LIMIT", "quantity": "0.010", "price": price})
            assert r.status_code == 201, r.text
            trades.append(r.json()["trade"])
        lst.wait_for("orders", lambda d: len(d["data"]) == 3)

        proxy.cut()
        cut_at = time.monotonic()
        mark = lst.mark()
        for t in trades:
            sim.fill(t["entry_order_id"])
        # pushes go on without the database
        lst.wait_for("positions", lambda d: d["data"] and d["data"][0]["size"] == "0.03", since=mark)
        lst.wait_for("orders", lambda d: d["data"] == [], since=mark)
        wait_until(lambda: not acct.admin("GET", "/admin/stats").json()["write_behind"]["healthy"],
              timeout=10)
        time.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
        during = acct.admin("GET", "/admin/stats").json()["write_behind"]
        assert during["retries"] > 0 and during["oldest_unwritten_age_ms"] > 5000, during

        proxy.restore()
        opened = wait_until(lambda: (lambda ts: ts if len(ts) == 3 else None)(
            acct.get("/api/trades?status=open").json()), timeout=30)
        assert sorted(t["filled_quantity"] for t in opened) == ["0.01"] * 3
        assert {t["client_order_id"] for t in opened} == {t["client_order_id"] for t in trades}
        drained = wait_until(lambda: (lambda w: w if w["depth"] == 0 and w["healthy"] else None)(
            acct.admin("GET", "/admin/stats").json()["write_behind"]), timeout=30)
        assert drained["written"] >= 6, drained  # the 3 fills and their order updates at least
        # the position the stream reported while the database was away is stored too
        engine = create_engine(url)
        try:
            with engine.connect() as c:
                stored = c.execute(text("SELECT symbol, side, size, entry_price FROM positions"
                                        " WHERE key_id = :k"), {"k": acct.key_id}).all()
        finally:
            engine.dispose()
        assert [(s, side, Decimal(size), Decimal(entry)) for s, side, size, entry in stored] == [
            ("BTCUSDT", "LONG", Decimal("0.03"), Decimal("50100"))]
        server.stop()  # SIGTERM: Services.stop flushes (nothing left) and ends in time
        assert server.proc.returncode == 0, server.log()[-2000:]
        assert "services stopped unflushed=0" in server.log(), server.log()[-2000:]
    finally:
        if lst is not None:
            lst.close()
        server.stop()
        proxy.cut()
        drop()


def test_sigterm_while_the_database_is_down_ends_in_time_and_the_fill_is_restored(sim, pg_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SIGTERM with the database away: the server ends within its stop bound, logs how
    many events it could not store, and the next start's reconcile restores the fill
    from the exchange (docs/ledger.md)."""
    url, drop = make_pg_database(pg_server)
    proxy = TcpProxy(("127.0.0.1", 5432), free_port())
    proxy.restore()
    proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    env = {"RECONCILE_INTERVAL_S": "0", "SECRET_KEY": uuid.uuid4().hex,
           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": uuid.uuid4().hex}
    server = start_server(proxied, sim.url, sim.ws_url, tmp_path, extra_env=env)
    port = int(server.url.rsplit(":", 1)[1])
    servers, lst = [server], None
    try:
        acct, lst = _live_account(server, sim)
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                      "type": "LIMIT", "quantity": "0.010", "price": "50000"})
        assert r.status_code == 201, r.text
        trade = r.json()["trade"]
        lst.wait_for("orders", lambda d: len(d["data"]) == 1)
        proxy.cut()
        mark = lst.mark()
        sim.fill(trade["entry_order_id"])
        lst.wait_for("positions", lambda d: d["data"] and d["data"][0]["size"] == "0.01", since=mark)
        wait_until(lambda: acct.admin("GET", "/admin/stats").json()["write_behind"]["retries"] > 0,
                   timeout=10)
        lst.close()
        began = time.monotonic()
        server.proc.terminate()
        assert server.proc.wait(10) == 0, server.log()[-3000:]
        assert time.monotonic() - began < 10
        match = re.search(r"events not stored count=(\d+)", server.log())
        assert match and int(match.group(1)) > 0, server.log()[-3000:]

        proxy.restore()
        servers.append(start_server(proxied, sim.url, sim.ws_url, tmp_path, extra_env=env, port=port))
        reconciled = acct.admin("POST", "/admin/reconcile")
        assert reconciled.status_code == 200, reconciled.text
        opened = wait_until(lambda: [t for t in acct.get("/api/trades?status=open").json()
                                     if t["client_order_id"] == trade["client_order_id"]])
        assert opened[0]["filled_quantity"] == "0.01"
    finally:
        if lst is not None and lst.client.connected:
            lst.close()
        for srv in servers:
            srv.stop()
        proxy.cut()
        drop()
