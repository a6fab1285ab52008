"""What the account pushes show of the legs, kept in memory (no I/O on the push path):
a position row's ``stop_loss`` / ``take_profit`` / ``trailing_stop`` and a key's
exchange-held active legs as ``orders`` rows. Re-read from the database per key after
every change of its legs; ``on_change(key_id)`` then lets the key's stream push.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import select

from models import LIVE_LEG_STATUSES, Database, LegStatus, ProtectionLeg
from services.protection.view import EMPTY_FIELDS, leg_order_row, position_fields

logger = logging.getLogger(__name__)


class LegViews:
    """The push view of every key's live legs."""

    def __init__(self, db: Database, tags=None) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._tags = tags  # fill_tags.FillTags: learns the live legs' ids
        # key_id -> symbol -> positions fields; key_id -> legs as orders rows
        self._fields: dict[int, dict[str, dict]] = {}
        self._leg_orders: dict[int, list[dict]] = {}
        # key_id -> (id, status, updated_at) of the live legs the view was built from
        self._seen: dict[int, frozenset[tuple[int, str, int]]] = {}
        self.on_change: Callable[[int], None] | None = None

    def keys(self) -> set[int]:
        """Keys with live legs in the view."""
        return set(self._fields)

    def symbols(self, key_id: int) -> dict[str, dict]:
        """The key's symbols with live legs (symbol -> fields)."""
        return self._fields.get(key_id, {})

    def position_fields(self, key_id: int, symbol: str) -> dict:
        """``{"stop_loss", "take_profit", "trailing_stop"}`` of a position (no I/O)."""
        return self._fields.get(key_id, {}).get(symbol, EMPTY_FIELDS)

    def leg_orders(self, key_id: int) -> list[dict]:
        """The key's exchange-held active legs as ``orders`` rows (no I/O)."""
        return self._leg_orders.get(key_id, [])

    def stale_keys(self, live: dict[int, frozenset[tuple[int, str, int]]]) -> set[int]:
        """The keys whose view was not built from exactly these live legs: ``live``
        maps each key with a live leg to its legs' ``(id, status, updated_at)``; a key the view
        holds and ``live`` lacks is stale too (its legs ended elsewhere)."""
        return {k for k, legs in live.items() if self._seen.get(k) != legs} | \
            (set(self._seen) - set(live))

    def refresh_key(self, key_id: int) -> None:
        """Re-read a key's live legs into what the pushes show; ``on_change`` if it moved."""
        with self._db.session() as s:
            rows = list(s.scalars(select(ProtectionLeg).where(
                ProtectionLeg.key_id == key_id, ProtectionLeg.status.in_(LIVE_LEG_STATUSES))
                .order_by(ProtectionLeg.id)))
        self.store({key_id}, rows)

    def store(self, key_ids: set[int], rows: list[ProtectionLeg]) -> None:
        """Replace what the pushes show for ``key_ids`` (and the keys of ``rows``) by
        ``rows`` (their live legs); ``on_change`` for each key whose view moved."""
        if self._tags is not None:
            self._tags.note_rows(rows)
        by_key: dict[int, list[ProtectionLeg]] = {}
        for row in rows:
            by_key.setdefault(row.key_id, []).append(row)
        changed = []
        for key_id in key_ids | set(by_key):
            legs = by_key.get(key_id, [])
            if legs:
                self._seen[key_id] = frozenset((r.id, r.status, r.updated_at) for r in legs)
            else:
                self._seen.pop(key_id, None)
            symbols = {r.symbol for r in legs}
            fields = {sym: position_fields([r for r in legs if r.symbol == sym]) for sym in symbols}
            orders = [leg_order_row(r) for r in legs
                      if r.mode == "exchange" and r.status == LegStatus.ACTIVE.value]
            if fields != self._fields.get(key_id, {}) or orders != self._leg_orders.get(key_id, []):
                self._fields[key_id], self._leg_orders[key_id] = fields, orders
                changed.append(key_id)
            if not legs:  # nothing live: forget the key
                self._fields.pop(key_id, None)
                self._leg_orders.pop(key_id, None)
        for key_id in changed:
            if self.on_change is not None:
                try:
                    self.on_change(key_id)
                except Exception:  # isolation boundary: a push failure is not the leg's
                    logger.exception("protection push failed key_id=%s", key_id)

