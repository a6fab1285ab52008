"""PUT /api/positions/protection body and the protection answer (CONTRACT.md, "Protection:
stop-loss, take-profit, trailing stop"). A leg given as ``null`` is removed, a leg not
named is kept: the request model tells them apart through ``model_fields_set``."""
from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator

from services.schemas.fields import Id, Symbol, check_decimal
from services.schemas.out import DecimalOut, Ms, Out
from services.schemas.requests import Strict

LegStatusValue = Literal["pending", "active", "triggered", "canceled", "failed"]


class TriggerLeg(Strict):
    """A stop-loss or take-profit: ``trigger_price`` a decimal string."""

    trigger_price: Decimal

    @field_validator("trigger_price", mode="before")
    @classmethod
    def _dec(cls, v: object) -> Decimal:
        return check_decimal(v)


class TrailingLeg(Strict):
    """A trailing stop: ``callback_rate`` in percent (``"1.5"`` = 1.5 %), optional
    ``activation_price`` (none: it trails from the mark price at once)."""

    callback_rate: Decimal
    activation_price: Decimal | None = None

    @field_validator("callback_rate", "activation_price", mode="before")
    @classmethod
    def _dec(cls, v: object, info) -> Decimal | None:  # type: ignore[no-untyped-def]
        return None if v is None and info.field_name == "activation_price" else check_decimal(v)


class ProtectionSet(Strict):
    """PUT /api/positions/protection. ``mode`` and ``working_type`` default to those of
    the symbol's live legs, else ``exchange`` and ``MARK_PRICE``."""

    key_id: Id
    symbol: Symbol
    stop_loss: TriggerLeg | None = None
    take_profit: TriggerLeg | None = None
    trailing_stop: TrailingLeg | None = None
    working_type: Literal["MARK_PRICE", "CONTRACT_PRICE"] | None = None
    mode: Literal["exchange", "server"] | None = None

    def named_legs(self) -> dict[str, TriggerLeg | TrailingLeg | None]:
        """The legs the body names (a ``null`` one included: it is to be removed)."""
        return {k: getattr(self, k) for k in ("stop_loss", "take_profit", "trailing_stop")
                if k in self.model_fields_set}


class Leg(Out):
    """One leg: ``trigger_price`` (stop-loss, take-profit) or ``callback_rate`` (percent)
    and ``activation_price`` (trailing stop); the others null."""

    trigger_price: DecimalOut | None
    callback_rate: DecimalOut | None
    activation_price: DecimalOut | None
    status: LegStatusValue
    client_order_id: str
    order_id: str | None = Field(description="null until the exchange has it")
    error_code: str | None
    updated_at: Ms


class ProtectionLegs(Out):
    """The three legs, each null when there is none."""

    stop_loss: Leg | None
    take_profit: Leg | None
    trailing_stop: Leg | None


class Protection(Out):
    """A position's protection: ``side`` the position it protects."""

    key_id: int
    symbol: str
    side: Literal["LONG", "SHORT"]
    mode: Literal["exchange", "server"]
    working_type: Literal["MARK_PRICE", "CONTRACT_PRICE"]
    legs: ProtectionLegs
    updated_at: Ms
