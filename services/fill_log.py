"""The ``fills`` push type of an account: each fill queued once (by trade id), pushed
in envelopes numbered by the key's ``PushSequence``, the last ones kept so that a
client can resume from its (epoch, seq).

``services.account_state.AccountState`` has one (``state.fills``), sharing its
sequence.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

from exchanges.types import Fill
from services import serialize
from services.push_sequence import PushSequence

FILLS_KEPT = 500  # fills envelopes kept per key for a resume by (epoch, seq)
TRADE_IDS_KEPT = 5_000  # trade ids remembered per key so that a fill is pushed once


class FillLog:
    """Queue, sequence and keep the fills of the key ``sequence`` numbers."""

    def __init__(self, sequence: PushSequence) -> None:
        self._sequence = sequence
        # taken before the sequence's own lock, never after: every ``fills`` seq is
        # spent under it, so the log and the sequence agree when read under it
        self._lock = threading.Lock()
        self._pending: list[Fill] = []
        self._ids: dict[tuple[str, str], None] = {}  # (symbol, trade id), oldest first
        self.log: deque[dict[str, Any]] = deque(maxlen=FILLS_KEPT)  # the last envelopes

    def add(self, fill: Fill) -> bool:
        """Queue a fill for the next ``fills`` envelope; False when this trade id was
        pushed already (a gap fill repeats what the stream delivered)."""
        ident = (fill.symbol, fill.trade_id)
        with self._lock:
            if ident in self._ids:
                return False
            self._ids[ident] = None
            if len(self._ids) > TRADE_IDS_KEPT:
                del self._ids[next(iter(self._ids))]
            self._pending.append(fill)
        return True

    def envelope(self, as_of: int) -> dict[str, Any] | None:
        """The ``fills`` envelope of the queued fills (oldest first), sequenced and kept
        in ``log``; None when none is queued. Built whether or not anybody listens: a
        fill's place in the sequence is what a resume refers to. ``as_of`` ms UTC."""
        with self._lock:
            fills, self._pending = self._pending, []
            if not fills:
                return None
            fills.sort(key=lambda f: (f.time, f.trade_id))
            env = self._sequence.next("fills", "stream", as_of, False,
                                      [serialize.fill_data(f) for f in fills])
            self.log.append(env)
            return env

    def after(self, seq: int) -> list[dict[str, Any]] | None:
        """The kept envelopes with a ``seq`` above ``seq``, oldest first; None when
        ``seq`` is not in the kept range (older than the log, or ahead of it)."""
        with self._lock:
            current = self._sequence.seq("fills")
            if seq > current or seq < 0:
                return None
            log = list(self.log)
            if seq < current and (not log or log[0]["seq"] > seq + 1):
                return None
            return [e for e in log if e["seq"] > seq]

    def recent(self) -> list[dict[str, Any]]:
        """The fill rows of the kept envelopes, oldest first (not yet durable ones
        among them)."""
        with self._lock:
            return [row for env in self.log for row in env["data"]]

    def snapshot(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """A ``fills`` envelope of ``rows`` (a resume's replay, or ``[]``) at the
        current ``seq``, ``source: "cache"``: not a new push, so no seq is spent."""
        return self._sequence.snapshot("fills", rows)
