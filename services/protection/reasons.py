"""The ``fills.reason`` of a triggered leg's fills: ``stop_loss``, ``take_profit`` or
``trailing_stop`` (CONTRACT.md "Protection").

A leg's fills are known by their order: in exchange mode the order the venue's trigger
created (the leg row's ``order_id`` once it fired), in server mode the attempts of the
exit it started (``exit_id``; their client order ids are in ``exits.client_order_ids``).
``mark_fill_reasons`` sets the reason of those fills that have none yet, in the
caller's transaction (``fills.reason``, migration 0006).
"""
from __future__ import annotations

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from models import Fill


def mark_fill_reasons(session: Session, key_id: int, reason: str,
                      order_ids: list[str] = (), client_order_ids: list[str] = ()) -> int:  # type: ignore[assignment]
    """Set ``reason`` on the key's fills of ``order_ids`` (venue order ids) or
    ``client_order_ids`` whose reason is null; returns how many rows changed."""
    if not (order_ids or client_order_ids):
        return 0
    match = []
    if order_ids:
        match.append(Fill.exchange_order_id.in_(list(order_ids)))
    if client_order_ids:
        match.append(Fill.client_order_id.in_(list(client_order_ids)))
    result = session.execute(update(Fill).where(Fill.key_id == key_id, Fill.reason.is_(None),
                                                or_(*match)).values(reason=reason))
    return int(getattr(result, "rowcount", 0) or 0)  # a CursorResult for an UPDATE
