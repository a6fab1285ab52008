"""The ledger's persistence: idempotent upserts of fills and orders, the trade
state derived from its fills, and realized PnL. Exchange events are written through
one function, ``apply_batch`` (the write-behind writer, ``services.write_behind``,
calls it for stream events; a single event is a batch of one).

Upserts are keyed by exchange ids (``(key_id, symbol, exchange_trade_id)`` for
fills, ``(key_id, symbol, exchange_order_id)`` for orders): a replayed event writes
nothing twice. A trade's filled quantity, entry price and fees are recomputed from
its fills, so applying the same fill again cannot move them.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from exchanges import types as ex
from exchanges.types import FundingFee as FundingFeeEvent
from models import Database, Fill, FundingFee, Order, Position, Trade, TradeStatus, now_ms
from services import book, realized
from services.realized import Realized

logger = logging.getLogger(__name__)


NEW_FILLS_HOOK = "on_new_fills"  # Session.info key: called with the fills just inserted


def _new_fills(session: Session, fills: list[tuple[int, ex.Fill]]) -> None:
    """Hand the fills this transaction inserted (``(key_id, Fill)``) to the hook the
    session carries (``Session.info["on_new_fills"]``: the notification outbox writes
    its rows in this same transaction), if any."""
    hook = session.info.get(NEW_FILLS_HOOK)
    if hook is not None and fills:
        hook(session, fills)


def _insert(session: Session, table):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    return (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table))


def _order_row(key_id: int, order: ex.Order, trade_id: int | None) -> dict[str, Any]:
    return dict(key_id=key_id, trade_id=trade_id, exchange_order_id=order.order_id,
                client_order_id=order.client_order_id, symbol=order.symbol, side=order.side,
                type=order.type, status=order.status.value, price=order.price,
                quantity=order.quantity, filled_quantity=order.filled_quantity,
                avg_price=order.avg_price, time_in_force=order.time_in_force,
                reduce_only=order.reduce_only, updated_at=order.updated_at)


def upsert_orders(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert or update order rows (``_order_row`` dicts, at most one per order) keyed
    by (key, symbol, exchange order id); an update with an older ``updated_at`` than
    the stored one changes nothing. One cached statement executed for all rows
    (SQLAlchemy's "insertmanyvalues": a few round trips, no per-batch compile)."""
    if not rows:
        return
    stmt = _insert(session, Order.__table__)
    update = {k: stmt.excluded[k] for k in ("status", "filled_quantity", "avg_price", "updated_at")}
    stmt = stmt.on_conflict_do_update(
        index_elements=["key_id", "symbol", "exchange_order_id"], set_=update,
        where=Order.__table__.c.updated_at <= stmt.excluded.updated_at)
    session.execute(stmt, rows)


def upsert_order(session: Session, key_id: int, order: ex.Order, trade_id: int | None) -> None:
    """Insert or update one order row (see ``upsert_orders``)."""
    upsert_orders(session, [_order_row(key_id, order, trade_id)])


def _fill_row(key_id: int, fill: ex.Fill, trade_id: int | None) -> dict[str, Any]:
    """The ``fills`` row of ``fill`` (the one place it is built)."""
    return dict(key_id=key_id, trade_id=trade_id, exchange_trade_id=fill.trade_id,
                exchange_order_id=fill.order_id, client_order_id=fill.client_order_id,
                symbol=fill.symbol, side=fill.side, price=fill.price, quantity=fill.quantity,
                fee=fill.fee, fee_asset=fill.fee_asset, realized_pnl=fill.realized_pnl,
                is_maker=fill.is_maker, time=fill.time, reason=fill.reason)


def upsert_fill(session: Session, key_id: int, fill: ex.Fill, trade_id: int | None) -> bool:
    """Insert the fill unless (key, symbol, exchange trade id) exists. True if new.

    A stored fill that no trade holds yet takes ``trade_id`` (a link learnt later: the
    fill came first from a source without the client order id); a stored fill whose
    realized PnL is 0 takes a later report's non-zero figure (Bybit's REST execution
    list has no PnL; its stream's execution has ``execPnl``). Only the row: the
    trade's state and the book are the caller's (``apply_batch`` does both)."""
    stmt = _insert(session, Fill.__table__).values(**_fill_row(key_id, fill, trade_id)
                                                   ).on_conflict_do_nothing(
        index_elements=["key_id", "symbol", "exchange_trade_id"])
    if cast("CursorResult[Any]", session.execute(stmt)).rowcount == 1:
        _new_fills(session, [(key_id, fill)])
        return True
    if trade_id is not None or fill.realized_pnl or fill.client_order_id or fill.reason:
        stored = session.scalars(select(Fill).where(
            Fill.key_id == key_id, Fill.symbol == fill.symbol,
            Fill.exchange_trade_id == fill.trade_id)).first()
        if stored is not None:
            if stored.trade_id is None and trade_id is not None:
                stored.trade_id = trade_id
            if stored.client_order_id is None and fill.client_order_id:
                stored.client_order_id = fill.client_order_id
            if fill.realized_pnl and stored.realized_pnl == 0:
                stored.realized_pnl = fill.realized_pnl
            if fill.reason and stored.reason is None:
                stored.reason = fill.reason
    return False


def upsert_positions(session: Session,
                     snapshots: dict[int, tuple[int, list[ex.Position], bool]]) -> None:
    """Store each key's positions as last reported: ``snapshots`` maps a key id to
    ``(as_of ms UTC, positions, complete)``; a closed one has ``size`` 0. Rows are
    keyed by (key, symbol), all in one statement; when ``complete`` (a stream's first
    report: all the key's open positions), every other stored symbol of the key is
    closed too. A row already holding a newer report (``updated_at``) is left
    alone, so replays and reordering are harmless."""
    table = Position.__table__
    rows = [dict(key_id=key_id, symbol=p.symbol, side=p.side, size=p.size,
                 entry_price=p.entry_price, leverage=p.leverage,
                 liquidation_price=p.liquidation_price, margin_type=p.margin_type,
                 updated_at=as_of)
            for key_id, (as_of, held, _) in snapshots.items() for p in held]
    if rows:
        stmt = _insert(session, table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key_id", "symbol"],
            set_={k: stmt.excluded[k] for k in ("side", "size", "entry_price", "leverage",
                                                "liquidation_price", "margin_type", "updated_at")},
            where=table.c.updated_at <= stmt.excluded.updated_at)
        session.execute(stmt, rows)
    complete = {key_id: (as_of, {p.symbol for p in held})
                for key_id, (as_of, held, whole) in snapshots.items() if whole}
    if not complete:
        return
    # the stored symbols a complete report no longer holds: one read for every key of
    # the batch, then only those rows updated (a storm's first reports hold what is
    # stored: one SELECT for the batch instead of one UPDATE per key)
    stale = [{"k": key_id, "s": symbol, "t": complete[key_id][0]}
             for key_id, symbol, updated_at in session.execute(
                 select(table.c.key_id, table.c.symbol, table.c.updated_at)
                 .where(table.c.key_id.in_(list(complete))))
             if symbol not in complete[key_id][1] and updated_at < complete[key_id][0]]
    if stale:
        session.execute(update(table).where(
            table.c.key_id == bindparam("k"), table.c.symbol == bindparam("s"),
            table.c.updated_at < bindparam("t")).values(size=Decimal(0), updated_at=bindparam("t")),
            stale)


NOT_EXECUTED = (TradeStatus.PENDING.value, TradeStatus.CANCELED.value, TradeStatus.FAILED.value)


def settle_trade_from_fills(session: Session, trade: Trade, order: ex.Order | None = None,
                            rows: Sequence[Any] | None = None) -> None:
    """Derive the trade's filled quantity, average entry price and fees from its fills
    (``rows`` of (quantity, price, fee), read here when not given) and the order's
    last state; the state only moves forward.

    Any fill -> open (also from canceled/failed: a fill proves execution); pending
    + order final with no fill -> canceled (or failed when REJECTED/EXPIRED).
    """
    if rows is None:
        rows = list(session.execute(select(Fill.quantity, Fill.price, Fill.fee)
                                    .where(Fill.trade_id == trade.id)))
    qty = sum((r.quantity for r in rows), Decimal(0))
    if qty > 0:
        notional = sum((r.quantity * r.price for r in rows), Decimal(0))
        trade.filled_quantity = qty
        trade.entry_price = (notional / qty).quantize(Decimal("1e-12")).normalize()
        trade.fees = sum((r.fee for r in rows), Decimal(0))
    if qty > 0 and trade.status in NOT_EXECUTED:
        # a fill proves execution: an entry seen canceled/failed/pending first (a cancel
        # that raced a fill, updates out of order) ends open with its fills
        trade.status = TradeStatus.OPEN.value
        trade.opened_at = trade.opened_at or now_ms()
        trade.closed_at = None
        trade.error_code = trade.error_message = None
    elif trade.status == TradeStatus.PENDING.value and order is not None and order.status.is_final:
        if order.status == ex.OrderStatus.FILLED:
            return  # its fills are on their way (stream or query); they open the trade
        trade.status = (TradeStatus.CANCELED.value if order.status == ex.OrderStatus.CANCELED
                        else TradeStatus.FAILED.value)
        if trade.status == TradeStatus.FAILED.value:
            trade.error_code = trade.error_code or order.status.value.lower()
        trade.closed_at = now_ms()


def apply_batch(session: Session, orders: Sequence[tuple[int, ex.Order]],
                fills: Sequence[tuple[int, ex.Fill]],
                positions: Sequence[tuple[int, int, list[ex.Position], bool]] = (),
                funding: Sequence[tuple[int, FundingFeeEvent]] = ()) -> set[int]:
    """Record order updates and fills and move their trades and the symbols' books
    forward: the ledger's one write path for exchange events (the write-behind's
    batches, the reconciler's fills; a single event is a batch of one). Idempotent: a
    replayed event writes nothing twice, and any order of the same events ends in the
    same state. Many events cost a handful of statements (each statement is a round
    trip, and under load every round trip waits for the event hub).

    ``orders`` and ``fills`` are ``(key id, event)`` pairs. The newest update of each
    order (``updated_at`` ms UTC) is stored; an order or fill is linked to its trade by
    client order id, else by the entry's exchange order id, and a fill without a client
    order id (Binance REST ``userTrades``) takes its order's, from this batch or the
    stored ``orders`` row. A trade learning its entry order id here gets the fills and
    orders stored without a trade linked (``book.link_fills``); each touched trade is
    settled from its fills and its order's last state (``settle_trade_from_fills``),
    and the book of each symbol with new fills or touched trades is recomputed where
    it can differ from "every fill opens" (``book.needing_settle``).

    ``positions`` (tuples of key id, as_of ms UTC, positions, complete) are merged per
    key, the newest report of each symbol winning, complete if any was, and stored by
    ``upsert_positions``; ``funding`` (``(key id, FundingFee)``) by ``apply_funding``.

    Returns the key ids that got new fills or funding fees (empty: nothing new). The
    keys whose realized figure moved are in
    ``session.info[services.realized.CHANGED_KEYS]``. Raises SQLAlchemyError (the
    caller's transaction is then to be rolled back)."""
    book.lock_keys(session, [k for k, _ in orders] + [k for k, _ in fills]
                   + [p[0] for p in positions] + [k for k, _ in funding])
    newest: dict[int, tuple[int, dict[str, ex.Position], bool]] = {}
    for key_id, as_of, held, complete in sorted(positions, key=lambda p: p[1]):
        _, by_symbol, was_complete = newest.get(key_id, (0, {}, False))
        newest[key_id] = (as_of, {**by_symbol, **{p.symbol: p for p in held}},
                          complete or was_complete)
    if newest:
        upsert_positions(session, {k: (as_of, list(held.values()), complete)
                                   for k, (as_of, held, complete) in newest.items()})
    latest: dict[tuple[int, str, str], tuple[int, ex.Order]] = {}
    for key_id, o in orders:  # the newest update of each order wins
        ref = (key_id, o.symbol, o.order_id)
        if ref not in latest or latest[ref][1].updated_at <= o.updated_at:
            latest[ref] = (key_id, o)
    # a fill without a client order id (REST) takes its order's, from this batch or stored
    coid_of = {k: o.client_order_id for k, (_, o) in latest.items()}
    unknown = {(k, f.symbol, f.order_id) for k, f in fills
               if not f.client_order_id and (k, f.symbol, f.order_id) not in coid_of}
    if unknown:
        for r in session.execute(select(Order.key_id, Order.symbol, Order.exchange_order_id,
                                        Order.client_order_id).where(
                Order.key_id.in_({k for k, _, _ in unknown}),
                Order.exchange_order_id.in_({o for _, _, o in unknown}))):
            coid_of[(r.key_id, r.symbol, r.exchange_order_id)] = r.client_order_id
    fills = [(k, f if f.client_order_id else
              replace(f, client_order_id=coid_of.get((k, f.symbol, f.order_id))))
             for k, f in fills]
    coids = {o.client_order_id for _, o in latest.values()} | {
        f.client_order_id for _, f in fills if f.client_order_id}
    order_ids = {f.order_id for _, f in fills} | {o.order_id for _, o in latest.values()}
    key_ids = {k for k, _ in orders} | {k for k, _ in fills}
    trades = list(session.scalars(select(Trade).where(
        Trade.key_id.in_(key_ids),
        Trade.client_order_id.in_(coids) | Trade.entry_order_id.in_(order_ids))
        .order_by(Trade.id).with_for_update()))  # one lock order for every writer
    by_coid = {(t.key_id, t.client_order_id): t for t in trades}
    by_oid = {(t.key_id, t.symbol, t.entry_order_id): t for t in trades if t.entry_order_id}

    def trade_of(key_id: int, coid: str | None, symbol: str, order_id: str) -> Trade | None:
        return (by_coid.get((key_id, coid)) if coid else None) or by_oid.get(
            (key_id, symbol, order_id))

    order_rows = []
    touched: dict[int, Trade] = {}
    symbols: set[tuple[int, str]] = set()
    for key_id, o in latest.values():
        t = trade_of(key_id, o.client_order_id, o.symbol, o.order_id)
        order_rows.append(_order_row(key_id, o, t.id if t else None))
        if t is not None:
            touched[t.id] = t
            if t.entry_order_id is None:  # learnt now: link what was stored without it
                t.entry_order_id = o.order_id
                by_oid[(key_id, o.symbol, o.order_id)] = t
    upsert_orders(session, order_rows)
    new_keys: set[int] = set()
    if fills:
        values = []
        for key_id, f in fills:
            t = trade_of(key_id, f.client_order_id, f.symbol, f.order_id)
            if t is not None:
                touched[t.id] = t
            values.append(_fill_row(key_id, f, t.id if t else None))
        stmt = (_insert(session, Fill.__table__)
                .on_conflict_do_nothing(index_elements=["key_id", "symbol", "exchange_trade_id"])
                .returning(Fill.__table__.c.key_id, Fill.__table__.c.exchange_trade_id))
        inserted = {(r.key_id, r.exchange_trade_id) for r in session.execute(stmt, values)}
        new_keys = {k for k, _ in inserted}
        _new_fills(session, list({(k, f.symbol, f.trade_id): (k, f) for k, f in fills
                                  if (k, f.trade_id) in inserted}.values()))
        symbols |= {(k, f.symbol) for k, f in fills if (k, f.trade_id) in inserted}
        for key_id, f in fills:  # a fill stored before: a late trade link or PnL (rare)
            if (key_id, f.trade_id) not in inserted and (f.realized_pnl or f.client_order_id
                                                         or f.reason):
                t = trade_of(key_id, f.client_order_id, f.symbol, f.order_id)
                upsert_fill(session, key_id, f, t.id if t else None)
    if touched:
        session.flush()
        for t in touched.values():
            book.link_fills(session, t)
            symbols.add((t.key_id, t.symbol))
        fills_of: dict[int, list[Any]] = {tid: [] for tid in touched}
        for row in session.execute(select(Fill.trade_id, Fill.quantity, Fill.price, Fill.fee)
                                   .where(Fill.trade_id.in_(list(touched)))):
            fills_of[row.trade_id].append(row)
        last_order: dict[int, ex.Order] = {}
        for key_id, o in latest.values():
            t = trade_of(key_id, o.client_order_id, o.symbol, o.order_id)
            if t is not None:
                last_order[t.id] = o
        for tid, t in touched.items():
            settle_trade_from_fills(session, t, last_order.get(tid), fills_of[tid])
    if symbols:
        session.flush()
        needing = book.needing_settle(session, symbols)
        for key_id, symbol in sorted(needing):
            book.settle_symbol(session, key_id, symbol)
        for t in touched.values():  # nothing consumed in its symbol: it holds all it has
            if (t.key_id, t.symbol) not in needing and t.open_quantity != t.filled_quantity:
                t.open_quantity = t.filled_quantity
    if funding:
        new_keys |= apply_funding(session, funding)
    return new_keys


# ``exchanges.types.FundingFee``: an id of this form is built from a Binance stream
# event (which carries no tranId); the income history's rows of the same payment
# (same asset and time) are the record and take its place
PROVISIONAL_FUNDING_ID = "FUNDING_FEE-"


def apply_funding(session: Session, fees: Sequence[tuple[int, FundingFeeEvent]]) -> set[int]:
    """Store funding fees (tuples of key id, ``FundingFee``) once each, keyed by (key,
    ``id``), and add each stored one to the key's realized figure
    (``services.realized.book_change``). Binance's stream and its income history name
    one payment differently, and the stream's row of a cross position is the asset's
    total while the history has one row per symbol (``exchanges.types.FundingFee``):
    a stream row (id ``FUNDING_FEE-...``) is skipped when a row of the same key, asset
    and time is stored, and is replaced (removed, its amount taken back) by the
    history's rows when they come. The caller holds the keys' ledger locks. Returns
    the key ids whose funding changed."""
    new: set[int] = set()
    for key_id, f in fees:
        same = list(session.scalars(select(FundingFee).where(
            FundingFee.key_id == key_id,
            (FundingFee.exchange_id == f.id) | ((FundingFee.asset == f.asset)
                                               & (FundingFee.time == f.time_ms)))))
        if any(r.exchange_id == f.id for r in same):
            continue
        if f.id.startswith(PROVISIONAL_FUNDING_ID):
            if same:  # the history's rows of this payment are stored
                continue
        else:
            for row in same:
                if row.exchange_id.startswith(PROVISIONAL_FUNDING_ID):
                    realized.book_change(session, key_id, funding=-row.amount)
                    session.delete(row)
        session.add(FundingFee(key_id=key_id, exchange_id=f.id, symbol=f.symbol or "",
                               amount=f.amount, asset=f.asset, time=f.time_ms))
        session.flush()
        realized.book_change(session, key_id, funding=f.amount)
        new.add(key_id)
    return new


def realized_pnl(db: Database, key_id: int, now: int | None = None) -> Realized:
    """The key's realized PnL, all time and today (UTC): its trades' ``realized_pnl``
    plus its funding fees (``services.realized``). Raises SQLAlchemyError when the
    database cannot answer."""
    with db.session() as s:
        return realized.read(s, key_id, now)
