"""Durable intent across kill -9 (issue 9): LIMIT timeouts and exits are rows with a
deadline, carried out, resumed or settled from the exchange's truth after a restart."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet

from tests.conftest import make_pg_database
from tests.e2e.conftest import Account, wait_until
from tests.support.server import start_server


@pytest.fixture(params=["sqlite", "postgresql"])
def restartable(request, sim, tmp_path):  # type: ignore[no-untyped-def]
    """``start()`` a server on one database and port, again after a kill."""
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'restart.sqlite3'}"
    else:
        url, drop = make_pg_database(request.getfixturevalue("pg_server"))
    env = {"EXCHANGE_TIMEOUT_S": "2", "RECONCILE_INTERVAL_S": "3", "EXIT_DEADLINE_S": "30",
           "SECRET_KEY": uuid.uuid4().hex, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
           "ADMIN_TOKEN": uuid.uuid4().hex}
    servers: list = []

    def start():  # type: ignore[no-untyped-def]
        port = int(servers[0].url.rsplit(":", 1)[1]) if servers else None
        servers.append(start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env, port=port))
        return servers[-1]
    yield start
    for srv in servers:
        srv.stop()
    if drop:
        drop()


def _sim_order(sim, acct, coid: str) -> dict:  # type: ignore[no-untyped-def]
    return next(o for o in sim.state(acct.api_key)["orders"] if o["client_order_id"] == coid)


def _trade(acct, coid: str) -> dict:  # type: ignore[no-untyped-def]
    return next(t for t in acct.get("/api/trades").json() if t["client_order_id"] == coid)


def test_limit_timeouts_outlive_a_kill_and_a_partly_filled_one_keeps_its_fill(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    server = restartable()
    acct = Account(server, sim)
    sim.set_price("BTCUSDT", "60000")
    body = {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
            "price": "58000", "timeout_s": 2}
    untouched = acct.post("/api/orders", {**body, "quantity": "0.002"}).json()["trade"]
    partly = acct.post("/api/orders", {**body, "quantity": "0.004"}).json()["trade"]
    sim.fill(partly["entry_order_id"], quantity="0.001")
    server.kill()                    # the in-memory timers die with the process
    time.sleep(2.5)                  # both deadlines pass while nothing runs
    assert _sim_order(sim, acct, untouched["client_order_id"])["status"] == "NEW"
    acct.server = restartable()      # start-up re-arms them from the rows: due now
    wait_until(lambda: _sim_order(sim, acct, untouched["client_order_id"])["status"] == "CANCELED"
               and _sim_order(sim, acct, partly["client_order_id"])["status"] == "CANCELED",
               timeout=15)
    t1 = wait_until(lambda: (lambda t: t if t["status"] == "canceled" else None)(
        _trade(acct, untouched["client_order_id"])), timeout=10)
    assert t1["filled_quantity"] == "0"
    t2 = wait_until(lambda: (lambda t: t if t["filled_quantity"] == "0.001" else None)(
        _trade(acct, partly["client_order_id"])), timeout=10)
    assert t2["status"] == "open"   # timeout_s cancels the rest; the filled part stays open


def test_an_exit_whose_order_filled_before_the_kill_is_settled_after_restart(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    server = restartable()
    acct = Account(server, sim)
    sim.set_price("ETHUSDT", "3400")
    r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "ETHUSDT", "side": "BUY",
                                  "type": "MARKET", "quantity": "0.050"})
    entry = r.json()["trade"]
    assert entry["status"] == "open", r.text
    # replies held back 1.5 s (under the client's 2 s timeout): the position lookup's,
    # then the exit FOK's, which the exchange has executed when the server is killed
    sim.add_fault(kind="timeout", api_key=acct.api_key, duration_s=15, ms=1500)
    started = acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": "ETHUSDT"}).json()
    assert started["started"] is True

    def exit_orders() -> list:
        return [o["status"] for o in sim.state(acct.api_key)["orders"]
                if o["client_order_id"].startswith("exit-")]
    deadline = time.monotonic() + 10
    while not exit_orders() and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()                    # the exchange executed the FOK; its reply is held
    sim.clear_faults()
    assert exit_orders() == ["FILLED"]
    assert not [p for p in sim.state(acct.api_key)["positions"] if Decimal(p["amount"]) != 0]
    acct.server = restartable()
    done = wait_until(lambda: (lambda e: e if e["status"] != "working" else None)(
        acct.get(f"/api/exits/{started['exit']['id']}").json()["exit"]), timeout=15)
    assert done["status"] == "filled" and Decimal(done["exit_price"]) > 0
    t = _trade(acct, entry["client_order_id"])
    assert t["status"] == "closed" and Decimal(t["exit_price"]) == Decimal(done["exit_price"])
    again = acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": "ETHUSDT"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_position"


def test_an_exit_interrupted_mid_chase_is_resumed_after_restart(sim, restartable) -> None:  # type: ignore[no-untyped-def]
    server = restartable()
    acct = Account(server, sim)
    sim.set_price("ETHUSDT", "3400")
    entry = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "ETHUSDT", "side": "SELL",
                                      "type": "MARKET", "quantity": "0.030"}).json()["trade"]
    sim.add_fault(kind="reject_orders", api_key=acct.api_key, count=2)
    sim.add_fault(kind="latency", api_key=acct.api_key, ms=700, duration_s=15)
    started = acct.post("/api/positions/close", {"key_id": acct.key_id, "symbol": "ETHUSDT"}).json()
    exit_id = started["exit"]["id"]

    def attempts() -> list:
        return [o["status"] for o in sim.state(acct.api_key)["orders"]
                if o["client_order_id"].startswith(f"exit-{exit_id}-")]
    wait_until(lambda: attempts() == ["EXPIRED"], timeout=10)
    server.kill()                    # mid-chase: one attempt refused, the next under way
    sim.clear_faults()
    acct.server = restartable()
    done = wait_until(lambda: (lambda e: e if e["status"] != "working" else None)(
        acct.get(f"/api/exits/{exit_id}").json()["exit"]), timeout=40)
    assert done["status"] == "filled" and done["attempts"] >= 2, done
    assert attempts()[-1] == "FILLED" and attempts()[0] == "EXPIRED"
    # the resumed chase went on one tick worse from where it stopped
    assert Decimal(done["last_price"]) > Decimal(done["first_price"])
    assert _trade(acct, entry["client_order_id"])["status"] == "closed"
    assert not [p for p in sim.state(acct.api_key)["positions"] if Decimal(p["amount"]) != 0]
