"""The mirror of a key's account envelopes in a process that does not run the key's
stream (``ws.relay`` feeds it from Redis): what a ``ws.fanout.Fanout`` channel works on
for such a key, as it works on the key's ``AccountState`` where the stream runs (both
are a ``services.push.PushSource``)."""
from __future__ import annotations

import threading
from typing import Any

from clock import now_ms
from services.push_sequence import StreamPosition

Envelope = dict[str, Any]  # one push envelope as services.push builds it


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
        self._last: dict[str, Envelope] = {}
        self._pending: dict[str, Envelope] = {}

    # ---- fed by the queue and by this process's own states ----------------------
    def receive(self, env: Envelope) -> bool:
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

    def adopt(self, position: StreamPosition, kind: str, last: Envelope | None) -> None:
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

    def newest(self, kind: str) -> Envelope | None:
        """The newest envelope of ``kind`` (held or sent), or None."""
        with self._lock:
            return self._pending.get(kind) or self._last.get(kind)

    # ---- services.push.PushSource: what Fanout reads ----------------------------
    def seq(self, kind: str) -> int:
        """The newest ``seq`` of ``kind`` received in the current epoch (0: none)."""
        return self._seq.get(kind, 0)

    def last(self, kind: str) -> Envelope | None:
        """The newest envelope of ``kind`` handed to the fanout (do not change it)."""
        return self._last.get(kind)

    def pending(self, kind: str) -> bool:
        """True while a received envelope of ``kind`` is held, not yet sent."""
        return kind in self._pending

    def envelope_of_change(self, kind: str, source: str, as_of: int,
                           mark: bool) -> Envelope | None:
        """The held envelope of ``kind``, now the last one (None: none held): a
        received envelope is a change by construction, built by the owner."""
        with self._lock:
            env = self._pending.pop(kind, None)
            if env is not None:
                self._last[kind] = env
            return env

    def build_pending(self, kind: str) -> Envelope | None:
        """The held envelope of ``kind`` for a conflated push (the timer), with
        ``sent_at`` (ms UTC) of now, since it left later than it was built."""
        with self._lock:
            env = self._pending.pop(kind, None)
            if env is None:
                return None
            env = self._last[kind] = dict(env, sent_at=now_ms())
            return env
