"""gunicorn settings for production (read from the project folder by default, or
with ``-c gunicorn.conf.py``). README "Deploy" has the command::

    gunicorn -c gunicorn.conf.py --bind 127.0.0.1:5001 'app:create_app()'

One eventlet worker per process (Socket.IO keeps each connection in one process;
run several processes behind a sticky load balancer with ``MESSAGE_QUEUE_URL``).
gunicorn 23.0.0 is pinned in requirements.txt: its eventlet worker works with
eventlet 0.41 (27.x no longer has it: "class uri 'eventlet' invalid or not found").

What ``python app.py`` does besides serving is done here too: the configuration is
checked before any worker starts (a missing production setting is one clear line
and exit status 2, no traceback), psycopg2 is made cooperative, Argon2 runs in a
bounded OS thread pool, the app's log lines go to stdout in ``LOG_FORMAT`` (plain
or json, gunicorn's own lines too), and a stopping worker flushes the ledger's
write-behind queue. Migrations are not run here: ``alembic upgrade head`` first.
"""
from __future__ import annotations

import os
import sys
import warnings

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")
# OS threads for blocking C work (Argon2: 64 MiB each), read when eventlet.tpool loads
os.environ.setdefault("EVENTLET_THREADPOOL_SIZE", "4")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import logsetup  # noqa: E402
from config import ConfigError, load_config, log_format, log_level  # noqa: E402

worker_class = "eventlet"
workers = 1  # one per process: start several processes instead (README "Deploy")
worker_connections = int(os.environ.get("MAX_WS_CONNECTIONS") or 10_000)
graceful_timeout = 20
try:
    logconfig_dict = logsetup.dict_config(log_format(), log_level())
except ConfigError as _e:
    sys.stderr.write(f"configuration error: {_e}\n")
    raise SystemExit(2)


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    """Refuse to start (exit status 2, one line) when the environment cannot
    configure a server, e.g. APP_ENV=production without SECRET_KEY."""
    try:
        cfg = load_config()
    except ConfigError as e:
        server.log.error("configuration error: %s", e)
        raise SystemExit(2)
    server.log.info("pushsrv starting env=%s message_queue=%s log_format=%s", cfg.APP_ENV,
                    "on" if cfg.MESSAGE_QUEUE_URL else "off", cfg.LOG_FORMAT)


def post_fork(server, worker) -> None:  # type: ignore[no-untyped-def]
    """In the worker, before the app loads: psycopg2 cooperative under eventlet."""
    from psycogreen.eventlet import patch_psycopg
    patch_psycopg()


def post_worker_init(worker) -> None:  # type: ignore[no-untyped-def]
    """The garbage collector's thresholds and startup freeze, as in app.main (Argon2
    hashing goes to eventlet's tpool by itself: ``services.security._offload``)."""
    import app
    app.tune_gc(load_config().GC_THRESHOLDS)
    app.freeze_startup_objects()


def worker_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Graceful stop (``Services.stop``): streams off, loops ended, write-behind
    flushed within its bound (inside ``graceful_timeout``), database closed."""
    app = getattr(worker, "wsgi", None)
    svc = getattr(app, "extensions", {}).get("pushsrv") if app is not None else None
    if svc is not None:
        try:
            svc.stop()
        except Exception:  # noqa: BLE001 - the process ends anyway; say why it was unclean
            server.log.exception("shutdown failed")
