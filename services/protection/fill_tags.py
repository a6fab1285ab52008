"""Which fills are a triggered leg's, known BEFORE the fill is pushed (CONTRACT.md
"Protection": ``fills.reason`` ``stop_loss`` / ``take_profit`` / ``trailing_stop`` on
the live ``fills`` push, not only on a replay).

The account stream hands every fill to the ledger facade first; it asks ``FillTags.
reason(key_id, fill)`` (memory only, no I/O: it runs on the push path) and pushes and
stores the fill with that reason. What the tags know:

- exchange mode, by the leg's ids: our ``client_order_id`` (Binance ``clientAlgoId``;
  the simulator, like Binance, gives the triggered order the algo order's client id),
  the venue's ``order_id`` (Bybit: the conditional order becomes the filled order, same
  ``orderId``), and the triggered order id a stream update named (Binance
  ``ALGO_UPDATE`` ``ai``). Fed from the live legs each time the push view of a key is
  re-read (``LegViews.store``) and from each ``ProtectionLegUpdate`` of the stream.
- server mode, by the exit: a fired rule's exit sends orders with client order ids
  ``exit-<exit_id>-...`` (``services.exits``); the rule's kind is noted for its
  position before the exit starts and for its exit id once known. A rule fired by
  another process (this process runs the key's account stream, not the fire) is found
  by ``lookup(key_id, symbol, exit_id)``: one indexed read of the leg whose
  ``exit_id`` it is, once per exit id (the answer, a kind or none, is remembered). The
  batch fire (``firing.fire_many``) commits the leg's ``exit_id`` with the exit row,
  before the exit's first order is sent, so the read finds it.

What it does not know (a leg placed through another process in the last moments; a
rule fired by the per-rule path of another process whose fill arrived before its
leg's compare-and-set) is still set on the stored fill by ``reasons.mark_fill_reasons``
once the leg is settled, so the replay is right in every case. Bounded: at most
``MAX_IDS`` remembered ids.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable

logger = logging.getLogger(__name__)

MAX_IDS = 50_000
EXIT_COID = re.compile(r"^exit-(\d+)-")
KINDS = frozenset({"stop_loss", "take_profit", "trailing_stop"})
NONE = ""  # remembered for an exit that is no rule's (a manual close)
Lookup = Callable[[int, str, int], "str | None"]


class FillTags:
    """Leg ids -> leg kind, per key, in memory (thread-safe; no I/O but ``lookup``).

    Args:
        max_ids: ids remembered per store; lookup: ``lookup(key_id, symbol, exit_id)``,
            the kind of the server-mode leg whose exit is ``exit_id`` or None (read
            from the database; an exception counts as "not known now": asked again).
    """

    def __init__(self, max_ids: int = MAX_IDS, lookup: Lookup | None = None) -> None:
        self._lookup = lookup
        self._ids: OrderedDict[tuple[int, str], str] = OrderedDict()  # (key_id, id) -> kind
        self._exits: OrderedDict[int, str] = OrderedDict()  # exit id -> kind
        self._firing: dict[tuple[int, str], str] = {}  # (key_id, symbol) -> kind
        self._max = max_ids
        self._lock = threading.Lock()

    def _put(self, store: OrderedDict, k, kind: str) -> None:  # type: ignore[no-untyped-def]
        store[k] = kind
        store.move_to_end(k)
        while len(store) > self._max:
            store.popitem(last=False)

    def note_ids(self, key_id: int, kind: str, *ids: str | None) -> None:
        """Remember the ids (client order id, venue order id, triggered order id) of a
        leg of ``kind`` of key ``key_id``; empty ids are skipped."""
        if kind not in KINDS:
            return
        with self._lock:
            for i in ids:
                if i:
                    self._put(self._ids, (key_id, str(i)), kind)

    def note_rows(self, rows) -> None:  # type: ignore[no-untyped-def]
        """Remember the ids of ``protection_legs`` rows (exchange mode)."""
        for r in rows:
            if r.mode == "exchange":
                self.note_ids(r.key_id, r.kind, r.client_order_id, r.venue_leg_id, r.order_id)

    def note_leg(self, key_id: int, leg) -> None:  # type: ignore[no-untyped-def]
        """Remember an ``exchanges.types.ProtectionLeg`` reported by the stream."""
        kind = getattr(leg.kind, "value", leg.kind)
        self.note_ids(key_id, kind, leg.client_order_id, leg.order_id, leg.triggered_order_id)

    def firing(self, key_id: int, symbol: str, kind: str) -> None:
        """A server-mode rule of ``kind`` fired: its exit's fills (on this position)
        are the rule's until ``fired_done``."""
        with self._lock:
            self._firing[(key_id, symbol)] = kind

    def exit_started(self, exit_id: int, kind: str) -> None:
        """The fired rule's exit is ``exit_id``."""
        with self._lock:
            self._put(self._exits, exit_id, kind)

    def fired_done(self, key_id: int, symbol: str) -> None:
        """The fired rule's exit ended (its fills are known by ``exit_started``)."""
        with self._lock:
            self._firing.pop((key_id, symbol), None)

    def reason(self, key_id: int, fill) -> str | None:  # type: ignore[no-untyped-def]
        """The leg kind whose order made ``fill`` (an ``exchanges.types.Fill``), or
        None (an ordinary fill as far as this process knows). An exit's fill whose
        exit this process has not seen is looked up once (``lookup``)."""
        coid = fill.client_order_id or ""
        exit_id = None
        with self._lock:
            kind = self._ids.get((key_id, coid)) if coid else None
            if kind is None and fill.order_id:
                kind = self._ids.get((key_id, str(fill.order_id)))
            if kind is None and coid:
                m = EXIT_COID.match(coid)
                if m is not None:
                    exit_id = int(m.group(1))
                    kind = self._exits.get(exit_id)
                    if kind is None:
                        kind = self._firing.get((key_id, fill.symbol))
                        if kind is not None:
                            self._put(self._exits, exit_id, kind)
        if kind is None and exit_id is not None and self._lookup is not None:
            try:
                kind = self._lookup(key_id, fill.symbol, exit_id)
            except Exception as e:  # the database is away: untagged now, the replay has it
                logger.warning("fill reason lookup failed key_id=%s exit_id=%s kind=%s",
                               key_id, exit_id, type(e).__name__)
                return None
            with self._lock:
                self._put(self._exits, exit_id, kind if kind in KINDS else NONE)
        return kind or None
