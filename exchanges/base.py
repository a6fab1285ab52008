"""The one interface every exchange adapter implements.

Adapters are synchronous (blocking I/O through ``requests``/``websocket-client``);
under eventlet's monkey patching that I/O is cooperative, so the server may call
them from green threads. Every method raises only ``exchanges.errors`` classes.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Protocol, runtime_checkable

from exchanges.types import (
    Balance,
    Fill,
    FundingFee,
    Order,
    OrderRequest,
    Position,
    ProtectionKind,
    ProtectionLeg,
    StreamEvent,
    SymbolRules,
    Ticker,
    WorkingType,
)


@runtime_checkable
class UserStream(Protocol):
    """One live connection to an account's private push stream.

    Life cycle: ``connect()`` (obtain the credential, e.g. a Binance listenKey, and
    open the socket), then ``recv()`` in a loop, ``keepalive()`` on a timer, and
    ``close()``. A dropped socket raises ``ExchangeUnavailable`` from ``recv``;
    the caller reconnects (the reconnect loop lives in ``services``).
    """

    keepalive_interval_s: float

    def connect(self) -> None:
        """Open the stream. Raises AuthFailed, ExchangeUnavailable, ExchangeTimeout."""

    def recv(self, timeout_s: float) -> list[StreamEvent]:
        """Wait up to ``timeout_s`` seconds for frames; return the parsed events
        (empty list on timeout or an ignored frame). Raises ExchangeUnavailable when
        the connection is gone."""

    def recv_waiting(self) -> list[StreamEvent]:
        """The events of frames that have already arrived, without waiting for the
        network and without yielding to other green threads when none has (``[]``):
        the rest of a burst after a ``recv``. Raises ExchangeUnavailable like ``recv``."""

    def keepalive(self) -> None:
        """Extend the stream credential (Binance ``PUT /fapi/v1/listenKey``)."""

    def close(self) -> None:
        """Close the socket and release the credential; never raises."""


@runtime_checkable
class MarketStream(Protocol):
    """A public price stream of one symbol (no key). ``connect()``, then ``recv()``
    in a loop, then ``close()``; a dropped socket raises ExchangeUnavailable."""

    symbol: str

    def connect(self) -> None:
        """Open the stream. Raises ExchangeUnavailable, ExchangeTimeout."""

    def recv(self, timeout_s: float) -> list[Ticker]:
        """Ticks received within ``timeout_s`` seconds (empty on timeout)."""

    def close(self) -> None:
        """Close the socket; never raises."""


@runtime_checkable
class ExchangeClient(Protocol):
    """A signed REST client for one API key on one venue (mainnet or testnet).

    Attributes:
        exchange: ``"binance"`` or ``"bybit"``.
        testnet: whether the key belongs to the venue's testnet.
        created_at: construction time, ms UTC.
    """

    exchange: str
    testnet: bool
    created_at: int

    def is_alive(self) -> bool:
        """Cheap check that the client may be reused (not closed, session usable).
        No network I/O."""

    def validate_credentials(self) -> None:
        """One signed call proving the key works. Raises AuthFailed (with the
        exchange's code), ExchangeUnavailable, ExchangeTimeout."""

    def server_time(self) -> int:
        """The exchange's clock, ms UTC."""

    def get_balance(self) -> Balance:
        """Account totals and assets (Binance ``GET /fapi/v2/account``)."""

    def get_positions(self) -> list[Position]:
        """Open (non-zero) positions (Binance ``GET /fapi/v3/positionRisk``)."""

    def get_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Open orders (Binance ``GET /fapi/v1/openOrders``). Never the protection legs
        (``open_protection_legs`` lists those)."""

    def get_order(self, symbol: str, client_order_id: str | None = None,
                  order_id: str | None = None) -> Order:
        """One order by client or exchange id. Raises OrderNotFound."""

    def create_order(self, request: OrderRequest) -> Order:
        """Send a new order. Raises InvalidOrder, InsufficientBalance, ExchangeTimeout
        (fate unknown: reconcile by ``client_order_id``)."""

    def cancel_order(self, symbol: str, client_order_id: str | None = None,
                     order_id: str | None = None) -> Order:
        """Cancel an open order; returns it as CANCELED. Raises OrderNotFound when it
        is unknown or already final (a cancel that raced a fill: query it again)."""

    def get_fills(self, symbol: str, order_id: str | None = None,
                  start_time: int | None = None, limit: int = 500) -> list[Fill]:
        """Executions of the account on ``symbol`` (Binance ``GET /fapi/v1/userTrades``)."""

    def get_symbol_rules(self, symbol: str) -> SymbolRules:
        """Tick, lot and notional rules (cached by the adapter). Raises InvalidOrder
        for an unknown symbol."""

    def get_ticker(self, symbol: str) -> Ticker:
        """Mark and last price of ``symbol``."""

    # ---- protection legs (exchange-held SL / TP / trailing stop) ----------------

    def place_protection_leg(self, symbol: str, position_side: str, kind: ProtectionKind,
                             client_order_id: str, *,
                             trigger_price: Decimal | None = None,
                             callback_rate: Decimal | None = None,
                             activation_price: Decimal | None = None,
                             working_type: WorkingType = WorkingType.MARK_PRICE,
                             ) -> ProtectionLeg:
        """Have the exchange hold a leg that closes the whole ``position_side``
        position of ``symbol`` when triggered, never opening or flipping one.

        ``trigger_price`` for STOP_LOSS / TAKE_PROFIT; ``callback_rate`` (percent,
        e.g. ``Decimal("1.5")``) and optional ``activation_price`` for TRAILING_STOP.
        ``client_order_id`` is ours (``^[.A-Z:/a-z0-9_-]{1,36}$``); on Bybit, whose
        legs are position attributes, the returned leg's ``client_order_id`` is the
        stable ``"<symbol>-<kind>"`` id and the given one is only logged.

        Binance: ``POST /fapi/v1/algoOrder`` (algoType=CONDITIONAL, closePosition=true).
        Bybit: ``POST /v5/position/trading-stop`` (tpslMode=Full); the trailing
        ``callback_rate`` becomes a distance of ``callback_rate`` % of the activation
        price (or of the mark price when there is none), rounded to the tick size.

        Returns the leg as held (status NEW). Raises InvalidOrder with the venue's
        code (a trigger on the wrong side: Binance -2021, Bybit 10001; no position:
        Binance -4509, Bybit 10001; code None for a local check such as a callback
        rate outside ``spec.protection``'s range), ExchangeTimeout (fate unknown: ask
        ``get_protection_leg``), RateLimited, AuthFailed.
        """

    def cancel_protection_leg(self, symbol: str, client_order_id: str) -> ProtectionLeg:
        """Remove a held leg; returns it as CANCELED. Raises ProtectionLegNotFound
        when it is unknown or already final (it may have fired: query it).
        Binance ``DELETE /fapi/v1/algoOrder``; Bybit trading-stop with the leg's
        field set to ``"0"``."""

    def open_protection_legs(self, symbol: str | None = None) -> list[ProtectionLeg]:
        """Legs the exchange holds now (status NEW). Binance
        ``GET /fapi/v1/openAlgoOrders``; Bybit ``GET /v5/order/realtime``
        conditional orders with ``stopOrderType`` StopLoss/TakeProfit/TrailingStop."""

    def get_protection_leg(self, symbol: str, client_order_id: str) -> ProtectionLeg:
        """One leg by client id, final ones included (Binance ``GET /fapi/v1/algoOrder``;
        Bybit open conditional orders, then ``/v5/order/history``). Raises
        ProtectionLegNotFound."""

    def get_funding_fees(self, symbol: str | None = None, start_time: int | None = None,
                         limit: int = 1000) -> list[FundingFee]:
        """Funding payments, oldest first (Binance ``GET /fapi/v1/income``
        incomeType=FUNDING_FEE; Bybit ``GET /v5/execution/list`` execType=Funding)."""

    def user_stream(self) -> UserStream:
        """A new, not yet connected private stream for this key."""

    def close(self) -> None:
        """Release HTTP sessions; never raises."""
