"""nginx as the sticky load balancer in front of several server processes.

``render`` fills ``deploy/nginx.conf.template`` (sticky ``hash`` on the ``affinity``
query argument or the client address, WebSocket upgrade headers, see the template)
into ``<prefix>/nginx.conf``; ``Nginx.start`` runs ``/usr/sbin/nginx`` in the
foreground (``daemon off``) as a child process with its pid file, logs and temp
files under ``prefix``, and waits until it answers; ``stop`` ends it (SIGQUIT: a
graceful stop, then SIGKILL).

nginx comes from Debian's packages (``scripts/install-nginx.sh``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")


def available() -> bool:
    """True when the nginx binary (``NGINX``, default /usr/sbin/nginx) is there."""
    return Path(NGINX).exists() or shutil.which(NGINX) is not None


def render(prefix: Path, listen: str, backends: list[str], max_connections: int = 9_000,
           fail_timeout_s: int = 5, workers: int = 1) -> Path:
    """Write ``prefix/nginx.conf`` for ``backends`` (``host:port`` each) behind
    ``listen`` (``host:port``); returns its path. ``max_connections``: client
    connections the proxy holds at once (each costs it two: client and upstream).
    A backend that refuses a connection is left out of new requests for
    ``fail_timeout_s`` seconds (nginx ``max_fails=1``). ``workers``: nginx worker
    processes (each holds its own connections and open-file limit). Raises ValueError on an empty
    ``backends``."""
    if not backends:
        raise ValueError("backends: at least one host:port")
    prefix = Path(prefix).resolve()
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    worker_connections = 2 * -(-max_connections // workers) + 512
    servers = "\n".join(f"        server {b} max_fails=1 fail_timeout={fail_timeout_s}s;"
                        for b in backends)
    # as root the workers would otherwise run as nobody, who may not reach `prefix`
    user = "user root;" if os.geteuid() == 0 else ""
    text = (TEMPLATE.read_text().replace("@PREFIX@", str(prefix)).replace("@LISTEN@", listen)
            .replace("@SERVERS@", servers).replace("@USER@", user)
            .replace("@WORKERS@", str(workers))
            .replace("@WORKER_CONNECTIONS@", str(worker_connections))
            .replace("@NOFILE@", str(_nofile(worker_connections + 64))))
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


def _nofile(want: int) -> int:
    """``want`` open files, or the hard limit when lower (without CAP_SYS_RESOURCE even
    root cannot raise it, and nginx would say so in its log at every start)."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


class Nginx:
    """One nginx master (a child of this process) on a rendered configuration."""

    def __init__(self, prefix: Path, listen: str, backends: list[str], **render_kw: int) -> None:
        self.prefix = Path(prefix).resolve()
        self.listen = listen
        self.backends = list(backends)
        self.conf = render(self.prefix, listen, backends, **render_kw)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``http://<listen>``."""
        return f"http://{self.listen}"

    def _argv(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf), *extra]

    def check(self) -> None:
        """``nginx -t`` on the configuration; raises RuntimeError with its output."""
        r = subprocess.run(self._argv("-t", "-q", "-e", str(self.prefix / "error.log")),
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{r.stdout}{r.stderr}")

    def start(self, timeout_s: float = 10.0) -> Nginx:
        """Check the configuration, start nginx in the foreground (``daemon off``) and
        wait until ``listen`` accepts connections. Raises RuntimeError when it exits or
        does not listen in ``timeout_s``."""
        self.check()
        log = (self.prefix / "nginx.out").open("ab")
        self.proc = subprocess.Popen(self._argv("-g", "daemon off;", "-e", str(self.prefix / "error.log")),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        host, port = self.listen.rsplit(":", 1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.error_log()[-2000:]}")
            try:
                with socket.create_connection((host, int(port)), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.listen}: {self.error_log()[-2000:]}")

    def error_log(self) -> str:
        """nginx's error log so far."""
        try:
            return (self.prefix / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The pids of nginx's worker processes (children of the master)."""
        if self.proc is None:
            return []
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGQUIT (graceful: open connections finish), SIGKILL to the whole process
        group after ``timeout_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def main(argv: list[str] | None = None) -> None:
    """``python -m deploy.nginx --prefix DIR --listen HOST:PORT --backend HOST:PORT ...``:
    write ``DIR/nginx.conf`` only (docker-compose.yml runs nginx on it)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m deploy.nginx", description=main.__doc__)
    p.add_argument("--prefix", required=True)
    p.add_argument("--listen", default="0.0.0.0:8080")
    p.add_argument("--backend", action="append", required=True)
    p.add_argument("--max-connections", type=int, default=9_000)
    args = p.parse_args(argv)
    print(render(Path(args.prefix), args.listen, args.backend, max_connections=args.max_connections))


if __name__ == "__main__":
    main()
