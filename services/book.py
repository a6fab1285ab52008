"""The position book of one account and symbol, derived from the ledger's fills.

The exchange's position (one-way mode) is the signed sum of the account's fills in
the symbol; the ledger holds every fill once, so the same sum is the ledger's net
position. Which trade a part of that position belongs to is derived here, first in
first out, each time fills are recorded or linked: the fills (and the adjustments
reconciliation recorded without fills, ``order_type`` ``RECONCILED``) are walked in
exchange time order; a fill in the position's direction (or from flat) opens a lot
owned by its trade, a fill against it consumes the oldest lots first (what is left
over opens a lot the other way). Lots of a fill linked to no trade (an exit order's
fill, a fill of activity outside the ledger, a fill not linked yet) are "unowned".

Because the book is recomputed from all fills, the order in which they arrive does
not matter: an exit recorded before its entry's fills, or an entry fill arriving
after its exit, ends where the clean sequence does (trades re-opened, re-sized or
closed, realized PnL recomputed).

Per trade: ``open_quantity`` (what is left of its lots, stored in
``trades.open_quantity``), ``exit_price`` (average
price of what consumed it), ``realized_pnl`` = gross PnL of its consumed lots - its
own fees - its share of the fees of unowned fills that consumed it (an exit order's
fee). A trade that only reduced others books -its fees (its gains are on the lots it
consumed). Decimal throughout.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import func, or_, select, tuple_, update
from sqlalchemy.orm import Session

from models import Fill, Order, Trade, TradeStatus, now_ms
from services import realized

ZERO = Decimal(0)
PRICE_Q = Decimal("1e-12")
# an entry in one of these with fills left: re-opened by the book
REOPEN = (TradeStatus.CLOSED.value, TradeStatus.PENDING.value, TradeStatus.CANCELED.value,
          TradeStatus.FAILED.value)


@dataclass
class _Lot:
    owner: int | None  # trade id
    quantity: Decimal  # > 0
    price: Decimal
    sign: int  # +1 long, -1 short
    fill_id: str | None  # exchange trade id of the fill that opened it
    fee_rate: Decimal = ZERO  # that fill's fee per unit (an unowned lot's fee follows it)


@dataclass
class TradeBook:
    """What the book says of one trade (see the module docstring)."""

    open_quantity: Decimal = ZERO
    matched: Decimal = ZERO
    matched_notional: Decimal = ZERO
    gross: Decimal = ZERO
    fee_share: Decimal = ZERO


@dataclass
class Book:
    """The derived book of one (key, symbol): ``net`` (signed, base units) of all
    lots, ``owned_net`` of lots owned by a trade, ``unowned`` lots (the fills
    behind them, by exchange trade id), per-trade figures, and per exchange order id
    the gross PnL of unowned fills (an exit order's result before fees)."""

    net: Decimal = ZERO
    owned_net: Decimal = ZERO
    trades: dict[int, TradeBook] = field(default_factory=dict)
    unowned_fills: list[str] = field(default_factory=list)
    order_gross: dict[str, Decimal] = field(default_factory=dict)


def compute(fills: list, adjustments: list[Trade]) -> Book:
    """Walk ``fills`` (rows with trade_id, exchange_trade_id, exchange_order_id, side,
    price, quantity, fee, time, id) and ``adjustments`` (RECONCILED trades without
    fills: one synthetic fill each at ``opened_at``) in time order into a Book."""
    events = [(f.time, 0, f.id, f.trade_id, f.side, f.quantity, f.price, f.fee,
               f.exchange_order_id, f.exchange_trade_id) for f in fills]
    events += [(t.opened_at or t.created_at, 1, t.id, t.id, t.side, t.filled_quantity,
                t.entry_price or ZERO, ZERO, None, None) for t in adjustments]
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    book = Book()
    lots: deque[_Lot] = deque()
    for _, _, _, owner, side, qty, price, fee, order_id, fill_id in events:
        sign = 1 if side == "BUY" else -1
        remaining = qty
        if owner is not None:
            book.trades.setdefault(owner, TradeBook())
        while remaining > 0 and lots and lots[0].sign != sign:
            lot = lots[0]
            take = min(remaining, lot.quantity)
            lot.quantity -= take
            remaining -= take
            gross = (price - lot.price) * take * lot.sign
            if lot.owner is not None:  # the lot's trade is (partly) closed by this fill
                tb = book.trades.setdefault(lot.owner, TradeBook())
                tb.matched += take
                tb.matched_notional += take * price
                tb.gross += gross
                if owner is None and qty:
                    tb.fee_share += fee * take / qty
            elif owner is not None:  # a trade's fill closes what an unowned fill opened
                tb = book.trades[owner]  # (an exit that sold more than the ledger knew)
                tb.matched += take
                tb.matched_notional += take * lot.price
                tb.gross += gross  # the round trip's PnL, whoever books it
                tb.fee_share += lot.fee_rate * take
            if owner is None and order_id is not None:
                book.order_gross[order_id] = book.order_gross.get(order_id, ZERO) + gross
            if lot.quantity == 0:
                lots.popleft()
        if remaining > 0:
            lots.append(_Lot(owner, remaining, price, sign, fill_id,
                             fee / qty if owner is None and qty else ZERO))
    for lot in lots:
        signed = lot.quantity * lot.sign
        book.net += signed
        if lot.owner is not None:
            book.owned_net += signed
            book.trades[lot.owner].open_quantity += lot.quantity
        elif lot.fill_id is not None:
            book.unowned_fills.append(lot.fill_id)
    return book


def load(session: Session, key_id: int, symbol: str, lock: bool = True) -> tuple[Book, list[Trade]]:
    """The book of (key, symbol) and the trades it covers (locked for update unless
    ``lock`` is False: a reader that writes nothing)."""
    stmt = select(Trade).where(Trade.key_id == key_id, Trade.symbol == symbol).order_by(Trade.id)
    trades = list(session.scalars(stmt.with_for_update() if lock else stmt))
    fills = session.execute(select(
        Fill.id, Fill.trade_id, Fill.exchange_trade_id, Fill.exchange_order_id, Fill.side,
        Fill.price, Fill.quantity, Fill.fee, Fill.time).where(
        Fill.key_id == key_id, Fill.symbol == symbol)).all()
    with_fills = {f.trade_id for f in fills if f.trade_id is not None}
    adjustments = [t for t in trades if t.order_type == "RECONCILED" and t.id not in with_fills
                   and t.filled_quantity > 0]
    return compute(fills, adjustments), trades


def settle_symbol(session: Session, key_id: int, symbol: str) -> Book:
    """Recompute the book of (key, symbol) and write what it says into the trades:
    a trade with fills and nothing left open is ``closed``; one with something left
    that was ``closed``/``pending``/``canceled``/``failed`` is ``open`` again
    (``closing``/``exit_failed`` stay: an exit is working or failed on it); exit price
    and realized PnL follow its consumed lots, ``open_quantity`` what is left of its
    lots. The change of the trades' realized PnL is booked to the key's running sum
    (``services.realized.book_change``) in the same transaction. Returns the Book."""
    book, trades = load(session, key_id, symbol)
    now = now_ms()
    moved = ZERO  # the change of the sum of these trades' realized PnL
    for t in trades:
        tb = book.trades.get(t.id)
        if tb is None or t.filled_quantity <= 0:
            if t.open_quantity:  # no fill holds anything for it (any more)
                t.open_quantity = ZERO
            continue
        if t.open_quantity != tb.open_quantity:
            t.open_quantity = tb.open_quantity
        if tb.matched > 0:
            t.exit_price = (tb.matched_notional / tb.matched).quantize(PRICE_Q).normalize()
        if tb.matched > 0 or tb.open_quantity == 0:
            pnl = tb.gross - t.fees - tb.fee_share
            if pnl != t.realized_pnl:
                moved += pnl - (t.realized_pnl or ZERO)
                t.realized_pnl = pnl
        if tb.open_quantity == 0:
            if t.status != TradeStatus.CLOSED.value:
                t.status, t.closed_at = TradeStatus.CLOSED.value, now
        elif t.status in REOPEN:
            t.status, t.closed_at = TradeStatus.OPEN.value, None
            t.opened_at = t.opened_at or now
    realized.book_change(session, key_id, trades_pnl=moved, now=now)
    return book


def link_fills(session: Session, trade: Trade) -> int:
    """Link the stored fills and orders of ``trade``'s entry that no trade holds yet:
    by its exchange order id (``entry_order_id``) and by its ``client_order_id``
    (fills stored before either was known: a REST fill carries no clientOrderId, a
    send that timed out leaves the order id unknown). Returns how many fills."""
    match = [Fill.client_order_id == trade.client_order_id]
    omatch = [Order.client_order_id == trade.client_order_id]
    if trade.entry_order_id:
        match.append(Fill.exchange_order_id == trade.entry_order_id)
        omatch.append(Order.exchange_order_id == trade.entry_order_id)
    session.execute(update(Order).where(Order.key_id == trade.key_id, Order.symbol == trade.symbol,
                                        Order.trade_id.is_(None), or_(*omatch))
                    .values(trade_id=trade.id).execution_options(synchronize_session=False))
    result = session.execute(update(Fill).where(
        Fill.key_id == trade.key_id, Fill.symbol == trade.symbol, Fill.trade_id.is_(None),
        or_(*match)).values(trade_id=trade.id).execution_options(synchronize_session=False))
    return result.rowcount or 0


def lock_keys(session: Session, key_ids) -> None:  # type: ignore[no-untyped-def]
    """Take the row locks of the accounts whose ledger this unit of work changes, in
    key order, before any trade: every writer of a key's trades, fills and book (the
    write-behind, order placement, exits, the reconciler) starts here, so two never
    interleave on one account's book or deadlock on its trades (PostgreSQL;
    SQLite writers are serialised anyway)."""
    from models import ExchangeKey
    ids = sorted(set(key_ids))
    if ids and session.get_bind().dialect.name == "postgresql":
        session.execute(select(ExchangeKey.id).where(ExchangeKey.id.in_(ids))
                        .order_by(ExchangeKey.id).with_for_update())


def needing_settle(session: Session, pairs: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Of ``pairs`` (key id, symbol), those whose book can differ from "every fill opens":
    fills on both sides, or an adjustment trade. For the others ``settle_symbol``
    would change nothing (nothing is consumed), so the write-behind skips it: a key
    that only adds to one side (a resting order filled in parts) costs one grouped
    query per batch, not a read of its whole history."""
    if not pairs:
        return set()
    both = set(session.execute(
        select(Fill.key_id, Fill.symbol).where(tuple_(Fill.key_id, Fill.symbol).in_(list(pairs)))
        .group_by(Fill.key_id, Fill.symbol).having(func.count(func.distinct(Fill.side)) > 1)).all())
    adjusted = set(session.execute(
        select(Trade.key_id, Trade.symbol).where(
            tuple_(Trade.key_id, Trade.symbol).in_(list(pairs)),
            Trade.order_type == "RECONCILED").distinct()).all())
    return {(k, s) for k, s in both | adjusted}
