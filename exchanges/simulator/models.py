"""Protocol-neutral data objects of the simulated exchange.

Nothing here knows about Binance or Bybit wire formats: protocol layers
(``binance_*``, later ``bybit_*``) translate these objects into their own JSON.

Units: prices, quantities and money are ``decimal.Decimal``; times are ``int``
milliseconds since the Unix epoch (UTC); sides are ``"BUY"``/``"SELL"``; the
margin asset is always USDT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

ZERO = Decimal(0)
MARGIN_ASSET = "USDT"

# Order types, times in force and statuses (the same words Binance uses; a
# Bybit layer maps them).
MARKET, LIMIT = "MARKET", "LIMIT"
GTC, IOC, FOK, GTX = "GTC", "IOC", "FOK", "GTX"
NEW, PARTIALLY_FILLED, FILLED = "NEW", "PARTIALLY_FILLED", "FILLED"
CANCELED, EXPIRED, REJECTED = "CANCELED", "EXPIRED", "REJECTED"
FINAL_STATUSES = frozenset({FILLED, CANCELED, EXPIRED, REJECTED})

# Conditional orders ("legs": stop-loss, take-profit, trailing stop) that close a
# position. Types and statuses are Binance's Algo Service words (New Algo Order,
# ALGO_UPDATE "Algo Status"); the Bybit layer maps them to stopOrderType/orderStatus.
STOP_MARKET, TAKE_PROFIT_MARKET = "STOP_MARKET", "TAKE_PROFIT_MARKET"
TRAILING_STOP_MARKET = "TRAILING_STOP_MARKET"
LEG_TYPES = (STOP_MARKET, TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET)
MARK_PRICE, CONTRACT_PRICE = "MARK_PRICE", "CONTRACT_PRICE"
TRIGGERING, TRIGGERED, FINISHED = "TRIGGERING", "TRIGGERED", "FINISHED"
LEG_FINAL = frozenset({FINISHED, CANCELED, EXPIRED, REJECTED})

# Why the venue made an order (``Order.source``): a leg fired, a liquidation, an ADL.
SOURCE_LEG, SOURCE_LIQUIDATION, SOURCE_ADL = "leg", "liquidation", "adl"


@dataclass(frozen=True)
class SymbolSpec:
    """Trading rules of one linear USDT perpetual.

    ``tick``: price increment; ``step``: quantity increment; ``min_qty``/``max_qty``:
    LIMIT quantity bounds; ``max_market_qty``: MARKET quantity bound;
    ``min_notional``: minimum ``price * qty`` in USDT (reduce-only exempt);
    ``start_price``: initial mark price; ``mmr``: maintenance margin rate;
    ``max_leverage``: highest allowed leverage; ``percent_up``/``percent_down``:
    PERCENT_PRICE multipliers applied to the mark price.
    """

    symbol: str
    base: str
    tick: Decimal
    step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    max_market_qty: Decimal
    min_notional: Decimal
    start_price: Decimal
    min_price: Decimal
    max_price: Decimal
    mmr: Decimal = Decimal("0.005")
    max_leverage: int = 125
    percent_up: Decimal = Decimal("1.1500")
    percent_down: Decimal = Decimal("0.8500")

    @property
    def price_precision(self) -> int:
        """Decimal places of ``tick`` as written (e.g. 2 for ``Decimal("0.10")``)."""
        return max(0, -self.tick.as_tuple().exponent)

    @property
    def qty_precision(self) -> int:
        """Decimal places of ``step`` as written (e.g. 3 for ``Decimal("0.001")``)."""
        return max(0, -self.step.as_tuple().exponent)

    def round_price(self, price: Decimal) -> Decimal:
        """``price`` rounded half-up to a multiple of ``tick``, never below one tick."""
        ticks = (price / self.tick).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return max(ticks, Decimal(1)) * self.tick

    def round_qty_down(self, qty: Decimal) -> Decimal:
        """``qty`` rounded down to a multiple of ``step``."""
        return (qty / self.step).to_integral_value(rounding=ROUND_DOWN) * self.step

    def on_tick(self, price: Decimal) -> bool:
        """True when ``price`` is an exact multiple of ``tick``."""
        return price % self.tick == 0

    def on_step(self, qty: Decimal) -> bool:
        """True when ``qty`` is an exact multiple of ``step``."""
        return qty % self.step == 0


DEFAULT_SYMBOLS: dict[str, SymbolSpec] = {
    "BTCUSDT": SymbolSpec(
        "BTCUSDT", "BTC", Decimal("0.10"), Decimal("0.001"), Decimal("0.001"),
        Decimal("1000"), Decimal("120"), Decimal("100"), Decimal("64000.00"),
        Decimal("556.80"), Decimal("4529764"), mmr=Decimal("0.004"), max_leverage=125),
    "ETHUSDT": SymbolSpec(
        "ETHUSDT", "ETH", Decimal("0.01"), Decimal("0.001"), Decimal("0.001"),
        Decimal("10000"), Decimal("2000"), Decimal("20"), Decimal("3400.00"),
        Decimal("39.86"), Decimal("306177"), mmr=Decimal("0.005"), max_leverage=100),
    "XRPUSDT": SymbolSpec(
        "XRPUSDT", "XRP", Decimal("0.0001"), Decimal("0.1"), Decimal("0.1"),
        Decimal("10000000"), Decimal("2000000"), Decimal("5"), Decimal("1.1900"),
        Decimal("0.0143"), Decimal("100000"), mmr=Decimal("0.0065"), max_leverage=75),
}


@dataclass
class Order:
    """One order. ``price`` is ``None`` for MARKET; ``avg_price`` is 0 until filled.

    ``status`` is one of NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED.
    ``time``/``update_time`` are ms; ``cum_quote`` is the filled notional in USDT.
    """

    order_id: int
    api_key: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    orig_qty: Decimal
    price: Decimal | None
    reduce_only: bool
    client_order_id: str
    time: int
    update_time: int
    status: str = NEW
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    source: str = ""          # "", SOURCE_LEG, SOURCE_LIQUIDATION or SOURCE_ADL
    orig_type: str = ""       # the leg's type for an order a leg created (Binance ``ot``)

    @property
    def remaining(self) -> Decimal:
        """Quantity still to fill."""
        return self.orig_qty - self.executed_qty

    @property
    def avg_price(self) -> Decimal:
        """Volume-weighted fill price, 0 when nothing filled."""
        return self.cum_quote / self.executed_qty if self.executed_qty else ZERO

    @property
    def is_open(self) -> bool:
        """True while the order can still fill (NEW or PARTIALLY_FILLED)."""
        return self.status not in FINAL_STATUSES


@dataclass(frozen=True)
class Fill:
    """One execution of an order. ``commission`` is in ``commission_asset`` (USDT);
    ``realized_pnl`` is the gross PnL this fill realised (before the fee)."""

    trade_id: int
    order_id: int
    api_key: str
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    commission: Decimal
    realized_pnl: Decimal
    maker: bool
    time: int
    commission_asset: str = MARGIN_ASSET
    source: str = ""          # the order's ``source``: liquidation / adl markers

    @property
    def quote_qty(self) -> Decimal:
        """``price * qty`` in USDT."""
        return self.price * self.qty


@dataclass
class Position:
    """One-way position. ``amount`` is signed (negative = short); ``entry_price`` is
    the weighted average entry, 0 when flat; ``cum_realized`` is the gross realised
    PnL of the symbol since the account was created."""

    symbol: str
    amount: Decimal = ZERO
    entry_price: Decimal = ZERO
    cum_realized: Decimal = ZERO
    update_time: int = 0


@dataclass
class Leg:
    """A held conditional order that closes (part of) a position when triggered.

    ``venue``: the protocol that placed it (``"binance"`` algo order or ``"bybit"``
    position TP/SL/trailing); its events are formatted by that protocol only.
    ``side``: of the closing order (SELL protects a long). ``working_type``:
    MARK_PRICE or CONTRACT_PRICE (last price). ``close_position``: the whole position
    at trigger time; otherwise ``quantity`` reduce-only. Trailing: ``callback_rate``
    (percent, Binance) or ``trailing_distance`` (price, Bybit), ``activate_price``
    optional; ``extreme`` is the highest (SELL) / lowest (BUY) watched price since
    placement. ``status``: NEW, TRIGGERING, TRIGGERED, FINISHED, CANCELED, EXPIRED,
    REJECTED. ``order_id``: the market order the trigger created.
    """

    leg_id: int
    api_key: str
    venue: str
    symbol: str
    side: str
    type: str
    working_type: str
    client_id: str
    time: int
    update_time: int
    trigger_price: Decimal | None = None
    close_position: bool = True
    quantity: Decimal = ZERO
    activate_price: Decimal | None = None
    callback_rate: Decimal | None = None
    trailing_distance: Decimal | None = None
    status: str = NEW
    activated: bool = False
    extreme: Decimal | None = None
    trigger_time: int = 0
    order_id: int | None = None
    reason: str = ""
    label: str = ""    # the venue's own word when it is not a position leg (Bybit "Stop")

    @property
    def is_open(self) -> bool:
        """True while it waits for its trigger."""
        return self.status == NEW

    def trailing_trigger(self) -> Decimal | None:
        """The price at which an activated trailing stop fires now (None otherwise)."""
        if self.type != TRAILING_STOP_MARKET or not self.activated or self.extreme is None:
            return None
        sign = -1 if self.side == "SELL" else 1
        if self.trailing_distance is not None:
            return self.extreme + sign * self.trailing_distance
        return self.extreme * (1 + sign * (self.callback_rate or ZERO) / 100)


@dataclass
class IncomeRow:
    """One row of the income history (Binance ``GET /fapi/v1/income``): ``kind`` is
    the incomeType (FUNDING_FEE), ``amount`` signed as the wallet sees it."""

    tran_id: int
    api_key: str
    symbol: str
    kind: str
    amount: Decimal
    time: int
    rate: Decimal = ZERO
    position_qty: Decimal = ZERO
    mark_price: Decimal = ZERO
    asset: str = MARGIN_ASSET


@dataclass
class Account:
    """A simulated futures account keyed by its API key.

    ``balances``: asset -> wallet balance (only USDT is used as margin);
    ``leverage``: symbol -> int (default 20); ``positions``: symbol -> Position;
    ``open_orders``: order id -> Order; ``order_ids``: every order id, oldest first;
    ``fills``: every Fill, oldest first; ``client_ids``: client order id -> the
    latest order id that used it.
    """

    api_key: str
    api_secret: str
    balances: dict[str, Decimal]
    created: int
    leverage: dict[str, int] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    open_orders: dict[int, Order] = field(default_factory=dict)
    order_ids: list[int] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    client_ids: dict[str, int] = field(default_factory=dict)
    update_time: int = 0
    legs: dict[int, Leg] = field(default_factory=dict)        # every leg, by leg id
    income: list[IncomeRow] = field(default_factory=list)     # funding rows, oldest first

    def position(self, symbol: str) -> Position:
        """The position row for ``symbol`` (created flat on first use)."""
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position(symbol)
        return pos

    def leverage_of(self, symbol: str) -> int:
        """Leverage for ``symbol`` (default 20)."""
        return self.leverage.get(symbol, 20)

    @property
    def wallet(self) -> Decimal:
        """USDT wallet balance."""
        return self.balances.get(MARGIN_ASSET, ZERO)


# ---- events published by the engine to its listeners -------------------------------

@dataclass(frozen=True)
class OrderEvent:
    """An order changed. ``exec_type``: NEW, TRADE, CANCELED or EXPIRED; ``fill`` is
    set for TRADE. ``order`` is the live object: read it synchronously."""

    order: Order
    exec_type: str
    time: int
    fill: Fill | None = None


@dataclass(frozen=True)
class AccountEvent:
    """Balance and/or positions of an account changed. ``reason`` e.g. ORDER,
    DEPOSIT; ``symbols`` lists the positions that changed (may be empty)."""

    account: Account
    reason: str
    time: int
    symbols: tuple[str, ...] = ()
    balance_change: Decimal = ZERO


@dataclass(frozen=True)
class LeverageEvent:
    """The leverage of ``symbol`` changed for ``account``."""

    account: Account
    symbol: str
    leverage: int
    time: int


@dataclass(frozen=True)
class LegEvent:
    """A leg was placed or changed status (``leg`` is the live object)."""

    leg: Leg
    time: int


@dataclass(frozen=True)
class MarginCallEvent:
    """The venue warns ``account`` that ``symbols`` near liquidation."""

    account: Account
    symbols: tuple[str, ...]
    time: int


@dataclass(frozen=True)
class FundingEvent:
    """Funding was charged or paid: one ``IncomeRow`` per position."""

    account: Account
    row: IncomeRow
    time: int


@dataclass(frozen=True)
class PriceEvent:
    """The mark/last price of ``symbol`` is now ``price`` (ms ``time``)."""

    symbol: str
    price: Decimal
    time: int


class EngineError(Exception):
    """A request the engine refuses. ``reason`` is a protocol-neutral word that each
    protocol layer maps to its own code:

    unknown_account, invalid_symbol, invalid_side, invalid_type, invalid_tif,
    invalid_quantity, quantity_too_large, invalid_price, precision,
    price_too_high, price_too_low, min_notional, insufficient_margin,
    reduce_only_rejected, duplicate_client_order_id, unknown_order,
    invalid_leverage, order_not_open.

    ``detail`` carries numbers for messages (e.g. ``{"min_notional": "100"}``).
    """

    def __init__(self, reason: str, message: str = "", **detail: str) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.detail = detail
