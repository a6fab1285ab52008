"""The protection request checks (each a 400 naming the field) and the answer's view."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from models import ProtectionLeg
from services.errors import ValidationFailed
from services.protection.rules import LegSpec, check_leg, rate_range
from services.protection.view import position_fields, protection_view

TICK = D("0.1")


def _refused(spec: LegSpec, side: str, exchange: str = "binance", mark: str = "100") -> ValidationFailed:
    with pytest.raises(ValidationFailed) as e:
        check_leg(spec, side, D(mark), TICK, exchange)
    return e.value


@pytest.mark.parametrize("spec,side,field,words", [
    (LegSpec("stop_loss", D("100.5")), "LONG", "stop_loss.trigger_price", "below the mark price 100"),
    (LegSpec("stop_loss", D(100)), "LONG", "stop_loss.trigger_price", "below"),
    (LegSpec("take_profit", D("99.5")), "LONG", "take_profit.trigger_price", "above"),
    (LegSpec("stop_loss", D("99.5")), "SHORT", "stop_loss.trigger_price", "above"),
    (LegSpec("take_profit", D("100.5")), "SHORT", "take_profit.trigger_price", "below"),
    (LegSpec("stop_loss", D("99.05")), "LONG", "stop_loss.trigger_price", "tick size 0.1"),
    (LegSpec("trailing_stop", callback_rate=D("0.09")), "LONG", "trailing_stop.callback_rate",
     "between 0.1 and 10 percent on binance"),
    (LegSpec("trailing_stop", callback_rate=D("10.01")), "LONG", "trailing_stop.callback_rate", "between"),
    (LegSpec("trailing_stop", callback_rate=D(1), activation_price=D(99)), "LONG",
     "trailing_stop.activation_price", "above the mark"),
    (LegSpec("trailing_stop", callback_rate=D(1), activation_price=D(101)), "SHORT",
     "trailing_stop.activation_price", "below the mark"),
    (LegSpec("trailing_stop", callback_rate=D(1), activation_price=D("101.01")), "LONG",
     "trailing_stop.activation_price", "tick size"),
])
def test_each_refusal_names_its_field(spec, side, field, words) -> None:  # type: ignore[no-untyped-def]
    err = _refused(spec, side)
    assert err.field == field and words in err.message and err.message.startswith(field)


def test_valid_legs_pass_on_both_sides() -> None:
    for spec, side in ((LegSpec("stop_loss", D("99.9")), "LONG"), (LegSpec("take_profit", D("100.1")), "LONG"),
                       (LegSpec("stop_loss", D("100.1")), "SHORT"), (LegSpec("take_profit", D("99.9")), "SHORT"),
                       (LegSpec("trailing_stop", callback_rate=D("0.1")), "LONG"),
                       (LegSpec("trailing_stop", callback_rate=D(10), activation_price=D(90)), "SHORT")):
        check_leg(spec, side, D(100), TICK, "binance")


def test_bybit_trails_by_distance_of_at_least_one_tick() -> None:
    assert rate_range("binance").high == D(10)
    check_leg(LegSpec("trailing_stop", callback_rate=D(25)), "LONG", D(100), TICK, "bybit")
    err = _refused(LegSpec("trailing_stop", callback_rate=D("0.05")), "LONG", "bybit")
    assert err.field == "trailing_stop.callback_rate" and "under one tick" in err.message


def _row(i: int, kind: str, status: str, **kw) -> ProtectionLeg:  # type: ignore[no-untyped-def]
    return ProtectionLeg(id=i, key_id=1, symbol="BTCUSDT", side="LONG", kind=kind, mode="server",
                         working_type="MARK_PRICE", status=status, client_order_id=f"c{i}",
                         created_at=i, updated_at=i, **kw)


def test_view_hides_an_earlier_protections_final_legs_and_canceled_ones() -> None:
    rows = [_row(1, "stop_loss", "triggered", trigger_price=D(90)),
            _row(2, "take_profit", "canceled", trigger_price=D(120)),
            _row(3, "take_profit", "active", trigger_price=D(130))]
    view = protection_view(1, "BTCUSDT", rows)
    assert view is not None
    assert view["legs"]["stop_loss"] is None                     # of the previous position
    assert view["legs"]["take_profit"]["trigger_price"] == "130"
    fired = protection_view(1, "BTCUSDT", rows[:2])
    assert fired["legs"]["stop_loss"]["status"] == "triggered" and fired["legs"]["take_profit"] is None
    deleted = protection_view(1, "BTCUSDT", rows[:2], show_canceled=True)
    assert deleted["legs"]["take_profit"]["status"] == "canceled"
    assert position_fields(rows) == {"stop_loss": None, "take_profit": "130", "trailing_stop": None}
