"""Normalised, immutable data types shared by every exchange adapter.

Units: money, prices and quantities are ``decimal.Decimal`` (parsed from the
exchange's decimal strings, never via float); times are ``int`` milliseconds since
the Unix epoch, UTC. Sides are ``"BUY"``/``"SELL"`` for orders and
``"LONG"``/``"SHORT"`` for positions. Exchange ids are ``str``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Union


class OrderStatus(str, Enum):
    """One order state enum for every venue (Binance ``X``, Bybit ``orderStatus`` mapped in)."""

    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_final(self) -> bool:
        """True when no further fill can happen."""
        return self in (OrderStatus.FILLED, OrderStatus.CANCELED,
                        OrderStatus.REJECTED, OrderStatus.EXPIRED)


@dataclass(frozen=True)
class AssetBalance:
    """One margin asset of a futures account (e.g. USDT)."""

    asset: str
    wallet_balance: Decimal
    available_balance: Decimal
    unrealized_pnl: Decimal
    margin_balance: Decimal


@dataclass(frozen=True)
class Balance:
    """Account totals plus per-asset rows; ``updated_at`` in ms UTC."""

    total_wallet_balance: Decimal
    total_unrealized_pnl: Decimal
    total_margin_balance: Decimal
    available_balance: Decimal
    assets: tuple[AssetBalance, ...]
    updated_at: int = 0


@dataclass(frozen=True)
class Position:
    """An open position in one-way mode. ``size`` is positive; ``side`` gives the direction.

    ``margin_type`` is ``"cross"`` or ``"isolated"``; ``leverage`` a Decimal (e.g. 20).
    """

    symbol: str
    side: str
    size: Decimal
    entry_price: Decimal
    mark_price: Decimal
    unrealized_pnl: Decimal
    leverage: Decimal
    liquidation_price: Decimal
    margin_type: str
    updated_at: int = 0


@dataclass(frozen=True)
class Order:
    """An order as the exchange reports it.

    ``price`` is ``Decimal(0)`` for MARKET orders; ``avg_price`` ``Decimal(0)`` until
    the first fill; ``time_in_force`` is ``"GTC"``, ``"IOC"``, ``"FOK"`` or ``"GTX"``.
    """

    client_order_id: str
    order_id: str
    symbol: str
    side: str
    type: str
    status: OrderStatus
    price: Decimal
    quantity: Decimal
    filled_quantity: Decimal
    avg_price: Decimal
    time_in_force: str
    reduce_only: bool
    updated_at: int


@dataclass(frozen=True)
class Fill:
    """One execution (trade) of an order. ``trade_id`` is unique per exchange and symbol.

    ``fee`` is positive when paid; ``realized_pnl`` is the exchange's figure
    before fees (Binance ``rp``/``realizedPnl``, Bybit ``execPnl``/``closedPnl``).
    """

    trade_id: str
    order_id: str
    client_order_id: str | None
    symbol: str
    side: str
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_asset: str
    realized_pnl: Decimal
    is_maker: bool
    time: int


@dataclass(frozen=True)
class OrderRequest:
    """What the server asks an exchange to do. ``price`` is required for LIMIT.

    ``time_in_force`` defaults to GTC for LIMIT and is ignored for MARKET.
    ``client_order_id`` matches Binance's ``^[.A-Z:/a-z0-9_-]{1,36}$``.
    """

    symbol: str
    side: str
    type: str
    quantity: Decimal
    client_order_id: str
    price: Decimal | None = None
    time_in_force: str | None = None
    reduce_only: bool = False


@dataclass(frozen=True)
class SymbolRules:
    """Trading rules of a symbol: price ``tick_size``, quantity ``step_size``,
    ``min_qty``/``max_qty`` and ``min_notional`` (quote currency).

    Source: Binance exchangeInfo PRICE_FILTER / LOT_SIZE / MIN_NOTIONAL filters;
    Bybit instruments-info priceFilter / lotSizeFilter.
    """

    symbol: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal


@dataclass(frozen=True)
class Ticker:
    """Market prices of a symbol. A field the source does not carry is None (a mark
    price stream has no book), never a guess. ``ts`` in ms UTC."""

    symbol: str
    last_price: Decimal | None
    mark_price: Decimal
    bid: Decimal | None
    ask: Decimal | None
    ts: int


# ---- user data stream events -------------------------------------------------

@dataclass(frozen=True)
class OrderEvent:
    """An order changed (Binance ORDER_TRADE_UPDATE, Bybit ``order``/``execution``).

    ``fill`` is set when this event reports an execution (Binance ``x == "TRADE"``).
    ``event_time`` in ms UTC (Binance ``E``).
    """

    order: Order
    fill: Fill | None
    event_time: int


@dataclass(frozen=True)
class FillEvent:
    """An execution reported on its own (Bybit ``execution`` topic), not inside an
    order update. ``event_time`` in ms UTC."""

    fill: Fill
    event_time: int


@dataclass(frozen=True)
class WalletUpdate:
    """Wallet balance of one asset after an account change (Binance ``a.B[]``)."""

    asset: str
    wallet_balance: Decimal
    cross_wallet_balance: Decimal


@dataclass(frozen=True)
class PositionUpdate:
    """A changed position (Binance ``a.P[]``). ``amount`` is signed: negative is short;
    zero means the position is closed. No mark price: the stream does not carry it."""

    symbol: str
    amount: Decimal
    entry_price: Decimal
    unrealized_pnl: Decimal
    margin_type: str


@dataclass(frozen=True)
class AccountEvent:
    """Balances and/or positions changed (Binance ACCOUNT_UPDATE; ``reason`` is ``a.m``)."""

    reason: str
    wallets: tuple[WalletUpdate, ...]
    positions: tuple[PositionUpdate, ...]
    event_time: int


@dataclass(frozen=True)
class StreamExpired:
    """The stream's credential lapsed (Binance ``listenKeyExpired``): reconnect."""

    event_time: int


StreamEvent = Union[OrderEvent, FillEvent, AccountEvent, StreamExpired]


@dataclass(frozen=True)
class VenueEndpoints:
    """Where one venue lives: ``rest_url`` like ``https://fapi.binance.com`` and
    ``ws_url`` like ``wss://fstream.binance.com`` (no trailing slash)."""

    rest_url: str
    ws_url: str
    extra: dict = field(default_factory=dict)
