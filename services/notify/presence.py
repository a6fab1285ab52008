"""Which events reached a socket of their user (``skip_when_online``).

The push hub calls ``observe(envelope)`` when a ``fills`` or ``alerts`` envelope was
handed to at least one connection of this process subscribed to its type; the
notification worker asks ``delivered(event_keys)`` before sending. Without a message
queue the record is this process's memory (``LocalDeliveries``); with one
(``RedisDeliveries``) every process writes what it delivered to Redis (one key per
event, expiring after ``TTL_S``) so that a delivery by any process counts. The push
path never waits for Redis: keys are written by ``flush()``, called by the worker's
loop every ``FLUSH_S``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from services.notify.keys import event_keys_of

logger = logging.getLogger(__name__)

TTL_S = 600  # how long a delivery is remembered (an outbox row is decided well before)
MAX_KEPT = 200_000  # deliveries kept in memory at most (oldest dropped first)
FLUSH_S = 0.05


class LocalDeliveries:
    """Deliveries of this process, in memory, for ``TTL_S`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, float] = OrderedDict()  # event key -> monotonic time
        self.observed = 0

    def observe(self, envelope: dict) -> None:
        """A ``fills``/``alerts`` envelope reached a subscribed connection here."""
        keys = event_keys_of(envelope)
        if not keys:
            return
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._seen[key] = now
                self._seen.move_to_end(key)
            while len(self._seen) > MAX_KEPT:
                self._seen.popitem(last=False)
            self.observed += len(keys)
        self._queued(keys)

    def _queued(self, keys: list[str]) -> None:
        """Hook for a shared store (nothing here)."""

    def delivered(self, keys: list[str]) -> set[str]:
        """The ``keys`` that reached a socket within the last ``TTL_S`` seconds."""
        cutoff = time.monotonic() - TTL_S
        with self._lock:
            return {k for k in keys if self._seen.get(k, 0.0) > cutoff and k in self._seen}

    def flush(self) -> None:
        """Nothing to write (memory only)."""


class RedisDeliveries(LocalDeliveries):
    """Deliveries of every process: this process's in memory, and all in Redis under
    ``<channel>:delivered:<event key>`` (value 1, expiring after ``TTL_S``)."""

    def __init__(self, url: str, channel: str) -> None:
        super().__init__()
        import redis
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = f"{channel}:delivered:"
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self.write_errors = 0

    def _queued(self, keys: list[str]) -> None:
        with self._pending_lock:
            self._pending.extend(keys)

    def flush(self) -> None:
        """Write the deliveries observed since the last flush (kept for the next one
        when Redis does not answer)."""
        import redis
        with self._pending_lock:
            keys, self._pending = self._pending, []
        if not keys:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.set(self._prefix + key, 1, ex=TTL_S)
            pipe.execute()
        except redis.RedisError as e:
            self.write_errors += 1
            logger.warning("deliveries not written to redis count=%s error=%s", len(keys),
                           type(e).__name__)
            with self._pending_lock:
                self._pending[:0] = keys[-MAX_KEPT:]

    def delivered(self, keys: list[str]) -> set[str]:
        """The ``keys`` delivered here or by another process. When Redis does not
        answer, only this process's own deliveries count (a notification too many
        rather than one lost)."""
        import redis
        mine = super().delivered(keys)
        rest = [k for k in keys if k not in mine]
        if not rest:
            return mine
        try:
            values = self._redis.mget([self._prefix + k for k in rest])
        except redis.RedisError as e:
            logger.warning("deliveries not read from redis count=%s error=%s", len(rest),
                           type(e).__name__)
            return mine
        return mine | {k for k, v in zip(rest, values, strict=True) if v is not None}
