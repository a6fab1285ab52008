"""Read-only access to the ledger's fills for the ``fills`` push type's replay.

Reads the ``fills`` table (``models.Fill``, written by the ledger's write-behind)
and never writes it: a resume with ``since: {"fills": {"time": T}}`` gets every fill
of the key with exchange time >= T from here, which holds across a server restart.
"""
from __future__ import annotations

from sqlalchemy import and_, func, select

from models import Database, Fill, Order, Trade
from services.serialize import dec

REPLAY_LIMIT = 10_000  # fills sent by one resume at most (the oldest first)


def fill_row(f: Fill, client_order_id: str | None = None) -> dict:
    """A ``models.Fill`` as a CONTRACT.md ``fills`` row (``trade_id``: the exchange's;
    ``client_order_id``: the fill's, else the one given)."""
    return {"trade_id": f.exchange_trade_id, "order_id": f.exchange_order_id,
            "client_order_id": f.client_order_id or client_order_id, "symbol": f.symbol, "side": f.side,
            "price": dec(f.price), "quantity": dec(f.quantity), "fee": dec(f.fee),
            "fee_asset": f.fee_asset, "realized_pnl": dec(f.realized_pnl), "time": f.time,
            "reason": f.reason}


class FillFeed:
    """Fills of a key from the ledger, oldest first."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def since(self, key_id: int, time_ms: int, limit: int = REPLAY_LIMIT) -> list[dict]:
        """Rows of every fill of ``key_id`` with exchange time >= ``time_ms`` (ms UTC),
        ordered by time then ledger id, at most ``limit``. Raises SQLAlchemyError when
        the database cannot answer.

        A fill the ledger got from a REST gap fill (Binance's userTrades carry no
        client order id) gets its order's ``client_order_id`` from the ledger's own
        records of that order (``orders``, else the ``trades`` entry it placed)."""
        coid = func.coalesce(Order.client_order_id, Trade.client_order_id)
        with self._db.session() as s:
            rows = s.execute(
                select(Fill, coid)
                .outerjoin(Order, and_(Order.key_id == Fill.key_id, Order.symbol == Fill.symbol,
                                       Order.exchange_order_id == Fill.exchange_order_id))
                .outerjoin(Trade, and_(Trade.key_id == Fill.key_id,
                                       Trade.entry_order_id == Fill.exchange_order_id))
                .where(Fill.key_id == key_id, Fill.time >= time_ms)
                .order_by(Fill.time, Fill.id).limit(limit)).all()
            return [fill_row(f, c) for f, c in rows]
