"""Entry point: ``create_app(config)``, the ``socketio`` object, and ``main()``.

Wiring only: no business logic here. ``python app.py`` monkey-patches eventlet
first thing, makes psycopg2 cooperative, migrates, starts the embedded simulator in
the demo configuration, and serves.
"""
from __future__ import annotations

if __name__ == "__main__":  # monkey-patching must precede every other import
    import os as _os
    import warnings

    # OS threads for blocking C work (Argon2: 64 MiB each): bounded, so a login burst
    # costs at most 4 x 64 MiB, not eventlet's default 20 threads' worth
    _os.environ.setdefault("EVENTLET_THREADPOOL_SIZE", "4")

    warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()
    from psycogreen.eventlet import patch_psycopg

    patch_psycopg()

import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_socketio import SocketIO

from api import account, admin, auth, console, health, keys, metrics, notifications, openapi, orders, protection
from api.errors import register_error_handlers
from appcli import config_error_app, generate_keys_command, under_flask_cli
from config import Config, ConfigError, load_config, log_format, log_level
from extensions import init_limiter, trust_proxies
from services.container import Services, build_services
from services.leases import redis_client
from services.lifecycle import Tasks
from ws.handlers import register_handlers
from ws.hub import PushHub
from ws.packet import Packet
from ws.redis_bus import make_client_manager
from ws.relay import make_relay

logger = logging.getLogger("app")


def create_app(config: Mapping[str, Any] | Config | None = None) -> Flask:
    """Build the Flask app, bind every extension, build and start the services
    (``app.extensions["pushsrv"]``; ``.stop()`` ends their background loops).

    ``config``: a Config, or overrides applied on top of ``load_config()``.
    The database must already be migrated (``alembic upgrade head``).
    """
    if config is None and under_flask_cli() and "generate-keys" in sys.argv[1:]:
        return config_error_app(None)  # needs no configuration, builds no services
    try:
        cfg = config if isinstance(config, Config) else load_config().with_overrides(config)
    except ConfigError as e:
        if config is None and under_flask_cli():
            return config_error_app(e)  # `flask --app app ...`: a clear error, not a traceback
        raise
    app = Flask(__name__, static_folder=None)
    app.config.update(SECRET_KEY=cfg.SECRET_KEY, MAX_CONTENT_LENGTH=cfg.MAX_CONTENT_LENGTH,
                      JSON_SORT_KEYS=False)
    trust_proxies(app, cfg.TRUSTED_PROXIES)  # the rate limits' client address behind nginx
    init_limiter(app, cfg.RATELIMIT_STORAGE_URI, cfg.MESSAGE_QUEUE_URL, cfg.MESSAGE_QUEUE_CHANNEL)
    socketio = SocketIO()  # one per app (app.extensions["socketio"]): no state shared between apps
    register_handlers(socketio)
    # the queue's manager (ws.relay: account pushes conflated where they are received)
    # is always given, None without a queue: Flask-SocketIO keeps the options of an
    # earlier init_app, so one app's manager must not outlive it
    socketio.init_app(app, async_mode=cfg.ASYNC_MODE, cors_allowed_origins=cfg.socketio_cors(),
                      client_manager=make_client_manager(
                          cfg.MESSAGE_QUEUE_URL, cfg.MESSAGE_QUEUE_CHANNEL,
                          cfg.REDIS_MAX_CONNECTIONS, cfg.REDIS_POOL_TIMEOUT_S),
                      max_http_buffer_size=cfg.MAX_CONTENT_LENGTH, serializer=Packet)
    # one bounded Redis pool per process for the stream leases and the per-key relay
    redis = (redis_client(cfg.MESSAGE_QUEUE_URL, cfg.REDIS_MAX_CONNECTIONS,
                          cfg.REDIS_POOL_TIMEOUT_S) if cfg.MESSAGE_QUEUE_URL else None)
    # every background task of the app, push layer included, in one registry that
    # Services.stop() waits for
    tasks = Tasks(socketio.start_background_task, socketio.sleep)
    relay = make_relay(cfg.MESSAGE_QUEUE_URL, cfg.MESSAGE_QUEUE_CHANNEL, redis,
                       tasks.spawner("relay"), socketio.sleep)
    hub = PushHub(socketio, relay=relay, subscribe_concurrency=cfg.SUBSCRIBE_CONCURRENCY,
                  spawn=tasks.spawner("push"), spawn_timer=tasks.spawner("push timer"))
    svc = build_services(cfg, hub=hub, tasks=tasks, sleep=socketio.sleep, redis=redis)
    app.extensions["pushsrv"] = svc

    def fills_since(user_id: int, key_id: int, since_ms: int) -> tuple[str, bool, list[dict[str, object]]]:
        key = svc.keys.get(user_id, key_id)  # raises NotFound (deleted meanwhile)
        resume = svc.resume
        assert resume is not None  # built by build_services
        return key.exchange, key.testnet, resume.ledger_fills(key_id, since_ms)
    hub.fills_since = fills_since  # fills missed while Redis was away are replayed
    for bp in (auth.bp, keys.bp, account.bp, orders.bp, admin.bp, metrics.bp, openapi.bp,
               console.bp, health.bp, protection.bp, notifications.bp):
        app.register_blueprint(bp)
    register_error_handlers(app)
    register_cli(app)
    svc.start()
    if relay is not None:
        relay.start()
    return app


def register_cli(app: Flask) -> None:
    """Operator commands: ``flask --app app create-admin USERNAME`` (password from
    ``ADMIN_PASSWORD`` or a prompt), ``flask --app app rotate-encryption-key``
    (re-encrypts every stored secret with ``NEW_KEY_ENCRYPTION_KEY``) and
    ``flask --app app generate-keys`` (fresh secrets for the environment file)."""
    import os

    import click

    from services import maintenance

    app.cli.add_command(generate_keys_command())

    @app.cli.command("create-admin")
    @click.argument("username")
    @click.password_option(envvar="ADMIN_PASSWORD")
    def create_admin(username: str, password: str) -> None:
        svc: Services = app.extensions["pushsrv"]
        user_id, created = maintenance.create_admin(svc.db, svc.users, username, password)
        click.echo(f"admin user {'created' if created else 'updated'} id={user_id}")

    @app.cli.command("rotate-encryption-key")
    def rotate_encryption_key() -> None:
        svc: Services = app.extensions["pushsrv"]
        new_key = os.environ.get("NEW_KEY_ENCRYPTION_KEY", "")
        if not new_key:
            raise click.UsageError("set NEW_KEY_ENCRYPTION_KEY to the new Fernet key")
        old = [svc.config.KEY_ENCRYPTION_KEY, *svc.config.OLD_KEY_ENCRYPTION_KEYS]
        count = maintenance.rotate_encryption_key(svc.db, old, new_key)
        click.echo(f"re-encrypted {count} secrets; now set KEY_ENCRYPTION_KEY to the new key "
                   "(keep the old one in OLD_KEY_ENCRYPTION_KEYS until every process restarted)")


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Set the server process's collector thresholds (``GC_THRESHOLDS``): with a
    young generation of 50,000 objects instead of 700, a push envelope is freed by
    its reference count before any collection looks at it, so few objects reach the
    old generation and its full collections (hundreds of ms at 1,000 accounts) become
    rare. The young collections themselves take a few ms to tens of ms."""
    gc.set_threshold(*thresholds)


def freeze_startup_objects() -> None:
    """After start: collect once, then move every object alive (modules, classes,
    functions, the app) to the permanent generation (``gc.freeze``), so that later
    collections do not walk what lives for the whole process."""
    gc.collect()
    gc.freeze()


def serve(app: Flask, cfg: Config) -> None:
    """Serve ``app`` on ``cfg.HOST:cfg.PORT`` until the process ends. On eventlet this
    is what ``socketio.run`` does (eventlet's WSGI server on a listening socket, at
    most ``MAX_WS_CONNECTIONS`` at once) with the socket opened here, so that its
    backlog is ``LISTEN_BACKLOG`` instead of eventlet's 50."""
    if cfg.ASYNC_MODE != "eventlet":
        app.extensions["socketio"].run(app, host=cfg.HOST, port=cfg.PORT, log_output=False)
        return
    import eventlet
    import eventlet.green.socket
    import eventlet.wsgi
    family, _, _, _, address = eventlet.green.socket.getaddrinfo(cfg.HOST, cfg.PORT)[0]
    listener = eventlet.listen(address, family, backlog=cfg.LISTEN_BACKLOG)
    eventlet.wsgi.server(listener, app, max_size=cfg.MAX_WS_CONNECTIONS, log_output=False)


def main() -> None:
    """Run the server (``python app.py``)."""
    import logsetup
    try:
        logsetup.configure(log_format(), log_level())
        cfg = load_config()
    except ConfigError as e:
        if not logging.getLogger().handlers:
            logsetup.configure()
        logger.error("configuration error: %s", e)
        raise SystemExit(2)
    from services import demo, schema
    tune_gc(cfg.GC_THRESHOLDS)
    schema.upgrade(cfg.DATABASE_URL)
    simulator = demo.start_embedded_simulator(cfg) if cfg.EMBED_SIMULATOR else None
    app = create_app(cfg)
    svc: Services = app.extensions["pushsrv"]
    if simulator is not None:
        demo.bootstrap(cfg, svc)
    freeze_startup_objects()
    def shutdown(*_args) -> None:  # type: ignore[no-untyped-def]
        """Graceful stop (``Services.stop``: streams off, loops ended, write-behind
        flushed within its bound, database closed), then exit."""
        logger.info("shutting down")
        try:
            svc.stop()
        finally:
            if simulator is not None:
                simulator.terminate()
                simulator.wait(10)
            logging.shutdown()
            os._exit(0)

    socketio = app.extensions["socketio"]
    signal.signal(signal.SIGTERM, lambda *_: socketio.start_background_task(shutdown))
    logger.info("listening url=http://%s:%s env=%s", cfg.HOST, cfg.PORT, cfg.APP_ENV)
    try:
        serve(app, cfg)
    except KeyboardInterrupt:
        shutdown()


if __name__ == "__main__":
    main()
