"""TRUSTED_PROXIES: behind nginx (every request from 127.0.0.1) the per-address login
limit counts each client by the address the proxy saw (werkzeug ProxyFix), and a
client's own X-Forwarded-For is not believed past the proxy."""
from __future__ import annotations

import pytest

from app import create_app
from config import ConfigError, load_config
from tests.server.conftest import make_config


def _logins(client, forwarded_for: str, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    return [client.post("/api/auth/login", json={"username": "nobody", "password": "wrong-pw"},
                        headers={"X-Forwarded-For": forwarded_for},
                        environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code
            for _ in range(n)]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("trusted", [0, 1])
def test_login_limit_counts_the_address_the_trusted_proxy_saw(database_url, trusted) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(database_url, LOGIN_RATE_LIMIT="3 per minute",
                                 TRUSTED_PROXIES=trusted))
    try:
        client = app.test_client()
        assert 429 not in _logins(client, "203.0.113.7", 3)
        assert _logins(client, "203.0.113.7", 1) == [429]   # that client is limited
        other = _logins(client, "198.51.100.9", 1)           # another client behind nginx
        if trusted:
            assert other == [401], other                     # counted apart
            # a forged header: ProxyFix takes the last value (what nginx appended)
            assert _logins(client, "198.51.100.9, 203.0.113.7", 1) == [429]
        else:
            assert other == [429], other                     # one peer: 127.0.0.1
    finally:
        app.extensions["pushsrv"].stop()


def test_trusted_proxies_is_read_and_checked() -> None:
    assert load_config({}).TRUSTED_PROXIES == 0
    assert load_config({"TRUSTED_PROXIES": "1"}).TRUSTED_PROXIES == 1
    with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
        load_config({"TRUSTED_PROXIES": "-1"})
