"""Venue-independent checks of a protection leg request, shared by the adapters.

A leg closes the whole position it protects (``position_side`` LONG or SHORT) with an
order on the opposite side. Local refusals raise ``InvalidOrder`` with ``code`` None
(nothing reached the venue).
"""
from __future__ import annotations

from decimal import Decimal

from exchanges.errors import InvalidOrder
from exchanges.spec import ProtectionSpec
from exchanges.types import ProtectionKind, WorkingType

POSITION_SIDES = ("LONG", "SHORT")


def closing_side(position_side: str) -> str:
    """SELL for a LONG, BUY for a SHORT. Raises ValueError for anything else."""
    if position_side not in POSITION_SIDES:
        raise ValueError(f"position_side must be LONG or SHORT, not {position_side!r}")
    return "SELL" if position_side == "LONG" else "BUY"


def check_leg_args(exchange: str, spec: ProtectionSpec, kind: ProtectionKind,
                   position_side: str, trigger_price: Decimal | None,
                   callback_rate: Decimal | None, activation_price: Decimal | None,
                   working_type: WorkingType) -> None:
    """Refuse a request the venue would refuse for its shape: a stop-loss/take-profit
    without a positive ``trigger_price`` or with trailing arguments; a trailing stop
    without a ``callback_rate`` in the venue's range (``spec``) or with a trigger price;
    a working type the venue does not offer. Raises InvalidOrder (code None) naming
    the argument; ValueError for a bad ``position_side`` or ``kind``."""
    closing_side(position_side)
    kind = ProtectionKind(kind)
    if WorkingType(working_type) not in spec.working_types:
        raise InvalidOrder(exchange, None, f"working_type {working_type} is not offered")
    if kind is ProtectionKind.TRAILING_STOP:
        if trigger_price is not None:
            raise InvalidOrder(exchange, None, "trigger_price is not used by a trailing stop")
        if callback_rate is None or callback_rate <= 0:
            raise InvalidOrder(exchange, None, "callback_rate must be a positive percentage")
        low, high = spec.callback_rate_min, spec.callback_rate_max
        if (low is not None and callback_rate < low) or (high is not None and callback_rate > high):
            raise InvalidOrder(exchange, None,
                               f"callback_rate must be within {low}..{high} percent")
        if activation_price is not None and activation_price <= 0:
            raise InvalidOrder(exchange, None, "activation_price must be positive")
        return
    if trigger_price is None or trigger_price <= 0:
        raise InvalidOrder(exchange, None, "trigger_price must be positive")
    if callback_rate is not None or activation_price is not None:
        raise InvalidOrder(exchange, None,
                           "callback_rate / activation_price are for trailing stops only")
