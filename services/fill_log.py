"""The ``fills`` push type of an account's state: each fill queued once (by trade
id), pushed in envelopes of their own sequence, the last ones kept so that a
client can resume from its (epoch, seq).

``FillLog`` is a part of ``services.account_state.AccountState``; it uses the
state's ``_lock``, ``_seq``, ``_sequence`` and identity fields.
"""
from __future__ import annotations

from collections import deque

from clock import now_ms
from exchanges.types import Fill
from services import serialize

FILLS_KEPT = 500  # fills envelopes kept per key for a resume by (epoch, seq)
TRADE_IDS_KEPT = 5_000  # trade ids remembered per key so that a fill is pushed once


class FillLog:
    """Queue, sequence and keep an account's fills."""

    def _init_fills(self) -> None:
        self._fills_pending: list[Fill] = []
        self._fill_ids: dict[tuple[str, str], None] = {}  # (symbol, trade id), oldest first
        self.fills_log: deque[dict] = deque(maxlen=FILLS_KEPT)  # the last fills envelopes

    def add_fill(self, fill: Fill) -> bool:
        """Queue a fill for the next ``fills`` envelope; False when this trade id was
        pushed already (a gap fill repeats what the stream delivered)."""
        ident = (fill.symbol, fill.trade_id)
        with self._lock:
            if ident in self._fill_ids:
                return False
            self._fill_ids[ident] = None
            if len(self._fill_ids) > TRADE_IDS_KEPT:
                del self._fill_ids[next(iter(self._fill_ids))]
            self._fills_pending.append(fill)
        return True

    def fills_envelope(self, as_of: int) -> dict | None:
        """The ``fills`` envelope of the queued fills (oldest first), sequenced and kept
        in ``fills_log``; None when none is queued. Built whether or not anybody
        listens: a fill's place in the sequence is what a resume refers to."""
        with self._lock:
            fills, self._fills_pending = self._fills_pending, []
            if not fills:
                return None
            fills.sort(key=lambda f: (f.time, f.trade_id))
            env = self._sequence("fills", "stream", as_of, False,
                                 [serialize.fill_data(f) for f in fills])
            self.fills_log.append(env)
            return env

    def fills_after(self, seq: int) -> list[dict] | None:
        """The kept fills envelopes with a ``seq`` above ``seq``, oldest first; None
        when ``seq`` is not in the kept range (older than the log, or ahead of it)."""
        with self._lock:
            current = self._seq.get("fills", 0)
            if seq > current or seq < 0:
                return None
            log = list(self.fills_log)
            if seq < current and (not log or log[0]["seq"] > seq + 1):
                return None
            return [e for e in log if e["seq"] > seq]

    def recent_fills(self) -> list[dict]:
        """The fill rows of the kept envelopes, oldest first (not yet durable ones
        among them)."""
        with self._lock:
            return [row for env in self.fills_log for row in env["data"]]

    def fills_snapshot(self, rows: list[dict]) -> dict:
        """A ``fills`` envelope of ``rows`` (a resume's replay, or ``[]``) at the
        current ``seq``, ``source: "cache"``: not a new push, so no seq is spent."""
        return {"type": "fills", "user_id": self.user_id, "key_id": self.key_id,
                "exchange": self.exchange, "testnet": self.testnet, "epoch": self.epoch,
                "seq": self._seq.get("fills", 0), "as_of": now_ms(), "sent_at": now_ms(),
                "source": "cache", "stale": False, "data": rows}
