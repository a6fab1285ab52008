"""TradingService: the cache of exchange clients, one per (user_id, exchange, testnet).

Rules (DESIGN.md, seed 003): at most one construction at a time per cache key
(concurrent first requests share one build), validated before reuse (a dead client
is rebuilt), bounded (least recently used dropped), owned by the app, and cleared
on the user's last disconnect, on key change or delete, and by the admin.
The dict lock is never held across I/O; a per-key lock serialises construction.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from exchanges.base import ExchangeClient

logger = logging.getLogger(__name__)

CacheKey = tuple[int, str, bool]
# (exchange, api_key, api_secret, testnet) -> client; no network I/O allowed in it.
# ``(exchange, api_key, api_secret, testnet, user_id)``: the owner's id places the
# client's traffic on an egress address (``exchanges.egress.egress_for``)
ClientBuilder = Callable[[str, str, str, bool, int], ExchangeClient]


@dataclass
class _Entry:
    client: ExchangeClient
    api_key: str


class TradingService:
    """Owns exchange clients.

    Args:
        build_client: constructs a client (e.g. ``exchanges.factory.create_client``
            bound to the configured endpoints).
        max_size: bound of the cache; the least recently used entry is closed beyond it.
    """

    def __init__(self, build_client: ClientBuilder, max_size: int = 10_000) -> None:
        self._build = build_client
        self._max = max_size
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._build_locks: dict[CacheKey, threading.Lock] = {}
        self.builds = 0  # constructions since start (observable in tests and stats)

    def get_client(self, user_id: int, exchange: str, testnet: bool,
                   api_key: str, api_secret: str | Callable[[], str]) -> ExchangeClient:
        """The cached client for the key, building it on first use.

        ``api_secret``: the secret, or a callable returning it, called only when a
        client is built (decrypting the stored secret on every call of an account
        stream's loop cost a few per cent of the server's CPU at 1,000 accounts).
        A cached client whose ``api_key`` differs (the key was changed) or that is
        no longer alive is closed and rebuilt. Raises what the builder raises, and
        what ``api_secret()`` raises.
        """
        key: CacheKey = (user_id, exchange, testnet)
        client = self._reusable(key, api_key)
        if client is not None:
            return client
        with self._lock:
            build_lock = self._build_locks.setdefault(key, threading.Lock())
        with build_lock:
            client = self._reusable(key, api_key)  # someone built it while we waited
            if client is not None:
                return client
            secret = api_secret() if callable(api_secret) else api_secret
            client = self._build(exchange, api_key, secret, testnet, user_id)
            with self._lock:
                self.builds += 1
                old = self._entries.pop(key, None)
                self._entries[key] = _Entry(client, api_key)
                evicted = self._evict_over_bound()
            logger.debug("exchange client built user_id=%s exchange=%s testnet=%s", *key)
        for stale in ([old.client] if old else []) + evicted:
            stale.close()
        return client

    def _reusable(self, key: CacheKey, api_key: str) -> ExchangeClient | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.api_key == api_key and entry.client.is_alive():
                self._entries.move_to_end(key)
                return entry.client
            del self._entries[key]
        entry.client.close()
        return None

    def _evict_over_bound(self) -> list[ExchangeClient]:
        evicted = []
        while len(self._entries) > self._max:
            _, entry = self._entries.popitem(last=False)
            evicted.append(entry.client)
        return evicted

    def clear_user_cache(self, user_id: int, exchange: str | None = None,
                         testnet: bool | None = None) -> list[dict]:
        """Drop and close the user's clients (all, or one exchange / one network).

        Returns ``[{"user_id", "exchange", "testnet"}]`` of what was dropped.
        """
        with self._lock:
            keys = [k for k in self._entries if k[0] == user_id
                    and (exchange is None or k[1] == exchange)
                    and (testnet is None or k[2] == testnet)]
            dropped = [self._entries.pop(k) for k in keys]
            for k in keys:
                self._build_locks.pop(k, None)
        for entry in dropped:
            entry.client.close()
        if keys:
            logger.info("exchange clients dropped user_id=%s count=%s", user_id, len(keys))
        return [{"user_id": k[0], "exchange": k[1], "testnet": k[2]} for k in keys]

    def stats(self) -> dict:
        """``{"size", "builds", "entries": [{"user_id", "exchange", "testnet", "created_at"}]}``."""
        with self._lock:
            entries = [{"user_id": k[0], "exchange": k[1], "testnet": k[2],
                        "created_at": e.client.created_at} for k, e in self._entries.items()]
        return {"size": len(entries), "builds": self.builds, "entries": entries}

    def close(self) -> None:
        """Close every client (shutdown)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.client.close()
