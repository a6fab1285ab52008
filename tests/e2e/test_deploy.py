"""The production deploy exactly as README.md "Deploy" writes it: the commands of
its marked code block are run as printed (only the ports and the venv folder are
substituted): migrations first, then two gunicorn processes (eventlet worker, one
worker each) on PostgreSQL with Redis as MESSAGE_QUEUE_URL, pointed at a simulator
process. A real python-socketio client logs in, adds a key, subscribes through one
process while the order goes through the other, and a push arrives; /healthz and
/readyz answer on both; the app's own log lines are in gunicorn's output (plain on
one process, LOG_FORMAT=json on the other)."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
from cryptography.fernet import Fernet

from tests.conftest import make_pg_database
from tests.e2e.conftest import Account, Listener
from tests.support.server import ROOT, free_port

BIN = Path(sys.executable).parent
MARKER = "<!-- deploy-commands: tests/e2e/test_deploy.py runs this block -->"


def readme_deploy_commands() -> list[list[str]]:
    """The ``.venv/bin/...`` command lines of README's marked block, as argv lists
    (a trailing ``&`` and ``# comment`` dropped)."""
    text = (ROOT / "README.md").read_text()
    assert MARKER in text, "README.md lost its deploy block marker"
    block = text.split(MARKER, 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[-1] == "&":
            argv = argv[:-1]
        if argv and argv[0].startswith(".venv/bin/"):
            commands.append([str(BIN / argv[0].removeprefix(".venv/bin/")), *argv[1:]])
    return commands


@dataclass
class Gunicorn:
    """A gunicorn process started from a README line: ``url``, log and process."""

    url: str
    admin_token: str
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _start(argv: list[str], port: int, env: dict, log_path: Path) -> Gunicorn:
    argv = [re.sub(r"127\.0\.0\.1:500\d", f"127.0.0.1:{port}", a) for a in argv]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_path.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    server = Gunicorn(f"http://127.0.0.1:{port}", env["ADMIN_TOKEN"], log_path, proc)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited {proc.returncode}:\n{server.log()}")
        try:
            if requests.get(server.url + "/readyz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"gunicorn did not become ready:\n{server.log()}")


def _stop(server: Gunicorn) -> int:
    """SIGTERM to the master (graceful: workers drain and exit); its exit status."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(5)
    return server.proc.returncode


def test_the_readme_block_is_migrate_then_two_gunicorn_processes() -> None:
    commands = readme_deploy_commands()
    assert Path(commands[0][0]).name == "alembic" and commands[0][1:] == ["upgrade", "head"]
    gunicorns = commands[1:]
    assert len(gunicorns) == 2 and all(Path(c[0]).name == "gunicorn" for c in gunicorns)
    for argv in gunicorns:
        assert argv[-1] == "app:create_app()" and "gunicorn.conf.py" in argv


def test_gunicorn_without_production_settings_is_one_line_and_exit_2(tmp_path) -> None:
    argv = readme_deploy_commands()[1]
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATABASE_URL", "SECRET_KEY", "KEY_ENCRYPTION_KEY", "ADMIN_TOKEN")}
    env["APP_ENV"] = "production"
    argv = [re.sub(r"127\.0\.0\.1:500\d", f"127.0.0.1:{free_port()}", a) for a in argv]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "configuration error: production needs DATABASE_URL, SECRET_KEY" in out
    assert "Traceback" not in out


def test_deploy_as_written_serves_pushes_through_two_processes(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:  # noqa: F811
    database_url, drop = make_pg_database(pg_server)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "BYBIT_"))}
    env.update({
        "APP_ENV": "production", "DATABASE_URL": database_url,
        "SECRET_KEY": uuid.uuid4().hex, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ADMIN_TOKEN": uuid.uuid4().hex, "MESSAGE_QUEUE_URL": redis_url,
        "MESSAGE_QUEUE_CHANNEL": "pushsrv-" + uuid.uuid4().hex, "PYTHONUNBUFFERED": "1",
        "EXCHANGE_WEIGHT_LIMITS": "binance=100000,bybit=100000", "RECONCILE_INTERVAL_S": "0",
        **{f"{venue}{net}_{kind}_URL": sim.ws_url if kind == "WS" else sim.url
           for venue in ("BINANCE", "BYBIT") for net in ("", "_TESTNET") for kind in ("REST", "WS")},
    })
    migrate, first, second = readme_deploy_commands()
    servers: list[Gunicorn] = []
    listener = None
    try:
        done = subprocess.run(migrate, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        servers.append(_start(first, free_port(), env, tmp_path / "a.log"))
        servers.append(_start(second, free_port(), {**env, "LOG_FORMAT": "json"}, tmp_path / "b.log"))
        a, b = servers
        for server in servers:
            assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
            ready = requests.get(server.url + "/readyz", timeout=5).json()
            assert ready["checks"] == {"database": "ok", "message_queue": "ok"}

        acct = Account(a, sim)                       # register, login, key: through process A
        sim.set_price("BTCUSDT", "60000")
        listener = Listener(b.url, acct.token)       # subscribed through process B
        ack = listener.call("subscribe", {"types": ["orders", "balance"]})
        assert ack["ok"], ack
        listener.wait_for("balance", timeout=20)
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                      "type": "LIMIT", "quantity": "0.010", "price": "50000"})
        assert r.status_code == 201, r.text
        coid = r.json()["trade"]["client_order_id"]
        listener.wait_for("orders", lambda d: any(o["client_order_id"] == coid for o in d["data"]),
                          timeout=20)

        # the app's own log lines under gunicorn: plain key=value on A, JSON on B
        assert re.search(r" INFO services\.accounts api key added user_id=\d+ key_id=\d+", a.log())
        json_lines = [json.loads(line) for line in b.log().splitlines() if line.startswith("{")]
        app_lines = [line for line in json_lines if not line["logger"].startswith("gunicorn")]
        assert app_lines and all({"time", "level", "logger", "message"} <= set(x) for x in app_lines)
        assert any(line["logger"] == "gunicorn.error" for line in json_lines)
    finally:
        if listener is not None and listener.client.connected:
            listener.close()
        codes = [_stop(server) for server in servers]
        drop()
    assert codes == [0, 0], [s.log()[-2000:] for s in servers]
    assert "Traceback" not in "".join(s.log() for s in servers)
    for server in servers:  # worker_exit ran Services.stop: loops ended, queue flushed
        assert "write-behind stopped, queue flushed" in server.log(), server.log()[-2000:]
        assert re.search(r"services stopped unflushed=0 elapsed_s=\d", server.log()), server.log()[-2000:]
        assert "tasks still running" not in server.log()
