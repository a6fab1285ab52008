"""Login limits that hold under concurrency, against real server processes (eventlet).

- 30 concurrent wrong passwords from one address: at most the per-address limit (10)
  reach the password check, the rest get 429 at once.
- 30 concurrent wrong passwords for one username from 30 different client addresses
  (127.0.0.2 ... 127.0.0.31: every 127/8 address is the loopback interface, so each
  connection really comes from another peer address; no proxy header is trusted):
  at most the per-username limit (10) get 401.
- The same with two server processes sharing Redis (MESSAGE_QUEUE_URL): the count is
  one, not one per process.
- Retry-After counts down to the end of the window; an unknown username gets the
  same answer as a wrong password; successful logins never use up the limit.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import pytest
import requests

from tests.conftest import make_pg_database
from tests.support.server import start_server

pytestmark = pytest.mark.e2e  # real server processes

NO_EXCHANGE = "http://127.0.0.1:9"


def _post_login(url: str, username: str, password: str, source: str = "127.0.0.1",
                barrier: threading.Barrier | None = None) -> tuple[int, dict, dict]:
    """POST /api/auth/login from ``source``: ``(status, headers, body)``."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30, source_address=(source, 0))
    conn.connect()
    if barrier is not None:
        barrier.wait(10)
    conn.request("POST", "/api/auth/login", json.dumps({"username": username, "password": password}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(resp.read() or b"{}")
    conn.close()
    return out


def _register(url: str) -> str:
    username = "u" + uuid.uuid4().hex[:10]
    r = requests.post(url + "/api/auth/register", json={"username": username,
                                                        "password": "right-password"}, timeout=10)
    assert r.status_code == 201
    return username


def _concurrent(urls: list[str], username: str, sources: list[str]) -> list[tuple[int, dict, dict]]:
    barrier = threading.Barrier(len(sources))
    with ThreadPoolExecutor(len(sources)) as pool:
        futures = [pool.submit(_post_login, urls[i % len(urls)], username, f"wrong-{i:04d}", src,
                               barrier) for i, src in enumerate(sources)]
        return [f.result() for f in futures]


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("login")
    srv = start_server(f"sqlite:///{tmp / 'login.sqlite3'}", NO_EXCHANGE, NO_EXCHANGE, tmp)
    yield srv
    srv.stop()


def test_concurrent_wrong_passwords_from_one_address(server) -> None:  # type: ignore[no-untyped-def]
    username = _register(server.url)
    results = _concurrent([server.url], username, ["127.0.0.1"] * 30)
    codes = [status for status, _, _ in results]
    print(f"one address, 30 concurrent wrong passwords: {codes.count(401)} x 401, "
          f"{codes.count(429)} x 429")
    assert codes.count(401) <= 10 and codes.count(429) >= 20 and set(codes) <= {401, 429}
    for status, headers, body in results:
        if status == 429:
            assert body["error"]["code"] == "rate_limited"
            assert 1 <= int(headers["retry-after"]) <= 300  # both windows full: the later one


def test_concurrent_wrong_passwords_for_one_user_from_30_addresses(server) -> None:  # type: ignore[no-untyped-def]
    username = _register(server.url)
    results = _concurrent([server.url], username, [f"127.0.0.{i}" for i in range(2, 32)])
    codes = [status for status, _, _ in results]
    print(f"one username, 30 addresses: {codes.count(401)} x 401, {codes.count(429)} x 429")
    assert codes.count(401) <= 10 and codes.count(429) >= 20 and set(codes) <= {401, 429}
    retry = max(int(h["retry-after"]) for s, h, _ in results if s == 429)
    assert 60 < retry <= 300  # the username window (5 minutes), not the address one
    # the right password from yet another address is refused too until the window ends
    status, _, _ = _post_login(server.url, username, "right-password", "127.0.0.40")
    assert status == 429


def test_retry_after_counts_down(server) -> None:  # type: ignore[no-untyped-def]
    src = "127.0.1.1"  # a different username each time: only the address window fills
    names = [f"spray-{i}-{uuid.uuid4().hex[:6]}" for i in range(13)]
    codes = [_post_login(server.url, name, "wrong-password", src)[0] for name in names[:11]]
    assert codes == [401] * 10 + [429]
    first = int(_post_login(server.url, names[11], "wrong-password", src)[1]["retry-after"])
    time.sleep(1.1)  # more than a second: the whole seconds of Retry-After went down
    later = int(_post_login(server.url, names[12], "wrong-password", src)[1]["retry-after"])
    assert 1 <= later < first <= 60  # the address window (1 minute), counting down


def test_unknown_user_and_wrong_password_get_the_same_answer(server) -> None:  # type: ignore[no-untyped-def]
    username = _register(server.url)
    wrong = _post_login(server.url, username, "wrong-password", "127.0.2.1")
    unknown = _post_login(server.url, "nobody-" + uuid.uuid4().hex[:8], "wrong-password", "127.0.2.2")
    assert wrong[0] == unknown[0] == 401 and wrong[2] == unknown[2]
    # an unknown username is limited like a known one
    ghost = "ghost-" + uuid.uuid4().hex[:8]
    codes = [_post_login(server.url, ghost, "pw-guess-1", f"127.0.3.{i}")[0] for i in range(1, 13)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]


def test_successful_logins_do_not_use_up_the_limit(server) -> None:  # type: ignore[no-untyped-def]
    username = _register(server.url)
    codes = [_post_login(server.url, username, "right-password", "127.0.4.1")[0] for _ in range(11)]
    assert codes == [200] * 11  # one more than either limit


def test_limits_hold_across_two_processes_sharing_redis(pg_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, drop = make_pg_database(pg_server)
    env = {"MESSAGE_QUEUE_URL": "redis://127.0.0.1:6379/0",
           "MESSAGE_QUEUE_CHANNEL": "test-login-" + uuid.uuid4().hex[:8]}
    servers = []
    try:
        servers.append(start_server(url, NO_EXCHANGE, NO_EXCHANGE, tmp_path, extra_env=env))
        servers.append(start_server(url, NO_EXCHANGE, NO_EXCHANGE, tmp_path, extra_env={
            **env, "SECRET_KEY": servers[0].secret_key, "ADMIN_TOKEN": servers[0].admin_token}))
        username = _register(servers[0].url)
        results = _concurrent([s.url for s in servers], username,
                              [f"127.0.5.{i}" for i in range(1, 31)])
        codes = [status for status, _, _ in results]
        print(f"two processes on Redis, one username, 30 addresses: {codes.count(401)} x 401, "
              f"{codes.count(429)} x 429")
        assert codes.count(401) <= 10 and codes.count(429) >= 20 and set(codes) <= {401, 429}
    finally:
        for s in servers:
            s.stop()
        drop()


def test_unreachable_limit_storage_fails_closed(database_url) -> None:  # type: ignore[no-untyped-def]
    from app import create_app
    from tests.server.conftest import make_config
    app = create_app(make_config(database_url, RATELIMIT_STORAGE_URI="redis://127.0.0.1:1/0"))
    try:
        client = app.test_client()
        for path, body in [("/api/auth/login", {"username": "alice", "password": "password123"}),
                           ("/api/auth/refresh", {"refresh_token": "x" * 43})]:
            r = client.post(path, json=body)
            assert r.status_code == 503 and r.get_json()["error"]["code"] == "rate_limit_unavailable"
    finally:
        app.extensions["pushsrv"].shutdown()
