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

``RemoteState`` is what a ``Fanout`` channel works on for such a key: a mirror of
the envelopes received (the epoch, the ``seq`` per type, the last one sent and the
newest one held), a ``services.push.PushSource`` as the key's ``AccountState`` is in
the process running its stream.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import orjson
import socketio

from clock import now_ms
from services.coalesce import Coalescer
from services.push_sequence import StreamPosition

logger = logging.getLogger(__name__)


class RemoteState:
    """The received envelopes of one key (``key_id``) as a Fanout state.

    ``epoch``: the epoch of the envelopes held (None: none received yet). Per type:
    ``seq(kind)`` the newest ``seq`` received, ``last(kind)`` the newest envelope
    handed to the fanout, ``pending(kind)`` True while a newer one is held
    (received while every subscriber was inside its ``max_hz`` interval).
    ``user_id``: the owner of the key (the mirror is dropped when the user's last
    connection of this process leaves).
    ``via_relay``: True when fed from Redis (another process runs the stream),
    False when this process's own stream feeds it (while another process follows
    the key): the fanout counts the pushes that crossed Redis.
    """

    def __init__(self, key_id: int, user_id: int, via_relay: bool = True) -> None:
        self.key_id = key_id
        self.via_relay = via_relay
        self.user_id = user_id
        self.epoch: str | None = None
        self.received = 0  # envelopes received (any, even one not newer): the owner speaks
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)  # an envelope is held (``wait_newest``)
        self._seq: dict[str, int] = {}
        self._last: dict[str, dict] = {}
        self._pending: dict[str, dict] = {}

    # ---- fed by the queue and by this process's own states ----------------------
    def receive(self, env: dict) -> bool:
        """Hold a received envelope as the newest of its type. A new epoch forgets
        every type of the old one. Returns False (and holds nothing) for an envelope
        older than the newest of its type in the same epoch."""
        kind, seq = env["type"], env["seq"]
        with self._lock:
            self.received += 1
            if env.get("epoch") != self.epoch:
                self._reset(env.get("epoch"))
            elif seq < self._seq.get(kind, 0):
                return False
            self._seq[kind] = seq
            self._pending[kind] = env
            self._arrived.notify_all()
            return True

    def adopt(self, position: StreamPosition, kind: str, last: dict | None) -> None:
        """This process's own state of the key is at ``position`` of ``kind`` with
        ``last`` its envelope (a local subscriber is given its snapshot from it):
        the mirror moves there if it is behind, so that the subscriber's ``seq`` and
        the channel's epoch agree with what it was sent."""
        epoch, seq = position
        with self._lock:
            if epoch != self.epoch:
                self._reset(epoch)
            if seq < self._seq.get(kind, 0):
                return
            self._seq[kind] = seq
            held = self._pending.get(kind)
            if held is not None and held["seq"] <= seq:
                del self._pending[kind]
            if last is not None and last.get("seq") == seq:
                self._last[kind] = last
                self._arrived.notify_all()

    def _reset(self, epoch: str | None) -> None:
        self.epoch = epoch
        self._seq, self._last, self._pending = {}, {}, {}

    def position(self, kind: str) -> StreamPosition:
        """``(epoch, seq)`` of the newest envelope of ``kind`` received."""
        with self._lock:
            return StreamPosition(self.epoch, self._seq.get(kind, 0))

    def wait_newest(self, kind: str, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds until an envelope of ``kind`` is held (sent
        or not); True if one is. (A green wait in the server: threading is patched.)"""
        with self._arrived:
            return self._arrived.wait_for(
                lambda: kind in self._pending or kind in self._last, timeout_s)

    def newest(self, kind: str) -> dict | None:
        """The newest envelope of ``kind`` (held or sent), or None."""
        with self._lock:
            return self._pending.get(kind) or self._last.get(kind)

    # ---- services.push.PushSource: what Fanout reads ----------------------------
    def seq(self, kind: str) -> int:
        """The newest ``seq`` of ``kind`` received in the current epoch (0: none)."""
        return self._seq.get(kind, 0)

    def last(self, kind: str) -> dict | None:
        """The newest envelope of ``kind`` handed to the fanout (do not change it)."""
        return self._last.get(kind)

    def pending(self, kind: str) -> bool:
        """True while a received envelope of ``kind`` is held, not yet sent."""
        return kind in self._pending

    def envelope_of_change(self, kind: str, source: str, as_of: int,
                           mark: bool) -> dict | None:
        """The held envelope of ``kind``, now the last one (None: none held): a
        received envelope is a change by construction, built by the owner."""
        with self._lock:
            env = self._pending.pop(kind, None)
            if env is not None:
                self._last[kind] = env
            return env

    def build_pending(self, kind: str) -> dict | None:
        """The held envelope of ``kind`` for a conflated push (the timer), with
        ``sent_at`` (ms UTC) of now, since it left later than it was built."""
        with self._lock:
            env = self._pending.pop(kind, None)
            if env is None:
                return None
            env = self._last[kind] = dict(env, sent_at=now_ms())
            return env


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

    def __init__(self, url: str, client, spawn: Callable, sleep: Callable[[float], None]) -> None:  # type: ignore[no-untyped-def]
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
                                              socket_keepalive=True).pubsub()
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
        self.on_envelope: Callable[[dict, bool], None] = lambda env, mark: None
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

    def publish(self, env: dict, mark: bool) -> bool:
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

    def stats(self) -> dict:
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


class RedisRelayManager(socketio.RedisManager):
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
    on_room_emit: Callable[[dict], None] | None = None

    def _handle_emit(self, message: dict) -> None:
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
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True


def make_client_manager(url: str | None, channel: str, max_connections: int = 32,
                        pool_timeout_s: float = 20.0) -> RedisRelayManager | None:
    """The Socket.IO client manager for ``MESSAGE_QUEUE_URL`` ``url`` (a Redis URL:
    the stream leases of ``services.leases`` use the same Redis) on the pub/sub
    channel ``channel``; None without a URL (python-socketio's in-process manager)."""
    if not url:
        return None
    return RedisRelayManager(url, channel, max_connections, pool_timeout_s)


def make_relay(url: str | None, channel: str, client, spawn: Callable,  # type: ignore[no-untyped-def]
               sleep: Callable[[float], None]) -> KeyRelay | None:
    """The per-key relay over Redis ``url`` (``client``: a ``redis.Redis`` on a
    bounded pool, shared with the leases); None without a URL."""
    if not url:
        return None
    return KeyRelay(RedisBus(url, client, spawn, sleep), channel, sleep=sleep)
