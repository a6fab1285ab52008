"""Funding fees of a key as the ledger holds them (``models.FundingFee``, written by
``services.ledger.apply_funding`` from the account stream's funding events and the
reconciler's look at the venue's funding history)."""
from __future__ import annotations

from sqlalchemy import func, select

from models import Database, FundingFee, Trade, now_ms
from services import book, ledger

LIST_LIMIT = 10_000  # rows answered at most (the oldest first)


def fees_since(db: Database, key_id: int, since_ms: int = 0,
               limit: int = LIST_LIMIT) -> list[FundingFee]:
    """The funding fees of ``key_id`` with time >= ``since_ms`` (ms UTC), oldest first,
    at most ``limit``. Raises SQLAlchemyError when the database cannot answer."""
    with db.session() as s:
        return list(s.scalars(select(FundingFee).where(
            FundingFee.key_id == key_id, FundingFee.time >= since_ms)
            .order_by(FundingFee.time, FundingFee.id).limit(limit)))


def record_missing(db: Database, key_id: int, client, held: set[str],  # type: ignore[no-untyped-def]
                   lookback_ms: int, now: int | None = None) -> int:
    """Reconciliation's funding step: ask the venue's funding history (Binance
    ``GET /fapi/v1/income`` incomeType=FUNDING_FEE, weight 30; Bybit execution list
    execType=Funding) since the last payment the ledger has from it (at most
    ``lookback_ms`` back) and store what is missing (``ledger.apply_funding``: once
    each; the history's rows replace a Binance stream row of the same payment). Asked
    only while the key holds a position (``held`` symbols) or has a trade that changed
    within the lookback: funding is charged on open positions only. A client without
    ``get_funding_fees`` is skipped. Returns how many fees were new. Raises
    ExchangeError as the client does."""
    get = getattr(client, "get_funding_fees", None)
    if get is None:
        return 0
    now = now or now_ms()
    since = now - lookback_ms
    with db.session() as s:
        if not held and s.scalars(select(Trade.id).where(
                Trade.key_id == key_id, Trade.updated_at >= since).limit(1)).first() is None:
            return 0
        last = s.scalars(select(func.max(FundingFee.time)).where(
            FundingFee.key_id == key_id,
            FundingFee.exchange_id.not_like(ledger.PROVISIONAL_FUNDING_ID + "%"))).first()
    fees = get(start_time=max(since, (last or 0) + 1))
    if not fees:
        return 0
    with db.transaction() as s:
        book.lock_keys(s, [key_id])
        before = s.scalar(select(func.count()).select_from(FundingFee)
                          .where(FundingFee.key_id == key_id)) or 0
        ledger.apply_funding(s, [(key_id, f) for f in fees])
        after = s.scalar(select(func.count()).select_from(FundingFee)
                         .where(FundingFee.key_id == key_id)) or 0
    return max(0, after - before)
