"""Exits: close a position with a FOK limit order chased one tick at a time.

Rules (DESIGN.md "Orders and the ledger"): one active exit per position (the
``exits`` table's partial unique index is the duplicate-exit guard; a second
request gets the working exit back); FOK limit reduce-only at the best bid (long)
or ask (short); when it expires unfilled (or is rejected), one tick worse, at most
``max_retries`` retries, at most ``max_slippage_ticks`` from the first price, within
``deadline_s``; then a clear final state. Exit fills are matched to the entry
trades FIFO; each entry trade is ``closed`` with its exit price and realized PnL
(fees included), or ``exit_failed`` (position still open) when the chase gives up.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from exchanges.base import ExchangeClient
from exchanges.errors import ExchangeError, ExchangeRejected, ExchangeUnavailable, OrderNotFound
from exchanges.types import Order as OrderInfo, OrderRequest, OrderStatus
from models import Database, Exit, ExitStatus, ExchangeKey, Fill, Trade, TradeStatus, now_ms
from services import ledger
from services.errors import Conflict
from services.keyring import get_owned_key

logger = logging.getLogger(__name__)

HOLDING = (TradeStatus.OPEN.value, TradeStatus.EXIT_FAILED.value)


@dataclass(frozen=True)
class ExitSettings:
    """Chase bounds: retries after the first attempt, ticks of slippage, seconds."""

    max_retries: int = 5
    max_slippage_ticks: int = 10
    deadline_s: float = 30.0


class ExitService:
    """Starts and runs exits.

    Args:
        db: the database; client_for: the cached exchange client of a key row;
        spawn: starts a background task; publish: emits ``error`` events to the user.
    """

    def __init__(self, db: Database, client_for: Callable[[ExchangeKey], ExchangeClient],
                 spawn: Callable, publish: Callable[[dict], None],
                 settings: ExitSettings = ExitSettings()) -> None:
        self._db = db
        self._client_for = client_for
        self._spawn = spawn
        self._publish = publish
        self.settings = settings

    def close_position(self, user_id: int, key_id: int, symbol: str) -> tuple[Exit, bool]:
        """``(exit, started)``: a new working exit (started=True), or the one already
        working for this position (started=False). Raises NotFound (key), Conflict
        (no open position), ExchangeError (the position lookup failed)."""
        key = get_owned_key(self._db, user_id, key_id)
        working = self._working(key_id, symbol)
        if working is not None:
            return working, False
        client = self._client_for(key)
        position = next((p for p in client.get_positions() if p.symbol == symbol), None)
        if position is None or position.size == 0:
            raise Conflict("no_position", f"no open {symbol} position", "symbol")
        exit_ = Exit(user_id=user_id, key_id=key_id, symbol=symbol, quantity=position.size,
                     side="SELL" if position.side == "LONG" else "BUY",
                     status=ExitStatus.WORKING.value)
        try:
            with self._db.transaction() as s:
                s.add(exit_)
                for t in s.scalars(self._holding(key_id, symbol)):
                    t.status = TradeStatus.CLOSING.value
        except IntegrityError:  # a concurrent request won the race: return its exit
            working = self._working(key_id, symbol)
            if working is None:
                raise
            return working, False
        logger.info("exit started exit_id=%s key_id=%s symbol=%s side=%s qty=%s",
                    exit_.id, key_id, symbol, exit_.side, exit_.quantity)
        self._spawn(self.run, exit_.id, key)
        return exit_, True

    def get(self, user_id: int, exit_id: int) -> Exit | None:
        """The user's exit or None."""
        with self._db.session() as s:
            e = s.get(Exit, exit_id)
        return e if e is not None and e.user_id == user_id else None

    def _working(self, key_id: int, symbol: str) -> Exit | None:
        with self._db.session() as s:
            return s.scalars(select(Exit).where(Exit.key_id == key_id, Exit.symbol == symbol,
                                                Exit.status == ExitStatus.WORKING.value)).first()

    @staticmethod
    def _holding(key_id: int, symbol: str):  # type: ignore[no-untyped-def]
        return (select(Trade).where(Trade.key_id == key_id, Trade.symbol == symbol,
                                    Trade.status.in_(HOLDING + (TradeStatus.CLOSING.value,)))
                .order_by(Trade.opened_at, Trade.id))

    # ---- the chase (background task) -------------------------------------------
    def run(self, exit_id: int, key: ExchangeKey) -> None:
        """Chase until filled or a bound is hit; never raises."""
        try:
            self._chase(exit_id, key)
        except Exception as e:  # isolation boundary: the exit must end in a final state
            logger.exception("exit crashed exit_id=%s", exit_id)
            self._finish(exit_id, key, None, f"internal error: {type(e).__name__}")

    def _chase(self, exit_id: int, key: ExchangeKey) -> None:
        with self._db.session() as s:
            exit_ = s.get(Exit, exit_id)
        assert exit_ is not None
        client = self._client_for(key)
        tick = client.get_symbol_rules(exit_.symbol).tick_size
        ticker = client.get_ticker(exit_.symbol)
        best = ticker.bid if exit_.side == "SELL" else ticker.ask
        if best is None:
            self._finish(exit_id, key, None, "no best bid/ask from the exchange")
            return
        step = -tick if exit_.side == "SELL" else tick   # one tick worse for us each time
        deadline = time.monotonic() + self.settings.deadline_s
        price, reason = best, "retries exhausted"
        coids: list[str] = []
        for attempt in range(self.settings.max_retries + 1):
            if time.monotonic() > deadline:
                reason = f"deadline of {self.settings.deadline_s:g} s passed"
                break
            if abs(price - best) > tick * self.settings.max_slippage_ticks:
                reason = f"slippage bound of {self.settings.max_slippage_ticks} ticks reached"
                break
            coid = f"exit-{exit_id}-{attempt}-{uuid.uuid4().hex[:8]}"
            coids.append(coid)
            self._note_attempt(exit_id, attempt + 1, price, coids, best)
            order = self._send(client, exit_, price, coid)
            if order is not None and order.filled_quantity > 0:
                self._record_order(key.id, client, order)
            if order is not None and order.status == OrderStatus.FILLED:
                self._finish(exit_id, key, order, None)
                return
            if order is not None and order.filled_quantity > 0:
                reason = "partially filled; position changed"  # FOK never does this
                break
            price += step
        self._finish(exit_id, key, None, reason)

    def _send(self, client: ExchangeClient, exit_: Exit, price: Decimal, coid: str) -> OrderInfo | None:
        req = OrderRequest(symbol=exit_.symbol, side=exit_.side, type="LIMIT",
                           quantity=exit_.quantity, client_order_id=coid, price=price,
                           time_in_force="FOK", reduce_only=True)
        try:
            return client.create_order(req)
        except ExchangeRejected as e:
            logger.info("exit attempt rejected exit_id=%s code=%s", exit_.id, e.code)
            return None
        except ExchangeUnavailable:
            try:  # fate unknown: ask by client order id before going on
                return client.get_order(exit_.symbol, client_order_id=coid)
            except (OrderNotFound, ExchangeError):
                return None

    def _record_order(self, key_id: int, client: ExchangeClient, order: OrderInfo) -> None:
        fills = client.get_fills(order.symbol, order_id=order.order_id)
        with self._db.transaction() as s:
            ledger.upsert_order(s, key_id, order, None)
            for fill in fills:
                ledger.upsert_fill(s, key_id, fill, None)

    def _note_attempt(self, exit_id: int, attempts: int, price: Decimal, coids: list[str],
                      first: Decimal) -> None:
        with self._db.transaction() as s:
            e = s.get(Exit, exit_id)
            assert e is not None
            e.attempts, e.last_price, e.first_price = attempts, price, first
            e.client_order_ids = ",".join(coids)[-1024:]

    def _finish(self, exit_id: int, key: ExchangeKey, order: OrderInfo | None,
                reason: str | None) -> None:
        with self._db.transaction() as s:
            e = s.get(Exit, exit_id, with_for_update=True)
            assert e is not None
            trades = list(s.scalars(self._holding(e.key_id, e.symbol).with_for_update()))
            if order is None:
                e.status, e.reason = ExitStatus.FAILED.value, reason
                for t in trades:
                    t.status = TradeStatus.EXIT_FAILED.value
                    t.error_message = f"exit failed: {reason}"[:255]
            else:
                e.status, e.exit_price = ExitStatus.FILLED.value, order.avg_price
                exit_fee = sum((f.fee for f in s.scalars(select(Fill).where(
                    Fill.key_id == e.key_id, Fill.exchange_order_id == order.order_id))),
                    Decimal(0))
                e.realized_pnl = match_fifo(trades, e.side, order.filled_quantity,
                                            order.avg_price, exit_fee)
        if order is None:
            logger.warning("exit failed exit_id=%s reason=%s", exit_id, reason)
            self._publish({"type": "error", "user_id": key.user_id, "key_id": key.id,
                           "code": "exit_failed", "message": f"exit {exit_id} failed: {reason}"})
        else:
            logger.info("exit filled exit_id=%s price=%s", exit_id, order.avg_price)


def match_fifo(trades: list[Trade], exit_side: str, quantity: Decimal, price: Decimal,
               exit_fee: Decimal) -> Decimal:
    """Match an exit fill to the position's trades first-in-first-out and close them.

    Entry trades (the side opposite ``exit_side``) are consumed oldest first, first by
    earlier reducing trades of the exit's side, then by the exit. Each entry trade gets
    ``exit_price`` (average of what consumed it) and ``realized_pnl`` =
    gross PnL of its lots - its own fees - its share of the exit fee; a reducing trade
    is closed with ``realized_pnl`` = -its fees (its gains are booked on the entries).
    Returns the exit's realized PnL (gross on the exit quantity - exit fee). Decimal.
    """
    entry_side = "BUY" if exit_side == "SELL" else "SELL"
    sign = 1 if entry_side == "BUY" else -1
    lots = [[t, t.filled_quantity, Decimal(0), Decimal(0)] for t in trades
            if t.side == entry_side]  # trade, remaining, matched qty, matched notional
    reducers = [(t.filled_quantity, t.entry_price or Decimal(0), t) for t in trades
                if t.side == exit_side] + [(quantity, price, None)]
    exit_gross = Decimal(0)
    for qty, px, reducer in reducers:
        for lot in lots:
            if qty <= 0:
                break
            take = min(qty, lot[1])
            if take <= 0:
                continue
            lot[1] -= take
            lot[2] += take
            lot[3] += take * px
            qty -= take
            if reducer is None:
                exit_gross += (px - (lot[0].entry_price or Decimal(0))) * take * sign
        if reducer is not None:
            reducer.status, reducer.closed_at = TradeStatus.CLOSED.value, now_ms()
            reducer.realized_pnl = -reducer.fees
    total_entry = sum((lot[2] for lot in lots), Decimal(0)) or Decimal(1)
    for t, remaining, matched, notional in lots:
        if matched == 0:
            continue
        exit_avg = notional / matched
        fee_share = exit_fee * matched / total_entry
        t.exit_price = exit_avg.quantize(Decimal("1e-12")).normalize()
        t.realized_pnl = ((exit_avg - (t.entry_price or Decimal(0))) * matched * sign
                          - t.fees - fee_share)
        t.status = TradeStatus.CLOSED.value if remaining == 0 else TradeStatus.OPEN.value
        t.closed_at = now_ms() if remaining == 0 else None
    return exit_gross - exit_fee
