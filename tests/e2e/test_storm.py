"""A reconnect storm on the production configuration (PostgreSQL + Redis) with the
pools set small: a few hundred sockets of many users connect and subscribe at once
to one server process whose database pool holds 2 connections and whose Redis pools
hold 4. Every socket gets its first snapshot, the server closes none, and its log
holds no error: the pools make callers wait (bounded), the subscribe admission
queues the storm, the account streams connect a few at a time (the stream connect
admission, set to 8 here: 150 streams wait their turn), and the API keys are read in
batches, not once per subscribe."""
from __future__ import annotations

import asyncio
import time
import uuid

import requests
import socketio
from cryptography.fernet import Fernet

from models import Database, ExchangeKey, User
from services.security import KeyCipher, TokenService
from tests.conftest import make_pg_database
from tests.support.server import start_server

USERS = 150
SOCKETS_PER_USER = 2  # 300 sockets, 150 account streams started by the storm


def _users(db_url: str, sim, key_encryption_key: str, secret_key: str) -> list[str]:
    """USERS users, each with a funded simulator key, written straight to the database
    (registering 150 users over REST would spend the test's time hashing passwords);
    returns their access tokens."""
    db = Database(db_url)
    cipher, tokens = KeyCipher(key_encryption_key), TokenService(secret_key, 3600)
    out = []
    with db.transaction() as s:
        for i in range(USERS):
            api_key, api_secret = "sk" + uuid.uuid4().hex, "ss" + uuid.uuid4().hex
            sim.create_account(api_key, api_secret, balances={"USDT": str(1000 + i)})
            user = User(username=f"storm{i}-{uuid.uuid4().hex[:6]}", password_hash="x")
            s.add(user)
            s.flush()
            s.add(ExchangeKey(user_id=user.id, exchange="binance", testnet=False, label="storm",
                              api_key=api_key, api_secret_encrypted=cipher.encrypt(api_secret)))
            out.append(tokens.issue(user.id, False))
    db.dispose()
    return out


async def _storm(url: str, tokens: list[str], timeout: float) -> list[dict]:
    """Every socket connects and subscribes at once; per socket: the ack, the seconds
    until its first ``balance`` snapshot (None: none), and whether the server closed it."""

    async def one(token: str) -> dict:
        got = asyncio.Event()
        out: dict = {"ack": None, "first_s": None, "closed_by_server": False, "error": None}
        client = socketio.AsyncClient(reconnection=False)
        closing = False
        t0 = time.monotonic()

        @client.on("balance")
        async def on_balance(data):  # type: ignore[no-untyped-def]
            if out["first_s"] is None:
                out["first_s"] = time.monotonic() - t0
            got.set()

        @client.on("disconnect")
        async def on_disconnect(*_):  # type: ignore[no-untyped-def]
            if not closing:
                out["closed_by_server"] = True

        try:
            await client.connect(url, auth={"token": token}, transports=["websocket"],
                                 wait_timeout=timeout)
            out["ack"] = await client.call("subscribe", {"types": ["balance", "positions"]},
                                           timeout=timeout)
            await asyncio.wait_for(got.wait(), max(0.1, timeout - (time.monotonic() - t0)))
        except Exception as e:  # reported per socket, asserted below
            out["error"] = f"{type(e).__name__}: {e}"
        finally:
            closing = True
            await asyncio.sleep(0)
            if client.connected:
                await client.disconnect()
        return out

    all_tokens = [t for t in tokens for _ in range(SOCKETS_PER_USER)]
    return await asyncio.gather(*(one(t) for t in all_tokens))


def test_a_storm_with_small_pools_is_served_without_an_error(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    url, drop = make_pg_database(pg_server)
    secret_key, fernet = uuid.uuid4().hex, Fernet.generate_key().decode()
    env = {"MESSAGE_QUEUE_URL": redis_url, "MESSAGE_QUEUE_CHANNEL": "pushsrv-" + uuid.uuid4().hex,
           "RECONCILE_INTERVAL_S": "0", "SECRET_KEY": secret_key, "KEY_ENCRYPTION_KEY": fernet,
           "DB_POOL_SIZE": "2", "DB_MAX_OVERFLOW": "0", "REDIS_MAX_CONNECTIONS": "4",
           "SUBSCRIBE_CONCURRENCY": "32", "STREAM_CONNECT_CONCURRENCY": "8"}
    server = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env)
    try:
        tokens = _users(url, sim, fernet, secret_key)
        began = time.monotonic()
        results = asyncio.run(_storm(server.url, tokens, timeout=120.0))
        elapsed = time.monotonic() - began
        errors = [r["error"] for r in results if r["error"]]
        assert errors == [], (len(errors), errors[:5])
        assert all(r["ack"] and r["ack"].get("ok") for r in results), \
            [r["ack"] for r in results if not (r["ack"] and r["ack"].get("ok"))][:5]
        assert all(r["first_s"] is not None for r in results)
        assert not any(r["closed_by_server"] for r in results)
        stats = requests.get(server.url + "/admin/stats", timeout=10,
                             headers={"X-Admin-Token": server.admin_token}).json()
        assert stats["streams"]["started"] == USERS
        log = server.log()
        for bad in ("Traceback", " ERROR ", "TimeoutError", "MaxConnectionsError",
                    "Too many connections", "QueuePool limit"):
            assert bad not in log, (bad, log[-4000:])
        print(f"storm: {len(results)} sockets served in {elapsed:.1f} s, first snapshot p99 "
              f"{sorted(r['first_s'] for r in results)[int(0.99 * len(results)) - 1]:.2f} s")
    finally:
        server.stop()
        drop()
