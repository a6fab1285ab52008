"""OrderService: places and cancels orders with the ledger written first.

``place``: validate against the symbol's trading rules before any network call,
commit a ``pending`` trade with a fresh ``client_order_id``, send, then record
what the exchange answered (order row, fills) and move the trade forward through
``ledger.settle_trade_from_fills``. An order whose fate is unknown (timeout)
stays ``pending`` for reconciliation; it is never assumed filled or failed.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from exchanges import types as ex
from exchanges.base import ExchangeClient
from exchanges.errors import (
    ExchangeError,
    ExchangeRejected,
    ExchangeUnavailable,
    OrderNotFound,
    RateLimited,
)
from models import Database, ExchangeKey, Trade, TradeStatus, now_ms
from services import book, ledger
from services.accounts import get_owned_key
from services.errors import Conflict, NotFound, ValidationFailed
from services.lifecycle import StopFlag
from services.serialize import dec

logger = logging.getLogger(__name__)

ClientFor = Callable[[ExchangeKey], ExchangeClient]
# An order the exchange does not know is assumed never to have arrived only this long
# after it was sent: the exchange refuses a request whose timestamp is older than its
# recvWindow on arrival (Binance "General Info / Timing security"; Bybit v5 guide
# "Authentication"), and our clients sign with 10,000 ms (Binance) / 5,000 ms (Bybit);
# 5 s more for the clock offset.
NOT_FOUND_GRACE_MS = 15_000


def new_client_order_id() -> str:
    """A fresh id matching Binance's ``^[.A-Z:/a-z0-9_-]{1,36}$`` (32 chars)."""
    return "pps-" + uuid.uuid4().hex[:28]


def check_rules(rules: ex.SymbolRules, quantity: Decimal, price: Decimal | None,
                reference_price: Decimal | None) -> None:
    """Raise ValidationFailed (naming the field) when the order breaks the symbol's
    tick size, step size, min/max quantity or min notional (Binance exchangeInfo
    PRICE_FILTER, LOT_SIZE, MIN_NOTIONAL)."""
    if quantity % rules.step_size != 0:
        raise ValidationFailed("invalid_quantity",
                               f"quantity must be a multiple of {dec(rules.step_size)}", "quantity")
    if quantity < rules.min_qty or quantity > rules.max_qty:
        raise ValidationFailed("invalid_quantity", f"quantity must be between "
                               f"{dec(rules.min_qty)} and {dec(rules.max_qty)}", "quantity")
    if price is not None and price % rules.tick_size != 0:
        raise ValidationFailed("invalid_price",
                               f"price must be a multiple of {dec(rules.tick_size)}", "price")
    notional_price = price if price is not None else reference_price
    if notional_price is not None and quantity * notional_price < rules.min_notional:
        raise ValidationFailed("min_notional", f"order notional must be at least "
                               f"{dec(rules.min_notional)}", "quantity")


class OrderService:
    """Order placement, cancellation and the trade list.

    Args:
        db: the database.
        client_for: returns the exchange client of an ExchangeKey row (cached).
        confirm_timeout_s: how long ``place`` queries a MARKET order that came back
            unfilled before leaving it ``pending`` for the stream/reconciler.
        sleep: cooperative sleep.
    """

    def __init__(self, db: Database, client_for: ClientFor, sleep: Callable[[float], None],
                 confirm_timeout_s: float = 5.0, spawn: Callable | None = None) -> None:
        self._db = db
        self._client_for = client_for
        self._sleep = sleep
        self._spawn = spawn
        self._confirm_timeout_s = confirm_timeout_s
        self._stopping = StopFlag(sleep)

    def stop(self) -> None:
        """End the in-process LIMIT timers (within ``StopFlag.STEP_S``): their
        deadlines are rows (``trades.cancel_at``), carried out at the next start."""
        self._stopping.set()

    def place(self, user_id: int, key_id: int, symbol: str, side: str, type_: str,
              quantity: Decimal, price: Decimal | None, time_in_force: str | None,
              reduce_only: bool, client_order_id: str | None,
              timeout_s: float | None = None) -> Trade:
        """Place an order; returns the ledger record (``pending``, ``open``,
        ``canceled`` or ``failed``). A LIMIT order with ``timeout_s`` that is still
        ``pending`` then is cancelled and queried again (``expire``).

        Raises NotFound (key), ValidationFailed (rules), Conflict (duplicate
        client_order_id), ExchangeRejected (the trade is stored ``failed``),
        ExchangeUnavailable/ExchangeTimeout (the trade stays ``pending``).
        """
        key = get_owned_key(self._db, user_id, key_id)
        client = self._client_for(key)
        rules = client.get_symbol_rules(symbol)
        reference = None if price is not None else client.get_ticker(symbol).mark_price
        check_rules(rules, quantity, price, reference)
        tif = (time_in_force or "GTC") if type_ == "LIMIT" else None
        coid = client_order_id or new_client_order_id()
        sent_at = now_ms()
        cancel_at = (sent_at + int(timeout_s * 1000)
                     if timeout_s and type_ == "LIMIT" and tif not in ("IOC", "FOK") else None)
        trade = Trade(user_id=user_id, key_id=key_id, exchange=key.exchange, symbol=symbol,
                      side=side, order_type=type_, time_in_force=tif, reduce_only=reduce_only,
                      quantity=quantity, price=price, status=TradeStatus.PENDING.value,
                      client_order_id=coid, sent_at=sent_at, cancel_at=cancel_at)
        try:
            with self._db.transaction() as s:
                s.add(trade)
        except IntegrityError as e:
            raise Conflict("duplicate_client_order_id",
                           f"client_order_id {coid} is already used", "client_order_id") from e
        request = ex.OrderRequest(symbol=symbol, side=side, type=type_, quantity=quantity,
                                  client_order_id=coid, price=price, time_in_force=tif,
                                  reduce_only=reduce_only)
        try:
            order = client.create_order(request)
        except (ExchangeRejected, RateLimited) as e:  # refused: nothing was executed
            self._fail(trade.id, e)
            raise
        except ExchangeUnavailable:
            logger.warning("order fate unknown, left pending client_order_id=%s key_id=%s",
                           coid, key_id)
            if cancel_at is not None and self._spawn:  # it may rest: the timeout still holds
                self._spawn(self.expire, trade.id, timeout_s)
            raise
        if type_ == "MARKET" and not order.status.is_final:
            order = self._await_final(client, order)
        recorded = self.record(key_id, trade.id, client, order)
        if recorded.cancel_at is not None and self._spawn:
            self._spawn(self.expire, trade.id, timeout_s)
        return recorded

    def expire(self, trade_id: int, after_s: float) -> None:
        """The in-process timer of a LIMIT ``timeout_s`` (a background task): after
        ``after_s`` seconds run ``run_timeout``. The deadline is also a row
        (``trades.cancel_at``): if this process dies first, the start-up and the
        reconciler carry it out (``due_timeouts``). Ends early, doing nothing, when
        ``stop()`` is called."""
        if not self._stopping.wait(after_s):
            self.run_timeout(trade_id)

    def run_timeout(self, trade_id: int) -> str | None:
        """Carry out a LIMIT entry's ``timeout_s`` once ``cancel_at`` has passed: cancel
        what is still resting, then query the order again and record it. What
        ``timeout_s`` means: the unfilled rest is cancelled at the timeout; a trade with
        no fill ends ``canceled``, a partly filled one ends ``open`` with the filled part
        (a cancel that raced a fill ends ``open`` with the fill, never ``pending``).
        ``cancel_at`` is cleared once the order is final on the exchange; on an exchange
        error it stays for the next reconcile. Returns the trade's status afterwards,
        None when there was nothing (more) to do."""
        with self._db.session() as s:
            trade = s.get(Trade, trade_id)
            key = s.get(ExchangeKey, trade.key_id) if trade is not None else None
        if trade is None or key is None or trade.cancel_at is None or trade.cancel_at > now_ms():
            return None
        client = self._client_for(key)
        coid = trade.client_order_id
        try:
            try:
                client.cancel_order(trade.symbol, client_order_id=coid)
            except OrderNotFound:
                pass  # already final (or never arrived): the query below says which
            try:
                order = client.get_order(trade.symbol, client_order_id=coid)
            except OrderNotFound as e:
                if now_ms() - (trade.sent_at or trade.created_at) < NOT_FOUND_GRACE_MS:
                    return trade.status
                self._fail(trade.id, e)
                return TradeStatus.FAILED.value
            settled = self.record(trade.key_id, trade.id, client, order)
        except ExchangeError as e:
            logger.warning("limit order timeout failed, kept for the reconciler "
                           "client_order_id=%s kind=%s", coid, type(e).__name__)
            return trade.status
        logger.info("limit order timed out client_order_id=%s status=%s filled=%s",
                    coid, settled.status, settled.filled_quantity)
        return settled.status

    def due_timeouts(self, key_id: int | None = None, limit: int = 500) -> list[int]:
        """Ids of trades whose LIMIT timeout is due (``cancel_at`` passed), oldest first."""
        stmt = select(Trade.id).where(Trade.cancel_at.is_not(None), Trade.cancel_at <= now_ms())
        if key_id is not None:
            stmt = stmt.where(Trade.key_id == key_id)
        with self._db.session() as s:
            return list(s.scalars(stmt.order_by(Trade.cancel_at).limit(limit)))

    def arm_timeouts(self) -> int:
        """At start-up: re-arm every LIMIT timeout still outstanding (``cancel_at`` set),
        due ones at once. Returns how many."""
        with self._db.session() as s:
            rows = s.execute(select(Trade.id, Trade.cancel_at).where(
                Trade.cancel_at.is_not(None))).all()
        if self._spawn:
            for r in rows:
                self._spawn(self.expire, r.id, max(0.0, (r.cancel_at - now_ms()) / 1000))
        if rows:
            logger.info("limit timeouts re-armed count=%s", len(rows))
        return len(rows)

    def _await_final(self, client: ExchangeClient, order: ex.Order) -> ex.Order:
        deadline = time.monotonic() + self._confirm_timeout_s
        while not order.status.is_final and time.monotonic() < deadline:
            self._sleep(0.1)
            order = client.get_order(order.symbol, order_id=order.order_id)
        return order

    def record(self, key_id: int, trade_id: int, client: ExchangeClient,
               order: ex.Order) -> Trade:
        """Store the order's state and its fills (queried from the exchange) and move
        the trade forward. Idempotent."""
        fills = (client.get_fills(order.symbol, order_id=order.order_id)
                 if order.filled_quantity > 0 else [])
        for attempt in Retrying(retry=retry_if_exception_type(OperationalError),
                                stop=stop_after_attempt(3), wait=wait_exponential_jitter(0.05, 1),
                                reraise=True):
            with attempt:
                return self._record_once(key_id, trade_id, order, fills)
        raise AssertionError("unreachable")

    def _record_once(self, key_id: int, trade_id: int, order: ex.Order, fills: list) -> Trade:
        with self._db.transaction() as s:
            book.lock_keys(s, [key_id])  # lock order: key, trade, then fills
            trade = s.get(Trade, trade_id, with_for_update=True)
            assert trade is not None
            trade.entry_order_id = order.order_id
            if order.status.is_final:
                trade.cancel_at = None  # nothing rests any more: the timeout is moot
            ledger.upsert_order(s, key_id, order, trade.id)
            for fill in fills:
                ledger.upsert_fill(s, key_id, fill, trade.id)
            s.flush()
            book.link_fills(s, trade)  # fills stored before the order id was known
            s.flush()
            ledger.settle_trade_from_fills(s, trade, order)
            s.flush()
            book.settle_symbol(s, key_id, trade.symbol)
        return trade

    def _fail(self, trade_id: int, error: ExchangeError) -> None:
        with self._db.transaction() as s:
            trade = s.get(Trade, trade_id)
            assert trade is not None
            trade.status = TradeStatus.FAILED.value
            trade.cancel_at = None
            trade.error_code = str(error.code) if error.code is not None else type(error).__name__
            trade.error_message = error.message[:255]
            trade.closed_at = now_ms()

    def cancel(self, user_id: int, key_id: int, client_order_id: str) -> Trade:
        """Cancel the trade's entry order and return the record afterwards.

        A cancel that raced a fill ends ``open`` with the fill recorded (the order is
        queried again after OrderNotFound). Raises NotFound for an unknown or another
        user's order.
        """
        key = get_owned_key(self._db, user_id, key_id)
        with self._db.session() as s:
            trade = s.scalars(select(Trade).where(Trade.client_order_id == client_order_id,
                                                  Trade.key_id == key_id)).first()
        if trade is None:
            raise NotFound("order_not_found", f"no order {client_order_id}", "client_order_id")
        client = self._client_for(key)
        try:
            order = client.cancel_order(trade.symbol, client_order_id=client_order_id)
        except OrderNotFound:
            order = client.get_order(trade.symbol, client_order_id=client_order_id)
        return self.record(key_id, trade.id, client, order)

    def trades(self, user_id: int, statuses: list[str] | None, key_id: int | None) -> list[Trade]:
        """The user's trades, newest first, optionally filtered by status and key."""
        stmt = select(Trade).where(Trade.user_id == user_id)
        if statuses:
            stmt = stmt.where(Trade.status.in_(statuses))
        if key_id is not None:
            stmt = stmt.where(Trade.key_id == key_id)
        with self._db.session() as s:
            return list(s.scalars(stmt.order_by(Trade.id.desc()).limit(1000)))

    def settle_pending(self, trade: Trade, client: ExchangeClient,
                       not_found_grace_ms: int = NOT_FOUND_GRACE_MS) -> str:
        """Look a ``pending`` trade up on the exchange by ``client_order_id`` and record
        what it says; returns the trade's status afterwards.

        A trade the exchange does not know becomes ``failed`` only once
        ``not_found_grace_ms`` (``NOT_FOUND_GRACE_MS``: our recvWindow plus a margin)
        has passed since it was sent; before that it stays ``pending``.
        """
        try:
            order = client.get_order(trade.symbol, client_order_id=trade.client_order_id)
        except OrderNotFound as e:
            if now_ms() - (trade.sent_at or trade.created_at) < not_found_grace_ms:
                return trade.status
            self._fail(trade.id, e)
            return TradeStatus.FAILED.value
        return self.record(trade.key_id, trade.id, client, order).status

