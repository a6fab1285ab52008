"""The Redis transports of the push relay: ``RedisBus`` (the per-key channels of
``ws.relay.KeyRelay``: publish, ``PUBSUB NUMSUB`` and one pub/sub connection read by
one background task) and ``RedisRelayManager`` (python-socketio's Redis manager for
the room emits that have no key, on a bounded pool that waits, with a short
reconnect back-off). Both reconnect by themselves: pub/sub keeps nothing while away
(python-socketio#1411)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import socketio

from clock import now_ms

logger = logging.getLogger(__name__)


class RedisBus:
    """The Redis side of ``KeyRelay``: ``publish`` and ``numsub`` on ``client`` (a
    bounded pool that waits, ``services.leases.redis_client``), and one pub/sub
    connection of its own, read by one background task (``start``) that hands every
    message to ``on_message(channel, data)`` and every subscribe confirmation to
    ``on_subscribed(channel, lost_at_ms)`` (``lost_at_ms``: for a channel subscribed
    again after a lost connection, when the connection was lost, ms UTC; else None).
    It reconnects by itself (0.25 s, doubling to ``MAX_BACKOFF_S``: pub/sub keeps
    nothing, so every second away is a second of pushes lost) and subscribes again to
    every channel asked for; ``subscribe`` / ``unsubscribe`` may be called at any time
    (applied at once when connected, else on reconnect)."""

    MAX_BACKOFF_S = 1.0

    def __init__(self, url: str, client, spawn: Callable[..., Any], sleep: Callable[[float], None]) -> None:  # type: ignore[no-untyped-def]
        self._url = url
        self._client = client
        self._spawn = spawn
        self._sleep = sleep
        self._lock = threading.Lock()
        self._channels: set[str] = set()
        self._pubsub = None
        self._stopped = False
        self.reconnects = 0
        self._lost_at_ms: int | None = None  # when the connection was lost (None: up)
        self._resubscribing: dict[str, int] = {}  # channel -> lost_at_ms, until confirmed

    def publish(self, channel: str, data: bytes) -> int:
        """PUBLISH; the number of subscribers that received it. Raises RedisError."""
        return int(self._client.publish(channel, data))

    def numsub(self, channels: list[str]) -> dict[str, int]:
        """How many connections are subscribed to each of ``channels`` (one round
        trip). Raises RedisError."""
        got = self._client.pubsub_numsub(*channels)
        return {(c.decode() if isinstance(c, bytes) else c): int(n) for c, n in got}

    def subscribe(self, channel: str) -> None:
        with self._lock:
            self._channels.add(channel)
            pubsub = self._pubsub
        if pubsub is not None:
            try:
                pubsub.subscribe(channel)
            except Exception:  # the reader reconnects and subscribes again
                logger.warning("relay subscribe failed channel=%s", channel)

    def unsubscribe(self, channel: str) -> None:
        with self._lock:
            self._channels.discard(channel)
            pubsub = self._pubsub
        if pubsub is not None:
            try:
                pubsub.unsubscribe(channel)
            except Exception:  # gone with the connection anyway
                logger.warning("relay unsubscribe failed channel=%s", channel)

    def start(self, on_message: Callable[[str, bytes], None],
              on_subscribed: Callable[[str, int | None], None]) -> None:
        self._spawn(self._run, on_message, on_subscribed)

    def stop(self) -> None:
        self._stopped = True
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def _run(self, on_message: Callable[[str, bytes], None],
             on_subscribed: Callable[[str, int | None], None]) -> None:
        import redis
        backoff = 0.25
        while not self._stopped:
            pubsub = None
            try:
                # no read timeout: the connection idles between messages (keepalives
                # find a dead peer)
                pubsub = redis.Redis.from_url(self._url, socket_connect_timeout=2,
                                              socket_keepalive=True).pubsub()  # type: ignore[no-untyped-call]
                with self._lock:
                    channels = sorted(self._channels)
                    if self._lost_at_ms is not None:
                        self._resubscribing = dict.fromkeys(channels, self._lost_at_ms)
                pubsub.subscribe(*channels)
                with self._lock:
                    self._pubsub = pubsub
                    self._lost_at_ms = None
                    missed = self._channels - set(channels)
                if missed:
                    pubsub.subscribe(*missed)
                for message in pubsub.listen():
                    if self._stopped:
                        break
                    backoff = 0.25
                    kind, channel = message["type"], message["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    try:
                        if kind == "message":
                            on_message(channel, message["data"])
                        elif kind == "subscribe":
                            with self._lock:
                                lost_at = self._resubscribing.pop(channel, None)
                            on_subscribed(channel, lost_at)
                    except Exception:  # isolation boundary: one message must not stop the reader
                        logger.exception("relay message failed channel=%s", channel)
            except Exception as e:  # Redis gone: retry, subscribing again
                if self._stopped:
                    break
                with self._lock:
                    first = self._lost_at_ms is None
                    if first:
                        self._lost_at_ms = now_ms()
                self.reconnects += 1
                # once per outage at WARNING, not once per retry
                logger.log(logging.WARNING if first else logging.DEBUG,
                           "relay connection lost error=%s retry_s=%s", type(e).__name__, backoff)
            finally:
                with self._lock:
                    if self._pubsub is pubsub:
                        self._pubsub = None
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a dead connection
                        pass
            if not self._stopped:
                self._sleep(backoff)
                backoff = min(self.MAX_BACKOFF_S, backoff * 2)


class RedisRelayManager(socketio.RedisManager):  # type: ignore[misc]  # untyped base
    """python-socketio's ``RedisManager`` (rooms shared between processes for
    ``fills``, ``stream_status``, ``error``) whose publishing connections come from a
    bounded pool that waits (``max_connections``, ``pool_timeout_s``) rather than
    failing in a storm."""

    def __init__(self, url: str, channel: str, max_connections: int = 32,
                 pool_timeout_s: float = 20.0) -> None:
        super().__init__(url, channel=channel)
        self.max_connections = max_connections
        self.pool_timeout_s = pool_timeout_s

    # called with each room emit message just before it reaches this process's members
    # (``PushHub._room_emitted``: a ``fills`` / ``alerts`` delivery here counts for
    # ``skip_when_online``); None: nothing is told
    on_room_emit: Callable[[dict[str, Any]], None] | None = None

    def _handle_emit(self, message: dict[str, Any]) -> None:
        observer = self.on_room_emit
        if observer is not None:
            try:
                observer(message)
            except Exception:  # isolation boundary: the emit still happens
                logger.exception("room emit observer failed event=%s", message.get("event"))
        super()._handle_emit(message)

    MAX_BACKOFF_S = 1.0  # python-socketio's listener doubled its wait up to 60 s

    def _redis_listen_with_retries(self):  # type: ignore[no-untyped-def]
        """python-socketio's listener loop with a short back-off (0.25 s doubling to
        ``MAX_BACKOFF_S``) instead of 1 s doubling to 60 s: pub/sub keeps nothing, so
        every second spent waiting after Redis returned is a second of room emits lost
        (python-socketio#1411)."""
        retry_sleep = 0.25
        while True:
            try:
                self._redis_connect()
                self.pubsub.subscribe(self.channel)
                retry_sleep = 0.25
                yield from self.pubsub.listen()
            except Exception as exc:  # Redis gone: connect and subscribe again
                logger.log(logging.WARNING if retry_sleep == 0.25 else logging.DEBUG,
                           "socket.io queue listener lost error=%s retry_s=%s",
                           type(exc).__name__, retry_sleep)
                time.sleep(retry_sleep)  # eventlet-patched in the server
                retry_sleep = min(self.MAX_BACKOFF_S, retry_sleep * 2)

    def _redis_connect(self) -> None:
        import redis
        pool = redis.BlockingConnectionPool.from_url(
            self.redis_url, max_connections=self.max_connections,
            timeout=self.pool_timeout_s, socket_connect_timeout=2, socket_keepalive=True)
        self.redis = redis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self.connected = True


def make_client_manager(url: str | None, channel: str, max_connections: int = 32,
                        pool_timeout_s: float = 20.0) -> RedisRelayManager | None:
    """The Socket.IO client manager for ``MESSAGE_QUEUE_URL`` ``url`` (a Redis URL:
    the stream leases of ``services.leases`` use the same Redis) on the pub/sub
    channel ``channel``; None without a URL (python-socketio's in-process manager)."""
    if not url:
        return None
    return RedisRelayManager(url, channel, max_connections, pool_timeout_s)
