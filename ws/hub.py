"""The push hub: who is connected, who is subscribed to what, and the emit function
handed to services.

Rooms: ``<type>_<user_id>`` for the account types (CONTRACT.md), and
``user_<user_id>`` (every connection of the user) for ``stream_status`` and ``error``.
Room names come from the authenticated user only. Account envelopes reach the
connections of this process through ``ws.fanout`` (per connection, conflated, encoded
once). With a message queue the process running a key's stream serves its own
connections the same way, and the states (balance, positions, pnl, orders) of a key
that another process follows cross Redis on the key's own channel (``ws.relay``),
where that process's fanout applies its connections' ``max_hz``; ``fills``,
``stream_status`` and ``error`` are emitted to the rooms (python-socketio's shared
channel); tickers and emits to one connection stay in the process.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask_socketio import SocketIO
from socketio import PubSubManager

from services.account_kinds import ACCOUNT_TYPES, EVENT_TYPES, STATE_TYPES
from services.account_state import AccountState
from services.metrics import percentile
from services.tickers import ticker_room
from ws.fanout import DEFAULT_MAX_HZ, Fanout
from ws.relay import KeyRelay
from ws.remote_state import RemoteState
from ws.sio_private import room_occupied

logger = logging.getLogger(__name__)


@dataclass
class Connection:
    """One Socket.IO connection. ``connected_at`` ms UTC."""

    sid: str
    user_id: int
    connected_at: int
    eio_sid: str = ""
    types: set[str] = field(default_factory=set)
    key_ids: set[int] = field(default_factory=set)
    tickers: set[tuple[str, str]] = field(default_factory=set)  # (exchange, SYMBOL)

    hz: dict[str, float] = field(default_factory=dict)  # type -> max_hz asked for

    def max_hz(self, kind: str) -> float | None:
        """Mark-driven pushes a second of ``kind`` for this connection (None: no bound)."""
        if kind in EVENT_TYPES:
            return None
        return self.hz.get(kind, DEFAULT_MAX_HZ.get(kind))

    def rooms(self) -> list[str]:
        """The rooms this connection is in."""
        return ([f"user_{self.user_id}"] + sorted(f"{t}_{self.user_id}" for t in self.types)
                + sorted(ticker_room(e, s) for e, s in self.tickers))


MISSED_FILLS_DELAY_S = 0.5  # after a resubscribe: the owner's want and last writes
MISSED_FILLS_MARGIN_MS = 2000  # the replay starts this much before the connection was lost


def room(kind: str, user_id: int) -> str:
    """The room of ``kind`` (an account type or ``user``) for ``user_id``."""
    return f"{kind}_{user_id}"


class PushHub:
    """Registry of connections (keyed by sid) and the emitter.

    ``publish(envelope)`` is given to services: ``stream_status`` and ``error`` to
    the user's room, tickers to their room in this process. Account streams hand
    their changes to ``offer`` / ``deliver`` (``services.push.Push``).
    ``on_stream_latency`` (optional) is called with each stream-sourced push's
    latency in seconds (the metrics histogram). ``on_delivered`` (optional) is called
    with each ``fills`` / ``alerts`` envelope that reached at least one connection of
    this process subscribed to its type (``services.notify.presence``: such an event
    is not sent to the phone when ``skip_when_online``); with a message queue every
    process reports its own deliveries (``_emit_here``, ``RedisRelayManager.on_room_emit``).

    With a message queue (the Socket.IO server's manager is a python-socketio
    ``PubSubManager``) the hub needs ``relay`` (``ws.relay.KeyRelay``); raises
    TypeError without one. ``stream_local(key_id, state)`` is told where streams run
    (``StreamManager``'s ``on_local``).
    """

    def __init__(self, socketio: SocketIO, relay: KeyRelay | None = None,
                 on_stream_latency: Callable[[float], None] | None = None,
                 subscribe_concurrency: int = 256, spawn: Callable[..., object] | None = None,
                 spawn_timer: Callable[..., object] | None = None) -> None:
        self._sio = socketio
        # background tasks: the app's registry (services.lifecycle.Tasks) when given
        self._spawn = spawn or socketio.start_background_task
        self._spawn_timer = spawn_timer or self._spawn  # the fan-out's conflation timer
        # subscribes whose key lookup and stream start run at once (SUBSCRIBE_CONCURRENCY):
        # in a reconnect storm the others wait here, not at a pool that would fail them
        self.admission = threading.BoundedSemaphore(subscribe_concurrency)
        self.on_stream_latency = on_stream_latency
        self.on_delivered: Callable[[dict], None] | None = None
        self._lock = threading.Lock()
        self._conns: dict[str, Connection] = {}
        self._by_user: dict[int, set[str]] = {}
        self.pushes: dict[str, int] = {}
        self._latency_ms: deque[float] = deque(maxlen=20_000)
        self._fanout: Fanout | None = None
        self._remote: dict[int, RemoteState] = {}  # key_id -> envelopes received from Redis
        self._mirror: dict[int, RemoteState] = {}  # key_id -> own envelopes also published
        self._local: dict[int, AccountState] = {}  # key_id -> state of a stream running here
        self.on_key_changed: Callable[[int, int], None] = lambda user_id, key_id: None
        # another process released a key this one follows: take its stream over
        # (StreamManager.take_over; run as a background task)
        self.on_released: Callable[[int], object] = lambda key_id: None
        # ``fills_since(user_id, key_id, time_ms)``: ``(exchange, testnet, rows)``, the
        # key's venue and the ledger's fills of it with exchange time >= time_ms, oldest
        # first (set by app.py); None: fills missed while Redis was away are not replayed
        self.fills_since: Callable[[int, int, int], tuple[str, bool, list[dict]]] | None = None
        manager = socketio.server.manager
        self.queued = isinstance(manager, PubSubManager)
        self._relay: KeyRelay | None = None
        if self.queued:
            if relay is None:
                raise TypeError("with a message queue the hub needs a ws.relay.KeyRelay "
                                "(ws.relay.make_relay)")
            self._relay = relay
            relay.on_envelope = self.receive
            relay.on_want = self._wanted
            relay.on_key_changed = lambda user_id, key_id: self.on_key_changed(user_id, key_id)
            relay.on_released = self._released
            relay.on_resubscribed = self._resubscribed
            relay.on_reconnected = self._relay_reconnected
            manager.on_room_emit = self._room_emitted  # a shared-channel emit (alerts)

    @property
    def fanout(self) -> Fanout:
        """The per-connection delivery of this process's connections."""
        if self._fanout is None:
            with self._lock:
                if self._fanout is None:
                    self._fanout = Fanout(self._sio.server, self._spawn_timer,
                                          self._sio.sleep, on_push=self._count,
                                          make_event=self._sio.server.eio.create_event)
        return self._fanout

    # ---- message queue -------------------------------------------------------------
    def remote(self, key_id: int, user_id: int) -> RemoteState:
        """The envelopes of ``key_id`` received from Redis (created empty on first use)."""
        with self._lock:
            state = self._remote.get(key_id)
            if state is None:
                state = self._remote[key_id] = RemoteState(key_id, user_id)
            return state

    def _mirror_of(self, key_id: int, user_id: int) -> RemoteState:
        with self._lock:
            state = self._mirror.get(key_id)
            if state is None:
                state = self._mirror[key_id] = RemoteState(key_id, user_id, via_relay=False)
            return state

    def receive(self, envelope: dict, mark: bool) -> None:
        """An envelope received from Redis (a key this process watches): a state to
        the fanout of this process's subscribers of its key; ``fills``,
        ``stream_status`` and ``error`` to their room in this process."""
        kind = envelope.get("type")
        if kind not in STATE_TYPES:
            self._emit_here(envelope)
            return
        state = self._remote.get(envelope.get("key_id"))  # type: ignore[arg-type]
        if state is not None:
            self.fanout.receive(state, envelope, mark)

    def watch(self, conn: Connection, key_id: int) -> None:
        """With a message queue: ``conn`` follows ``key_id``, whose stream runs in
        another process: receive the key's envelopes (its channel) unless its stream
        runs here."""
        if self._relay is None:
            return
        self.remote(key_id, conn.user_id)
        with self._lock:
            local = key_id in self._local
        if not local:
            self._relay.watch(key_id)

    def ask_owner(self, key_id: int) -> None:
        """With a message queue: ask the process running ``key_id``'s stream for its
        current states (they arrive on the key's channel, ``RemoteState.received``
        counts them): a sign that the owner is alive."""
        if self._relay is not None:
            self._relay.want(key_id)

    def stream_local(self, key_id: int, state: AccountState | None) -> None:
        """``key_id``'s stream now runs in this process (``state``: its AccountState)
        or no longer does (None). With a message queue: its channel is no longer
        watched (its pushes are made here) and, if another process follows the key,
        published; once it stops here, watched again while a connection of this
        process follows the key."""
        relay = self._relay
        if state is not None:
            with self._lock:
                self._local[key_id] = state
            if relay is not None:
                relay.unwatch(key_id)
                # off the subscribe's path: a follower that comes later says so (``want``)
                self._spawn(relay.check_interest, key_id)
            return
        with self._lock:
            held = self._local.pop(key_id, None)
            self._mirror.pop(key_id, None)
        if relay is not None:
            relay.drop_interest(key_id)
            user_id = getattr(held, "user_id", None)
            if user_id is not None and self._follows(user_id, key_id):
                self.remote(key_id, user_id)
                relay.watch(key_id)

    def stream_released(self, key_id: int) -> None:
        """This process let ``key_id``'s lease go (its last subscriber here left): if
        another process follows the key, tell it to take the stream over now."""
        if self._relay is not None and self._relay.interested(key_id):
            self._relay.released(key_id)

    def _released(self, key_id: int) -> None:
        if key_id in self._remote:
            self._spawn(self.on_released, key_id)

    def _relay_reconnected(self) -> None:
        """The relay's connection to Redis is back: for every stream running here ask
        Redis whether another process follows it (its ``want`` may have been lost
        while this process was not subscribed), publishing from then on; on a new
        follower the current states go first (``_wanted``)."""
        with self._lock:
            local = list(self._local)
        for key_id in local:
            self._spawn(self._recheck_interest, key_id)

    def _recheck_interest(self, key_id: int) -> None:
        relay = self._relay
        if relay is not None and relay.check_interest(key_id):
            self._wanted(key_id)

    def _resubscribed(self, key_id: int, lost_at_ms: int) -> None:
        if self.fills_since is not None:
            self._spawn(self._replay_missed_fills, key_id, lost_at_ms)

    def _replay_missed_fills(self, key_id: int, lost_at_ms: int) -> None:
        """``key_id``'s channel was subscribed again after the connection to Redis was
        lost at ``lost_at_ms``: what its owner published meanwhile never arrived
        (pub/sub keeps nothing). After ``MISSED_FILLS_DELAY_S`` (the owner hears our
        ``want`` and its write-behind makes the last fills durable), the ledger's fills
        of the key since then (``MISSED_FILLS_MARGIN_MS`` earlier: exchange time vs
        our clock) go to this process's subscribers of the key's ``fills`` in one
        envelope (``source: "cache"``, the fills seq last received); CONTRACT.md:
        a client de-duplicates fills by ``trade_id``."""
        self._sio.sleep(MISSED_FILLS_DELAY_S)
        with self._lock:
            state = self._remote.get(key_id)
            local = key_id in self._local
            conns = [c for c in self._conns.values()
                     if key_id in c.key_ids and "fills" in c.types]
        if state is None or local or not conns or self.fills_since is None:
            return
        user_id = conns[0].user_id
        try:
            exchange, testnet, rows = self.fills_since(user_id, key_id,
                                                       lost_at_ms - MISSED_FILLS_MARGIN_MS)
        except Exception as e:  # the database is away too (or the key was deleted)
            logger.warning("missed fills replay failed key_id=%s error=%s", key_id,
                           type(e).__name__)
            return
        if not rows:
            return
        epoch, seq = state.position("fills")
        now = int(time.time() * 1000)
        env = {"type": "fills", "user_id": user_id, "key_id": key_id, "exchange": exchange,
               "testnet": testnet, "epoch": epoch or "ledger", "seq": seq, "as_of": now,
               "sent_at": now, "source": "cache", "stale": False, "data": rows}
        for conn in conns:
            self.send_to(conn.sid, [dict(env)])
        logger.info("missed fills replayed key_id=%s fills=%s connections=%s", key_id,
                    len(rows), len(conns))

    def key_changed(self, user_id: int, key_id: int) -> None:
        """A key of ``user_id`` was added, changed or deleted here: tell the other
        processes (they call ``on_key_changed``). Raises RedisError."""
        if self._relay is not None:
            self._relay.key_changed(user_id, key_id)

    def _follows(self, user_id: int, key_id: int) -> bool:
        """True when a connection of ``user_id`` in this process subscribed to ``key_id``."""
        with self._lock:
            return any(key_id in self._conns[sid].key_ids
                       for sid in self._by_user.get(user_id, ()) if sid in self._conns)

    def _wanted(self, key_id: int) -> None:
        """Another process now follows ``key_id``: if its stream runs here, publish
        from now on, starting with its current envelopes."""
        relay = self._relay
        with self._lock:
            state = self._local.get(key_id)
        if state is None or relay is None:
            return
        relay.add_interest(key_id)
        for env in state.cached(list(STATE_TYPES)):
            relay.publish(env, False)

    # ---- registry -----------------------------------------------------------
    def add(self, sid: str, user_id: int, eio_sid: str = "") -> Connection:
        """Register a new authenticated connection (``eio_sid``: its Engine.IO id)."""
        conn = Connection(sid, user_id, int(time.time() * 1000), eio_sid)
        with self._lock:
            self._conns[sid] = conn
            self._by_user.setdefault(user_id, set()).add(sid)
        return conn

    def online(self, user_id: int) -> bool:
        """True while a connection of ``user_id`` is open in this process."""
        with self._lock:
            return bool(self._by_user.get(user_id))

    def remove(self, sid: str) -> tuple[Connection | None, bool]:
        """Forget ``sid``; returns ``(connection, was_users_last)``."""
        with self._lock:
            conn = self._conns.pop(sid, None)
            if conn is None:
                return None, False
            sids = self._by_user.get(conn.user_id, set())
            sids.discard(sid)
            last = not sids
            if last:
                self._by_user.pop(conn.user_id, None)
        self.fanout.detach(sid)
        if last:
            with self._lock:
                dropped = []
                if conn.user_id not in self._by_user:
                    dropped = [k for k, s in self._remote.items() if s.user_id == conn.user_id]
                    for key_id in dropped:
                        del self._remote[key_id]
            if self._relay is not None:
                for key_id in dropped:
                    self._relay.unwatch(key_id)
        return conn, last

    def get(self, sid: str) -> Connection | None:
        """The connection of ``sid`` or None."""
        with self._lock:
            return self._conns.get(sid)

    def connections(self) -> list[Connection]:
        """A snapshot of every connection."""
        with self._lock:
            return list(self._conns.values())

    # ---- emit ------------------------------------------------------------------
    def has_audience(self, user_id: int, kind: str) -> bool:
        """False when no connection is in ``kind``'s room of ``user_id``, so its push
        need not be built. Always True with a message queue (the subscribers may be
        on another server process)."""
        manager = self._sio.server.manager
        if isinstance(manager, PubSubManager):
            return True
        return room_occupied(self._sio.server, room(kind, user_id))

    def offer(self, state: AccountState, kind: str, source: str, as_of: int,
              mark: bool) -> None:
        """An account type of ``state`` (services.account_state.AccountState)
        changed; see ``Fanout.offer`` (conflated at the source, built only when some
        connection is due). While another process follows the key: built (compared
        unless ``mark``), given to this process's fanout and then published with its
        ``mark`` flag (the other process conflates it for its own connections)."""
        relay = self._relay
        if relay is None or not relay.interested(state.key_id):
            self.fanout.offer(state, kind, source, as_of, mark)
            return
        env = state.envelope_of_change(kind, source, as_of, mark)
        if env is not None:
            self.fanout.receive(self._mirror_of(state.key_id, state.user_id), env, mark)
            relay.publish(env, mark)

    def deliver(self, state: AccountState, env: dict[str, Any]) -> None:
        """A built account envelope (``fills``, ``stale`` values) to its subscribers now
        (with a message queue ``fills`` go to the room, every process)."""
        relay = self._relay
        if relay is None:
            self.fanout.deliver(state, env)
            if self.on_delivered is not None and env["type"] in EVENT_TYPES \
                    and self.fanout.has_subscribers(state.key_id, env["type"]):
                self.on_delivered(env)
        elif env["type"] in STATE_TYPES:
            self.fanout.deliver(state, env)
            relay.publish(env, False)
        else:
            self.publish(env)

    def _local_room(self, name: str) -> bool:
        """True when a connection of this process is in room ``name``."""
        return room_occupied(self._sio.server, name)

    def _room_emitted(self, message: dict) -> None:
        """With a message queue: a room emit of python-socketio's shared channel about
        to reach this process's members (``RedisRelayManager.on_room_emit``; per-key
        envelopes are reported by ``_emit_here``); a ``fills``/``alerts`` one that has
        a member here is a delivery."""
        data = message.get("data")
        if self.on_delivered is None or message.get("event") not in EVENT_TYPES \
                or not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            return
        if self._local_room(message.get("room") or ""):
            self.on_delivered(data[0])

    def publish(self, envelope: dict) -> None:
        """Emit one envelope from a service (any green thread). With a message queue
        an envelope of a key (``fills``, ``stream_status``, ``error``, states) goes to
        this process's room and, while another process follows the key, to the key's
        channel (per key, not python-socketio's shared channel); one without a key
        (an ``error`` of no key) to the room through the shared channel. Tickers stay
        in the process (every process runs the market streams of its own sockets)."""
        kind = envelope["type"]
        relay = self._relay
        if kind == "ticker":
            self._sio.server.emit("ticker", envelope, ignore_queue=True,
                                  to=ticker_room(envelope["exchange"], envelope["data"]["symbol"]))
            self._count(envelope)
        elif relay is not None and envelope.get("key_id") is not None:
            self._emit_here(envelope)
            relay.publish(envelope, False)
        elif kind in ("stream_status", "error"):
            name, payload, to = self._event(envelope)
            self._sio.emit(name, payload, to=to)
        else:
            target = room(kind, envelope["user_id"])
            if self._relay is None and kind in EVENT_TYPES and self.on_delivered is not None \
                    and self._local_room(target):
                self.on_delivered(envelope)
            self._sio.emit(kind, envelope, to=target)
            self._count(envelope)

    @staticmethod
    def _event(envelope: dict) -> tuple[str, dict, str]:
        """``(event, data, room)`` of an envelope as clients get it (CONTRACT.md)."""
        kind, user_room = envelope["type"], room("user", envelope["user_id"])
        if kind == "stream_status":
            return kind, {k: envelope[k] for k in ("key_id", "exchange", "state", "since")}, user_room
        if kind == "error":
            return kind, {"code": envelope["code"], "message": envelope["message"]}, user_room
        return kind, envelope, room(kind, envelope["user_id"])

    def _emit_here(self, envelope: dict) -> None:
        """Emit an envelope to its room in this process only (a ``fills`` / ``alerts``
        one that reaches a connection here is reported to ``on_delivered``)."""
        name, payload, to = self._event(envelope)
        if name in EVENT_TYPES and self.on_delivered is not None and self._local_room(to):
            self.on_delivered(envelope)
        self._sio.server.emit(name, payload, to=to, ignore_queue=True)
        if name not in ("stream_status", "error"):
            self._count(envelope)

    def emit_to(self, sid: str, event: str, data: dict) -> None:
        """Emit one event to one connection of this process (never through Redis)."""
        self._sio.server.emit(event, data, to=sid, ignore_queue=True)

    def attach(self, conn: Connection, state: AccountState, kind: str,
               first: Callable[[], list[dict[str, Any]]]) -> None:
        """Start ``conn``'s live pushes of ``state``'s ``kind`` (a stream running in
        this process) after ``first()`` (its snapshot or replay). With a message
        queue ``fills``: ``first()`` is sent and the room brings the live ones."""
        if self.get(conn.sid) is None:
            return  # disconnected before its snapshot went out
        if self._relay is not None and kind not in STATE_TYPES:
            self.send_to(conn.sid, first())
            return
        mirror = self._mirror.get(state.key_id) if self._relay is not None else None
        if mirror is None:
            self.fanout.attach(conn.sid, conn.eio_sid, state, kind, conn.max_hz(kind), first)
            return

        def first_here() -> list[dict]:  # the channel is fed through the mirror now
            envelopes = first()
            mirror.adopt(state.position(kind), kind, state.last(kind))
            return envelopes
        self.fanout.attach(conn.sid, conn.eio_sid, mirror, kind, conn.max_hz(kind), first_here)

    def follow(self, conn: Connection, key_id: int, kind: str,
               snapshot: Callable[[], list[dict]]) -> None:
        """With a message queue: start ``conn``'s live pushes of ``key_id``'s state
        ``kind`` whose stream runs in another process (the key's channel is
        watched). ``snapshot()`` (a REST snapshot, ``seq`` 0; may raise) is sent
        first; an envelope received while it was fetched follows it at once
        (``source: "cache"``), then the live pushes, conflated by ``conn``'s
        ``max_hz``. Without a queue only ``snapshot()`` is sent."""
        if self._relay is None or kind not in STATE_TYPES:
            self.send_to(conn.sid, snapshot())
            return
        remote = self.remote(key_id, conn.user_id)
        before = remote.position(kind)  # what arrives from now on follows the snapshot
        self.watch(conn, key_id)
        try:
            self.send_to(conn.sid, snapshot())
        finally:
            if self.get(conn.sid) is not None:
                def newer() -> list[dict]:
                    env = remote.newest(kind)
                    if env is None or remote.position(kind) == before:
                        return []
                    return [dict(env, source="cache")]
                self.fanout.attach(conn.sid, conn.eio_sid, remote, kind, conn.max_hz(kind),
                                   newer)

    def send_to(self, sid: str, envelopes: list[dict]) -> None:
        """Emit envelopes to one connection (the snapshot on subscribe)."""
        for env in envelopes:  # the connection is in this process: never through Redis
            env["sent_at"] = int(time.time() * 1000)
            self._sio.server.emit(env["type"], env, to=sid, ignore_queue=True)
            self._count(envelope=env, latency=False)

    def _count(self, envelope: dict, latency: bool = True) -> None:
        kind = envelope["type"]
        self.pushes[kind] = self.pushes.get(kind, 0) + 1
        if latency and envelope.get("source") == "stream":
            latency_ms = envelope["sent_at"] - envelope["as_of"]
            self._latency_ms.append(latency_ms)
            if self.on_stream_latency is not None:
                self.on_stream_latency(latency_ms / 1000)

    def stop(self) -> None:
        """End the fan-out's timer task and the relay's reader (shutdown)."""
        if self._fanout is not None:
            self._fanout.stop()
        if self._relay is not None:
            self._relay.stop()

    def stats(self) -> dict:
        """Connection, subscription and push figures for ``/admin/stats``."""
        conns = self.connections()
        subs = {t: sum(1 for c in conns if t in c.types) for t in ACCOUNT_TYPES}
        lat = sorted(self._latency_ms)
        fanout = self.fanout.stats()
        if self.queued and self._relay is not None:
            with self._lock:
                fanout["remote_keys"] = len(self._remote)
            fanout["relay"] = self._relay.stats()
        return {"connections": len(conns), "users_online": len({c.user_id for c in conns}),
                "subscriptions": subs,
                "push": {"by_type": dict(self.pushes), "total": sum(self.pushes.values()),
                         "fanout": fanout,
                         "stream_latency_ms": {"samples": len(lat), "p50": percentile(lat, 0.5, 2),
                                               "p99": percentile(lat, 0.99, 2)}}}
