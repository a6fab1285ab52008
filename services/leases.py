"""Leases: one owner per account stream across server processes.

With several processes behind one URL, each API key's exchange stream must run in
exactly one of them, or the exchange load doubles. The owner holds a lease in Redis
(``SET NX PX``), renews it every third of its TTL, and loses it when it stops
renewing (a dead process): another process that has subscribers for the key takes
it over within one TTL. A single process uses LocalLeases (always the owner).
"""
from __future__ import annotations

import logging
import uuid

logger = logging.getLogger(__name__)


class LocalLeases:
    """Single-process leases: this process owns everything."""

    distributed = False
    owner = "local"

    def acquire(self, name: str) -> bool:
        """Always True."""
        return True

    def renew(self, name: str) -> bool:
        """Always True."""
        return True

    def release(self, name: str) -> None:
        """Nothing to do."""

    def force_release(self, name: str) -> None:
        """Nothing to do."""


_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end"""


class RedisLeases:
    """Leases in Redis under ``<prefix>:lease:<name>``, held by this process's
    random ``owner`` id for ``ttl_ms`` milliseconds unless renewed.

    Redis errors propagate (``redis.RedisError``): a process that cannot reach Redis
    must not believe it owns anything.
    """

    distributed = True

    def __init__(self, url: str, prefix: str, ttl_ms: int) -> None:
        import redis  # only needed with MESSAGE_QUEUE_URL
        self._redis = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self.ttl_ms = ttl_ms
        self.owner = uuid.uuid4().hex
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:lease:{name}"

    def acquire(self, name: str) -> bool:
        """True if this process now holds the lease (new, or already ours)."""
        if self._redis.set(self._key(name), self.owner, nx=True, px=self.ttl_ms):
            return True
        return self.renew(name)

    def renew(self, name: str) -> bool:
        """Extend our lease; False when it is gone or someone else's."""
        return bool(self._renew(keys=[self._key(name)], args=[self.owner, self.ttl_ms]))

    def release(self, name: str) -> None:
        """Give our lease up (no-op if not ours)."""
        self._release(keys=[self._key(name)], args=[self.owner])

    def force_release(self, name: str) -> None:
        """Drop the lease whoever holds it: its owner stops at its next renewal (a key
        was changed or deleted in another process)."""
        self._redis.delete(self._key(name))
