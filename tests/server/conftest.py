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
