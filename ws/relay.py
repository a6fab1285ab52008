"""Account pushes through the message queue (``MESSAGE_QUEUE_URL``), conflated on the
receiving side.

With several server processes an account stream runs in one of them (its lease)
while the key's subscribers may be connected to any. The process running the stream
builds every envelope and publishes it once through the queue; every process
(itself included) receives it and hands it to its own ``ws.fanout.Fanout``, which
applies each local connection's ``max_hz`` exactly as without a queue.

``AccountRelay`` (mixed into python-socketio's pub/sub manager) publishes account
envelopes as python-socketio ``emit`` messages to the type's room with one more
message field, ``mark`` (True: a mark-price-driven change, conflated per connection;
False: an account event or a REST result, sent at once). The field is on the queue
message, never in the event data, so no client sees it. Received messages that carry
``mark`` go to the hub's receiver instead of a room emit (so a connection never gets
both); every other emit (``fills``, ``stream_status``, ``error``, tickers, emits to
one sid) is handled by python-socketio unchanged. A process without this mixin emits
such a message to the room as before (the extra field is ignored).

``RemoteState`` is what a ``Fanout`` channel works on for such a key: a mirror of
the envelopes received (the epoch, the ``seq`` per type, the last one sent and the
newest one held), with the methods of ``services.account_state.AccountState`` that
``Fanout.offer`` / ``flush`` / ``attach`` use.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import socketio

from services.account_kinds import STATE_TYPES

logger = logging.getLogger(__name__)


def _now_ms() -> int:
    return int(time.time() * 1000)


class RemoteState:
    """The received envelopes of one key (``key_id``) as a Fanout state.

    ``epoch``: the epoch of the envelopes held (None: none received yet). Per type:
    ``seq(kind)`` the newest ``seq`` received, ``last(kind)`` the newest envelope
    handed to the fanout, ``pending(kind)`` True while a newer one is held
    (received while every subscriber was inside its ``max_hz`` interval).
    ``user_id``: the owner of the key (the mirror is dropped when the user's last
    connection of this process leaves).
    """

    def __init__(self, key_id: int, user_id: int) -> None:
        self.key_id = key_id
        self.user_id = user_id
        self.epoch: str | None = None
        self._lock = threading.Lock()
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
            if env.get("epoch") != self.epoch:
                self._reset(env.get("epoch"))
            elif seq < self._seq.get(kind, 0):
                return False
            self._seq[kind] = seq
            self._pending[kind] = env
            return True

    def adopt(self, epoch: str, kind: str, seq: int, last: dict | None) -> None:
        """This process's own state of the key is at ``(epoch, seq)`` of ``kind``
        with ``last`` its envelope (a local subscriber is given its snapshot from it):
        the mirror moves there if it is behind, so that the subscriber's ``seq`` and
        the channel's epoch agree with what it was sent."""
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

    def _reset(self, epoch: str | None) -> None:
        self.epoch = epoch
        self._seq, self._last, self._pending = {}, {}, {}

    def position(self, kind: str) -> tuple[str | None, int]:
        """``(epoch, seq)`` of the newest envelope of ``kind`` received."""
        with self._lock:
            return self.epoch, self._seq.get(kind, 0)

    def newest(self, kind: str) -> dict | None:
        """The newest envelope of ``kind`` (held or sent), or None."""
        with self._lock:
            return self._pending.get(kind) or self._last.get(kind)

    # ---- what Fanout calls (AccountState's names) ------------------------------
    def seq(self, kind: str) -> int:
        """The newest ``seq`` of ``kind`` received in the current epoch (0: none)."""
        return self._seq.get(kind, 0)

    def last(self, kind: str) -> dict | None:
        """The newest envelope of ``kind`` handed to the fanout (do not change it)."""
        return self._last.get(kind)

    def pending(self, kind: str) -> bool:
        """True while a received envelope of ``kind`` is held, not yet sent."""
        return kind in self._pending

    def note_unseen(self, kind: str, source: str, as_of: int) -> None:
        """Nothing to note: the received envelope is held already."""

    def _take(self, kind: str) -> dict | None:
        with self._lock:
            env = self._pending.pop(kind, None)
            if env is not None:
                self._last[kind] = env
            return env

    def envelope(self, kind: str, source: str, as_of: int) -> dict | None:
        """The held envelope of ``kind``, now the last one (None: none held)."""
        return self._take(kind)

    def envelope_if_changed(self, kind: str, source: str, as_of: int) -> dict | None:
        """As ``envelope``: a received envelope is a change by construction."""
        return self._take(kind)

    def build_pending(self, kind: str) -> dict | None:
        """The held envelope of ``kind`` for a conflated push (the timer), with
        ``sent_at`` (ms UTC) of now, since it left later than it was built."""
        with self._lock:
            env = self._pending.pop(kind, None)
            if env is None:
                return None
            env = self._last[kind] = dict(env, sent_at=_now_ms())
            return env


class AccountRelay:
    """Mixin for a python-socketio ``PubSubManager``: account envelopes published
    with their ``mark`` flag and, when received, handed to ``receiver(envelope,
    mark)`` (``PushHub.receive``) instead of a room emit.

    ``receiver`` is None until the hub sets it; until then such messages are room
    emits, as python-socketio would do."""

    receiver: Callable[[dict, bool], None] | None = None
    # called with every other message before python-socketio emits it to this
    # process's members (the hub records fills/alerts deliveries: services.notify)
    on_room_emit: Callable[[dict], None] | None = None

    def publish_account(self, envelope: dict, mark: bool) -> None:
        """Publish one account envelope (``balance``, ``positions``, ``pnl``,
        ``orders``) to every process, this one first (as ``PubSubManager.emit``).
        The message is python-socketio's own ``emit`` message to the room
        ``<type>_<user_id>`` plus ``mark``."""
        kind = envelope["type"]
        message = {"method": "emit", "event": kind, "data": [envelope], "binary": False,
                   "namespace": "/", "room": f"{kind}_{envelope['user_id']}",
                   "skip_sid": None, "callback": None,
                   "host_id": self.host_id,  # type: ignore[attr-defined]
                   "mark": bool(mark)}
        self._handle_emit(message)
        self._publish(message)  # type: ignore[attr-defined]

    def _handle_emit(self, message: dict) -> None:
        receiver = self.receiver
        if "mark" in message and receiver is not None and message.get("event") in STATE_TYPES:
            data = message.get("data")
            if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
                try:
                    receiver(data[0], bool(message["mark"]))
                except Exception:  # isolation boundary: the publish to the others still goes
                    logger.exception("relayed push failed type=%s key_id=%s",
                                     message.get("event"), data[0].get("key_id"))
                return
        observer = self.on_room_emit
        if observer is not None:
            try:
                observer(message)
            except Exception:  # isolation boundary: the emit still happens
                logger.exception("room emit observer failed event=%s", message.get("event"))
        super()._handle_emit(message)  # type: ignore[misc]


class RedisRelayManager(AccountRelay, socketio.RedisManager):
    """python-socketio's ``RedisManager`` with ``AccountRelay``."""


def make_client_manager(url: str | None, channel: str) -> RedisRelayManager | None:
    """The Socket.IO client manager for ``MESSAGE_QUEUE_URL`` ``url`` (a Redis URL:
    the stream leases of ``services.leases`` use the same Redis) on the pub/sub
    channel ``channel``; None without a URL (python-socketio's in-process manager)."""
    if not url:
        return None
    return RedisRelayManager(url, channel=channel)
