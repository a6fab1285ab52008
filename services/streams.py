"""StreamManager: starts, finds and stops the account streams (one per API key).

Streams start on first demand (a subscription), are shared by every socket of the
user, and stop when the user's last connection is gone or the key changes.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from models import Database
from services.account_state import AccountState
from services.account_stream import AccountStream, Publish, StreamSettings
from services.keyring import get_owned_key
from services.security import KeyCipher
from services.trading import TradingService

logger = logging.getLogger(__name__)


class StreamManager:
    """Owns every AccountStream of this process.

    Args:
        db: the database (API keys are read from it, secrets decrypted with ``cipher``).
        trading: the client cache.
        publish: where envelopes go (the push hub's emit function).
        spawn: starts a background task (``socketio.start_background_task``).
        sleep: cooperative sleep (``socketio.sleep``).
        ledger: provides ``realized_pnl(key_id)``, ``record_fill(user_id, key_id, fill)``
            and ``record_order(key_id, order)`` (non-blocking: write-behind).
        tickers: the shared TickerHub for mark prices (None: poll positions).
        on_reconnected: run (as a background task) with a key id after its stream
            reconnected (the reconciler).
    """

    def __init__(self, db: Database, cipher: KeyCipher, trading: TradingService,
                 publish: Publish, spawn: Callable, sleep: Callable[[float], None],
                 ledger, settings: StreamSettings = StreamSettings(), tickers=None,  # type: ignore[no-untyped-def]
                 on_reconnected: Callable[[int], None] | None = None) -> None:
        self._db = db
        self._cipher = cipher
        self._trading = trading
        self._publish = publish
        self._spawn = spawn
        self._sleep = sleep
        self._ledger = ledger
        self._settings = settings
        self._tickers = tickers
        self._on_reconnected = on_reconnected
        self._lock = threading.Lock()
        self._streams: dict[int, AccountStream] = {}
        self.started = 0

    def ensure(self, user_id: int, key_id: int) -> AccountStream:
        """The running stream of ``key_id``, started if needed. Raises NotFound when
        the key is not the user's."""
        with self._lock:
            stream = self._streams.get(key_id)
            if stream is not None and stream.state.user_id == user_id:
                return stream
        key = get_owned_key(self._db, user_id, key_id)
        state = AccountState(user_id, key.id, key.exchange, key.testnet)
        exchange, testnet, api_key = key.exchange, key.testnet, key.api_key
        encrypted = key.api_secret_encrypted
        stream = AccountStream(
            state, get_client=lambda: self._trading.get_client(
                user_id, exchange, testnet, api_key, self._cipher.decrypt(encrypted)),
            realized_pnl=lambda: self._ledger.realized_pnl(key_id),
            publish=self._publish,
            on_fill=lambda fill: self._ledger.record_fill(user_id, key_id, fill),
            on_order=lambda order: self._ledger.record_order(key_id, order),
            sleep=self._sleep, settings=self._settings, tickers=self._tickers,
            on_reconnected=self._reconnected if self._on_reconnected else None)
        with self._lock:
            existing = self._streams.get(key_id)
            if existing is not None:
                return existing
            self._streams[key_id] = stream
            self.started += 1
        self._spawn(stream.run)
        logger.info("account stream started user_id=%s key_id=%s", user_id, key_id)
        return stream

    def get(self, key_id: int) -> AccountStream | None:
        """The running stream of ``key_id`` or None."""
        with self._lock:
            return self._streams.get(key_id)

    def stop_key(self, key_id: int) -> bool:
        """Stop the stream of one key (key changed or deleted). True if one ran."""
        with self._lock:
            stream = self._streams.pop(key_id, None)
        if stream is None:
            return False
        stream.stop()
        logger.info("account stream stopped key_id=%s", key_id)
        return True

    def stop_user(self, user_id: int) -> list[int]:
        """Stop every stream of the user; returns the key ids stopped."""
        with self._lock:
            keys = [k for k, s in self._streams.items() if s.state.user_id == user_id]
            streams = [self._streams.pop(k) for k in keys]
        for stream in streams:
            stream.stop()
        if keys:
            logger.info("account streams stopped user_id=%s count=%s", user_id, len(keys))
        return keys

    def _reconnected(self, key_id: int) -> None:
        assert self._on_reconnected is not None
        self._spawn(self._on_reconnected, key_id)

    def fills_recorded(self, key_id: int) -> None:
        """The ledger made fills of ``key_id`` durable: push the new realized PnL."""
        stream = self.get(key_id)
        if stream is not None:
            self._spawn(stream.refresh_realized)

    def stats(self) -> dict:
        """``{"running", "started", "by_state": {state: n}, "events_seen"}``."""
        with self._lock:
            streams = list(self._streams.values())
        by_state: dict[str, int] = {}
        for s in streams:
            by_state[s.status] = by_state.get(s.status, 0) + 1
        return {"running": len(streams), "started": self.started, "by_state": by_state,
                "events_seen": sum(s.events_seen for s in streams)}

    def stop_all(self) -> None:
        """Stop every stream (shutdown)."""
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for s in streams:
            s.stop()
