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

import logging
import os
import signal
import sys
from functools import partial
from typing import Any, Mapping

from flask import Flask

from api import account, admin, auth, console, health, keys, metrics, openapi, orders
from api.errors import register_error_handlers
from appcli import config_error_app, generate_keys_command, under_flask_cli
from config import Config, ConfigError, load_config, log_format, log_level
from exchanges.factory import create_client, create_market_stream
from exchanges.governor import Governors
from extensions import init_limiter, socketio
from models import Database
from services import ledger
from services.accounts import KeyService, UserService
from services.account_stream import StreamSettings
from services.container import Services
from services.metrics import Metrics
from services.exits import ExitService, ExitSettings
from services.leases import LocalLeases, RedisLeases
from services.orders import OrderService
from services.security import KeyCipher, TokenService
from services.sessions import SessionService
from services.snapshots import SnapshotService
from services.fill_feed import FillFeed
from services.resume import ResumeService
from services.reconciler import Reconciler
from services.streams import StreamManager
from services.tickers import TickerHub
from services.write_behind import LedgerWriter
from services.trading import TradingService
from ws.handlers import register_handlers
from ws.hub import PushHub
from ws.packet import Packet

logger = logging.getLogger("app")


def create_app(config: Mapping[str, Any] | Config | None = None) -> Flask:
    """Build the Flask app and bind every extension and service.

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
    init_limiter(app, cfg.RATELIMIT_STORAGE_URI, cfg.MESSAGE_QUEUE_URL, cfg.MESSAGE_QUEUE_CHANNEL)
    socketio.init_app(app, async_mode=cfg.ASYNC_MODE, message_queue=cfg.MESSAGE_QUEUE_URL,
                      channel=cfg.MESSAGE_QUEUE_CHANNEL, cors_allowed_origins=cfg.socketio_cors(),
                      max_http_buffer_size=cfg.MAX_CONTENT_LENGTH, serializer=Packet)
    app.extensions["pushsrv"] = _build_services(cfg)
    for bp in (auth.bp, keys.bp, account.bp, orders.bp, admin.bp, metrics.bp, openapi.bp,
               console.bp, health.bp):
        app.register_blueprint(bp)
    register_error_handlers(app)
    register_handlers(socketio)
    register_cli(app)
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


def _build_services(cfg: Config) -> Services:
    db = Database(cfg.DATABASE_URL)
    cipher = KeyCipher(cfg.KEY_ENCRYPTION_KEY, *cfg.OLD_KEY_ENCRYPTION_KEYS)
    tokens = TokenService(cfg.SECRET_KEY, cfg.JWT_EXPIRES_S)

    governors = Governors(cfg.EGRESS_IPS, cfg.EXCHANGE_WEIGHT_LIMITS)

    def build_client(exchange: str, api_key: str, api_secret: str, testnet: bool):  # type: ignore[no-untyped-def]
        return create_client(exchange, api_key, api_secret, testnet, cfg.venue(exchange, testnet),
                             timeout_s=cfg.EXCHANGE_TIMEOUT_S,
                             governor=governors.for_key(exchange, testnet, api_key))

    trading = TradingService(build_client, max_size=cfg.CLIENT_CACHE_MAX)

    def client_for(key):  # type: ignore[no-untyped-def]
        return trading.get_client(key.user_id, key.exchange, key.testnet, key.api_key,
                                  cipher.decrypt(key.api_secret_encrypted))

    hub = PushHub(socketio)
    tickers = TickerHub(
        lambda exchange, testnet, symbol: create_market_stream(
            exchange, symbol, cfg.venue(exchange, testnet), cfg.EXCHANGE_TIMEOUT_S),
        hub.publish, socketio.start_background_task, socketio.sleep)
    streams_ref: list[StreamManager] = []
    leases = (RedisLeases(cfg.MESSAGE_QUEUE_URL, cfg.MESSAGE_QUEUE_CHANNEL, int(cfg.LEASE_TTL_S * 1000))
              if cfg.MESSAGE_QUEUE_URL else LocalLeases())
    orders = OrderService(db, client_for, socketio.sleep, cfg.ORDER_CONFIRM_TIMEOUT_S,
                          spawn=socketio.start_background_task)
    writer = LedgerWriter(db, on_recorded=lambda key_id: streams_ref[0].fills_recorded(key_id))
    exits = ExitService(db, client_for, socketio.start_background_task, hub.publish,
                        ExitSettings(cfg.EXIT_MAX_RETRIES, cfg.EXIT_MAX_SLIPPAGE, cfg.EXIT_DEADLINE_S),
                        orphan_after_ms=15_000 if cfg.MESSAGE_QUEUE_URL else 0)
    reconciler = Reconciler(db, orders, client_for, repair=cfg.RECONCILE_REPAIR, exits=exits,
                            dead_letters=writer)
    ledger_api = _LedgerFacade(db, writer)
    streams = StreamManager(db, cipher, trading, hub.publish, socketio.start_background_task,
                            socketio.sleep, ledger_api,
                            StreamSettings(poll_interval_s=cfg.POLL_INTERVAL_S,
                                           recv_timeout_s=cfg.STREAM_RECV_TIMEOUT_S),
                            tickers=tickers, on_reconnected=reconciler.reconcile_key_id,
                            leases=leases, audience=hub.has_audience, governors=governors,
                            push=hub)
    streams_ref.append(streams)
    metrics = Metrics(hub=hub, trading=trading, streams=streams, tickers=tickers,
                      ledger_writer=writer, governors=governors, reconciler=reconciler)
    hub.on_stream_latency = metrics.observe_stream_latency
    socketio.start_background_task(writer.run)
    socketio.start_background_task(reconciler.start_up)  # timeouts and exits left by a crash
    if cfg.RECONCILE_INTERVAL_S > 0:
        socketio.start_background_task(reconciler.run_periodic, cfg.RECONCILE_INTERVAL_S,
                                       socketio.sleep, 2.0, leases, cfg.RECONCILE_BATCH)
    return Services(
        config=cfg, db=db, tokens=tokens, cipher=cipher, trading=trading,
        users=UserService(db, tokens),
        sessions=SessionService(db, tokens, cfg.REFRESH_EXPIRES_S),
        keys=KeyService(db, cipher, build_client, trading, streams),
        orders=orders, reconciler=reconciler,
        exits=exits,
        streams=streams,
        snapshots=SnapshotService(streams, client_for, partial(ledger.realized_pnl, db)),
        resume=ResumeService(FillFeed(db)),
        ledger_writer=writer, hub=hub, tickers=tickers, governors=governors, metrics=metrics)


class _LedgerFacade:
    """What a stream needs of the ledger: realized PnL and a non-blocking fill sink."""

    def __init__(self, db: Database, writer: LedgerWriter) -> None:
        self._db, self._writer = db, writer

    def realized_pnl(self, key_id: int):  # type: ignore[no-untyped-def]
        return ledger.realized_pnl(self._db, key_id)

    def record_fill(self, user_id: int, key_id: int, fill) -> None:  # type: ignore[no-untyped-def]
        self._writer.submit_fill(key_id, fill)

    def record_order(self, key_id: int, order) -> None:  # type: ignore[no-untyped-def]
        self._writer.submit_order(key_id, order)

    def record_positions(self, key_id: int, positions, as_of: int, complete: bool) -> None:  # type: ignore[no-untyped-def]
        self._writer.submit_positions(key_id, positions, as_of, complete)


def serve(app: Flask, cfg: Config) -> None:
    """Serve ``app`` on ``cfg.HOST:cfg.PORT`` until the process ends. On eventlet this
    is what ``socketio.run`` does (eventlet's WSGI server on a listening socket, at
    most ``MAX_WS_CONNECTIONS`` at once) with the socket opened here, so that its
    backlog is ``LISTEN_BACKLOG`` instead of eventlet's 50."""
    if cfg.ASYNC_MODE != "eventlet":
        socketio.run(app, host=cfg.HOST, port=cfg.PORT, log_output=False)
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
    from services import demo, schema, security
    if cfg.ASYNC_MODE == "eventlet":
        from eventlet import tpool
        security.configure_offload(tpool.execute)
    schema.upgrade(cfg.DATABASE_URL)
    simulator = demo.start_embedded_simulator(cfg) if cfg.EMBED_SIMULATOR else None
    app = create_app(cfg)
    svc: Services = app.extensions["pushsrv"]
    if simulator is not None:
        demo.bootstrap(cfg, svc)
    def shutdown(*_args) -> None:  # type: ignore[no-untyped-def]
        """Graceful stop: streams off, write-behind flushed, then exit."""
        logger.info("shutting down")
        try:
            svc.shutdown()
        finally:
            if simulator is not None:
                simulator.terminate()
                simulator.wait(10)
            logging.shutdown()
            os._exit(0)

    signal.signal(signal.SIGTERM, lambda *_: socketio.start_background_task(shutdown))
    logger.info("listening url=http://%s:%s env=%s", cfg.HOST, cfg.PORT, cfg.APP_ENV)
    try:
        serve(app, cfg)
    except KeyboardInterrupt:
        shutdown()


if __name__ == "__main__":
    main()
