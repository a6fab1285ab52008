"""The push hub: who is connected, who is subscribed to what, and the emit function
handed to services.

Rooms: ``<type>_<user_id>`` for the account types (CONTRACT.md), and
``user_<user_id>`` (every connection of the user) for ``stream_status`` and ``error``.
Room names come from the authenticated user only. Account envelopes reach the
connections of this process through ``ws.fanout`` (per connection, conflated, encoded
once). With a message queue the states (balance, positions, pnl, orders) are
published through it (``ws.relay``) and every process hands what it receives to its
own fanout, so ``max_hz`` applies to every connection wherever the stream runs;
``fills``, ``stream_status`` and ``error`` are emitted to the rooms.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from flask_socketio import SocketIO
from socketio import PubSubManager

from services.account_kinds import ACCOUNT_TYPES, EVENT_TYPES, STATE_TYPES
from services.tickers import ticker_room
from ws.fanout import DEFAULT_MAX_HZ, Fanout
from ws.relay import AccountRelay, RemoteState


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


def room(kind: str, user_id: int) -> str:
    """The room of ``kind`` (an account type or ``user``) for ``user_id``."""
    return f"{kind}_{user_id}"


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class PushHub:
    """Registry of connections (keyed by sid) and the emitter.

    ``publish(envelope)`` is given to services: account envelopes go to their
    subscribers (the fanout; with a message queue, states through the queue to every
    process's fanout, ``fills`` to their room), ``stream_status`` to the user's room.
    ``on_stream_latency`` (optional) is called with each stream-sourced push's
    latency in seconds (the metrics histogram). ``on_delivered`` (optional) is called
    with each ``fills`` / ``alerts`` envelope that reached at least one connection of
    this process subscribed to its type (``services.notify.presence``: such an event
    is not sent to the phone when ``skip_when_online``); with a message queue every
    process reports its own deliveries (``AccountRelay.on_room_emit``).

    With a message queue the Socket.IO server's manager must be a
    ``ws.relay.AccountRelay`` (``ws.relay.make_client_manager``); the hub becomes
    its receiver. Raises TypeError for another pub/sub manager.
    """

    def __init__(self, socketio: SocketIO,
                 on_stream_latency: Callable[[float], None] | None = None) -> None:
        self._sio = socketio
        self.on_stream_latency = on_stream_latency
        self.on_delivered: Callable[[dict], None] | None = None
        self._lock = threading.Lock()
        self._conns: dict[str, Connection] = {}
        self._by_user: dict[int, set[str]] = {}
        self.pushes: dict[str, int] = {}
        self._latency_ms: deque[float] = deque(maxlen=20_000)
        self._fanout: Fanout | None = None
        self._remote: dict[int, RemoteState] = {}  # key_id -> received envelopes
        manager = socketio.server.manager
        self.queued = isinstance(manager, PubSubManager)
        self._relay: AccountRelay | None = None
        if self.queued:
            if not isinstance(manager, AccountRelay):
                raise TypeError("with a message queue the Socket.IO manager must be a "
                                "ws.relay.AccountRelay (ws.relay.make_client_manager)")
            self._relay = manager
            manager.receiver = self.receive
            manager.on_room_emit = self._room_emitted

    @property
    def fanout(self) -> Fanout:
        """The per-connection delivery of this process's connections."""
        if self._fanout is None:
            with self._lock:
                if self._fanout is None:
                    self._fanout = Fanout(self._sio.server, self._sio.start_background_task,
                                          self._sio.sleep, on_push=self._count,
                                          make_event=self._sio.server.eio.create_event)
        return self._fanout

    # ---- message queue -------------------------------------------------------------
    def remote(self, key_id: int, user_id: int) -> RemoteState:
        """The received envelopes of ``key_id`` (created empty on first use)."""
        with self._lock:
            state = self._remote.get(key_id)
            if state is None:
                state = self._remote[key_id] = RemoteState(key_id, user_id)
            return state

    def receive(self, envelope: dict, mark: bool) -> None:
        """A state envelope received from the message queue (this process's own
        ones too): to the fanout of this process's subscribers of its key; ignored
        when none of them follows the key."""
        state = self._remote.get(envelope.get("key_id"))  # type: ignore[arg-type]
        if state is not None:
            self.fanout.receive(state, envelope, mark)

    # ---- registry -----------------------------------------------------------
    def add(self, sid: str, user_id: int, eio_sid: str = "") -> Connection:
        """Register a new authenticated connection (``eio_sid``: its Engine.IO id)."""
        conn = Connection(sid, user_id, int(time.time() * 1000), eio_sid)
        with self._lock:
            self._conns[sid] = conn
            self._by_user.setdefault(user_id, set()).add(sid)
        return conn

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
                if conn.user_id not in self._by_user:
                    for key_id in [k for k, s in self._remote.items() if s.user_id == conn.user_id]:
                        del self._remote[key_id]
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
        return bool(manager.rooms.get("/", {}).get(room(kind, user_id)))

    def offer(self, state, kind: str, source: str, as_of: int, mark: bool) -> None:  # type: ignore[no-untyped-def]
        """An account type of ``state`` (services.account_state.AccountState)
        changed; see ``Fanout.offer``. With a message queue: built (compared unless
        ``mark``) and published with its ``mark`` flag; each process's fanout
        conflates it for its own connections."""
        if self._relay is None:
            self.fanout.offer(state, kind, source, as_of, mark)
            return
        env = (state.envelope(kind, source, as_of) if mark
               else state.envelope_if_changed(kind, source, as_of))
        if env is not None:
            self._relay.publish_account(env, mark)

    def deliver(self, state, env: dict) -> None:  # type: ignore[no-untyped-def]
        """A built account envelope (``fills``, ``stale`` values) to its subscribers now."""
        if self._relay is None:
            self.fanout.deliver(state, env)
            if self.on_delivered is not None and env["type"] in EVENT_TYPES \
                    and self.fanout.has_subscribers(state.key_id, env["type"]):
                self.on_delivered(env)
        else:
            self.publish(env)

    def _local_room(self, name: str) -> bool:
        """True when a connection of this process is in room ``name``."""
        return bool(self._sio.server.manager.rooms.get("/", {}).get(name))

    def _room_emitted(self, message: dict) -> None:
        """With a message queue: a room emit about to reach this process's members
        (``AccountRelay.on_room_emit``); a ``fills``/``alerts`` one that has a member
        here is a delivery."""
        data = message.get("data")
        if self.on_delivered is None or message.get("event") not in EVENT_TYPES \
                or not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            return
        if self._local_room(message.get("room") or ""):
            self.on_delivered(data[0])

    def publish(self, envelope: dict) -> None:
        """Emit one envelope from a service (any green thread)."""
        kind = envelope["type"]
        if kind == "stream_status":
            payload = {k: envelope[k] for k in ("key_id", "exchange", "state", "since")}
            self._sio.emit("stream_status", payload, to=room("user", envelope["user_id"]))
        elif kind == "error":
            self._sio.emit("error", {"code": envelope["code"], "message": envelope["message"]},
                           to=room("user", envelope["user_id"]))
        elif kind == "ticker":
            self._sio.emit("ticker", envelope,
                           to=ticker_room(envelope["exchange"], envelope["data"]["symbol"]))
            self._count(envelope)
        elif self._relay is not None and kind in STATE_TYPES:
            self._relay.publish_account(envelope, False)  # counted where it is sent
        else:
            target = room(kind, envelope["user_id"])
            if self._relay is None and kind in EVENT_TYPES and self.on_delivered is not None \
                    and self._local_room(target):
                self.on_delivered(envelope)
            self._sio.emit(kind, envelope, to=target)
            self._count(envelope)

    def attach(self, conn: Connection, state, kind: str, first) -> None:  # type: ignore[no-untyped-def]
        """Start ``conn``'s live pushes of ``state``'s ``kind`` after ``first()`` (its
        snapshot or replay). With a message queue the live pushes of a state come
        from the queue (the key's ``RemoteState``, moved to ``state``'s position as
        ``first()`` is sent); ``fills``: ``first()`` is sent and the room brings the
        live ones."""
        if self.get(conn.sid) is None:
            return  # disconnected before its snapshot went out
        if self._relay is None:
            self.fanout.attach(conn.sid, conn.eio_sid, state, kind, conn.max_hz(kind), first)
        elif kind not in STATE_TYPES:
            self.send_to(conn.sid, first())
        else:
            remote = self.remote(state.key_id, state.user_id)

            def first_here() -> list[dict]:
                envelopes = first()
                remote.adopt(state.epoch, kind, state.seq(kind), state.last(kind))
                return envelopes
            self.fanout.attach(conn.sid, conn.eio_sid, remote, kind, conn.max_hz(kind),
                               first_here)

    def follow(self, conn: Connection, key_id: int, kind: str,
               snapshot: Callable[[], list[dict]]) -> None:
        """With a message queue: start ``conn``'s live pushes of ``key_id``'s state
        ``kind`` whose stream runs in another process. ``snapshot()`` (a REST
        snapshot, ``seq`` 0; may raise) is sent first; an envelope received while it
        was fetched follows it at once (``source: "cache"``), then the live pushes,
        conflated by ``conn``'s ``max_hz``. Without a queue only ``snapshot()`` is
        sent."""
        if self._relay is None or kind not in STATE_TYPES:
            self.send_to(conn.sid, snapshot())
            return
        remote = self.remote(key_id, conn.user_id)
        before = remote.position(kind)
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
        for env in envelopes:
            env["sent_at"] = int(time.time() * 1000)
            self._sio.emit(env["type"], env, to=sid)
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
        """End the fan-out's timer task (shutdown)."""
        if self._fanout is not None:
            self._fanout.stop()

    def stats(self) -> dict:
        """Connection, subscription and push figures for ``/admin/stats``."""
        conns = self.connections()
        subs = {t: sum(1 for c in conns if t in c.types) for t in ACCOUNT_TYPES}
        lat = sorted(self._latency_ms)
        fanout = self.fanout.stats()
        if self.queued:
            with self._lock:
                fanout["remote_keys"] = len(self._remote)
        return {"connections": len(conns), "users_online": len({c.user_id for c in conns}),
                "subscriptions": subs,
                "push": {"by_type": dict(self.pushes), "total": sum(self.pushes.values()),
                         "fanout": fanout,
                         "stream_latency_ms": {"samples": len(lat), "p50": _percentile(lat, 0.5),
                                               "p99": _percentile(lat, 0.99)}}}
