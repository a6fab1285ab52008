"""Account pushes between server processes (``MESSAGE_QUEUE_URL``): one Redis
channel per API key, only between the processes that need them.

With several server processes an account stream runs in one of them (its lease)
while the key's subscribers may be connected to any. python-socketio's Redis
manager publishes every emit on one channel, so every process decodes every
message (python-socketio#82; open-webui#28173 measured about 31 % of CPU in that
listener at 16 instances). Here instead:

- The process running a key's stream delivers to its own connections first, as
  without a queue (``ws.fanout``: conflated at the source, nothing encoded for
  Redis). It publishes the key's envelopes on the key's channel
  ``<MESSAGE_QUEUE_CHANNEL>:key:<key_id>`` only while another process follows the key
  (``KeyRelay.interested``).
- A process with connections subscribed to a key whose stream runs elsewhere
  subscribes to that key's channel (``watch``) and unsubscribes when its last such
  connection leaves (``unwatch``). So a process receives the account states only of
  keys it has subscribers for, and its cost does not grow with the number of
  processes.
- How the owner learns of a follower: once Redis confirms a ``watch``, the follower
  announces it (``want`` on the control channel ``<MESSAGE_QUEUE_CHANNEL>:relay``);
  a process that starts a key's stream asks Redis whether anyone follows it
  (``PUBSUB NUMSUB``); a publish that reaches nobody ends the interest. On a
  ``want`` the owner publishes the key's current envelopes, so a follower never
  misses a change made between its REST snapshot and the owner hearing of it.
- The receiving process hands each envelope to its ``ws.fanout.Fanout`` on a
  ``RemoteState`` of the key: each connection's ``max_hz`` applies as for local
  pushes. Messages carry the envelope and its ``mark`` flag (True: a mark-driven
  change, conflated per connection; False: an account event or a REST result).

The control channel also carries "a key changed" (``key_changed``: the other
processes forget their cached copy, ``services.accounts.KeyCache``) and "a key's
lease is free" (``released``: a follower takes the stream over). A key's
``fills``, ``stream_status`` and ``error`` take the key's channel too (the receiver
emits them to the room in its own process); python-socketio's shared channel keeps
only what has no key. Tickers and emits to one connection never leave the process
(each process runs the market streams of its own subscribers).

``ws.remote_state.RemoteState`` is what a ``Fanout`` channel works on for such a key:
a mirror of the envelopes received (the epoch, the ``seq`` per type, the last one sent and the
newest one held), a ``services.push.PushSource`` as the key's ``AccountState`` is in
the process running its stream.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from services.coalesce import Coalescer
from ws.redis_bus import RedisBus

logger = logging.getLogger(__name__)


class KeyRelay:
    """Per-key account channels between server processes (see the module doc).

    ``bus``: ``RedisBus`` (or an in-memory one in tests); ``prefix``: the
    ``MESSAGE_QUEUE_CHANNEL``. The hub sets ``on_envelope(envelope, mark)`` (a key
    this process watches), ``on_want(key_id)`` (another process now follows a key:
    the owner calls ``add_interest`` and publishes its current envelopes),
    ``on_released(key_id)`` (the owner let a key's lease go: a follower takes the
    stream over, so streams run where their subscribers are),
    ``on_key_changed(user_id, key_id)`` and ``on_resubscribed(key_id, lost_at_ms)``
    (a watched key's channel is subscribed again after the connection to Redis was
    lost at ``lost_at_ms``: what was published meanwhile never arrived, the fills
    are replayed from the ledger). Publishing never raises: with Redis down it is counted
    (``publish_errors``) and local connections are served as before.
    """

    def __init__(self, bus, prefix: str, host_id: str | None = None,  # type: ignore[no-untyped-def]
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.bus = bus
        # the NUMSUB asks of streams starting together: one round trip (a storm)
        self._numsub = Coalescer(bus.numsub, sleep)
        self.prefix = prefix
        self.host_id = host_id or uuid.uuid4().hex
        self.control = f"{prefix}:relay"
        self._key_prefix = f"{prefix}:key:"
        self._lock = threading.Lock()
        self._watched: set[int] = set()
        self._interest: set[int] = set()
        self.on_envelope: Callable[[dict[str, Any], bool], None] = lambda env, mark: None
        self.on_want: Callable[[int], None] = lambda key_id: None
        self.on_key_changed: Callable[[int, int], None] = lambda user_id, key_id: None
        self.on_released: Callable[[int], None] = lambda key_id: None
        self.on_resubscribed: Callable[[int, int], None] = lambda key_id, lost_at_ms: None
        # the control channel is subscribed again after a lost connection: a follower's
        # ``want`` may have been published while this process heard nothing
        self.on_reconnected: Callable[[], None] = lambda: None
        self.published = 0  # envelopes published (some other process followed the key)
        self.received = 0  # envelopes received for watched keys
        self.publish_errors = 0
        self._error_logged_at = 0.0
        self._started = False

    def start(self) -> None:
        """Start reading (the control channel and every watched key's)."""
        if not self._started:
            self._started = True
            self.bus.subscribe(self.control)
            self.bus.start(self._on_message, self._on_subscribed)

    def stop(self) -> None:
        """Stop reading (shutdown)."""
        stop = getattr(self.bus, "stop", None)
        if stop is not None:
            stop()

    def channel(self, key_id: int) -> str:
        """The channel of ``key_id``'s account states."""
        return f"{self._key_prefix}{key_id}"

    # ---- the follower's side -------------------------------------------------------
    def watch(self, key_id: int) -> None:
        """Receive ``key_id``'s envelopes (its stream runs in another process)."""
        with self._lock:
            if key_id in self._watched:
                return
            self._watched.add(key_id)
        self.bus.subscribe(self.channel(key_id))

    def unwatch(self, key_id: int) -> None:
        """Stop receiving ``key_id``'s envelopes."""
        with self._lock:
            if key_id not in self._watched:
                return
            self._watched.discard(key_id)
        self.bus.unsubscribe(self.channel(key_id))

    def want(self, key_id: int) -> None:
        """Ask the process running ``key_id``'s stream to publish from now on, starting
        with its current state envelopes (``want`` on the control channel)."""
        try:
            self.bus.publish(self.control, orjson.dumps(
                {"op": "want", "h": self.host_id, "key": key_id}))
        except Exception as e:  # the owner's NUMSUB at its next start still finds us
            self._publish_failed(e)

    def watching(self, key_id: int) -> bool:
        """True while ``key_id``'s channel is subscribed to."""
        return key_id in self._watched

    # ---- the owner's side ----------------------------------------------------------
    def interested(self, key_id: int) -> bool:
        """True while another process follows ``key_id`` (this one runs its stream)."""
        return key_id in self._interest

    def check_interest(self, key_id: int) -> bool:
        """Ask Redis whether another process follows ``key_id`` (its stream starts
        here); True if so (publishing starts). False when Redis cannot say."""
        try:
            followed = (self._numsub.get(self.channel(key_id)) or 0) > 0
        except Exception as e:  # a follower's ``want`` on reconnect will tell
            self._publish_failed(e)
            return False
        if followed:
            with self._lock:
                self._interest.add(key_id)
        return followed

    def add_interest(self, key_id: int) -> None:
        """Another process follows ``key_id`` (its ``want``): publish from now on."""
        with self._lock:
            self._interest.add(key_id)

    def drop_interest(self, key_id: int) -> None:
        """The key's stream no longer runs here: publish nothing more of it."""
        with self._lock:
            self._interest.discard(key_id)

    def publish(self, env: dict[str, Any], mark: bool) -> bool:
        """Publish one envelope on its key's channel (``mark`` as above), if another
        process follows the key. A publish that reached nobody ends the interest.
        True if published."""
        key_id = env["key_id"]
        if key_id not in self._interest:
            return False
        data = orjson.dumps({"h": self.host_id, "m": bool(mark), "e": env})
        try:
            receivers = self.bus.publish(self.channel(key_id), data)
        except Exception as e:  # Redis down: local connections are served regardless
            self._publish_failed(e)
            return False
        self.published += 1
        if receivers == 0:
            with self._lock:
                self._interest.discard(key_id)
        return True

    def released(self, key_id: int) -> None:
        """Tell the processes following ``key_id`` that its stream's lease is free (its
        last subscriber here left): one of them takes it over at once."""
        try:
            self.bus.publish(self.control, orjson.dumps(
                {"op": "released", "h": self.host_id, "key": key_id}))
        except Exception as e:  # their lease upkeep takes it over within a third of its TTL
            self._publish_failed(e)

    def key_changed(self, user_id: int, key_id: int) -> None:
        """Tell the other processes that a key of ``user_id`` was added, changed or
        deleted (they forget their cached copy). Raises RedisError."""
        self.bus.publish(self.control, orjson.dumps(
            {"op": "key_changed", "h": self.host_id, "user": user_id, "key": key_id}))

    def stats(self) -> dict[str, Any]:
        """``{"watched", "interest", "published", "received", "publish_errors"}``."""
        with self._lock:
            watched, interest = len(self._watched), len(self._interest)
        return {"watched": watched, "interest": interest, "published": self.published,
                "received": self.received, "publish_errors": self.publish_errors,
                "reconnects": getattr(self.bus, "reconnects", 0)}

    # ---- the reader ----------------------------------------------------------------
    def _on_subscribed(self, channel: str, lost_at_ms: int | None = None) -> None:
        """A key channel is subscribed (or subscribed again after a reconnect,
        ``lost_at_ms`` set): tell the process running its stream (it publishes its
        current states: ``want``); after a reconnect, also ``on_resubscribed``."""
        if channel == self.control and lost_at_ms is not None:
            try:
                self.on_reconnected()
            except Exception:  # isolation boundary: the reader goes on
                logger.exception("relay reconnect hook failed")
        if channel.startswith(self._key_prefix):
            key_id = int(channel[len(self._key_prefix):])
            self.want(key_id)
            if lost_at_ms is not None and key_id in self._watched:
                try:
                    self.on_resubscribed(key_id, lost_at_ms)
                except Exception:  # isolation boundary: the reader goes on
                    logger.exception("relay resubscribe hook failed key_id=%s", key_id)

    def _on_message(self, channel: str, data: bytes) -> None:
        msg = orjson.loads(data)
        if msg.get("h") == self.host_id:
            return
        if channel == self.control:
            op = msg.get("op")
            if op == "want":
                self.on_want(int(msg["key"]))
            elif op == "released":
                self.on_released(int(msg["key"]))
            elif op == "key_changed":
                self.on_key_changed(int(msg["user"]), int(msg["key"]))
            return
        env = msg["e"]
        if env.get("key_id") in self._watched:
            self.received += 1
            self.on_envelope(env, bool(msg.get("m")))

    def _publish_failed(self, e: Exception) -> None:
        self.publish_errors += 1
        now = time.monotonic()
        if now - self._error_logged_at > 10:
            self._error_logged_at = now
            logger.warning("relay publish failed error=%s count=%s", type(e).__name__,
                           self.publish_errors)


def make_relay(url: str | None, channel: str, client, spawn: Callable[..., Any],  # type: ignore[no-untyped-def]
               sleep: Callable[[float], None]) -> KeyRelay | None:
    """The per-key relay over Redis ``url`` (``client``: a ``redis.Redis`` on a
    bounded pool, shared with the leases); None without a URL."""
    if not url:
        return None
    return KeyRelay(RedisBus(url, client, spawn, sleep), channel, sleep=sleep)
