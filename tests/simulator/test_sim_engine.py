"""The protocol-neutral engine in-process: position arithmetic, margin, matching, events."""
from __future__ import annotations

from decimal import Decimal as D

import pytest

from exchanges.simulator.engine import Engine
from exchanges.simulator.models import AccountEvent, EngineError, OrderEvent, PriceEvent

SYM = "BTCUSDT"


@pytest.fixture
def engine():
    eng = Engine(now_ms=lambda: 1_700_000_000_000)
    eng.create_account("k", "s", {"USDT": D("10000")})
    eng.set_price(SYM, D("60000"))
    return eng


def market(engine, side, qty, **kw):
    return engine.place_order("k", SYM, side, "MARKET", D(qty), **kw)


def test_weighted_entry_realized_pnl_and_flip(engine):
    acct = engine.account("k")
    market(engine, "BUY", "0.010")                       # at 60000.1
    engine.set_price(SYM, D("61000"))
    market(engine, "BUY", "0.010")                       # at 61000.1
    pos = acct.position(SYM)
    assert pos.amount == D("0.020") and pos.entry_price == D("60500.1")
    engine.set_price(SYM, D("62000"))
    market(engine, "SELL", "0.030")                      # at 61999.9: close 0.02, open 0.01 short
    assert pos.amount == D("-0.010") and pos.entry_price == D("61999.9")
    assert pos.cum_realized == (D("61999.9") - D("60500.1")) * D("0.020")
    fees = sum(f.commission for f in acct.fills)
    assert acct.wallet == D("10000") + pos.cum_realized - fees
    assert engine.unrealized(acct) == (D("62000") - D("61999.9")) * D("-0.010")


def test_available_balance_and_liquidation_estimate(engine):
    acct = engine.account("k")
    market(engine, "BUY", "1.000")                        # 60000.1 notional, 3000 margin
    assert engine.position_margin(acct) == D("3000")
    engine.place_order("k", SYM, "BUY", "LIMIT", D("0.100"), price=D("50000"),
                       time_in_force="GTC")
    assert engine.order_margin(acct) == D("250")
    wallet = acct.wallet
    assert engine.available(acct) == wallet + D("-0.1") - D("3000") - D("250")
    liq = engine.liquidation_price(acct, SYM)
    # at the liquidation price the margin balance equals the maintenance margin
    assert abs((wallet + (liq - D("60000.1"))) - liq * D("0.004")) < D("0.0001")
    assert D("50000") < liq < D("60000")


def test_resting_orders_fill_at_their_limit_in_price_order(engine):
    ids = [engine.place_order("k", SYM, "BUY", "LIMIT", D("0.002"), price=D(p),
                              time_in_force="GTC").order_id for p in ("59000", "59500")]
    events = []
    engine.add_listener(events.append)
    engine.set_price(SYM, D("59400"))
    fills = [e.fill for e in events if isinstance(e, OrderEvent) and e.fill]
    assert [(f.order_id, f.price, f.maker) for f in fills] == [(ids[1], D("59500"), True)]
    assert isinstance(events[0], PriceEvent)
    engine.set_price(SYM, D("58000"))
    assert engine.orders[ids[0]].status == "FILLED"
    assert engine.resting_count() == 0


def test_trade_event_then_account_event(engine):
    events = []
    engine.add_listener(events.append)
    market(engine, "SELL", "0.002")
    kinds = [(type(e).__name__, getattr(e, "exec_type", None)) for e in events]
    assert kinds == [("OrderEvent", "NEW"), ("OrderEvent", "TRADE"), ("AccountEvent", None)]
    assert isinstance(events[2], AccountEvent) and events[2].symbols == (SYM,)


def test_a_failing_listener_does_not_stop_the_others(engine):
    seen = []

    def broken(event):
        raise RuntimeError("boom")
    engine.add_listener(broken)
    engine.add_listener(seen.append)
    market(engine, "BUY", "0.002")
    assert len(seen) == 3


def test_resting_reduce_only_expires_when_the_position_is_gone(engine):
    market(engine, "BUY", "0.010")
    ro = engine.place_order("k", SYM, "SELL", "LIMIT", D("0.010"), price=D("61000"),
                            time_in_force="GTC", reduce_only=True)
    market(engine, "SELL", "0.010")                       # flat before the limit is reached
    engine.set_price(SYM, D("61000"))
    assert ro.status == "EXPIRED" and ro.executed_qty == 0


def test_gtx_expires_when_marketable_and_rests_otherwise(engine):
    post = engine.place_order("k", SYM, "BUY", "LIMIT", D("0.002"), price=D("60000.1"),
                              time_in_force="GTX")
    assert post.status == "EXPIRED"
    rest = engine.place_order("k", SYM, "BUY", "LIMIT", D("0.002"), price=D("59990"),
                              time_in_force="GTX")
    assert rest.status == "NEW" and rest.is_open


@pytest.mark.parametrize("qty,price,reason", [
    ("0", None, "invalid_quantity"), ("0.0001", None, "precision"),
    ("0.010", "70000", "price_too_high"), ("0.010", "59999.95", "precision"),
])
def test_validation_reasons(engine, qty, price, reason):
    with pytest.raises(EngineError) as info:
        engine.place_order("k", SYM, "BUY", "LIMIT", D(qty), price=D(price or "59000"),
                           time_in_force="GTC")
    assert info.value.reason == reason


def test_fill_order_checks_quantity_and_state(engine):
    order = engine.place_order("k", SYM, "SELL", "LIMIT", D("0.010"), price=D("61000"),
                               time_in_force="GTC")
    with pytest.raises(EngineError):
        engine.fill_order(order.order_id, D("0.020"))
    engine.fill_order(order.order_id, D("0.004"), D("61000.5"))
    assert order.status == "PARTIALLY_FILLED" and order.avg_price == D("61000.5")
    engine.fill_order(order.order_id)
    assert order.status == "FILLED" and order.executed_qty == D("0.010")
    with pytest.raises(EngineError) as info:
        engine.fill_order(order.order_id)
    assert info.value.reason == "order_not_open"


def test_ids_increase(engine):
    a, b = market(engine, "BUY", "0.002"), market(engine, "BUY", "0.002")
    assert b.order_id > a.order_id
    fills = engine.account("k").fills
    assert fills[1].trade_id > fills[0].trade_id


def test_a_move_s_legs_can_be_fired_one_at_a_time(engine):
    """``set_price(fire_legs=False)`` moves the price and fires nothing; ``crossed_legs``
    lists the legs the move crossed, in the order they were placed; ``fire_leg`` fires
    one (once): what ``POST /_sim/price`` does, writing each one's frames before the
    next fires."""
    engine.create_account("k2", "s", {"USDT": D("10000")})
    legs = []
    for key in ("k", "k2"):
        engine.place_order(key, SYM, "BUY", "MARKET", D("0.010"))
        legs.append(engine.place_leg(key, "binance", SYM, "SELL", "STOP_MARKET",
                                     client_id=f"sl-{key}", trigger_price=D("59000")))
    assert engine.set_price(SYM, D("58900"), fire_legs=False) == D("58900")
    assert [leg.status for leg in legs] == ["NEW", "NEW"]
    assert engine.crossed_legs(SYM) == legs
    assert engine.fire_leg(legs[0]) is True
    assert legs[0].status == "FINISHED" and legs[1].status == "NEW"
    assert engine.account("k").position(SYM).amount == 0
    assert engine.fire_leg(legs[0]) is False                  # fired already
    assert engine.crossed_legs(SYM) == [legs[1]]
    engine.set_price(SYM, D("58800"))                         # the default fires them
    assert legs[1].status == "FINISHED"
