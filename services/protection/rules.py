"""The checks a protection request passes before anything is written or sent.

Each failure is a ``ValidationFailed`` (HTTP 400) naming the field
(``stop_loss.trigger_price``, ``trailing_stop.callback_rate`` ...):

- a trigger on the wrong side of the mark price: a LONG's stop-loss must be below the
  mark and its take-profit above; a SHORT's the reverse (a trigger already crossed
  would fire at once: Binance answers ``-2021`` "Order would immediately trigger",
  Bybit ``10001``). A trailing stop's activation price is on the profit side (above
  the mark for a LONG, below for a SHORT) for the same reason;
- a price that is not a multiple of the symbol's tick size (Binance ``PRICE_FILTER``
  ``tickSize``, Bybit ``priceFilter.tickSize``);
- a ``callback_rate`` (percent) outside the venue's range (``rate_range``: the
  venue's ``ProtectionSpec``).

Prices are Decimals, rates in percent (``Decimal("1.5")`` = 1.5 %).
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from exchanges.errors import UnsupportedExchange
from exchanges.venues import venue
from services.errors import ValidationFailed


@dataclass(frozen=True)
class RateRange:
    """Inclusive bounds of a trailing stop's callback rate, in percent."""

    low: Decimal
    high: Decimal


# Without a venue range of its own (Bybit v5 "Set Trading Stop": ``trailingStop`` is a
# price distance), the rate is any percentage below 100 whose distance (callback_rate %
# of the activation price, of the mark when there is none) comes to at least one tick;
# the adapter sends that distance rounded to the tick (docs/protection.md).
OPEN_RANGE = RateRange(Decimal("0.001"), Decimal(99))


def rate_range(exchange: str) -> RateRange:
    """The venue's callback-rate range (``VenueSpec.protection``: Binance New Algo
    Order TRAILING_STOP_MARKET, "callbackRate min 0.1, max 10 where 1 for 1%")."""
    try:
        spec = venue(exchange).protection
    except UnsupportedExchange:  # an exchange without a registry entry: the open range
        return OPEN_RANGE
    if spec is None or spec.callback_rate_min is None or spec.callback_rate_max is None:
        return OPEN_RANGE
    return RateRange(spec.callback_rate_min, spec.callback_rate_max)


def trails_by_distance(exchange: str) -> bool:
    """True when the venue trails by a price distance (Bybit), not by a rate."""
    try:
        spec = venue(exchange).protection
    except UnsupportedExchange:
        return False
    return spec is not None and spec.trailing_by == "distance"


@dataclass(frozen=True)
class LegSpec:
    """One requested leg: ``kind`` stop_loss / take_profit / trailing_stop;
    ``trigger_price`` or ``callback_rate`` (+ optional ``activation_price``)."""

    kind: str
    trigger_price: Decimal | None = None
    callback_rate: Decimal | None = None
    activation_price: Decimal | None = None


def _fail(field: str, message: str) -> ValidationFailed:
    return ValidationFailed("validation_error", f"{field}: {message}", field)


def check_tick(value: Decimal, tick: Decimal, field: str) -> None:
    """Raises ValidationFailed when ``value`` is not a whole number of ``tick``."""
    if tick > 0 and value % tick != 0:
        raise _fail(field, f"must be a multiple of the tick size {tick.normalize():f}")


def check_leg(leg: LegSpec, side: str, mark: Decimal, tick: Decimal, exchange: str) -> None:
    """Validate one leg for a ``side`` (LONG/SHORT) position at mark price ``mark``
    on ``exchange`` whose symbol's tick size is ``tick``. Raises ValidationFailed
    naming the field."""
    long = side == "LONG"
    if leg.kind in ("stop_loss", "take_profit"):
        field = f"{leg.kind}.trigger_price"
        assert leg.trigger_price is not None
        price = leg.trigger_price
        check_tick(price, tick, field)
        below = (leg.kind == "stop_loss") == long  # LONG stop / SHORT take-profit sit below
        if below and price >= mark:
            raise _fail(field, f"must be below the mark price {mark.normalize():f} for a "
                               f"{side} position's {leg.kind.replace('_', '-')}")
        if not below and price <= mark:
            raise _fail(field, f"must be above the mark price {mark.normalize():f} for a "
                               f"{side} position's {leg.kind.replace('_', '-')}")
        return
    rate = leg.callback_rate
    assert rate is not None
    bounds = rate_range(exchange)
    if not bounds.low <= rate <= bounds.high:
        raise _fail("trailing_stop.callback_rate",
                    f"must be between {bounds.low} and {bounds.high} percent on {exchange}")
    if leg.activation_price is not None:
        field = "trailing_stop.activation_price"
        check_tick(leg.activation_price, tick, field)
        if long and leg.activation_price <= mark:
            raise _fail(field, f"must be above the mark price {mark.normalize():f} for a LONG position")
        if not long and leg.activation_price >= mark:
            raise _fail(field, f"must be below the mark price {mark.normalize():f} for a SHORT position")
    if trails_by_distance(exchange) and tick > 0:
        base = leg.activation_price or mark
        if base * rate / Decimal(100) < tick:
            raise _fail("trailing_stop.callback_rate",
                        f"gives a distance under one tick ({tick.normalize():f}) of "
                        f"{base.normalize():f} on {exchange}")
