"""The ledger's persistence: idempotent upserts of fills and orders, the trade
state derived from its fills, realized PnL, and a write-behind writer so that no
exchange event handler waits for the database.

Upserts are keyed by exchange ids (``(key_id, symbol, exchange_trade_id)`` for
fills, ``(key_id, symbol, exchange_order_id)`` for orders): a replayed event writes
nothing twice. A trade's filled quantity, entry price and fees are recomputed from
its fills, so applying the same fill again cannot move them.
"""
from __future__ import annotations

import logging
import queue
import time
from decimal import Decimal
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from exchanges.types import Fill as FillEvent, Order as OrderInfo, OrderStatus
from models import Database, Fill, Order, Trade, TradeStatus, now_ms

logger = logging.getLogger(__name__)


def _insert(session: Session, table):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    return (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table))


def upsert_order(session: Session, key_id: int, order: OrderInfo, trade_id: int | None) -> None:
    """Insert or update the order row keyed by (key, symbol, exchange order id); an
    update with an older ``updated_at`` than the stored one changes nothing."""
    values = dict(key_id=key_id, trade_id=trade_id, exchange_order_id=order.order_id,
                  client_order_id=order.client_order_id, symbol=order.symbol, side=order.side,
                  type=order.type, status=order.status.value, price=order.price,
                  quantity=order.quantity, filled_quantity=order.filled_quantity,
                  avg_price=order.avg_price, time_in_force=order.time_in_force,
                  reduce_only=order.reduce_only, updated_at=order.updated_at)
    stmt = _insert(session, Order.__table__).values(**values)
    update = {k: stmt.excluded[k] for k in ("status", "filled_quantity", "avg_price", "updated_at")}
    stmt = stmt.on_conflict_do_update(
        index_elements=["key_id", "symbol", "exchange_order_id"], set_=update,
        where=Order.__table__.c.updated_at <= stmt.excluded.updated_at)
    session.execute(stmt)


def upsert_fill(session: Session, key_id: int, fill: FillEvent, trade_id: int | None) -> bool:
    """Insert the fill unless (key, symbol, exchange trade id) exists. True if new."""
    stmt = _insert(session, Fill.__table__).values(
        key_id=key_id, trade_id=trade_id, exchange_trade_id=fill.trade_id,
        exchange_order_id=fill.order_id, client_order_id=fill.client_order_id,
        symbol=fill.symbol, side=fill.side, price=fill.price, quantity=fill.quantity,
        fee=fill.fee, fee_asset=fill.fee_asset, realized_pnl=fill.realized_pnl,
        is_maker=fill.is_maker, time=fill.time,
    ).on_conflict_do_nothing(index_elements=["key_id", "symbol", "exchange_trade_id"])
    return session.execute(stmt).rowcount == 1


def settle_trade_from_fills(session: Session, trade: Trade, order: OrderInfo | None = None) -> None:
    """Derive the trade's filled quantity, average entry price and fees from its fills
    and the order's last state; move ``pending`` forward, never backward.

    pending + any fill -> open; pending + order final with no fill -> canceled
    (or failed when REJECTED/EXPIRED with nothing filled).
    """
    rows = session.execute(select(Fill.quantity, Fill.price, Fill.fee)
                           .where(Fill.trade_id == trade.id)).all()
    qty = sum((r.quantity for r in rows), Decimal(0))
    if qty > 0:
        notional = sum((r.quantity * r.price for r in rows), Decimal(0))
        trade.filled_quantity = qty
        trade.entry_price = (notional / qty).quantize(Decimal("1e-12")).normalize()
        trade.fees = sum((r.fee for r in rows), Decimal(0))
    if trade.status != TradeStatus.PENDING.value:
        return
    if qty > 0:
        trade.status = TradeStatus.OPEN.value
        trade.opened_at = trade.opened_at or now_ms()
    elif order is not None and order.status.is_final:
        if order.status == OrderStatus.CANCELED:
            trade.status = TradeStatus.CANCELED.value
        elif order.status != OrderStatus.FILLED:
            trade.status = TradeStatus.FAILED.value
            trade.error_code = trade.error_code or order.status.value.lower()
        trade.closed_at = now_ms()


def apply_fill(session: Session, key_id: int, fill: FillEvent) -> bool:
    """Record one fill and move its trade forward (idempotent). True if the fill was new."""
    # Lock the trade first: every writer of a trade's fills takes this lock before
    # inserting, so two writers of the same fill serialise instead of deadlocking.
    # REST fills (Binance userTrades) carry no clientOrderId: match the order id then.
    match = (Trade.client_order_id == fill.client_order_id if fill.client_order_id
             else Trade.entry_order_id == fill.order_id)
    trade = session.scalars(select(Trade).where(match, Trade.key_id == key_id)
                            .with_for_update()).first()
    new = upsert_fill(session, key_id, fill, trade.id if trade else None)
    if trade is not None and new:
        settle_trade_from_fills(session, trade)
    return new


class LedgerWriter:
    """Write-behind queue for fills seen on exchange streams.

    ``submit`` never touches the database; one background worker writes in batches,
    retrying with exponential backoff and jitter while the database is unavailable.
    Nothing is dropped: the queue is unbounded here (bounding with backpressure is
    the ledger issue's work) and its depth is reported.

    Args:
        db: the database.
        on_recorded: called with a key id after its new fills were committed.
    """

    def __init__(self, db: Database, on_recorded: Callable[[int], None]) -> None:
        self._db = db
        self._on_recorded = on_recorded
        self._queue: queue.Queue = queue.Queue()
        self.written = 0
        self.failures = 0
        self.last_write_ms = 0.0
        self._running = False

    def submit(self, key_id: int, fill: FillEvent) -> None:
        """Queue one fill of ``key_id`` for writing."""
        self._queue.put((time.monotonic(), key_id, fill))

    def run(self) -> None:
        """The worker loop (start it as a background task)."""
        self._running = True
        while self._running:
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < 200:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            except Exception:  # isolation boundary: keep the fills, retry later
                logger.exception("ledger write failed batch=%s; requeued", len(batch))
                self.failures += 1
                for item in batch:
                    self._queue.put(item)
                time.sleep(1.0)

    def stop(self, drain: bool = True) -> None:
        """Stop the worker; with ``drain`` write what is queued first."""
        self._running = False
        if drain:
            batch = []
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch:
                self._write(batch)

    def _write(self, batch: list) -> None:
        started = time.monotonic()
        for attempt in Retrying(retry=retry_if_exception_type(OperationalError),
                                wait=wait_exponential_jitter(initial=0.1, max=5.0)):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.failures += 1
                keys = set()
                with self._db.transaction() as s:
                    for _, key_id, fill in batch:
                        if apply_fill(s, key_id, fill):
                            keys.add(key_id)
        self.written += len(batch)
        self.last_write_ms = (time.monotonic() - started) * 1000
        for key_id in keys:
            self._on_recorded(key_id)

    def stats(self) -> dict:
        """``{"depth", "written", "retries", "last_write_ms"}``."""
        return {"depth": self._queue.qsize(), "written": self.written,
                "retries": self.failures, "last_write_ms": round(self.last_write_ms, 3)}


def realized_pnl(db: Database, key_id: int) -> Decimal:
    """All-time realized PnL of the key from the ledger's fills: exchange realized
    profit minus fees (quote currency, Decimal)."""
    with db.session() as s:
        rows = s.execute(select(Fill.realized_pnl, Fill.fee).where(Fill.key_id == key_id)).all()
    return sum((r.realized_pnl - r.fee for r in rows), Decimal(0))
