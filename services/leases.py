"""Leases: one owner per account stream across server processes.

With several processes behind one URL, each API key's exchange stream must run in
exactly one of them, or the exchange load doubles. The owner holds a lease in Redis
(``SET NX PX``), renews it every third of its TTL, and loses it when it stops
renewing (a dead process): another process that has subscribers for the key takes
it over within one TTL. A single process uses LocalLeases (always the owner).

Liveness: each process also keeps ``<prefix>:alive:<owner>`` alive for ``alive_ms``,
set every second by a child process of its own (``start_heartbeat``,
services.heartbeat): it says the process is alive, not that its event loop (or its
GIL) is free, so a loop stalled for seconds by a storm or a long collector pause no
longer loses its leases to another process; a loop stalled for good stops renewing
and its leases expire by their TTL. A lease whose owner's heartbeat is gone (a
process killed with -9: the child sees its input closed and ends) is taken over by
``acquire`` at once, without waiting for the lease's own TTL: failover within
``alive_ms`` plus a reconnect.

Redis restarted empty: a ``renew`` that finds the lease gone takes it again
(``SET NX`` semantics, inside the script), so the process that ran the stream keeps
it; one that finds it held by another process gets False and stops its stream.
"""
from __future__ import annotations

import logging
import uuid

from services.heartbeat import (
    HEARTBEAT_S,
    HEARTBEAT_TIMEOUT_S,
    HeartbeatProcess,
    HeartbeatStatus,
    beat_settings,
)

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

    def heartbeat(self) -> None:
        """Nothing to do."""

    def start_heartbeat(self) -> None:
        """Nothing to do."""

    def restart_heartbeat(self) -> bool:
        """Nothing to do: False."""
        return False

    def stop_heartbeat(self) -> None:
        """Nothing to do."""

    def heartbeat_status(self) -> HeartbeatStatus | None:
        """None: no heartbeat."""
        return None


# renew: ours -> extend; gone (Redis restarted empty, or expired) -> take it again
# (SET NX: nobody else holds it); another owner's -> 0
_RENEW = """local cur = redis.call('get', KEYS[1])
if cur == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if not cur then
  if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
end
return 0"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end"""
# acquire: free -> ours; ours -> extend; held by an owner whose heartbeat
# (ARGV[3] .. owner) is gone -> ours (a dead process); else 0
_ACQUIRE = """if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
local cur = redis.call('get', KEYS[1])
if cur == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if cur and redis.call('exists', ARGV[3] .. cur) == 0 then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0"""
ALIVE_MS = 4000  # a process's heartbeat key lives this long (renewed every HEARTBEAT_S)


def redis_client(url: str, max_connections: int = 32, pool_timeout_s: float = 20.0,
                 socket_timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    """A ``redis.Redis`` on a ``BlockingConnectionPool`` of at most
    ``max_connections`` connections: a caller that finds them all in use waits up to
    ``pool_timeout_s`` seconds for one (then ``redis.ConnectionError``), where the
    default pool raised ``MaxConnectionsError`` at once (a reconnect storm's
    thousands of green threads each asking for one). ``socket_timeout_s`` bounds a
    reply's wait: 2 s timed out under a storm (a busy process reads its reply late)."""
    import redis  # only needed with MESSAGE_QUEUE_URL
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout_s,
        socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
    return redis.Redis(connection_pool=pool)


class RedisLeases:
    """Leases in Redis under ``<prefix>:lease:<name>``, held by this process's
    random ``owner`` id for ``ttl_ms`` milliseconds unless renewed.

    ``client``: the ``redis.Redis`` to use (``redis_client``: a bounded pool that
    waits); None: one made from ``url``. Redis errors propagate
    (``redis.RedisError``): a process that cannot reach Redis must not believe it
    owns anything.
    """

    distributed = True

    def __init__(self, url: str, prefix: str, ttl_ms: int, client=None,  # type: ignore[no-untyped-def]
                 alive_ms: int = ALIVE_MS, beat_client=None,
                 beat_interval_s: float = HEARTBEAT_S) -> None:
        self._redis = client if client is not None else redis_client(url)
        # ``heartbeat()``'s own connection (``beat_client``; None: one made from
        # ``url``): it never queues behind a storm's lease and relay calls in
        # ``client``'s bounded pool
        self._beat = beat_client if beat_client is not None else redis_client(
            url, max_connections=1, pool_timeout_s=HEARTBEAT_TIMEOUT_S,
            socket_timeout_s=HEARTBEAT_TIMEOUT_S)
        self._prefix = prefix
        self.ttl_ms = ttl_ms
        self.alive_ms = alive_ms
        self.owner = uuid.uuid4().hex
        self._alive_prefix = f"{prefix}:alive:"
        # the periodic beat: a child process, so that an event loop or a GIL held past
        # ``alive_ms`` (10,000 connects at once on 2 busy cores, a 5 s collector pause)
        # does not make this live process look dead (it lost 6 to 97 streams to the
        # other process per storm when a green task beat, docs/push-stream.md)
        self._beater = HeartbeatProcess(beat_settings(
            url, self._alive_prefix + self.owner, alive_ms, interval_s=beat_interval_s))
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._acquire = self._redis.register_script(_ACQUIRE)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:lease:{name}"

    def heartbeat(self) -> None:
        """Say this process is alive for ``alive_ms``, once, from the calling (green)
        thread, on a connection of its own (it never waits for the shared pool): before
        the first ``acquire``, so that our own leases are never taken for a dead
        process's. Raises RedisError."""
        self._beat.set(self._alive_prefix + self.owner, b"1", px=self.alive_ms)

    def start_heartbeat(self) -> None:
        """Start saying this process is alive every ``beat_interval_s`` from a child
        process (services.heartbeat.HeartbeatProcess) until ``stop_heartbeat()``; its
        failures are counted in ``heartbeat_status()``, never raised. Raises OSError
        when the child cannot be started."""
        self._beater.start()

    def restart_heartbeat(self) -> bool:
        """Start a new heartbeat child when the last one died; True if one was."""
        return self._beater.restart()

    def stop_heartbeat(self) -> None:
        """End the heartbeat child (the key expires ``alive_ms`` after its last beat)."""
        self._beater.stop()

    def heartbeat_status(self) -> HeartbeatStatus | None:
        """The heartbeat's figures (beats, failures, the last error, running)."""
        return self._beater.status()

    def acquire(self, name: str) -> bool:
        """True if this process now holds the lease: it was free, ours, or held by
        a process whose heartbeat is gone (dead: taken over at once)."""
        return bool(self._acquire(keys=[self._key(name)],
                                  args=[self.owner, self.ttl_ms, self._alive_prefix]))

    def renew(self, name: str) -> bool:
        """Extend our lease, or take it again when it is gone (Redis restarted empty);
        False when someone else's."""
        return bool(self._renew(keys=[self._key(name)], args=[self.owner, self.ttl_ms]))

    def release(self, name: str) -> None:
        """Give our lease up (no-op if not ours)."""
        self._release(keys=[self._key(name)], args=[self.owner])

    def acquire_many(self, names: list[str]) -> list[bool]:
        """``acquire`` of every name in one round trip (a pipeline of one script each:
        set if free, else extend if ours); in order."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            self._acquire(keys=[self._key(name)],
                          args=[self.owner, self.ttl_ms, self._alive_prefix], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def renew_many(self, names: list[str]) -> list[bool]:
        """``renew`` of every name in one round trip (a pipeline); in order."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            self._renew(keys=[self._key(name)], args=[self.owner, self.ttl_ms], client=pipe)
        return [bool(r) for r in pipe.execute()]

    def release_many(self, names: list[str]) -> None:
        """``release`` of every name in one round trip (a pipeline)."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            self._release(keys=[self._key(name)], args=[self.owner], client=pipe)
        pipe.execute()

    def force_release(self, name: str) -> None:
        """Drop the lease whoever holds it: its owner stops at its next renewal (a key
        was changed or deleted in another process)."""
        self._redis.delete(self._key(name))
