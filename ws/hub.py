"""The push hub: who is connected, who is subscribed to what, and the emit function
handed to services.

Rooms: ``<type>_<user_id>`` for the account types (CONTRACT.md), and
``user_<user_id>`` (every connection of the user) for ``stream_status`` and ``error``.
Room names come from the authenticated user only. Account envelopes reach the
connections of this process through ``ws.fanout`` (per connection, conflated, encoded
once); with a message queue they are emitted to the rooms through it instead.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from flask_socketio import SocketIO
from socketio import PubSubManager

from services.account_kinds import ACCOUNT_TYPES
from services.tickers import ticker_room
from ws.fanout import DEFAULT_MAX_HZ, Fanout


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
        if kind == "fills":
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

    ``publish(envelope)`` is given to services: account envelopes go to their type's
    room, ``stream_status`` to the user's room. After each emit the hub yields so
    that one burst never delays everyone else. ``on_stream_latency`` (optional) is
    called with each stream-sourced push's latency in seconds (the metrics histogram).
    """

    def __init__(self, socketio: SocketIO,
                 on_stream_latency: Callable[[float], None] | None = None) -> None:
        self._sio = socketio
        self.on_stream_latency = on_stream_latency
        self._lock = threading.Lock()
        self._conns: dict[str, Connection] = {}
        self._by_user: dict[int, set[str]] = {}
        self.pushes: dict[str, int] = {}
        self._latency_ms: deque[float] = deque(maxlen=20_000)
        self._fanout: Fanout | None = None

    @property
    def fanout(self) -> Fanout | None:
        """The per-connection delivery; None with a message queue (rooms instead)."""
        if self._fanout is None and not isinstance(self._sio.server.manager, PubSubManager):
            self._fanout = Fanout(self._sio.server, self._sio.start_background_task,
                                  self._sio.sleep, on_push=self._count,
                                  make_event=self._sio.server.eio.create_event)
        return self._fanout

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
        if self.fanout is not None:
            self.fanout.detach(sid)
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
        ``mark``) and emitted to the type's room when anybody may listen."""
        fanout = self.fanout
        if fanout is not None:
            fanout.offer(state, kind, source, as_of, mark)
            return
        env = (state.envelope(kind, source, as_of) if mark
               else state.envelope_if_changed(kind, source, as_of))
        if env is not None:
            self.publish(env)

    def deliver(self, state, env: dict) -> None:  # type: ignore[no-untyped-def]
        """A built account envelope (``fills``, ``stale`` values) to its subscribers now."""
        fanout = self.fanout
        if fanout is not None:
            fanout.deliver(state, env)
        else:
            self.publish(env)

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
        else:
            self._sio.emit(kind, envelope, to=room(kind, envelope["user_id"]))
            self._count(envelope)

    def attach(self, conn: Connection, state, kind: str, first) -> None:  # type: ignore[no-untyped-def]
        """Start ``conn``'s live pushes of ``state``'s ``kind`` after ``first()`` (its
        snapshot or replay); with a message queue, send ``first()`` (the room brings
        the live ones)."""
        fanout = self.fanout
        if self.get(conn.sid) is None:
            return  # disconnected before its snapshot went out
        if fanout is not None:
            fanout.attach(conn.sid, conn.eio_sid, state, kind, conn.max_hz(kind), first)
        else:
            self.send_to(conn.sid, first())

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
        fanout = self.fanout.stats() if self.fanout is not None else None
        return {"connections": len(conns), "users_online": len({c.user_id for c in conns}),
                "subscriptions": subs,
                "push": {"by_type": dict(self.pushes), "total": sum(self.pushes.values()),
                         "fanout": fanout,
                         "stream_latency_ms": {"samples": len(lat), "p50": _percentile(lat, 0.5),
                                               "p99": _percentile(lat, 0.99)}}}
