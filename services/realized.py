"""The ledger's realized PnL per key, kept as a running sum in the database.

CONTRACT.md "Risk figures that are true": ``pnl.realized_pnl`` is the sum of the
key's trades' ``realized_pnl`` (fees included) plus its funding fees. The book
(``services.book.settle_symbol``) is the only writer of a trade's ``realized_pnl``
and the ledger (``services.ledger.apply_funding``) the only writer of funding fees;
both call ``book_change`` in the same transaction with what moved, which adds it to
the key's row of the day in ``realized_days``. So:

- reading the figure (``read``) is one small query (one row per UTC day with
  activity), never a walk over trades or fills;
- the figure is exactly the sum of the trades' ``realized_pnl`` plus funding,
  whichever path changed a trade (write-behind, order placement, exits, reconciler)
  and in whichever process;
- ``session.info[CHANGED_KEYS]`` names the keys a unit of work changed (the
  write-behind tells their streams after the commit), and ``changed_since`` lets any
  process find the keys other processes changed (``realized_days.updated_at``).

``realized_pnl_today`` is what was booked since 00:00 UTC (a trade's realized PnL
moves when a fill closing it is recorded; a funding fee when it is recorded).
Decimal throughout; days and times are ms UTC.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from models import RealizedDay, now_ms

DAY_MS = 86_400_000
ZERO = Decimal(0)
CHANGED_KEYS = "realized_changed_keys"  # session.info: key ids whose figure moved


@dataclass(frozen=True)
class Realized:
    """Realized PnL of one key from the ledger, in the quote (settle) currency:
    ``all_time`` = its trades' ``realized_pnl`` + its funding fees; ``today`` = the
    part of it booked since 00:00 UTC."""

    all_time: Decimal
    today: Decimal


def day_of(ms: int) -> int:
    """00:00 UTC of the day of ``ms`` (ms UTC)."""
    return ms // DAY_MS * DAY_MS


def book_change(session: Session, key_id: int, trades_pnl: Decimal = ZERO,
                funding: Decimal = ZERO, now: int | None = None) -> None:
    """Add a change of ``key_id``'s realized figure (``trades_pnl``: the change of the
    sum of its trades' ``realized_pnl``; ``funding``: a funding fee stored) to its row
    of today, in the caller's transaction. The caller holds the key's ledger lock
    (``services.book.lock_keys``), so the read-modify-write cannot interleave (the sum
    is done in Python: SQLite stores decimals as text). Nothing is written for 0."""
    if not trades_pnl and not funding:
        return
    now = now or now_ms()
    day = day_of(now)
    # the row exists first (a writer that skipped the key lock cannot make a second),
    # then it is read locked and moved
    insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql"
              else sqlite.insert)(cast(Table, RealizedDay.__table__))
    session.execute(insert.values(key_id=key_id, day=day, trades_pnl=ZERO, funding=ZERO,
                                  updated_at=now)
                    .on_conflict_do_nothing(index_elements=["key_id", "day"]))
    row = session.scalars(select(RealizedDay).where(
        RealizedDay.key_id == key_id, RealizedDay.day == day).with_for_update()).one()
    row.trades_pnl = row.trades_pnl + trades_pnl
    row.funding = row.funding + funding
    row.updated_at = max(now, row.updated_at + 1)  # a change always moves it
    session.info.setdefault(CHANGED_KEYS, set()).add(key_id)


def read(session: Session, key_id: int, now: int | None = None) -> Realized:
    """The key's realized PnL (one query over its day rows)."""
    today = day_of(now or now_ms())
    rows = session.execute(select(RealizedDay.day, RealizedDay.trades_pnl, RealizedDay.funding)
                           .where(RealizedDay.key_id == key_id)).all()
    total = sum((r.trades_pnl + r.funding for r in rows), ZERO)
    day = sum((r.trades_pnl + r.funding for r in rows if r.day == today), ZERO)
    return Realized(total.normalize() if total else ZERO, day.normalize() if day else ZERO)


def read_many(session: Session, key_ids: list[int], now: int | None = None) -> dict[int, Realized]:
    """``read`` of several keys in one query over their day rows (a reconnect storm
    starts hundreds of streams together): ``{key_id: Realized}``, every key present
    (ZERO for a key with no row). Sums in Python as ``read`` does."""
    today = day_of(now or now_ms())
    totals = {k: [ZERO, ZERO] for k in key_ids}
    for r in session.execute(select(RealizedDay.key_id, RealizedDay.day, RealizedDay.trades_pnl,
                                    RealizedDay.funding).where(RealizedDay.key_id.in_(key_ids))):
        value = r.trades_pnl + r.funding
        totals[r.key_id][0] += value
        if r.day == today:
            totals[r.key_id][1] += value
    return {k: Realized(t.normalize() if t else ZERO, d.normalize() if d else ZERO)
            for k, (t, d) in totals.items()}


def changed_since(session: Session, since_ms: int) -> dict[tuple[int, int], tuple[int, Decimal, Decimal]]:
    """``{(key_id, day): (updated_at, trades_pnl, funding)}`` of the rows changed at or
    after ``since_ms`` (ms UTC; ``realized_days.updated_at`` is indexed)."""
    return {(r.key_id, r.day): (r.updated_at, r.trades_pnl, r.funding)
            for r in session.execute(select(
                RealizedDay.key_id, RealizedDay.day, RealizedDay.updated_at,
                RealizedDay.trades_pnl, RealizedDay.funding)
                .where(RealizedDay.updated_at >= since_ms))}


class ChangeWatch:
    """Finds the keys whose realized figure another writer changed (another process,
    or a path of this one other than the write-behind: order placement, exits, the
    reconciler), by polling ``realized_days`` for rows changed in the last
    ``window_ms`` (a transaction commits after it stamped ``updated_at``; the window
    covers that delay) and comparing them with what it saw before. One indexed query
    per poll, whatever the number of keys."""

    def __init__(self, window_ms: int = 15_000) -> None:
        self._window_ms = window_ms
        self._seen: dict[tuple[int, int], tuple[int, Decimal, Decimal]] = {}
        self._started: int | None = None

    def poll(self, session: Session, now: int | None = None) -> set[int]:
        """Key ids with a row changed since the last poll (the first poll reports
        nothing: the figures were read at stream start)."""
        now = now or now_ms()
        rows = changed_since(session, now - self._window_ms)
        first, self._started = self._started is None, self._started or now
        changed = set() if first else {k for k, v in rows.items() if self._seen.get(k) != v}
        self._seen.update(rows)
        if len(self._seen) > 4 * len(rows) + 1024:  # forget rows out of the window
            self._seen = dict(rows)
        return {key_id for key_id, _ in changed}
