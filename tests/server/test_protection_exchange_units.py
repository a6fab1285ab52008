"""ExchangeLegs against a scripted venue on a real database: a placement that times out
but was held by the venue is found at once; one the venue never got stays pending; a
refused leg puts the venue back as it was."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal as D

import pytest
from sqlalchemy import select

from exchanges import types as ex
from exchanges.errors import ExchangeTimeout, InvalidOrder, ProtectionLegNotFound
from models import Database, ExchangeKey, ProtectionLeg, User
from services.protection.exchange_mode import ExchangeLegs
from services.protection.rules import LegSpec


class ScriptedVenue:
    """Holds legs by client id; ``outcomes`` scripts each placement: ``"ok"``,
    ``"timeout-held"`` (held, but the reply is lost), ``"timeout-lost"``, ``"refuse"``."""

    def __init__(self, outcomes: list[str]) -> None:
        self.outcomes, self.held, self.calls = outcomes, {}, []

    def place_protection_leg(self, symbol, position_side, kind, client_order_id, *, trigger_price=None,  # type: ignore[no-untyped-def]
                             callback_rate=None, activation_price=None, working_type=None):
        outcome = self.outcomes.pop(0)
        self.calls.append(("place", kind.value, outcome))
        if outcome == "refuse":
            raise InvalidOrder("binance", -4130, "an open stop with closePosition exists")
        leg = ex.ProtectionLeg(kind, symbol, position_side, ex.ProtectionStatus.NEW, trigger_price,
                               callback_rate, activation_price, ex.WorkingType.MARK_PRICE,
                               client_order_id, f"algo-{len(self.calls)}", 1)
        if outcome != "timeout-lost":
            self.held[client_order_id] = leg
        if outcome.startswith("timeout"):
            raise ExchangeTimeout("binance", None, "read timed out")
        return leg

    def cancel_protection_leg(self, symbol, client_order_id):  # type: ignore[no-untyped-def]
        self.calls.append(("cancel", client_order_id))
        leg = self.held.pop(client_order_id, None)
        if leg is None:
            raise ProtectionLegNotFound("binance", -2011, "unknown")
        return replace(leg, status=ex.ProtectionStatus.CANCELED)

    def get_protection_leg(self, symbol, client_order_id):  # type: ignore[no-untyped-def]
        if client_order_id not in self.held:
            raise ProtectionLegNotFound("binance", -2013, "unknown")
        return self.held[client_order_id]


@pytest.fixture
def setup(database_url):  # type: ignore[no-untyped-def]
    db = Database(database_url)
    with db.transaction() as s:
        user = User(username="u1", password_hash="x")
        s.add(user)
        s.flush()
        key = ExchangeKey(user_id=user.id, exchange="binance", testnet=False, label="",
                          api_key="k", api_secret_encrypted=b"e", status="active")
        s.add(key)
    yield db, key
    db.dispose()


def _rows(db):  # type: ignore[no-untyped-def]
    with db.session() as s:
        return {r.kind + ":" + r.status: r for r in s.scalars(select(ProtectionLeg).order_by(ProtectionLeg.id))}


def test_a_timed_out_placement_the_venue_holds_is_active_at_once(setup) -> None:  # type: ignore[no-untyped-def]
    db, key = setup
    venue = ScriptedVenue(["timeout-held", "ok"])
    legs = ExchangeLegs(db, lambda k: venue, lambda row, leg: None)
    legs.apply(key, "BTCUSDT", "LONG", "MARK_PRICE",
               [LegSpec("stop_loss", D(59000)), LegSpec("take_profit", D(61000))], [])
    rows = _rows(db)
    assert set(rows) == {"stop_loss:active", "take_profit:active"}
    assert rows["stop_loss:active"].order_id == "algo-1"


def test_a_timed_out_placement_the_venue_never_got_stays_pending(setup) -> None:  # type: ignore[no-untyped-def]
    db, key = setup
    venue = ScriptedVenue(["timeout-lost"])
    legs = ExchangeLegs(db, lambda k: venue, lambda row, leg: None)
    with pytest.raises(ExchangeTimeout):
        legs.apply(key, "BTCUSDT", "LONG", "MARK_PRICE",
                   [LegSpec("stop_loss", D(59000)), LegSpec("take_profit", D(61000))], [])
    assert set(_rows(db)) == {"stop_loss:pending", "take_profit:canceled"}


def test_a_refused_leg_puts_the_venue_back(setup) -> None:  # type: ignore[no-untyped-def]
    db, key = setup
    venue = ScriptedVenue(["ok", "ok", "refuse", "ok"])
    legs = ExchangeLegs(db, lambda k: venue, lambda row, leg: None)
    legs.apply(key, "BTCUSDT", "LONG", "MARK_PRICE", [LegSpec("stop_loss", D(59000))], [])
    (old,) = _rows(db).values()
    with pytest.raises(InvalidOrder):
        legs.apply(key, "BTCUSDT", "LONG", "MARK_PRICE",
                   [LegSpec("stop_loss", D(59500)), LegSpec("take_profit", D(61000))], [old])
    held = sorted((leg.kind.value, leg.trigger_price) for leg in venue.held.values())
    assert held == [("stop_loss", D(59000))]       # the old stop again, nothing else
    with db.session() as s:
        statuses = [(r.kind, r.trigger_price, r.status, r.error_code)
                    for r in s.scalars(select(ProtectionLeg).order_by(ProtectionLeg.id))]
    assert statuses == [("stop_loss", D(59000), "canceled", None),
                        ("stop_loss", D(59500), "canceled", None),
                        ("take_profit", D(61000), "failed", "-4130"),
                        ("stop_loss", D(59000), "active", None)]
