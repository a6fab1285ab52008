"""The long-lived services of one app, kept in ``app.extensions["pushsrv"]``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from config import Config
from exchanges.governor import Governors
from models import Database
from services.accounts import KeyService, UserService
from services.write_behind import LedgerWriter
from services.metrics import Metrics
from services.exits import ExitService
from services.orders import OrderService
from services.reconciler import Reconciler
from services.security import KeyCipher, TokenService
from services.resume import ResumeService
from services.sessions import SessionService
from services.snapshots import SnapshotService
from services.streams import StreamManager
from services.tickers import TickerHub
from services.trading import TradingService


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
    hub: object
    tickers: TickerHub
    governors: Governors
    resume: ResumeService | None = None
    metrics: Metrics | None = None
    sessions: SessionService | None = None  # login sessions, refresh tokens
    started_monotonic: float = field(default_factory=time.monotonic)

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

    def shutdown(self) -> None:
        """Stop streams, flush the write-behind queue, close clients and the pool."""
        self.streams.stop_all()
        self.tickers.stop_all()
        self.ledger_writer.stop(drain=True)
        self.trading.close()
        self.db.dispose()
