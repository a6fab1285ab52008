"""Venue-independent checks of a protection leg request, shared by the adapters, and
how a service uses the protection-leg part of ``exchanges.base.ExchangeClient``.

A leg closes the whole position it protects (``position_side`` LONG or SHORT) with an
order on the opposite side. Local refusals raise ``InvalidOrder`` with ``code`` None
(nothing reached the venue).

Using legs (both adapters, see ``exchanges.types.ProtectionLeg``):

- Ids. Binance: the ``client_order_id`` you pass is the leg's id (``clientAlgoId``),
  ``order_id`` is the ``algoId``. Bybit keeps one leg of each kind per position and
  no client id: the leg's id is ``"<symbol>-<kind>"`` (``bybit.mapping.bybit_leg_id``),
  ``order_id`` the conditional order's ``orderId``; placing a kind that is already held
  modifies it in place (same ``order_id``). Ask ``venue(name).protection`` for the
  differences (``legs_are_position_attributes``, ``trailing_by``, the callback range).
- Placing: write your row first; on ExchangeTimeout ask ``get_protection_leg`` with
  the leg's id (the venue may hold it). ``open_protection_legs`` lists what is held.
- Events: ``ProtectionLegUpdate`` (Binance ALGO_UPDATE; Bybit ``order`` topic) with
  status NEW -> TRIGGERED -> FILLED, or CANCELED / EXPIRED. When a position ends by
  any path, both venues drop its other legs themselves (Binance EXPIRED, Bybit
  Deactivated -> CANCELED): the update arrives; a cancel that races it gets
  ProtectionLegNotFound.
- The fill of a fired leg is an ordinary fill (``reason`` None): link it by order id.
  Binance: ``fill.order_id == leg.triggered_order_id`` (ALGO_UPDATE ``ai`` /
  ``actualOrderId``; the simulator also gives that order the ``clientAlgoId`` as its
  client id, which real Binance does not promise). Bybit: ``fill.order_id ==
  leg.order_id`` (the conditional order becomes the market order).
- Reconciling after a gap: a leg you hold as active that ``open_protection_legs`` no
  longer lists -> ``get_protection_leg``: FILLED (its close happened: find the fills
  by ``triggered_order_id``), CANCELED / EXPIRED (re-place it while the position
  lasts), ProtectionLegNotFound (never placed, or too old for the venue to keep).
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
