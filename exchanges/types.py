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

    ``reason`` says why the venue made the fill when it was not an order of ours:
    ``None`` for an ordinary fill, ``"liquidation"`` (Binance client order id
    ``autoclose-...``, Bybit ``execType`` ``BustTrade``) or ``"adl"`` (Binance
    ``adl_autoclose``, Bybit ``AdlTrade``). See ``FILL_REASON_*``. A fill of a
    triggered protection leg keeps ``None`` here: the ledger knows the leg by its
    client order id (the adapters cannot tell a leg's kind from the fill alone).
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
    reason: str | None = None


FILL_REASON_LIQUIDATION = "liquidation"
FILL_REASON_ADL = "adl"


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


# ---- protection legs (exchange-held stop-loss / take-profit / trailing stop) ----

class ProtectionKind(str, Enum):
    """What a protection leg does. Binance algo ``type``: STOP_MARKET /
    TAKE_PROFIT_MARKET / TRAILING_STOP_MARKET; Bybit ``stopOrderType``: StopLoss /
    TakeProfit / TrailingStop."""

    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    TRAILING_STOP = "trailing_stop"


class ProtectionStatus(str, Enum):
    """One leg state for both venues.

    ``new``: held, waiting for its trigger (Binance algoStatus NEW; Bybit
    ``Untriggered``). ``triggered``: fired, its market order is being sent or filled
    (Binance TRIGGERING/TRIGGERED; Bybit ``Triggered``). ``filled``: its order filled
    (Binance FINISHED with an executed quantity; Bybit ``Filled``). ``canceled``: removed
    by a user or by the venue when the position ended (Binance CANCELED; Bybit
    ``Cancelled`` / ``Deactivated``). ``expired``: the venue dropped it (Binance EXPIRED,
    REJECTED; Bybit ``Rejected``).
    """

    NEW = "new"
    TRIGGERED = "triggered"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """True when the leg can no longer fire."""
        return self in (ProtectionStatus.FILLED, ProtectionStatus.CANCELED,
                        ProtectionStatus.EXPIRED)


class WorkingType(str, Enum):
    """The price a trigger watches. Values are Binance's ``workingType``;
    Bybit ``triggerBy`` ``MarkPrice`` maps to MARK_PRICE, ``LastPrice`` to
    CONTRACT_PRICE (``IndexPrice`` is not offered)."""

    MARK_PRICE = "MARK_PRICE"
    CONTRACT_PRICE = "CONTRACT_PRICE"


@dataclass(frozen=True)
class ProtectionLeg:
    """A stop-loss, take-profit or trailing stop held by the exchange for a position.

    A leg always closes the whole position and never opens or flips one
    (Binance ``closePosition=true``; Bybit ``tpslMode=Full``).

    Fields:
        kind: ProtectionKind.
        symbol: e.g. ``"BTCUSDT"``.
        position_side: ``"LONG"`` or ``"SHORT"``, the position it protects (the leg's
            order side is the opposite: SELL for a LONG).
        status: ProtectionStatus.
        trigger_price: the stop or take-profit level (Decimal), ``None`` for a
            trailing stop not yet activated on a venue that does not report one.
        callback_rate: trailing stop callback in percent (``Decimal("1.5")`` = 1.5 %),
            Binance ``callbackRate``; ``None`` otherwise (Bybit keeps a distance).
        trailing_distance: Bybit ``trailingStop``, a price distance; ``None`` on Binance.
        activation_price: trailing stop activation (Binance ``activatePrice``, Bybit
            ``activePrice``), or ``None`` (active at once).
        working_type: WorkingType of the trigger.
        client_order_id: ours (Binance ``clientAlgoId``). On Bybit, whose legs are
            position attributes without a client id, the adapter derives a stable id
            ``"<symbol>-<kind>"`` (see ``exchanges.bybit.mapping.bybit_leg_id``).
        order_id: the venue's id (Binance ``algoId``; Bybit the conditional order's
            ``orderId``), ``""`` until known.
        order_side: ``"BUY"`` or ``"SELL"``, the side of the closing order.
        triggered_order_id: the market order the trigger created (Binance ``ai``
            / ``actualOrderId``; Bybit the same ``orderId``), or ``None``.
        avg_price, filled_quantity: of that order when the venue reports them,
            else ``Decimal(0)``.
        updated_at: ms UTC of the last change.
    """

    kind: ProtectionKind
    symbol: str
    position_side: str
    status: ProtectionStatus
    trigger_price: Decimal | None
    callback_rate: Decimal | None
    activation_price: Decimal | None
    working_type: WorkingType
    client_order_id: str
    order_id: str
    updated_at: int
    order_side: str = ""
    trailing_distance: Decimal | None = None
    triggered_order_id: str | None = None
    avg_price: Decimal = Decimal(0)
    filled_quantity: Decimal = Decimal(0)


@dataclass(frozen=True)
class ProtectionLegUpdate:
    """A protection leg changed (Binance ``ALGO_UPDATE``; Bybit a conditional order on
    the ``order`` topic with ``stopOrderType`` StopLoss/TakeProfit/TrailingStop).
    ``event_time`` ms UTC."""

    leg: ProtectionLeg
    event_time: int


@dataclass(frozen=True)
class MarginCall:
    """The venue warns that a position nears liquidation (Binance ``MARGIN_CALL``, one
    per position in ``p[]``). ``margin_ratio`` is not sent by Binance per position; the
    figures are the venue's: ``position_amount`` signed, ``mark_price``,
    ``maintenance_margin`` (``mm``), ``unrealized_pnl`` (``up``),
    ``cross_wallet_balance`` (``cw``, ``None`` when absent). ``event_time`` ms UTC."""

    symbol: str
    position_side: str
    position_amount: Decimal
    margin_type: str
    mark_price: Decimal
    unrealized_pnl: Decimal
    maintenance_margin: Decimal
    cross_wallet_balance: Decimal | None
    event_time: int


@dataclass(frozen=True)
class FundingFee:
    """A funding payment on a position. ``amount`` is signed as the wallet sees it:
    negative when paid, positive when received (Binance ``ACCOUNT_UPDATE`` reason
    ``FUNDING_FEE`` balance change ``bc`` / income ``FUNDING_FEE``; Bybit execution
    ``execType`` ``Funding``, whose ``execFee`` is positive when paid, so negated).

    ``id`` is unique per venue and account: Binance income ``tranId`` (REST,
    ``get_funding_fees``) or ``"FUNDING_FEE-<asset>-<T>"`` built from the stream
    event's transaction time ``T`` (the stream carries no tranId, so a stream row and
    the income row of one payment have different ids: treat the income history as
    the record and match a stream row to it by ``time_ms``, ``asset`` and ``amount``);
    Bybit ``execId`` (same on the stream and in ``/v5/execution/list``).
    ``time_ms`` ms UTC. ``symbol`` is ``""`` when the venue does not name it (a
    Binance stream event on a cross position carries no ``P``).
    """

    symbol: str
    amount: Decimal
    asset: str
    time_ms: int
    id: str


StreamEvent = Union[OrderEvent, FillEvent, AccountEvent, StreamExpired,
                    ProtectionLegUpdate, MarginCall, FundingFee]


@dataclass(frozen=True)
class VenueEndpoints:
    """Where one venue lives: ``rest_url`` like ``https://fapi.binance.com`` and
    ``ws_url`` like ``wss://fstream.binance.com`` (no trailing slash)."""

    rest_url: str
    ws_url: str
    extra: dict = field(default_factory=dict)
