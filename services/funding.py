"""Funding fees of a key as the ledger holds them (``models.FundingFee``, written by
``services.ledger.apply_funding`` from the account stream's funding events)."""
from __future__ import annotations

from sqlalchemy import select

from models import Database, FundingFee

LIST_LIMIT = 10_000  # rows answered at most (the oldest first)


def fees_since(db: Database, key_id: int, since_ms: int = 0,
               limit: int = LIST_LIMIT) -> list[FundingFee]:
    """The funding fees of ``key_id`` with time >= ``since_ms`` (ms UTC), oldest first,
    at most ``limit``. Raises SQLAlchemyError when the database cannot answer."""
    with db.session() as s:
        return list(s.scalars(select(FundingFee).where(
            FundingFee.key_id == key_id, FundingFee.time >= since_ms)
            .order_by(FundingFee.time, FundingFee.id).limit(limit)))
