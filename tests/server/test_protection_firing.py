"""The batch fire of server-mode rules (``RuleFiring.fire_many``) on a real database with
a recording venue client: the exit row and its first attempt are committed before the
order is sent (pending-first), the leg's compare-and-set and one-cancels-the-others
happen with it, a leg that is no longer active gets no exit, and another process's
account stream finds the rule's kind of an exit's fill by the exit id."""
from __future__ import annotations

import time
from decimal import Decimal as D
from types import SimpleNamespace
from unittest.mock import Mock

import pytest
from sqlalchemy import select

from exchanges.errors import InvalidOrder
from exchanges.types import Position, SymbolRules, Ticker
from models import Database, ExchangeKey, Exit, ProtectionLeg, Trade, User
from services.exits import ExitService, ExitSettings
from services.protection import ProtectionService
from services.protection.firing import LegRef


def _sync(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def _long(size: str, side: str = "LONG") -> Position:
    return Position("BTCUSDT", side, D(size), D("60000"), D("58900"), D(0), D(20), D(0), "cross")


class Venue:
    """A venue client: a LONG BTCUSDT of 0.010; every order refused (the exit then
    fails after its one attempt), each noted with what the database held when it was
    sent."""

    def __init__(self, db: Database) -> None:
        self.db, self.sent, self.calls = db, [], []  # type: ignore[var-annotated]
        self.held = [_long("0.010")]  # what the venue holds

    def get_positions(self) -> list[Position]:
        self.calls.append("positions")
        return list(self.held)

    def get_ticker(self, symbol: str) -> Ticker:
        self.calls.append("ticker")
        return Ticker(symbol, D("58905"), D("58900"), D("58890"), D("58910"), 0)

    def get_symbol_rules(self, symbol: str) -> SymbolRules:
        return SymbolRules(symbol, D("0.1"), D("0.001"), D("0.001"), D("1000"), D("5"))

    def create_order(self, req):  # type: ignore[no-untyped-def]
        with self.db.session() as s:
            row = s.scalars(select(Exit).where(Exit.client_order_ids == req.client_order_id)).first()
            trades = [t.status for t in s.scalars(select(Trade))]
        self.sent.append((req, row, trades))
        raise InvalidOrder("binance", -2021, "refused by the test venue")


@pytest.fixture
def world(database_url):  # type: ignore[no-untyped-def]
    db = Database(database_url)
    with db.transaction() as s:
        s.add(User(id=1, username="p", password_hash="x"))
        s.flush()
        s.add(ExchangeKey(id=1, user_id=1, exchange="binance", api_key="k", api_secret_encrypted=b"x"))
        s.flush()
        s.add(Trade(user_id=1, key_id=1, exchange="binance", symbol="BTCUSDT", side="BUY",
                    order_type="MARKET", quantity=D("0.010"), client_order_id="entry-1",
                    status="open", filled_quantity=D("0.010"), open_quantity=D("0.010")))
        for i, (kind, price) in enumerate((("stop_loss", "59000"), ("take_profit", "62000")), 1):
            s.add(ProtectionLeg(id=i, user_id=1, key_id=1, exchange="binance", symbol="BTCUSDT",
                                side="LONG", kind=kind, mode="server", working_type="MARK_PRICE",
                                trigger_price=D(price), status="active", client_order_id=f"leg-{i}"))
    venue = Venue(db)
    exits = ExitService(db, lambda key: venue, _sync, lambda env: None,
                        ExitSettings(max_retries=0, max_slippage_ticks=3, deadline_s=5))
    svc = ProtectionService(db, lambda key: venue, exits, Mock(), _sync, time.sleep)
    yield SimpleNamespace(db=db, venue=venue, svc=svc)
    db.dispose()


REF = LegRef(leg_id=1, user_id=1, key_id=1, symbol="BTCUSDT", kind="stop_loss")


def test_a_fired_rule_writes_its_exit_and_first_attempt_before_the_order_is_sent(world) -> None:  # type: ignore[no-untyped-def]
    world.svc.firing.fire_many([(REF, D("58900"), time.perf_counter())])
    assert world.venue.calls.count("ticker") == 1
    [(req, row, trades)] = world.venue.sent      # one exit, one attempt (max_retries=0)
    assert req.time_in_force == "FOK" and req.side == "SELL" and req.reduce_only
    assert req.price == D("58890") and req.quantity == D("0.010")  # the best bid
    assert row is not None, "the exit row was not committed before the order was sent"
    assert row.status == "working" and row.attempts == 1 and row.first_price == D("58890")
    assert req.client_order_id.startswith(f"exit-{row.id}-0-")
    assert trades == ["closing"]
    with world.db.session() as s:
        legs = {leg.kind: leg for leg in s.scalars(select(ProtectionLeg))}
        exit_ = s.get(Exit, row.id)
    assert legs["stop_loss"].exit_id == row.id and legs["stop_loss"].fired_price == D("58900")
    assert legs["stop_loss"].status == "failed"  # its exit failed (every order refused)
    assert legs["take_profit"].status == "canceled"
    assert legs["take_profit"].error_message == "one-cancels-the-others: stop_loss fired"
    assert exit_ is not None and exit_.status == "failed"


def test_a_rule_no_longer_active_gets_no_exit(world) -> None:  # type: ignore[no-untyped-def]
    with world.db.transaction() as s:
        leg = s.get(ProtectionLeg, 1)
        assert leg is not None
        leg.status = "canceled"                  # removed through another process
    world.svc.firing.fire_many([(REF, D("58900"), time.perf_counter())])
    assert world.venue.sent == [] and world.venue.calls == []
    with world.db.session() as s:
        assert s.scalars(select(Exit)).all() == []


def test_another_process_finds_the_rules_kind_of_an_exits_fill(world) -> None:  # type: ignore[no-untyped-def]
    world.svc.firing.fire_many([(REF, D("58900"), time.perf_counter())])
    [(req, row, _)] = world.venue.sent
    stream_side = ProtectionService(world.db, lambda key: world.venue, None, Mock(), _sync, time.sleep)
    fill = SimpleNamespace(client_order_id=req.client_order_id, order_id="77", symbol="BTCUSDT")
    assert stream_side.fill_reason(1, fill) == "stop_loss"
    manual = SimpleNamespace(client_order_id=f"exit-{row.id + 1}-0-abcdef12", order_id="78",
                             symbol="BTCUSDT")
    assert stream_side.fill_reason(1, manual) is None  # no rule's exit (a manual close)


# ---- the positions of a live account stream instead of a venue call -----------------

def _fire(world) -> None:  # type: ignore[no-untyped-def]
    world.svc.firing.fire_many([(REF, D("58900"), time.perf_counter())])


def _legs(world) -> dict:  # type: ignore[no-untyped-def]
    with world.db.session() as s:
        return {leg.kind: (leg.status, leg.error_code) for leg in s.scalars(select(ProtectionLeg))}


def test_a_live_stream_s_positions_are_taken_without_asking_the_venue(world) -> None:  # type: ignore[no-untyped-def]
    asked: list[int] = []
    # the stream's size differs from the venue's: the exit's quantity says whose was used
    world.svc.live_positions = lambda key_id: asked.append(key_id) or [_long("0.007")]
    _fire(world)
    assert asked == [1]
    assert world.venue.calls == ["ticker"]           # no positionRisk: only the book
    [(req, row, _)] = world.venue.sent
    assert req.quantity == D("0.007") and req.reduce_only and req.time_in_force == "FOK"
    assert row is not None and row.quantity == D("0.007")
    assert world.svc.firing.keys_streamed == 1 and world.svc.firing.keys_asked == 0


def test_without_a_live_current_stream_the_venue_is_asked(world) -> None:  # type: ignore[no-untyped-def]
    world.svc.live_positions = lambda key_id: None   # no stream here, or a stale one
    _fire(world)
    assert world.venue.calls.count("positions") == 1 and world.venue.calls.count("ticker") == 1
    [(req, _, _)] = world.venue.sent
    assert req.quantity == D("0.010")                 # the venue's size
    assert world.svc.firing.keys_streamed == 0 and world.svc.firing.keys_asked == 1


def test_a_position_the_stream_reports_gone_is_not_closed(world) -> None:  # type: ignore[no-untyped-def]
    world.venue.held = []                             # the venue agrees: flat
    world.svc.live_positions = lambda key_id: []      # the stream: no open position
    _fire(world)
    assert world.venue.sent == []                     # no order at all
    assert world.venue.calls.count("positions") == 1  # the stream's word checked once
    assert _legs(world) == {"stop_loss": ("canceled", "no_position"),
                            "take_profit": ("canceled", None)}
    with world.db.session() as s:
        assert s.scalars(select(Exit)).all() == []
        assert [t.status for t in s.scalars(select(Trade))] == ["open"]


def test_a_position_turned_to_the_other_side_is_not_closed_by_the_long_s_rule(world) -> None:  # type: ignore[no-untyped-def]
    world.venue.held = [_long("0.010", "SHORT")]
    world.svc.live_positions = lambda key_id: [_long("0.010", "SHORT")]
    _fire(world)
    assert world.venue.sent == [] and world.venue.calls.count("positions") == 1
    assert _legs(world)["stop_loss"] == ("canceled", "no_position")


def test_a_stream_behind_the_venue_on_a_new_position_does_not_cancel_the_rule(world) -> None:  # type: ignore[no-untyped-def]
    """The stream has not handled the frame of a position opened just before its rule
    was set: its "gone" is checked with the venue, which holds it: it is closed."""
    world.svc.live_positions = lambda key_id: []
    _fire(world)
    assert world.venue.calls.count("positions") == 1
    [(req, row, _)] = world.venue.sent
    assert req.quantity == D("0.010") and row is not None and row.status == "working"
    assert _legs(world)["stop_loss"] == ("failed", "exit_failed")  # the test venue refuses


def test_the_account_stream_lends_its_positions_only_when_live_and_current() -> None:
    import time as clock

    from services.account_state import AccountState
    from services.account_stream import LIVE_STALE_S, AccountStream

    state = AccountState(1, 1, "binance", False)
    stream = AccountStream(state, get_client=Mock(), realized_pnl=lambda: None,  # type: ignore[arg-type]
                           publish=lambda e: None, on_fill=lambda f: None, sleep=lambda s: None)
    assert stream.live_positions() is None                     # starting: no stream yet
    stream.stream, stream.status = Mock(), "live"  # type: ignore[assignment]
    stream._away_since = None                                  # waiting in recv
    assert stream.live_positions() is None                     # no snapshot yet
    state.set_positions([_long("0.010"), Position("ETHUSDT", "SHORT", D(0), D(1), D(1), D(0),
                                                  D(1), D(0), "cross")])
    assert stream.live_positions() == [_long("0.010")]          # the open ones
    stream._away_since = clock.monotonic() - LIVE_STALE_S - 0.5  # busy away from its socket
    assert stream.live_positions() is None
    stream._away_since = clock.monotonic()                     # just handled a frame
    assert stream.live_positions() == [_long("0.010")]
    stream.status = "polling"                                  # the socket dropped
    assert stream.live_positions() is None
    stream.status, stream.stream = "live", None
    assert stream.live_positions() is None
