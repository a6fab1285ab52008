"""The long-lived services of one app, kept in ``app.extensions["pushsrv"]``:
``build_services(config, hub=..., spawn=..., sleep=...)`` builds them, ``start()``
starts their background loops, ``stop(timeout_s)`` ends them in order.

No Flask or Socket.IO here: the push hub, ``spawn`` (start a background task) and
``sleep`` (cooperative) are passed in by ``app.py``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from config import Config
from exchanges.errors import InvalidOrder
from exchanges.factory import create_client, create_market_stream
from exchanges.governor import Governors
from exchanges.types import FundingFee
from models import Database
from services import ledger, realized
from services.account_stream import StreamSettings
from services.accounts import KeyCache, KeyService, UserService
from services.client_cache import TradingService
from services.coalesce import Coalescer
from services.errors import ValidationFailed
from services.exits import ExitService, ExitSettings
from services.fill_feed import FillFeed
from services.leases import LocalLeases, RedisLeases
from services.lifecycle import Tasks
from services.metrics import Metrics
from services.notify.standby import StandbyStreams
from services.notify.wiring import Notify, build_notify
from services.orders import OrderService
from services.protection import ProtectionService
from services.push import PushLayer
from services.reconciler import Reconciler
from services.resume import ResumeService
from services.security import KeyCipher, TokenService
from services.sessions import SessionService
from services.snapshots import SnapshotService
from services.stream_manager import StreamManager
from services.tickers import TickerHub
from services.write_behind import LedgerWriter

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 7.0  # SIGTERM / worker exit: with the grace waits, inside 10 s before a SIGKILL
LOOPS_SHARE = 0.3  # of stop()'s time, waited for the loops to end before the flush
# the periodic reconcile's first run waits this long after start (seconds; the start-up
# recovery runs first); a module setting so that tests can shorten it
RECONCILE_FIRST_DELAY_S = 2.0
LOOPS = {"ledger writer", "reconciler start-up", "reconciler", "exit chase", "stream",
         "market stream", "protection", "notify worker", "price alerts",
         "notify deliveries", "notify standby", "limit timeout", "push timer"}  # the tasks stop() waits for


@dataclass
class Services:
    """Everything a request or socket handler may call."""

    config: Config
    db: Database
    tokens: TokenService
    cipher: KeyCipher
    trading: TradingService
    users: UserService
    keys: KeyService
    orders: OrderService
    reconciler: Reconciler
    exits: ExitService
    streams: StreamManager
    snapshots: SnapshotService
    ledger_writer: LedgerWriter
    hub: PushLayer
    tickers: TickerHub
    governors: Governors
    resume: ResumeService | None = None
    metrics: Metrics | None = None
    sessions: SessionService | None = None  # login sessions, refresh tokens
    tasks: Tasks | None = None  # the background tasks (None: nothing to start)
    leases: Any = None  # LocalLeases or RedisLeases (the periodic reconciler's lease)
    protection: ProtectionService | None = None  # stop-loss / take-profit / trailing legs
    notify: Notify | None = None  # devices, alerts, price alerts, the outbox and its worker
    started_monotonic: float = field(default_factory=time.monotonic)
    stopped: dict | None = None  # what stop() reported, once it ran

    def message_queue_status(self) -> str:
        """``none`` without MESSAGE_QUEUE_URL, else ``ok`` or ``down`` (Redis PING)."""
        url = self.config.MESSAGE_QUEUE_URL
        if not url:
            return "none"
        import redis
        try:
            redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
            return "ok"
        except redis.RedisError:
            return "down"

    def start(self) -> None:
        """Start every background loop: the write-behind worker, the reconciler's
        start-up recovery and (``RECONCILE_INTERVAL_S`` > 0) its periodic run, the
        stream lease upkeep (several processes). Call once."""
        assert self.tasks is not None, "built without spawn: nothing to start"
        cfg = self.config
        self.tasks.spawn("ledger writer", self.ledger_writer.run)
        self.tasks.spawn("reconciler start-up", self.reconciler.start_up)  # left by a crash
        if cfg.RECONCILE_INTERVAL_S > 0:
            self.tasks.spawn("reconciler", self.reconciler.run_periodic, cfg.RECONCILE_INTERVAL_S,
                             self.tasks.sleep, RECONCILE_FIRST_DELAY_S, self.leases,
                             cfg.RECONCILE_BATCH)
        # ---- protection (helper `protect`): re-arm server-mode rules, then the periodic
        # extremes flush and ended-position sweep
        if self.protection is not None:
            self.tasks.spawn("protection start-up", self.protection.start_up)
            self.tasks.spawn("protection", self.protection.run_periodic)
        # ---- end protection
        self.streams.start()
        if self.notify is not None:
            self.notify.start(self.tasks.spawn)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict:
        """Stop in order, within about ``timeout_s`` seconds (once; later calls return
        the first report):

        1. stop accepting: the account and market streams stop (their leases are
           released), the periodic reconciler, the lease upkeep and exit chases are
           told to end (an exit left ``working`` is recovered at the next start);
        2. wait up to ``LOOPS_SHARE`` of the time for those loops to end;
        3. flush the write-behind queue in the time left (while the database is down
           it retries until then; what it could not store is logged as a count);
        4. close the exchange clients and the database pool.

        Returns ``{"unflushed": events not stored, "still_running": {task name:
        count} of the loops that had not ended, "elapsed_s"}``."""
        if self.stopped is not None:
            return self.stopped
        began = time.monotonic()
        deadline = began + timeout_s
        self.reconciler.stop()
        self.orders.stop()
        self.exits.stop()
        if self.protection is not None:  # protection (helper `protect`)
            self.protection.stop()
        if self.notify is not None:
            self.notify.stop()
        self.streams.stop_all()
        self.tickers.stop_all()
        self.hub.stop()  # the push layer's conflation timer
        if self.tasks is not None:
            self.tasks.wait(began + timeout_s * LOOPS_SHARE, LOOPS - {"ledger writer"})
        unflushed = self.ledger_writer.stop(drain=True, timeout_s=max(0.0, deadline - time.monotonic()))
        still = self.tasks.wait(time.monotonic() + 0.5, LOOPS) if self.tasks is not None else {}
        if still:
            logger.warning("services stopped with tasks still running %s",
                           " ".join(f"{name}={n}" for name, n in sorted(still.items())))
        self.trading.close()
        if self.notify is not None:
            self.notify.close()
        if self.metrics is not None:
            self.metrics.close()
        self.db.dispose()
        self.stopped = {"unflushed": unflushed, "still_running": still,
                        "elapsed_s": round(time.monotonic() - began, 3)}
        logger.info("services stopped unflushed=%s elapsed_s=%s", unflushed,
                    self.stopped["elapsed_s"])
        return self.stopped

    def shutdown(self) -> None:
        """``stop()`` with its default time (kept for callers of the old name)."""
        self.stop()


def build_services(cfg: Config, *, hub: PushLayer, spawn: Callable[..., Any] | None = None,
                   sleep: Callable[[float], None], redis: Any = None,
                   tasks: Tasks | None = None) -> Services:
    """Build every service of one app, nothing started (``Services.start()`` does).

    ``hub``: the push layer (``services.push.PushLayer``; the server's is
    ``ws.hub.PushHub``), its callbacks set here; ``spawn(fn, *args)``: starts a background task and returns
    its handle; ``sleep(seconds)``: cooperative sleep; ``redis``: the ``redis.Redis``
    of ``MESSAGE_QUEUE_URL`` for the leases (None: one of their own). The database
    must already be migrated."""
    db = Database(cfg.DATABASE_URL, cfg.DB_POOL_SIZE, cfg.DB_MAX_OVERFLOW, cfg.DB_POOL_TIMEOUT_S)
    key_cache = KeyCache(db, ttl_s=cfg.KEY_CACHE_TTL_S, on_change=hub.key_changed, sleep=sleep)
    hub.on_key_changed = key_cache.invalidate  # another process changed a key: forget our copy
    cipher = KeyCipher(cfg.KEY_ENCRYPTION_KEY, *cfg.OLD_KEY_ENCRYPTION_KEYS)
    tokens = TokenService(cfg.SECRET_KEY, cfg.JWT_EXPIRES_S)
    if tasks is None:
        assert spawn is not None, "build_services needs spawn or tasks"
        tasks = Tasks(spawn, sleep)
    governors = Governors(cfg.EGRESS_IPS, cfg.EXCHANGE_WEIGHT_LIMITS)

    def build_client(exchange: str, api_key: str, api_secret: str, testnet: bool,  # type: ignore[no-untyped-def]
                     user_id: int):
        return create_client(exchange, api_key, api_secret, testnet, cfg.venue(exchange, testnet),
                             timeout_s=cfg.EXCHANGE_TIMEOUT_S,
                             governor=governors.for_key(exchange, testnet, user_id))

    trading = TradingService(build_client, max_size=cfg.CLIENT_CACHE_MAX)

    def client_for(key):  # type: ignore[no-untyped-def]
        return trading.get_client(key.user_id, key.exchange, key.testnet, key.api_key,
                                  lambda: cipher.decrypt(key.api_secret_encrypted))

    tickers = TickerHub(
        lambda exchange, testnet, symbol: create_market_stream(
            exchange, symbol, cfg.venue(exchange, testnet), cfg.EXCHANGE_TIMEOUT_S),
        hub.publish, tasks.spawner("market stream"), sleep)
    leases = (RedisLeases(cfg.MESSAGE_QUEUE_URL, cfg.MESSAGE_QUEUE_CHANNEL, int(cfg.LEASE_TTL_S * 1000),
                          client=redis)
              if cfg.MESSAGE_QUEUE_URL else LocalLeases())
    orders = OrderService(db, client_for, sleep, cfg.ORDER_CONFIRM_TIMEOUT_S,
                          spawn=tasks.spawner("limit timeout"))
    writer = LedgerWriter(db)  # its on_recorded is the StreamManager's, set below
    exits = ExitService(db, client_for, tasks.spawner("exit chase"), hub.publish,
                        ExitSettings(cfg.EXIT_MAX_RETRIES, cfg.EXIT_MAX_SLIPPAGE, cfg.EXIT_DEADLINE_S),
                        orphan_after_ms=15_000 if cfg.MESSAGE_QUEUE_URL else 0)
    reconciler = Reconciler(db, orders, client_for, repair=cfg.RECONCILE_REPAIR, exits=exits,
                            dead_letters=writer)
    # ---- protection (helper `protect`): server-mode rules on the shared market stream,
    # closed by the exit service; exchange-held legs reconciled after a stream gap too
    protection = ProtectionService(db, client_for, exits, tickers, tasks.spawner("protection fire"),
                                   sleep, sweep_s=cfg.PROTECTION_SWEEP_S)  # on_alert: below

    def reconnected(key_id, positions, symbols):  # type: ignore[no-untyped-def]
        reconciler.reconcile_key_id(key_id, positions, symbols)
        protection.on_stream_reconnected(key_id)
    # ---- end protection
    streams = StreamManager(db, cipher, trading, hub.publish, tasks.spawner("stream"), sleep,
                            _LedgerFacade(db, writer, sleep, protection.positions_seen,
                                          protection.on_fill),
                            StreamSettings(poll_interval_s=cfg.POLL_INTERVAL_S,
                                           recv_timeout_s=cfg.STREAM_RECV_TIMEOUT_S),
                            tickers=tickers, on_reconnected=reconnected,
                            leases=leases, audience=hub.has_audience, governors=governors,
                            push=hub, keys=key_cache, on_local=hub.stream_local,
                            on_released=hub.stream_released,
                            connect_concurrency=cfg.STREAM_CONNECT_CONCURRENCY,
                            on_positions_read=protection.positions_read)
    hub.on_released = streams.take_over  # a key this process follows was released elsewhere
    writer.set_on_recorded(streams.fills_recorded)
    metrics = Metrics(hub=hub, trading=trading, streams=streams, tickers=tickers,
                      ledger_writer=writer, governors=governors, reconciler=reconciler)
    hub.on_stream_latency = metrics.observe_stream_latency
    # ---- protection (helper `protect`): the account streams hand it the venues' leg
    # updates
    streams.on_leg_update = protection.on_leg_update
    streams.protection_of, streams.legs_of = protection.position_fields, protection.leg_orders
    protection.on_change = streams.protection_changed
    protection.live_positions = streams.live_positions  # the sweep asks the venue less
    # ---- end protection
    # ---- notifications: devices, alerts, price alerts, the outbox and its FCM worker
    key_service = KeyService(db, cipher, build_client, trading, streams, key_cache)

    def check_symbol(user_id: int, exchange: str, symbol: str) -> None:
        """A price alert's symbol must be one of the venue's (asked with the user's key)."""
        keys = [k for k in key_service.list(user_id) if k.exchange == exchange]
        if not keys:
            raise ValidationFailed("no_key_for_exchange", f"a price alert on {exchange} needs "
                                   f"an API key of {exchange}", "exchange")
        key = next((k for k in keys if not k.testnet), keys[0])
        try:
            client_for(key).get_symbol_rules(symbol)
        except InvalidOrder:
            raise ValidationFailed("unknown_symbol", f"{symbol} is not a symbol of {exchange}",
                                   "symbol") from None

    notify = build_notify(db, publish=hub.publish, tickers=tickers, check_symbol=check_symbol,
                          spawn=tasks.spawner("notify send"), sleep=sleep,
                          credentials_path=cfg.GOOGLE_APPLICATION_CREDENTIALS,
                          fcm_url=cfg.FCM_URL, timeout_s=cfg.FCM_TIMEOUT_S,
                          grace_ms=cfg.NOTIFY_ONLINE_GRACE_MS,
                          concurrency=cfg.NOTIFY_CONCURRENCY, queue_url=cfg.MESSAGE_QUEUE_URL,
                          channel=cfg.MESSAGE_QUEUE_CHANNEL,
                          price_alerts_reload_s=cfg.PRICE_ALERTS_RELOAD_S)
    hub.on_delivered = notify.deliveries.observe
    if cfg.NOTIFY_STANDBY_S > 0:  # streams of users with a device run with no socket open
        notify.standby = StandbyStreams(db, streams, hub.online, sleep, cfg.NOTIFY_STANDBY_S)
        notify.devices.on_change = notify.standby.poke
    metrics.add_notify(notify)
    protection.on_alert = notify.alerts.raise_alert  # an alert and its notifications
    return Services(
        config=cfg, db=db, tokens=tokens, cipher=cipher, trading=trading,
        users=UserService(db, tokens),
        sessions=SessionService(db, tokens, cfg.REFRESH_EXPIRES_S),
        keys=key_service,
        orders=orders, reconciler=reconciler, exits=exits, streams=streams,
        snapshots=SnapshotService(streams, client_for, partial(ledger.realized_pnl, db)),
        resume=ResumeService(FillFeed(db)),
        ledger_writer=writer, hub=hub, tickers=tickers, governors=governors, metrics=metrics,
        tasks=tasks, leases=leases, protection=protection, notify=notify)


class _LedgerFacade:
    """What a stream needs of the ledger: realized PnL and a non-blocking fill sink.

    The realized PnL of keys whose streams start together (a reconnect storm starts
    hundreds) is read in one query (``services.coalesce``, ``services.realized.read_many``),
    the same sums as ``ledger.realized_pnl``."""

    def __init__(self, db: Database, writer: LedgerWriter,
                 sleep: Callable[[float], None] = time.sleep,
                 on_positions: Callable[[int, list, bool], None] | None = None,
                 on_fill: Callable[[int, int, Any], Any] | None = None) -> None:
        self._db, self._writer = db, writer
        # protection: a leg's fill gets its reason before it is stored and pushed;
        # liquidation / ADL fills raise their alerts
        self._on_fill = on_fill
        self._realized = Coalescer(self._realized_many, sleep)
        self._on_positions = on_positions  # protection: one-cancels-the-others on a close

    def realized_pnl(self, key_id: int):  # type: ignore[no-untyped-def]
        value = self._realized.get(key_id)
        return value if value is not None else ledger.realized_pnl(self._db, key_id)

    def _realized_many(self, key_ids: list[int]) -> dict:
        with self._db.session() as s:
            return realized.read_many(s, key_ids)

    def record_fill(self, user_id: int, key_id: int, fill):  # type: ignore[no-untyped-def]
        """Queue ``fill`` for the ledger; returns it as stored and to be pushed (with
        the protection leg's ``reason`` when it is one)."""
        if self._on_fill is not None and not isinstance(fill, FundingFee):
            fill = self._on_fill(user_id, key_id, fill)
        self._writer.submit_fill(key_id, fill)
        return fill

    def record_order(self, key_id: int, order) -> None:  # type: ignore[no-untyped-def]
        self._writer.submit_order(key_id, order)

    def record_positions(self, key_id: int, positions, as_of: int, complete: bool) -> None:  # type: ignore[no-untyped-def]
        self._writer.submit_positions(key_id, positions, as_of, complete)
        if self._on_positions is not None:
            self._on_positions(key_id, positions, complete)
