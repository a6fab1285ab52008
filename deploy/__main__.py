"""``python -m deploy``: several server processes behind nginx, in the foreground.

    .venv/bin/python -m deploy [--processes 2] [--listen 127.0.0.1:8080]
        [--base-port 5001] [--var var] [--server gunicorn|app]

What it does, in order (README "Deploy"; ``make deploy`` and ``scripts/deploy.sh``
run it with ``.env`` loaded):

1. ``alembic upgrade head`` on ``DATABASE_URL`` (once, before any process starts).
2. ``--processes`` server processes on ``127.0.0.1:<base-port + i>``: gunicorn with
   ``gunicorn.conf.py`` (eventlet, one worker each; ``--server app``: ``python
   app.py`` with ``PORT``), each with the environment of this command; more than one
   needs ``MESSAGE_QUEUE_URL`` (Redis: rooms, stream leases and the push relay are
   shared through it). Waits until each answers ``GET /readyz``.
3. nginx (Debian's ``/usr/sbin/nginx``, ``scripts/install-nginx.sh``) on ``--listen``
   with the configuration written to ``<var>/nginx/nginx.conf`` (sticky on the
   ``affinity`` query argument or the client address, WebSocket upgrades; see
   ``deploy/nginx.conf.template``), its pid file, logs and temp files beside it.
4. Supervises: a server process that exits is started again after 1 s (its clients
   reconnect through nginx to the others meanwhile); nginx exiting ends the deploy.
   Ctrl-C or SIGTERM: nginx stops taking connections (SIGQUIT), the servers get
   SIGTERM (graceful: write-behind flushed) and SIGKILL after 25 s.

Exit status: 0 after Ctrl-C/SIGTERM, 1 when something failed to start (the reason
on stderr), 2 on a configuration error.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from deploy.nginx import Nginx, available

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def log(msg: str) -> None:
    print(f"deploy: {msg}", flush=True)


class Server:
    """One server process on ``port`` (gunicorn or ``python app.py``)."""

    def __init__(self, kind: str, port: int, log_dir: Path) -> None:
        self.kind, self.port, self.log_path = kind, port, log_dir / f"server-{port}.log"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.kind == "gunicorn":
            argv = [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--bind", self.addr,
                    "app:create_app()"]
            env = dict(os.environ)
        else:
            argv = [sys.executable, "app.py"]
            env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port)}
        # behind nginx (one proxy): the rate limits count the address nginx saw
        env.setdefault("TRUSTED_PROXIES", "1")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self.log_path.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        try:
            return requests.get(f"http://{self.addr}/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server {self.addr} exited {self.proc.returncode}:\n{tail}")
            if self.ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"server {self.addr} not ready in {timeout_s:.0f} s (see {self.log_path})")

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait_or_kill(self, deadline: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class Stop(Exception):
    """SIGTERM received."""


def _on_term(*_args) -> None:  # type: ignore[no-untyped-def]
    raise Stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n")[0])
    p.add_argument("--processes", "-P", type=int, default=int(os.environ.get("P") or 2))
    p.add_argument("--listen", default=os.environ.get("LISTEN") or "127.0.0.1:8080")
    p.add_argument("--base-port", type=int, default=int(os.environ.get("BASE_PORT") or 5001))
    p.add_argument("--var", default=str(ROOT / "var"), help="folder of nginx's files and the logs")
    p.add_argument("--server", choices=("gunicorn", "app"), default="gunicorn")
    p.add_argument("--ready-timeout-s", type=float, default=60.0)
    p.add_argument("--no-migrate", action="store_true", help="skip alembic upgrade head")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.processes < 1:
        log("--processes must be at least 1")
        return 2
    if args.processes > 1 and not os.environ.get("MESSAGE_QUEUE_URL"):
        log("more than one process needs MESSAGE_QUEUE_URL (redis://host:6379/0): rooms, stream "
            "leases and the push relay are shared through it")
        return 2
    if not available():
        log("nginx not found at /usr/sbin/nginx: run `sh scripts/install-nginx.sh` (or `make deploy`)")
        return 1
    var = Path(args.var).resolve()
    log_dir = var / "deploy"
    log_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_term)
    if not args.no_migrate:
        log("alembic upgrade head")
        r = subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, check=False)
        if r.returncode != 0:
            return 2 if r.returncode == 2 else 1
    servers = [Server(args.server, args.base_port + i, log_dir) for i in range(args.processes)]
    nginx: Nginx | None = None
    status = 0
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(args.ready_timeout_s)
            log(f"server {s.addr} ready (pid {s.proc.pid}, log {s.log_path})")
        nginx = Nginx(var / "nginx", args.listen, [s.addr for s in servers]).start()
        log(f"nginx on http://{args.listen} -> {', '.join(s.addr for s in servers)} "
            f"(config {nginx.conf}); Ctrl-C stops everything")
        while True:
            time.sleep(1.0)
            if nginx.proc.poll() is not None:
                log(f"nginx exited {nginx.proc.returncode}: {nginx.error_log()[-1000:]}")
                status = 1
                break
            for s in servers:
                if s.proc.poll() is not None:
                    log(f"server {s.addr} exited {s.proc.returncode}; starting it again")
                    s.restarts += 1
                    s.start()
    except (KeyboardInterrupt, Stop):
        log("stopping")
    except RuntimeError as e:
        log(str(e))
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if nginx is not None:
            nginx.stop()
        for s in servers:
            s.terminate()
        deadline = time.monotonic() + 25
        for s in servers:
            s.wait_or_kill(deadline)
        log("stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
