"""The account envelope (CONTRACT.md): the ``balance``, ``positions``, ``pnl`` and
``orders`` snapshots REST serves through these models, and the shape pushes carry.

The push path keeps building its ``data`` dicts in ``services/serialize.py`` (fast);
REST snapshots pass through ``Envelope`` here, and the conformance test validates
pushes' shapes against it too.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, RootModel

from services.schemas.fields import Exchange
from services.schemas.out import DecimalText, Ms, Out, Side


class AssetBalance(Out):
    """One asset of ``balance`` data."""

    asset: str
    wallet_balance: DecimalText
    available_balance: DecimalText
    unrealized_pnl: DecimalText
    margin_balance: DecimalText


class BalanceData(Out):
    """``balance`` data (``services.serialize.balance_data``)."""

    total_wallet_balance: DecimalText
    total_unrealized_pnl: DecimalText
    total_margin_balance: DecimalText
    available_balance: DecimalText
    assets: list[AssetBalance]


class TrailingStop(Out):
    """A position's trailing stop: ``callback_rate`` in percent, ``activation_price``
    (null: trailing from the start)."""

    callback_rate: DecimalText
    activation_price: DecimalText | None


class OpenPosition(Out):
    """One ``positions`` row (``services.serialize.position_row``). A position opened by
    an account event has ``null`` for what the event does not carry (mark price,
    leverage, liquidation price) until the REST completion fills them in."""

    symbol: str
    side: Literal["LONG", "SHORT"]
    size: DecimalText
    entry_price: DecimalText
    mark_price: DecimalText | None
    unrealized_pnl: DecimalText
    leverage: DecimalText | None
    liquidation_price: DecimalText | None
    margin_type: str
    stop_loss: DecimalText | None = Field(default=None, description="the stop-loss trigger price")
    take_profit: DecimalText | None = Field(default=None, description="the take-profit trigger price")
    trailing_stop: TrailingStop | None = None


class PositionPnl(Out):
    """One position of ``pnl`` data; ``roe_pct`` null while the leverage is unknown."""

    symbol: str
    side: Literal["LONG", "SHORT"]
    unrealized_pnl: DecimalText
    roe_pct: DecimalText | None


class PnlData(Out):
    """``pnl`` data (``services.serialize.pnl_data``): realized figures from the ledger."""

    unrealized_pnl: DecimalText
    realized_pnl: DecimalText
    realized_pnl_today: DecimalText
    positions: list[PositionPnl]


class OpenOrder(Out):
    """One ``orders`` row (``services.serialize.order_data``)."""

    client_order_id: str
    order_id: str
    symbol: str
    side: Side
    type: str
    status: str
    price: DecimalText
    quantity: DecimalText
    filled_quantity: DecimalText
    avg_price: DecimalText
    time_in_force: str
    reduce_only: bool
    updated_at: Ms
    trigger_price: DecimalText | None = Field(
        default=None, description="an exchange-held protection leg's trigger; null for plain orders")


class _EnvelopeBase(Out):
    user_id: int
    key_id: int
    exchange: Exchange
    testnet: bool
    epoch: str = Field(description="a new epoch: the server cannot vouch for continuity; seq restarts at 1")
    seq: int = Field(description="grows by one per push of (user, key, type) within an epoch; "
                                 "0 on a REST snapshot fetched from the exchange")
    as_of: Ms
    sent_at: Ms
    source: Literal["stream", "rest", "cache"]
    stale: bool = Field(description="true: the exchange could not be reached; the last known data")


class BalanceEnvelope(_EnvelopeBase):
    """``balance`` push / snapshot."""

    type: Literal["balance"]
    data: BalanceData


class PositionsEnvelope(_EnvelopeBase):
    """``positions`` push / snapshot: open positions only."""

    type: Literal["positions"]
    data: list[OpenPosition]


class PnlEnvelope(_EnvelopeBase):
    """``pnl`` push / snapshot."""

    type: Literal["pnl"]
    data: PnlData


class OrdersEnvelope(_EnvelopeBase):
    """``orders`` push / snapshot: open orders."""

    type: Literal["orders"]
    data: list[OpenOrder]


class Envelope(RootModel[Annotated[BalanceEnvelope | PositionsEnvelope | PnlEnvelope | OrdersEnvelope, Field(discriminator="type")]]):
    """The envelope of an account push, also GET /api/account/{kind} (by ``type``)."""

    @classmethod
    def of(cls, obj: Any) -> dict:
        """A service's envelope dict, checked, as JSON-ready dict. Raises ValidationError."""
        return cls.model_validate(obj).model_dump(mode="json")
