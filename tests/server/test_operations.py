"""What an operator relies on: /healthz and /readyz, Socket.IO CORS from
CORS_ORIGINS, ``flask --app app generate-keys``, a clear error without production
settings, JSON log lines, and ``.env.example`` listing every setting."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet

from app import create_app
from config import ROOT, ConfigError, load_config
from logsetup import JsonFormatter
from tests.e2e.conftest import redis_url  # noqa: F401 - the Redis fixture
from tests.server.conftest import make_config
from tests.support.server import free_port

HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


def test_healthz_and_readyz_need_no_token(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.get_json() == {"status": "ready", "checks": {"database": "ok", "message_queue": "none"}}


def test_readyz_is_503_naming_the_message_queue_that_does_not_answer(database_url, redis_url) -> None:  # type: ignore[no-untyped-def]
    # /readyz pings the configured queue for real on every call: a live Redis, then an
    # address that does not answer (a closed port). The in-process app itself runs
    # without the queue (its Socket.IO listener thread would outlive the test).
    app = create_app(make_config(database_url, RECONCILE_INTERVAL_S=0))
    svc = app.extensions["pushsrv"]
    try:
        svc.config = svc.config.with_overrides({"MESSAGE_QUEUE_URL": redis_url})
        ok = app.test_client().get("/readyz")
        assert ok.status_code == 200 and ok.get_json()["checks"]["message_queue"] == "ok"
        svc.config = svc.config.with_overrides(
            {"MESSAGE_QUEUE_URL": f"redis://127.0.0.1:{free_port()}/0"})
        r = app.test_client().get("/readyz")
        assert r.status_code == 503
        body = r.get_json()
        assert body["failed"] == ["message_queue"] and body["status"] == "unavailable"
        assert body["checks"] == {"database": "ok", "message_queue": "down"}
        assert body["error"]["code"] == "not_ready"
        assert app.test_client().get("/healthz").status_code == 200  # alive all the same
    finally:
        svc.shutdown()


def test_readyz_is_503_naming_the_database_that_does_not_answer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/none"
    app = create_app(make_config(url, RECONCILE_INTERVAL_S=0))
    try:
        r = app.test_client().get("/readyz")
        assert r.status_code == 503 and r.get_json()["failed"] == ["database"]
        assert set(r.get_json()) == {"error", "status", "failed", "checks"}  # no figures
    finally:
        app.extensions["pushsrv"].shutdown()


def _handshake(app, origin: str) -> int:  # type: ignore[no-untyped-def]
    return app.test_client().get(HANDSHAKE, headers={"Origin": origin}).status_code


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_socketio_cors_production_same_origin_unless_listed(database_url) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(database_url, RECONCILE_INTERVAL_S=0))
    try:
        assert _handshake(app, "http://localhost") == 200       # the server's own origin
        assert _handshake(app, "https://evil.example") == 400
    finally:
        app.extensions["pushsrv"].shutdown()
    env_cfg = load_config({"APP_ENV": "production", "DATABASE_URL": database_url, "SECRET_KEY": "s",
                           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": "a",
                           "CORS_ORIGINS": "https://app.example.com, https://m.example.com/"})
    assert env_cfg.CORS_ORIGINS == ("https://app.example.com", "https://m.example.com")
    app = create_app(env_cfg.with_overrides({"ASYNC_MODE": "threading", "RECONCILE_INTERVAL_S": 0}))
    try:
        assert _handshake(app, "https://m.example.com") == 200
        assert _handshake(app, "https://evil.example") == 400
    finally:
        app.extensions["pushsrv"].shutdown()


def test_cors_origins_demo_default_and_bad_values() -> None:
    assert load_config({}).socketio_cors() == "*"
    assert load_config({"CORS_ORIGINS": "http://10.0.0.2:5000"}).socketio_cors() == ["http://10.0.0.2:5000"]
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_config({"CORS_ORIGINS": "app.example.com"})


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("APP_ENV", "DATABASE_URL", "SECRET_KEY", "KEY_ENCRYPTION_KEY",
                         "ADMIN_TOKEN", "LOG_FORMAT")}
    return subprocess.run(args, cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def test_generate_keys_prints_fresh_usable_secrets_even_without_configuration() -> None:
    flask = [sys.executable, "-m", "flask", "--app", "app", "generate-keys"]
    # both at once (each imports the whole app); APP_ENV and nothing else set
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: _run(flask, {"APP_ENV": "production"}), range(2))
    assert first.returncode == 0, first.stderr
    values = dict(line.split("=", 1) for line in first.stdout.split())
    assert set(values) == {"SECRET_KEY", "KEY_ENCRYPTION_KEY", "ADMIN_TOKEN"}
    Fernet(values["KEY_ENCRYPTION_KEY"])                  # a valid Fernet key
    assert len(values["SECRET_KEY"]) >= 43 and len(values["ADMIN_TOKEN"]) >= 32
    assert first.stdout != second.stdout
    cfg = load_config({"APP_ENV": "production", "DATABASE_URL": "sqlite://", **values})
    assert cfg.ADMIN_TOKEN == values["ADMIN_TOKEN"]


@pytest.mark.parametrize("command", [
    [sys.executable, "app.py"],
    [sys.executable, "-m", "flask", "--app", "app", "create-admin", "root"],
    [sys.executable, "-m", "alembic", "upgrade", "head"],
])
def test_missing_production_settings_are_one_clear_line_without_traceback(command) -> None:  # type: ignore[no-untyped-def]
    result = _run(command, {"APP_ENV": "production"})
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in out
    assert "configuration error" in out and "DATABASE_URL" in out


def test_json_log_lines_carry_the_key_value_fields() -> None:
    record = logging.LogRecord("services.stream_manager", logging.INFO, __file__, 1,
                               "stream live key_id=%s exchange=%s", (7, "binance"), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "stream live key_id=7 exchange=binance"
    assert line["fields"] == {"key_id": "7", "exchange": "binance"}
    assert line["level"] == "INFO" and line["logger"] == "services.stream_manager"
    assert isinstance(line["time"], int)
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_config({"LOG_FORMAT": "xml"})


class _Recording(dict):
    """An environment that remembers every name looked up."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        self.read.add(key)
        return super().__getitem__(key)


def test_env_example_lists_every_setting_config_reads() -> None:
    read: set[str] = set()
    for env in ({}, {"APP_ENV": "production", "DATABASE_URL": "sqlite://", "SECRET_KEY": "s",
                     "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": "a",
                     "MESSAGE_QUEUE_URL": "redis://127.0.0.1:6379/0"}):
        recording = _Recording(env)
        load_config(recording)
        read |= recording.read
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, re.M))
    assert read - listed == set(), "settings missing from .env.example"
    operator_only = {"NEW_KEY_ENCRYPTION_KEY", "ADMIN_PASSWORD"}  # read by flask commands
    assert listed - read - operator_only == set(), ".env.example names settings nobody reads"
    production = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", text, re.M))
    assert production["APP_ENV"] == "production"
