"""The push sequence of one key: its ``epoch``, the ``seq`` of each type within it,
and the last envelope built of each type.

CONTRACT.md: every account envelope carries ``epoch`` (a string) and ``seq``; ``seq``
grows by exactly one per envelope built of a (user, key, type) within one epoch. A
``PushSequence`` is the one place that numbers envelopes, so the state types
(``services.account_state.AccountState``) and the ``fills`` log
(``services.fill_log.FillLog``) of a key share it. A position in such a sequence is a
``StreamPosition`` (centrifuge's ``StreamPosition{Offset, Epoch}``): compared as one.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, NamedTuple

from clock import now_ms

# the epoch prefix of this process: a restart can never reuse an epoch
_BOOT = f"{int(time.time() * 1000):x}-{os.getpid():x}-{os.urandom(3).hex()}"
_EPOCHS = itertools.count(1)


def new_epoch() -> str:
    """A string no other sequence of this or any earlier process carries."""
    return f"{_BOOT}-{next(_EPOCHS)}"


class StreamPosition(NamedTuple):
    """A place in a key's push sequence of one type: ``epoch`` (None: no envelope of
    any type received yet) and ``seq`` (0: none of this type yet in the epoch). Two
    positions are equal only when both parts are; a tuple, so ``epoch, seq = pos``
    works. Not a wire format: envelopes keep their own ``epoch`` and ``seq`` fields."""

    epoch: str | None
    seq: int


class PushSequence:
    """Numbers the envelopes of one key (``user_id``, ``key_id``, ``exchange``,
    ``testnet``) within ``epoch`` (a new one when not given) and keeps the last one
    built of each type. Thread-safe: every method takes the sequence's own short lock
    (callers may hold theirs around a call; the sequence never calls out)."""

    def __init__(self, user_id: int, key_id: int, exchange: str, testnet: bool,
                 epoch: str | None = None) -> None:
        self.user_id = user_id
        self.key_id = key_id
        self.exchange = exchange
        self.testnet = testnet
        self.epoch = epoch or new_epoch()
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._last: dict[str, dict[str, Any]] = {}

    def next(self, kind: str, source: str, as_of: int, stale: bool,
             data: Any) -> dict[str, Any]:
        """The next envelope of ``kind`` carrying ``data`` (CONTRACT.md shape:
        ``source`` ``stream`` | ``rest``, ``as_of`` and ``sent_at`` ms UTC), now the
        last one of its type."""
        with self._lock:
            seq = self._seq.get(kind, 0) + 1
            self._seq[kind] = seq
            envelope = {"type": kind, "user_id": self.user_id, "key_id": self.key_id,
                        "exchange": self.exchange, "testnet": self.testnet,
                        "epoch": self.epoch, "seq": seq, "as_of": as_of, "sent_at": now_ms(),
                        "source": source, "stale": stale, "data": data}
            self._last[kind] = envelope
            return envelope

    def seq(self, kind: str) -> int:
        """The ``seq`` of the last envelope of ``kind`` (0: none yet in this epoch)."""
        return self._seq.get(kind, 0)

    def position(self, kind: str) -> StreamPosition:
        """``(epoch, seq)`` of the last envelope of ``kind``."""
        return StreamPosition(self.epoch, self._seq.get(kind, 0))

    def last(self, kind: str) -> dict[str, Any] | None:
        """The last envelope built of ``kind`` (not a copy: do not change it)."""
        return self._last.get(kind)

    def cached(self, kinds: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
        """Copies of the last envelopes of ``kinds`` (those built) with ``source:
        "cache"``, at their current ``seq``, in the order of ``kinds``."""
        with self._lock:
            return [dict(self._last[k], source="cache") for k in kinds if k in self._last]

    def snapshot(self, kind: str, data: Any) -> dict[str, Any]:
        """An envelope of ``data`` at the current ``seq`` of ``kind``, ``source:
        "cache"``: not a new push, so no ``seq`` is spent (a resume's replay)."""
        now = now_ms()
        return {"type": kind, "user_id": self.user_id, "key_id": self.key_id,
                "exchange": self.exchange, "testnet": self.testnet, "epoch": self.epoch,
                "seq": self._seq.get(kind, 0), "as_of": now, "sent_at": now,
                "source": "cache", "stale": False, "data": data}
