"""Start the real server (``python app.py``) as a subprocess for end-to-end tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A running server: ``url``, its ``admin_token``, the log file and the process."""

    url: str
    admin_token: str
    secret_key: str
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        self.proc.kill()
        self.proc.wait(5)


def start_server(database_url: str, sim_url: str, sim_ws_url: str, log_dir: Path,
                 extra_env: dict | None = None, port: int | None = None,
                 real_limits: bool = False) -> ServerProcess:
    """Start ``python app.py`` in production mode pointed at the simulator, after
    ``alembic upgrade head`` (the server migrates itself too). Waits for /admin/health.

    Without ``real_limits`` the server's rate governors allow 100,000 weight per
    window: the simulator enforces no limit unless a test asks, and a module's tests
    start dozens of Binance streams (about 50 weight each) within a minute on one
    server, which the real 2400 would partly hold back; that is not what they test.
    The benchmarks keep the real limits."""
    port = port or free_port()
    admin_token = "test-admin-" + os.urandom(8).hex()
    secret_key = os.urandom(24).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "BYBIT_"))}
    env.update({
        "APP_ENV": "production", "DATABASE_URL": database_url, "SECRET_KEY": secret_key,
        "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": admin_token,
        "HOST": "127.0.0.1", "PORT": str(port), "PYTHONUNBUFFERED": "1",
        "BINANCE_REST_URL": sim_url, "BINANCE_WS_URL": sim_ws_url,
        "BINANCE_TESTNET_REST_URL": sim_url, "BINANCE_TESTNET_WS_URL": sim_ws_url,
        "BYBIT_REST_URL": sim_url, "BYBIT_WS_URL": sim_ws_url,
        "BYBIT_TESTNET_REST_URL": sim_url, "BYBIT_TESTNET_WS_URL": sim_ws_url,
        "EXCHANGE_WEIGHT_LIMITS": "" if real_limits else "binance=100000,bybit=100000",
    })
    env.update(extra_env or {})  # may pin SECRET_KEY etc. so that a restart keeps them
    admin_token, secret_key = env["ADMIN_TOKEN"], env["SECRET_KEY"]
    log_path = log_dir / f"server-{port}.log"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=str(ROOT), env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(url, admin_token, secret_key, log_path, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}:\n{server.log()}")
        try:
            if requests.get(url + "/admin/health", headers={"X-Admin-Token": admin_token},
                            timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.05)  # a local GET: asking often costs little, and a start is awaited at once
    server.stop()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")
