"""In-process app fixtures (Flask test client, threading mode) on a migrated database."""
from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from app import create_app
from config import load_config


def make_config(database_url: str, sim_url: str = "http://127.0.0.1:9", sim_ws: str = "ws://127.0.0.1:9",
                **overrides):  # type: ignore[no-untyped-def]
    env = {"APP_ENV": "production", "DATABASE_URL": database_url, "SECRET_KEY": "s" * 32,
           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": "admin-token",
           "BINANCE_REST_URL": sim_url, "BINANCE_WS_URL": sim_ws,
           "BINANCE_TESTNET_REST_URL": sim_url, "BINANCE_TESTNET_WS_URL": sim_ws}
    return load_config(env).with_overrides({"ASYNC_MODE": "threading", **overrides})


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):  # type: ignore[no-untyped-def]
    """In-process tests hash with Argon2id at its lowest cost (1 pass over 8 MiB instead
    of RFC 9106's 3 over 64 MiB): a register or login cost ~50 ms, several seconds on a
    loaded 2-core machine, and the suite makes hundreds. The algorithm, the hash format
    and every check are the same; tests/server/test_units.py checks the real defaults
    and the servers of tests/e2e run them."""
    from argon2 import PasswordHasher

    from services import security
    monkeypatch.setattr(security, "_hasher", PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))


@pytest.fixture
def app(database_url):  # type: ignore[no-untyped-def]
    application = create_app(make_config(database_url))
    yield application
    application.extensions["pushsrv"].stop()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def auth_header(client, username: str = "alice", password: str = "password123") -> dict:  # type: ignore[no-untyped-def]
    """Register (if needed) and log in; the Authorization header."""
    client.post("/api/auth/register", json={"username": username, "password": password})
    r = client.post("/api/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.get_json()
    return {"Authorization": "Bearer " + r.get_json()["access_token"]}
