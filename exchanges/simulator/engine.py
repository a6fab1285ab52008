"""Matching engine, accounts and positions of the simulated exchange (no HTTP here).

Model: infinite liquidity one tick either side of the mark price (bid = price - tick,
ask = price + tick). MARKET orders fill at once at the ask (BUY) or bid (SELL) as
taker. A LIMIT order whose price reaches the ask/bid is marketable and fills at
once as taker at the ask/bid; otherwise GTC/GTX orders rest and IOC/FOK orders
expire (GTX expires when marketable). A resting BUY fills, as maker at its own
limit, at the first price update with ``price <= limit`` (SELL: ``price >= limit``);
``fill_order`` forces a (partial) maker fill. One-way positions, cross margin.

Fees (USDT, subtracted from the wallet): taker 0.0005, maker 0.0002 of notional.
Realised PnL of reducing fills is added to the wallet. Margin: initial margin of a
position is ``|amount| * mark / leverage``; of an open non-reduce-only order
``remaining * limit / leverage``; ``available = wallet + unrealised - both``.

Every change is published synchronously to listeners as ``OrderEvent``,
``AccountEvent``, ``LeverageEvent`` or ``PriceEvent`` (see ``models``). Listeners
must read the (live) objects inside the call and must not raise.
Per price update the work is O(log n + fills): resting orders are kept in sorted
per-symbol books.
"""
from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable
from decimal import Decimal

from exchanges.simulator.legs import LegsMixin
from exchanges.simulator.margin import MarginMixin, q8
from exchanges.simulator.models import (
    CANCELED,
    DEFAULT_SYMBOLS,
    EXPIRED,
    FILLED,
    FOK,
    GTC,
    GTX,
    IOC,
    LIMIT,
    MARGIN_ASSET,
    MARKET,
    PARTIALLY_FILLED,
    ZERO,
    Account,
    AccountEvent,
    EngineError,
    Fill,
    LeverageEvent,
    Order,
    OrderEvent,
    Position,
    PriceEvent,
    SymbolSpec,
)

logger = logging.getLogger(__name__)

Listener = Callable[[object], None]


def wall_ms() -> int:
    """Current wall-clock time in ms since the epoch."""
    return int(time.time() * 1000)


class Engine(MarginMixin, LegsMixin):
    """The exchange core shared by every protocol layer.

    Args:
        symbols: symbol -> SymbolSpec (default ``DEFAULT_SYMBOLS``).
        now_ms: clock in ms (the server clock, which a clock-skew fault may shift).
        taker_fee / maker_fee: fee rates as fractions of notional.
    """

    def __init__(self, symbols: dict[str, SymbolSpec] | None = None,
                 now_ms: Callable[[], int] = wall_ms,
                 taker_fee: Decimal = Decimal("0.0005"),
                 maker_fee: Decimal = Decimal("0.0002")) -> None:
        self.symbols = dict(symbols or DEFAULT_SYMBOLS)
        self.now_ms = now_ms
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.prices: dict[str, Decimal] = {s: p.start_price for s, p in self.symbols.items()}
        # Last traded price; equal to the mark unless /_sim/price sets it apart.
        self.last_prices: dict[str, Decimal] = dict(self.prices)
        self.accounts: dict[str, Account] = {}
        self.orders: dict[int, Order] = {}
        self._bids: dict[str, list[tuple[Decimal, int]]] = {s: [] for s in self.symbols}
        self._asks: dict[str, list[tuple[Decimal, int]]] = {s: [] for s in self.symbols}
        self._listeners: list[Listener] = []
        # Ids grow from "now" so that they never repeat across restarts.
        self._next_order_id = wall_ms() * 1000
        self._next_trade_id = wall_ms() * 100
        self._next_tran_id = wall_ms() * 10
        self._init_legs()

    # ---- listeners -------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Register ``listener(event)``, called synchronously for every event."""
        self._listeners.append(listener)

    def _publish(self, event: object) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # isolation boundary: one listener must not stop the rest
                logger.exception("listener failed event=%s", type(event).__name__)

    # ---- market data -----------------------------------------------------------------
    def spec(self, symbol: str) -> SymbolSpec:
        """The SymbolSpec of ``symbol``; raises EngineError(invalid_symbol)."""
        spec = self.symbols.get(symbol)
        if spec is None:
            raise EngineError("invalid_symbol", "Invalid symbol.")
        return spec

    def bid_ask(self, symbol: str) -> tuple[Decimal, Decimal]:
        """``(bid, ask)`` = mark price minus / plus one tick."""
        spec = self.spec(symbol)
        price = self.prices[symbol]
        return max(price - spec.tick, spec.tick), price + spec.tick

    def set_price(self, symbol: str, price: Decimal, last_price: Decimal | None = None,
                  fire_legs: bool = True) -> Decimal:
        """Set the mark price and the last price (``last_price``, default the same; both
        rounded to the tick); publishes PriceEvent, fills resting orders the new price
        crosses, then fires the legs whose trigger (mark or last per working type) it
        reached (``fire_legs`` False: the caller fires them, ``crossed_legs`` /
        ``fire_leg``). Returns the stored mark price."""
        spec = self.spec(symbol)
        if price <= 0 or (last_price is not None and last_price <= 0):
            raise EngineError("invalid_price", "Price must be positive.")
        price = spec.round_price(price)
        self.prices[symbol] = price
        self.last_prices[symbol] = spec.round_price(last_price) if last_price else price
        self._publish(PriceEvent(symbol, price, self.now_ms()))
        self._match_resting(symbol, price)
        if fire_legs:
            self._check_legs(symbol)
        return price

    def _match_resting(self, symbol: str, price: Decimal) -> None:
        bids, asks = self._bids[symbol], self._asks[symbol]
        idx = bisect.bisect_left(bids, (price, -1))
        crossing = sorted(bids[idx:], key=lambda k: (-k[0], k[1]))
        del bids[idx:]
        idx = bisect.bisect_right(asks, (price, float("inf")))
        crossing += asks[:idx]
        del asks[:idx]
        for limit, order_id in crossing:
            order = self.orders.get(order_id)
            if order is not None and order.is_open:
                self._execute(order, order.remaining, limit, maker=True)

    # ---- accounts --------------------------------------------------------------------
    def create_account(self, api_key: str, api_secret: str,
                       balances: dict[str, Decimal]) -> tuple[Account, bool]:
        """Create an account; returns ``(account, created)``. An existing key is returned
        unchanged with ``created=False`` (the caller decides about conflicts)."""
        existing = self.accounts.get(api_key)
        if existing is not None:
            return existing, False
        now = self.now_ms()
        account = Account(api_key, api_secret, dict(balances), created=now, update_time=now)
        account.balances.setdefault(MARGIN_ASSET, ZERO)
        self.accounts[api_key] = account
        return account, True

    def account(self, api_key: str) -> Account:
        """The account of ``api_key``; raises EngineError(unknown_account)."""
        account = self.accounts.get(api_key)
        if account is None:
            raise EngineError("unknown_account", "Unknown API key.")
        return account

    def set_leverage(self, api_key: str, symbol: str, leverage: int) -> int:
        """Set the leverage (1..max) of ``symbol``; publishes LeverageEvent."""
        account, spec = self.account(api_key), self.spec(symbol)
        if not 1 <= leverage <= spec.max_leverage:
            raise EngineError("invalid_leverage", "Leverage is not valid.",
                              max=str(spec.max_leverage))
        account.leverage[symbol] = leverage
        self._publish(LeverageEvent(account, symbol, leverage, self.now_ms()))
        return leverage

    # ---- orders ----------------------------------------------------------------------
    def place_order(self, api_key: str, symbol: str, side: str, type_: str, quantity: Decimal,
                    price: Decimal | None = None, time_in_force: str | None = None,
                    reduce_only: bool = False, client_order_id: str = "",
                    force_expire: bool = False, source: str = "", orig_type: str = "",
                    on_accepted: Callable[[Order], None] | None = None,
                    order_id: int | None = None) -> Order:
        """Validate, accept (OrderEvent NEW) and match a new order; returns the live Order.

        ``force_expire`` (used by the reject_orders fault) accepts the order and expires
        it at once. ``source``/``orig_type`` mark an order the venue made (a fired leg,
        a liquidation, an ADL); ``on_accepted(order)`` runs after NEW, before matching;
        ``order_id`` reuses an id handed out before (a Bybit leg's order keeps its id).
        Raises EngineError for every refusal, before anything changes.
        """
        account, spec = self.account(api_key), self.spec(symbol)
        self._validate(account, spec, side, type_, quantity, price, time_in_force)
        tif = (time_in_force or GTC) if type_ == LIMIT else GTC
        pos = account.position(symbol)
        if reduce_only:
            reducible = -pos.amount if side == "BUY" else pos.amount
            if reducible <= 0:
                raise EngineError("reduce_only_rejected", "ReduceOnly Order is rejected.")
            quantity = min(quantity, reducible)
        bid, ask = self.bid_ask(symbol)
        ref = price if type_ == LIMIT else self.prices[symbol]
        if not reduce_only and quantity * ref < spec.min_notional:
            raise EngineError("min_notional", "Order's notional is too small.",
                              min_notional=f"{spec.min_notional.normalize():f}")
        if not reduce_only:
            opposite = -pos.amount if side == "BUY" else pos.amount
            opening = quantity - min(quantity, max(opposite, ZERO))
            exec_price = price if type_ == LIMIT else (ask if side == "BUY" else bid)
            needed = opening * exec_price / account.leverage_of(symbol)
            if needed > self.available(account):
                raise EngineError("insufficient_margin", "Margin is insufficient.")
        if client_order_id and self._open_client_id(account, client_order_id):
            raise EngineError("duplicate_client_order_id", "ClientOrderId is duplicated.")
        now = self.now_ms()
        if order_id is None:
            self._next_order_id += 1
            order_id = self._next_order_id
        order = Order(order_id, api_key, symbol, side, type_, tif, quantity, price,
                      reduce_only, client_order_id or f"sim-{order_id}", now, now,
                      source=source, orig_type=orig_type or type_)
        self.orders[order.order_id] = order
        account.order_ids.append(order.order_id)
        account.client_ids[order.client_order_id] = order.order_id
        account.open_orders[order.order_id] = order
        self._publish(OrderEvent(order, "NEW", now))
        if on_accepted is not None:
            on_accepted(order)
        if force_expire:
            self._finish(order, EXPIRED)
        elif type_ == MARKET:
            self._execute(order, quantity, ask if side == "BUY" else bid, maker=False)
        elif (side == "BUY" and price >= ask) or (side == "SELL" and price <= bid):
            if tif == GTX:
                self._finish(order, EXPIRED)
            else:
                self._execute(order, quantity, ask if side == "BUY" else bid, maker=False)
        elif tif in (IOC, FOK):
            self._finish(order, EXPIRED)
        else:
            book = self._bids[symbol] if side == "BUY" else self._asks[symbol]
            bisect.insort(book, (price, order.order_id))
        return order

    def _validate(self, account: Account, spec: SymbolSpec, side: str, type_: str,
                  quantity: Decimal, price: Decimal | None, tif: str | None) -> None:
        if side not in ("BUY", "SELL"):
            raise EngineError("invalid_side", "Invalid side.")
        if type_ not in (MARKET, LIMIT):
            raise EngineError("invalid_type", "Invalid orderType.")
        if type_ == LIMIT and (tif or GTC) not in (GTC, IOC, FOK, GTX):
            raise EngineError("invalid_tif", "Invalid timeInForce.")
        if quantity <= 0:
            raise EngineError("invalid_quantity", "Quantity less than or equal to zero.")
        if not spec.on_step(quantity):
            raise EngineError("precision", "Precision is over the maximum defined for this asset.")
        if quantity < spec.min_qty:
            raise EngineError("invalid_quantity", "Quantity less than minimum quantity.",
                              min_qty=f"{spec.min_qty.normalize():f}")
        if quantity > (spec.max_market_qty if type_ == MARKET else spec.max_qty):
            raise EngineError("quantity_too_large", "Quantity greater than max quantity.")
        if type_ != LIMIT:
            return
        if price is None or price <= 0:
            raise EngineError("invalid_price", "Price less than or equal to zero.")
        if not spec.on_tick(price):
            raise EngineError("precision", "Precision is over the maximum defined for this asset.")
        mark = self.prices[spec.symbol]
        if side == "BUY" and price > mark * spec.percent_up:
            raise EngineError("price_too_high", "Limit price can't be higher than the cap.",
                              limit=f"{spec.round_price(mark * spec.percent_up):f}")
        if side == "SELL" and price < mark * spec.percent_down:
            raise EngineError("price_too_low", "Limit price can't be lower than the floor.",
                              limit=f"{spec.round_price(mark * spec.percent_down):f}")

    def _open_client_id(self, account: Account, client_order_id: str) -> bool:
        order_id = account.client_ids.get(client_order_id)
        return order_id is not None and order_id in account.open_orders

    def find_order(self, api_key: str, symbol: str, order_id: int | None = None,
                   client_order_id: str | None = None) -> Order:
        """The account's order by exchange id or client id (latest use of it) in
        ``symbol``; raises EngineError(unknown_order)."""
        account = self.account(api_key)
        if order_id is None and client_order_id:
            order_id = account.client_ids.get(client_order_id)
        order = self.orders.get(order_id) if order_id is not None else None
        if order is None or order.api_key != api_key or order.symbol != symbol:
            raise EngineError("unknown_order", "Order does not exist.")
        return order

    def cancel_order(self, api_key: str, symbol: str, order_id: int | None = None,
                     client_order_id: str | None = None) -> Order:
        """Cancel an open order (OrderEvent CANCELED). Raises EngineError(unknown_order)
        when not found, EngineError(order_not_open) when already final."""
        order = self.find_order(api_key, symbol, order_id, client_order_id)
        if not order.is_open:
            raise EngineError("order_not_open", "Unknown order sent.")
        self._finish(order, CANCELED)
        return order

    def cancel_all(self, api_key: str, symbol: str) -> list[Order]:
        """Cancel every open order of the account in ``symbol``; returns them."""
        account = self.account(api_key)
        self.spec(symbol)
        orders = [o for o in account.open_orders.values() if o.symbol == symbol]
        for order in orders:
            self._finish(order, CANCELED)
        return orders

    def fill_order(self, order_id: int, quantity: Decimal | None = None,
                   price: Decimal | None = None) -> Order:
        """Force a maker fill of a resting order now (partial when ``quantity`` is below
        the remaining quantity); ``price`` defaults to the order's limit."""
        order = self.orders.get(order_id)
        if order is None:
            raise EngineError("unknown_order", "Order does not exist.")
        if not order.is_open:
            raise EngineError("order_not_open", "Order is not open.")
        spec = self.symbols[order.symbol]
        qty = order.remaining if quantity is None else quantity
        if qty <= 0 or qty > order.remaining or not spec.on_step(qty):
            raise EngineError("invalid_quantity", "Quantity must be a positive multiple of "
                              "the step, at most the remaining quantity.")
        fill_price = price if price is not None else (order.price or self.prices[order.symbol])
        if fill_price <= 0 or not spec.on_tick(fill_price):
            raise EngineError("invalid_price", "Price must be a positive multiple of the tick.")
        self._execute(order, qty, fill_price, maker=True)
        return order

    def _remove_resting(self, order: Order) -> None:
        self.accounts[order.api_key].open_orders.pop(order.order_id, None)
        if order.price is None:
            return
        book = self._bids[order.symbol] if order.side == "BUY" else self._asks[order.symbol]
        key = (order.price, order.order_id)
        idx = bisect.bisect_left(book, key)
        if idx < len(book) and book[idx] == key:
            del book[idx]

    def _finish(self, order: Order, status: str) -> None:
        """Move an open order to CANCELED or EXPIRED and publish it."""
        self._remove_resting(order)
        now = self.now_ms()
        order.status, order.update_time = status, now
        self._publish(OrderEvent(order, status, now))

    def _execute(self, order: Order, qty: Decimal, price: Decimal, maker: bool) -> None:
        """Fill ``qty`` of ``order`` at ``price``; updates position, wallet and order and
        publishes OrderEvent TRADE then AccountEvent ORDER."""
        account = self.accounts[order.api_key]
        pos = account.position(order.symbol)
        if order.reduce_only:
            reducible = -pos.amount if order.side == "BUY" else pos.amount
            qty = min(qty, max(reducible, ZERO))
            if qty <= 0:
                self._finish(order, EXPIRED)
                return
        now = self.now_ms()
        before = pos.amount
        realized = q8(self._apply_position(pos, qty if order.side == "BUY" else -qty, price))
        fee = q8(qty * price * (self.maker_fee if maker else self.taker_fee))
        account.balances[MARGIN_ASSET] = account.wallet + realized - fee
        account.update_time = pos.update_time = now
        order.executed_qty += qty
        order.cum_quote += qty * price
        order.update_time = now
        order.status = FILLED if order.remaining <= 0 else PARTIALLY_FILLED
        if order.status == FILLED:
            self._remove_resting(order)
        self._next_trade_id += 1
        fill = Fill(self._next_trade_id, order.order_id, order.api_key, order.symbol,
                    order.side, price, qty, fee, realized, maker, now, source=order.source)
        account.fills.append(fill)
        self._publish(OrderEvent(order, "TRADE", now, fill))
        self._publish(AccountEvent(account, "ORDER", now, (order.symbol,)))
        if order.reduce_only and order.is_open and pos.amount == 0:
            self._finish(order, EXPIRED)
        if before != 0 and (pos.amount == 0 or (pos.amount > 0) != (before > 0)):
            self._position_ended(account, order.symbol)

    @staticmethod
    def _apply_position(pos: Position, signed_qty: Decimal, price: Decimal) -> Decimal:
        """Apply a signed fill to a position; returns the gross realised PnL."""
        amount, entry = pos.amount, pos.entry_price
        new_amount = amount + signed_qty
        if amount == 0 or (amount > 0) == (signed_qty > 0):
            pos.entry_price = q8((abs(amount) * entry + abs(signed_qty) * price) / abs(new_amount))
            pos.amount = new_amount
            return ZERO
        closed = min(abs(signed_qty), abs(amount))
        realized = (price - entry) * closed * (1 if amount > 0 else -1)
        if new_amount == 0:
            pos.entry_price = ZERO
        elif (new_amount > 0) != (amount > 0):
            pos.entry_price = price
        pos.amount = new_amount
        pos.cum_realized += realized
        return realized

    # ---- queries ---------------------------------------------------------------------
    def account_orders(self, api_key: str, symbol: str | None = None) -> Iterable[Order]:
        """Every order of the account (oldest first), optionally of one symbol."""
        account = self.account(api_key)
        for order_id in account.order_ids:
            order = self.orders[order_id]
            if symbol is None or order.symbol == symbol:
                yield order

    def open_orders(self, api_key: str, symbol: str | None = None) -> list[Order]:
        """Open orders of the account, oldest first."""
        account = self.account(api_key)
        orders = [o for o in account.open_orders.values() if symbol is None or o.symbol == symbol]
        return sorted(orders, key=lambda o: o.order_id)

    def resting_count(self) -> int:
        """Number of orders resting in all books."""
        return sum(len(b) for b in self._bids.values()) + sum(len(a) for a in self._asks.values())

    def status_counts(self) -> dict[str, int]:
        """Orders per status (for the state snapshot)."""
        counts: dict[str, int] = {}
        for order in self.orders.values():
            counts[order.status] = counts.get(order.status, 0) + 1
        return counts

