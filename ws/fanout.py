"""Per-connection delivery of account envelopes: encoded once, conflated per
connection and type (``max_hz``), never holding an account event back.

One ``Channel`` per (key, type) lists the connections subscribed to it (``Sub``:
its minimum interval between two mark-driven pushes, the time the next one may go,
and the last ``seq`` it was sent). An envelope is built only when some connection
is due to receive it, turned into one Engine.IO packet (python-socketio's own packet
class, encoded once, cached by python-engineio), and handed to each due connection's
send queue (``ws.sio_private.send_packet``), as python-socketio's own room emit does.

Conflation (Lightstreamer's "max frequency", centrifugo's per-subscription rate):
a mark-driven change that finds a connection inside its interval is noted, not
built; the channel is armed to fire when the first waiting connection is due, and
then sends the newest envelope, built then. One timer task serves every channel
(a heap of armed times, woken early only when a sooner time is armed): arming costs
a heap push, not a green thread. So a connection gets at most ``max_hz``
mark-driven pushes a second per type, the newest value within ``1 / max_hz`` s of
the change, and the last value always. Account events (a fill, an order update, a
balance change reported by the exchange, a REST refresh) go to every subscriber at
once. A connection never gets a ``seq`` it already has or an older one.

With ``MESSAGE_QUEUE_URL`` the process running a key's stream publishes every
envelope through the queue and each process hands what it receives to its own
Fanout (``receive``), on a ``ws.remote_state.RemoteState`` of the key instead of the
``AccountState``: the same conflation, per connection of that process. Both are a
``services.push.PushSource``: all a channel reads of its key.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engineio import packet as eio_packet
from socketio import packet as sio_packet

from services.account_state import AccountState
from services.push import PushSource
from ws.remote_state import RemoteState
from ws.sio_private import send_packet

logger = logging.getLogger(__name__)

# mark-driven pushes per second per connection and type when ``max_hz`` is not given;
# account events are never held back. ``balance`` moves with every tick of every held
# symbol but matters less on a phone than the pnl figure.
# ``pnl`` (the figure a trader watches) up to 10 a second; ``positions`` (whose rows
# also carry the mark price) once a second; ``balance`` every 2 s.
DEFAULT_MAX_HZ = {"pnl": 10.0, "positions": 1.0, "balance": 0.5, "orders": 10.0}
EARLY_S = 0.001  # a connection due within this is served now (timers may wake a bit early)
YIELD_EVERY_S = 0.002  # the timer task yields to other green threads this often


@dataclass(eq=False)
class Sub:
    """One connection's subscription to one channel."""

    sid: str
    eio_sid: str
    interval_s: float  # minimum seconds between two mark-driven pushes; 0: none
    next_at: float = 0.0  # monotonic time the next mark-driven push may go
    last_seq: int = 0


@dataclass(eq=False)
class Channel:
    """The subscribers of one (key, type) and the packet of its newest envelope."""

    key_id: int
    kind: str
    subs: dict[str, Sub] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # never held across I/O
    state: PushSource | None = None  # the source last seen (its epoch, its envelopes)
    epoch: str | None = None
    packet: tuple[int, eio_packet.Packet] | None = None  # (seq, Engine.IO packet)
    snapshot: tuple[int, eio_packet.Packet] | None = None  # (seq, packet) of the cached copy
    timer_at: float | None = None


class Fanout:
    """Channels, subscriptions and the send path.

    Args:
        server: the python-socketio ``Server`` (its ``packet_class`` and
            ``ws.sio_private.send_packet``).
        spawn: starts a background task (the timer task, once); sleep: cooperative
            sleep.
        on_push: called with each envelope built for delivery (counters, latency).
        clock: monotonic seconds.
        make_event: builds the event that wakes the timer task (python-engineio's
            ``create_event``: a green one under eventlet).
    """

    def __init__(self, server: Any, spawn: Callable[..., object],
                 sleep: Callable[[float], None],
                 on_push: Callable[[dict[str, Any]], None] = lambda env: None,
                 clock: Callable[[], float] = time.monotonic,
                 make_event: Callable[[], threading.Event] = threading.Event) -> None:
        self._clock = clock
        self._armed: list[tuple[float, int, Channel]] = []  # heap of (at, order, channel)
        self._armed_lock = threading.Lock()
        self._order = itertools.count()
        self._wake = make_event()
        self._timer_started = False
        self._stopped = False
        self._server = server
        self._spawn = spawn
        self._sleep = sleep
        self._on_push = on_push
        self._lock = threading.Lock()
        self._channels: dict[tuple[int, str], Channel] = {}
        self._by_sid: dict[str, set[tuple[int, str]]] = {}  # sid -> its channels' keys
        self.conflated = 0  # mark-driven changes noted instead of sent at once
        self.timer_pushes = 0
        self.pushed = 0  # envelopes built for delivery (each sent to one or more connections)
        self.relayed = 0  # of which received from another process (``ws.relay``)

    # ---- subscriptions -------------------------------------------------------
    def attach(self, sid: str, eio_sid: str, state: PushSource, kind: str,
               max_hz: float | None, first: Callable[[], list[dict[str, Any]]]) -> None:
        """Subscribe ``sid`` to ``state``'s ``kind`` and send it ``first()`` (its
        snapshot or replay) before any live push: both happen under the channel's
        lock, so a push built meanwhile is either in ``first()`` or follows it."""
        interval = 1.0 / max_hz if max_hz else 0.0
        ch = self._channel(state.key_id, kind)
        with ch.lock:
            self._follow(ch, state)
            sub = Sub(sid, eio_sid, interval, last_seq=0)
            for env in first():
                self._send(sub, env, self._snapshot_packet(ch, env))
            if ch.epoch != state.epoch:  # first() moved a RemoteState to its own epoch
                self._follow(ch, state)
            sub.last_seq = max(sub.last_seq, state.seq(kind))
            ch.subs[sid] = sub
        with self._lock:
            self._by_sid.setdefault(sid, set()).add((state.key_id, kind))

    def detach(self, sid: str, key_ids: set[int] | None = None,
               kinds: set[str] | None = None) -> None:
        """Unsubscribe ``sid`` from the channels of ``key_ids`` x ``kinds`` (None: all)."""
        with self._lock:
            mine = self._by_sid.get(sid, set())
            picked = {(k, t) for k, t in mine
                      if (key_ids is None or k in key_ids) and (kinds is None or t in kinds)}
            mine -= picked
            if not mine:
                self._by_sid.pop(sid, None)
            channels = [c for c in (self._channels.get(p) for p in picked) if c is not None]
        for ch in channels:
            with ch.lock:
                ch.subs.pop(sid, None)
                if not ch.subs:
                    with self._lock:
                        if not ch.subs and self._channels.get((ch.key_id, ch.kind)) is ch:
                            del self._channels[(ch.key_id, ch.kind)]

    def has_subscribers(self, key_id: int, kind: str) -> bool:
        """True when some connection of this process follows ``key_id``'s ``kind``."""
        ch = self._channels.get((key_id, kind))
        return ch is not None and bool(ch.subs)

    def _channel(self, key_id: int, kind: str) -> Channel:
        with self._lock:
            ch = self._channels.get((key_id, kind))
            if ch is None:
                ch = self._channels[(key_id, kind)] = Channel(key_id, kind)
            return ch

    @staticmethod
    def _follow(ch: Channel, state: PushSource) -> None:
        """A new epoch (a new state object): what subscribers were sent before belongs
        to the old sequence."""
        ch.state = state
        if ch.epoch != state.epoch:
            ch.epoch, ch.packet, ch.snapshot = state.epoch, None, None
            for sub in ch.subs.values():
                sub.last_seq = 0

    # ---- pushes ----------------------------------------------------------------
    def offer(self, state: AccountState, kind: str, source: str, as_of: int,
              mark: bool) -> None:
        """``kind`` of ``state`` changed. ``mark``: by a mark price move (known
        changed, conflated per connection); otherwise by an account event or a REST
        result (compared with the last envelope, sent to everyone at once). A change
        not built now is noted on the state (built when due or asked for)."""
        ch = self._channels.get((state.key_id, kind))
        if ch is None or not ch.subs:
            state.note_unseen(kind, source, as_of)  # built when a subscriber asks
            return
        with ch.lock:
            if self._offer(ch, state, kind, source, as_of, mark):
                state.note_unseen(kind, source, as_of)

    def _offer(self, ch: Channel, state: PushSource, kind: str, source: str, as_of: int,
               mark: bool) -> bool:
        """``offer`` on ``ch``; the caller holds ``ch.lock`` (a plain lock: not
        re-entered). True when the change was held back unbuilt (nobody follows, or
        every connection is inside its interval: the channel is armed)."""
        if not ch.subs:
            return True
        if ch.epoch != state.epoch or ch.state is not state:
            self._follow(ch, state)
        subs = list(ch.subs.values())
        now = self._clock()
        if mark:
            due = subs if len(subs) == 1 and subs[0].next_at <= now + EARLY_S else [
                s for s in subs if s.next_at <= now + EARLY_S]
            if not due:
                self.conflated += 1
                self._arm(ch, min(s.next_at for s in subs))
                return True
        else:
            due = subs
        env = state.envelope_of_change(kind, source, as_of, mark)
        if env is None:
            return False
        self._deliver(ch, env, due, now if mark else None)
        if mark and len(due) < len(subs):
            self.conflated += 1
            self._arm(ch, min(s.next_at for s in subs if s not in due))
        return False

    def receive(self, state: RemoteState, env: dict[str, Any], mark: bool) -> None:
        """An envelope received from the message queue for ``state`` (a
        ``ws.remote_state.RemoteState``): held there as the newest of its type, then offered
        as a change (``mark`` as in ``offer``). An older one than held is dropped."""
        kind = env["type"]
        ch = self._channels.get((state.key_id, kind))
        if ch is None:
            state.receive(env)  # nobody here follows it: only the position moves
            return
        with ch.lock:  # held back: the mirror holds it as pending already
            if state.receive(env):
                self._offer(ch, state, kind, env.get("source", "stream"), env.get("as_of", 0), mark)

    def deliver(self, state: PushSource, env: dict[str, Any]) -> None:
        """Send a built envelope (``fills``, a ``stale`` one) to every subscriber now."""
        ch = self._channels.get((state.key_id, env["type"]))
        if ch is None or not ch.subs:
            return
        with ch.lock:
            self._follow(ch, state)
            self._deliver(ch, env, list(ch.subs.values()), None)

    def _pushed(self, ch: Channel, env: dict[str, Any]) -> None:
        self.pushed += 1
        if isinstance(ch.state, RemoteState) and ch.state.via_relay:
            self.relayed += 1
        self._on_push(env)

    def _deliver(self, ch: Channel, env: dict[str, Any], subs: list[Sub],
                 mark_now: float | None) -> None:
        self._pushed(ch, env)
        pkt = self._encode(env)
        ch.packet = (env["seq"], pkt)
        for sub in subs:
            self._send(sub, env, pkt)
            if mark_now is not None:
                sub.next_at = mark_now + sub.interval_s

    def _send(self, sub: Sub, env: dict[str, Any], pkt: eio_packet.Packet) -> None:
        seq = env["seq"]
        if env.get("source") != "cache" and seq <= sub.last_seq:
            return  # never a repeat, never backwards
        send_packet(self._server, sub.eio_sid, pkt)
        sub.last_seq = max(sub.last_seq, seq)

    def _snapshot_packet(self, ch: Channel, env: dict[str, Any]) -> eio_packet.Packet:
        """The packet of a subscriber's first envelope; a state's cached copy is the same
        for every subscriber of that seq (a reconnect storm), so it is encoded once."""
        if env.get("source") != "cache" or env["type"] == "fills" or env.get("epoch") != ch.epoch:
            return self._encode(env)
        if ch.snapshot is None or ch.snapshot[0] != env["seq"]:
            ch.snapshot = (env["seq"], self._encode(env))
        return ch.snapshot[1]

    def _encode(self, env: dict[str, Any]) -> eio_packet.Packet:
        """One Engine.IO MESSAGE packet for the event (python-socketio's packet class,
        ``binary=False``: an envelope holds no bytes, so no scan for them)."""
        pkt = self._server.packet_class(sio_packet.EVENT, namespace="/",
                                        data=[env["type"], env], binary=False)
        return eio_packet.Packet(eio_packet.MESSAGE, pkt.encode())

    # ---- conflation timer ------------------------------------------------------
    def _arm(self, ch: Channel, at: float) -> None:
        """Make sure the channel fires by ``at`` (monotonic). Caller holds ``ch.lock``."""
        if ch.timer_at is not None and ch.timer_at <= at:
            return
        ch.timer_at = at  # an entry armed later for this channel supersedes it
        with self._armed_lock:
            heapq.heappush(self._armed, (at, next(self._order), ch))
            soonest = self._armed[0][2] is ch
            start, self._timer_started = not self._timer_started, True
        if start:
            self._spawn(self._timer_task)
        elif soonest:
            self._wake.set()

    def armed(self) -> int:
        """How many channels wait for their timer."""
        with self._armed_lock:
            return len({id(ch) for at, _, ch in self._armed if ch.timer_at == at})

    def run_due(self) -> float | None:
        """Fire every channel whose time has come (``flush``), yielding every
        ``YIELD_EVERY_S`` of work; returns the monotonic time of the next armed one
        (None: none)."""
        now = self._clock()
        due = []
        with self._armed_lock:
            while self._armed and self._armed[0][0] <= now + EARLY_S:
                due.append(heapq.heappop(self._armed))
        sliced_at = time.perf_counter()
        for at, _, ch in due:
            with ch.lock:
                if ch.timer_at != at:
                    continue  # superseded by a sooner time, which fired already
                ch.timer_at = None
                try:
                    self.flush(ch)
                except Exception:  # isolation boundary: one channel's failure must not stop others
                    logger.exception("conflated push failed key_id=%s type=%s", ch.key_id, ch.kind)
            if time.perf_counter() - sliced_at > YIELD_EVERY_S:
                self._sleep(0)
                sliced_at = time.perf_counter()
        with self._armed_lock:
            return self._armed[0][0] if self._armed else None

    def stop(self) -> None:
        """End the timer task (shutdown); conflated values still waiting are not sent."""
        self._stopped = True
        self._wake.set()

    def _timer_task(self) -> None:
        """The one timer task: fire what is due, then wait until the next armed time
        or until a sooner one is armed; returns after ``stop()``."""
        while not self._stopped:
            self._wake.clear()
            try:
                at = self.run_due()
            except Exception:  # isolation boundary: the timer task must outlive a bug
                logger.exception("conflation timer failed")
                at = self._clock() + 0.1
            self._wake.wait(None if at is None else max(0.0, at - self._clock()))

    def flush(self, ch: Channel) -> None:
        """Send the newest envelope to every waiting subscriber that is due; re-arm
        for those that are not yet. Caller holds ``ch.lock``."""
        state = ch.state
        if state is None or not ch.subs:
            return
        now = self._clock()
        subs = list(ch.subs.values())
        if state.pending(ch.kind) and any(s.next_at <= now + EARLY_S for s in subs):
            env = state.build_pending(ch.kind)
            if env is not None:
                self._pushed(ch, env)
                ch.packet = (env["seq"], self._encode(env))
        env = state.last(ch.kind)
        if env is None:
            return
        if ch.packet is None or ch.packet[0] != env["seq"]:
            ch.packet = (env["seq"], self._encode(env))
        pkt = ch.packet[1]
        later: list[float] = []
        for sub in subs:
            if sub.last_seq >= env["seq"] and not state.pending(ch.kind):
                continue
            if sub.next_at <= now + EARLY_S:
                if sub.last_seq < env["seq"]:
                    self._send(sub, env, pkt)
                    self.timer_pushes += 1
                    sub.next_at = now + sub.interval_s
            else:
                later.append(sub.next_at)
        if later:
            self._arm(ch, min(later))

    def stats(self) -> dict[str, Any]:
        """``{"channels", "subscriptions", "conflated", "timer_pushes", "pushed",
        "relayed", "relayed_fraction"}``: ``pushed`` envelopes built for delivery to
        this process's connections, ``relayed`` of them received from another process
        through Redis (``relayed_fraction``: their share, None before any push)."""
        with self._lock:
            channels = list(self._channels.values())
        return {"channels": len(channels), "subscriptions": sum(len(c.subs) for c in channels),
                "conflated": self.conflated, "timer_pushes": self.timer_pushes,
                "pushed": self.pushed, "relayed": self.relayed,
                "relayed_fraction": round(self.relayed / self.pushed, 4) if self.pushed else None}
