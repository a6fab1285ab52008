"""End-to-end fixtures: the real simulator and the real server as processes, on
SQLite and on a real PostgreSQL, driven by real python-socketio clients."""
from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests
import socketio
from cryptography.fernet import Fernet

from tests.conftest import make_pg_database
from tests.support.server import start_server
from tests.support.waits import wait_for

# ``sim`` is tests/conftest.py's: one simulator per test process for every test
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The Redis of the message-queue tests (``TEST_REDIS_URL``); required in CI."""
    import redis
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis unreachable at {REDIS_URL} (required in CI)")
        pytest.skip("Redis not reachable")
    return REDIS_URL


@contextmanager
def queued_pair(sim, pg_server, redis_url: str, tmp_path, **env: str) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    """Two server processes on one new PostgreSQL database behind Redis (their own
    queue channel, shared secrets, no periodic reconcile; ``env`` adds or overrides
    settings). Yields ``(a, b, listeners)``: the listeners appended to the list are
    closed, both servers stopped and the database dropped at the end."""
    url, drop = make_pg_database(pg_server)
    env = {"MESSAGE_QUEUE_URL": redis_url, "MESSAGE_QUEUE_CHANNEL": "pushsrv-" + uuid.uuid4().hex,
           "RECONCILE_INTERVAL_S": "0", "SECRET_KEY": uuid.uuid4().hex,
           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": uuid.uuid4().hex,
           **env}
    a = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env)
    b = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env)
    listeners: list = []
    try:
        yield a, b, listeners
    finally:
        for lst in listeners:
            if lst.client.connected:
                lst.close()
        a.stop()
        b.stop()
        drop()

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, sim, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A migrated server process (module-scoped) on each database."""
    tmp = tmp_path_factory.mktemp("server")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'e2e.sqlite3'}"
    else:
        url, drop = make_pg_database(request.getfixturevalue("pg_server"))
    srv = start_server(url, sim.url, sim.ws_url, tmp, extra_env={"EXCHANGE_TIMEOUT_S": "3",
                                                                         "EXIT_MAX_SLIPPAGE": "3"})
    yield srv
    srv.stop()
    if drop:
        drop()


def wait_until(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` every 0.2 s until it returns something truthy; return it.
    Raises AssertionError after ``timeout`` seconds."""
    value = wait_for(predicate, timeout, 0.2)
    if not value:
        raise AssertionError("condition not met in time")
    return value


class Account:
    """A registered user with a funded simulator key and REST helpers."""

    def __init__(self, server, sim, balance: str = "10000") -> None:  # type: ignore[no-untyped-def]
        self.server, self.sim = server, sim
        self.username = "u" + uuid.uuid4().hex[:10]
        self.password = "pw-" + uuid.uuid4().hex
        self.api_key = "key" + uuid.uuid4().hex
        self.api_secret = "sec" + uuid.uuid4().hex
        sim.create_account(self.api_key, self.api_secret, balances={"USDT": balance})
        assert self.post("/api/auth/register", {"username": self.username,
                                                "password": self.password}, auth=False).status_code == 201
        r = self.post("/api/auth/login", {"username": self.username, "password": self.password}, auth=False)
        self.token = r.json()["access_token"]
        r = self.post("/api/exchange/keys", {"exchange": "binance", "api_key": self.api_key,
                                             "api_secret": self.api_secret, "label": "main"})
        assert r.status_code == 201, r.text
        self.key_id = r.json()["id"]
        self.user_id = self.get("/api/auth/me").json()["id"]

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: dict, auth: bool = True) -> requests.Response:
        return requests.post(self.server.url + path, json=body,
                             headers=self.headers() if auth else {}, timeout=15)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.server.url + path, headers=self.headers(), timeout=15)

    def put(self, path: str, body: dict) -> requests.Response:
        return requests.put(self.server.url + path, json=body, headers=self.headers(), timeout=15)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.server.url + path, headers=self.headers(), timeout=15)

    def admin(self, method: str, path: str, **kw) -> requests.Response:  # type: ignore[no-untyped-def]
        return requests.request(method, self.server.url + path,
                                headers={"X-Admin-Token": self.server.admin_token}, timeout=15, **kw)


class Listener:
    """A real python-socketio client that queues every server event it receives."""

    EVENTS = ("balance", "positions", "pnl", "orders", "stream_status", "error", "ticker")

    def __init__(self, url: str, token: str | None) -> None:
        self.events: queue.Queue = queue.Queue()
        self.all: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self.client = socketio.Client(reconnection=False)
        for name in self.EVENTS:
            self.client.on(name, self._handler(name))
        self.client.connect(url, auth={"token": token} if token else None,
                            transports=["websocket"], wait_timeout=10)

    def _handler(self, name: str):  # type: ignore[no-untyped-def]
        def handle(data):  # type: ignore[no-untyped-def]
            with self._lock:
                self.all.append((name, data))
            self.events.put((name, data))
        return handle

    def call(self, event: str, data: dict) -> dict:
        return self.client.call(event, data, timeout=15)

    def mark(self) -> int:
        """A position in the event history, for ``wait_for(..., since=mark)``."""
        with self._lock:
            return len(self.all)

    def wait_for(self, name: str, predicate=lambda d: True, timeout: float = 15.0,  # type: ignore[no-untyped-def]
                 since: int = 0) -> dict:
        """The first ``name`` event at or after history position ``since`` whose data
        satisfies ``predicate``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                history = self.all[since:]
            for got, data in history:
                if got == name and predicate(data):
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching {name!r} event in {timeout}s; got "
                                     f"{[n for n, _ in history][-20:]}")
            try:
                self.events.get(timeout=0.1)
            except queue.Empty:
                pass

    def close(self) -> None:
        self.client.disconnect()


@pytest.fixture
def account(server, sim):  # type: ignore[no-untyped-def]
    """A user registered on ``server`` with a funded simulator key (overrides the
    simulator-only ``account`` of tests/conftest.py)."""
    return Account(server, sim)


@pytest.fixture
def listen(server):  # type: ignore[no-untyped-def]
    opened: list[Listener] = []

    def open_listener(token: str | None) -> Listener:
        lst = Listener(server.url, token)
        opened.append(lst)
        return lst
    yield open_listener
    for lst in opened:
        if lst.client.connected:
            lst.close()
