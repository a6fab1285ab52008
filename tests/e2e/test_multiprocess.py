"""Two server processes behind Redis: rooms shared through the message queue, one
owner per account stream, taken over when the owner dies."""
from __future__ import annotations

import os
import time
import uuid

import pytest
from cryptography.fernet import Fernet

from tests.conftest import make_pg_database
from tests.e2e.conftest import Account, Listener
from tests.support.server import start_server

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    import redis
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis unreachable at {REDIS_URL} (required in CI)")
        pytest.skip("Redis not reachable")
    return REDIS_URL


def _stats(acct: Account, server) -> dict:  # type: ignore[no-untyped-def]
    import requests
    return requests.get(server.url + "/admin/stats", timeout=10,
                        headers={"X-Admin-Token": server.admin_token}).json()


def test_two_processes_share_rooms_and_take_over_a_dead_owners_stream(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    url, drop = make_pg_database(pg_server)
    env = {"MESSAGE_QUEUE_URL": redis_url, "MESSAGE_QUEUE_CHANNEL": "pushsrv-" + uuid.uuid4().hex,
           "LEASE_TTL_S": "3", "RECONCILE_INTERVAL_S": "0", "SECRET_KEY": uuid.uuid4().hex,
           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": uuid.uuid4().hex}
    a = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env)
    b = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env)
    listeners: list[Listener] = []
    try:
        acct = Account(a, sim)
        sim.set_price("BTCUSDT", "60000")
        la = Listener(a.url, acct.token)
        listeners.append(la)
        assert la.call("subscribe", {"types": ["orders", "balance"]})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        lb = Listener(b.url, acct.token)
        listeners.append(lb)
        assert lb.call("subscribe", {"types": ["orders", "balance"]})["ok"]
        lb.wait_for("balance")                       # B's snapshot (REST: A owns the stream)
        assert _stats(acct, a)["streams"]["running"] == 1
        assert _stats(acct, b)["streams"] == {**_stats(acct, b)["streams"], "running": 0, "followed": 1}

        acct.server = b                              # the order goes through process B
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                      "type": "LIMIT", "quantity": "0.010", "price": "50000"})
        assert r.status_code == 201, r.text
        coid = r.json()["trade"]["client_order_id"]
        for lst in (la, lb):                         # A's stream, pushed to both processes
            lst.wait_for("orders", lambda d: any(o["client_order_id"] == coid for o in d["data"]))

        a.kill()                                     # the owner dies without releasing
        mark = lb.mark()
        lb.wait_for("stream_status", lambda d: d["state"] == "live", since=mark, timeout=20)
        stats = _stats(acct, b)["streams"]
        assert stats["running"] == 1 and stats["takeovers"] == 1
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                      "type": "LIMIT", "quantity": "0.010", "price": "50100"})
        coid2 = r.json()["trade"]["client_order_id"]
        lb.wait_for("orders", lambda d: any(o["client_order_id"] == coid2 for o in d["data"]),
                    since=mark)
    finally:
        for lst in listeners:
            if lst.client.connected:
                lst.close()
        a.stop()
        b.stop()
        drop()
