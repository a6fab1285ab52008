"""The ordered trigger index: a tick touches only the rules it crossed (counts), fires
each rule on the right side, trails the extreme after activation."""
from __future__ import annotations

from decimal import Decimal as D

from exchanges.types import Ticker
from services.protection.guard import ServerGuard
from services.protection.index import Rule, TriggerIndex


def _far_rules(index: TriggerIndex, n: int) -> None:
    """n LONG stop-losses far below and n LONG take-profits far above 100."""
    for i in range(n):
        index.add(Rule(id=1000 + i, position_side="LONG", kind="stop_loss", trigger_price=D(50) - i))
        index.add(Rule(id=5000 + i, position_side="LONG", kind="take_profit", trigger_price=D(150) + i))


def test_a_tick_touches_only_the_crossed_rules_however_many_are_far() -> None:
    index = TriggerIndex()
    _far_rules(index, 2000)
    index.add(Rule(id=1, position_side="LONG", kind="stop_loss", trigger_price=D(99)))
    index.add(Rule(id=2, position_side="SHORT", kind="stop_loss", trigger_price=D(101)))
    for price in ("100", "99.5", "100.5", "100.9"):
        result = index.on_tick(D(price))
        assert result.fired == [] and result.touched == 0
    assert index.touched_total == 0
    result = index.on_tick(D("98.9"))
    assert [r.id for r in result.fired] == [1] and result.touched == 1
    result = index.on_tick(D(101))   # a SHORT's stop fires at its level exactly
    assert [r.id for r in result.fired] == [2] and result.touched == 1
    assert len(index) == 4000 and index.touched_total == 2


def test_sides_long_and_short_stop_loss_and_take_profit() -> None:
    index = TriggerIndex()
    index.add(Rule(id=1, position_side="LONG", kind="take_profit", trigger_price=D(110)))
    index.add(Rule(id=2, position_side="SHORT", kind="take_profit", trigger_price=D(90)))
    index.add(Rule(id=3, position_side="SHORT", kind="stop_loss", trigger_price=D(105)))
    assert index.on_tick(D("104.9")).fired == []
    assert [r.id for r in index.on_tick(D(111)).fired] == [3, 1]  # both crossed, nearest first
    assert [r.id for r in index.on_tick(D(89)).fired] == [2]
    assert len(index) == 0


def test_long_trailing_activates_then_follows_the_high_then_fires() -> None:
    index = TriggerIndex()
    _far_rules(index, 500)
    t = Rule(id=7, position_side="LONG", kind="trailing_stop", callback_rate=D(1),
             activation_price=D(105))
    index.add(t)
    assert index.on_tick(D(104)).touched == 0 and t.extreme is None
    r = index.on_tick(D(106))            # activation
    assert r.moved == [t] and t.extreme == D(106) and r.touched == 1
    r = index.on_tick(D(105))            # 106 * 0.99 = 104.94: not yet
    assert r.fired == [] and r.touched == 0
    r = index.on_tick(D(110))            # new high: only this rule moves
    assert r.moved == [t] and r.touched == 1 and t.extreme == D(110)
    assert index.on_tick(D("108.95")).fired == []   # 110 * 0.99 = 108.9
    r = index.on_tick(D("108.9"))
    assert r.fired == [t] and r.touched == 1
    assert 7 not in index and len(index) == 1000


def test_short_trailing_without_activation_trails_from_the_mark_at_once() -> None:
    index = TriggerIndex()
    t = Rule(id=8, position_side="SHORT", kind="trailing_stop", callback_rate=D(2))
    index.add(t, price=D(100))
    assert t.extreme == D(100)
    assert index.on_tick(D("101.9")).fired == []     # stop at 102
    r = index.on_tick(D(90))                        # new low: stop at 91.8
    assert r.moved == [t] and t.extreme == D(90)
    assert index.on_tick(D("91.7")).fired == []
    assert index.on_tick(D("91.8")).fired == [t]


def test_trailing_rule_restored_with_its_extreme_keeps_it() -> None:
    index = TriggerIndex()
    t = Rule(id=9, position_side="LONG", kind="trailing_stop", callback_rate=D(1),
             activation_price=D(105), extreme=D(120))   # as re-armed after a restart
    index.add(t)
    assert index.on_tick(D("118.9")).fired == []         # 120 * 0.99 = 118.8
    assert index.on_tick(D("118.8")).fired == [t]


class FakeHub:
    """Records the guard's (un)subscriptions and hands ticks to its callback."""

    def __init__(self) -> None:
        self.subscribed: dict = {}

    def subscribe(self, exchange, testnet, symbol, subscriber, on_tick):  # type: ignore[no-untyped-def]
        self.subscribed[(exchange, testnet, symbol, subscriber)] = on_tick

    def unsubscribe(self, exchange, testnet, symbol, subscriber):  # type: ignore[no-untyped-def]
        self.subscribed.pop((exchange, testnet, symbol, subscriber), None)


def _tick(mark: str, last: str | None = None) -> Ticker:
    return Ticker("BTCUSDT", D(last or mark), D(mark), None, None, 0)


def test_guard_fires_once_per_position_disarms_the_siblings_and_leaves_the_stream() -> None:
    hub, fired = FakeHub(), []
    guard = ServerGuard(hub, lambda rule, price: fired.append((rule.id, price)))
    market = ("binance", False, "BTCUSDT")
    guard.arm(market, "MARK_PRICE", 7, Rule(1, "LONG", "stop_loss", trigger_price=D(90)))
    guard.arm(market, "MARK_PRICE", 7, Rule(2, "LONG", "take_profit", trigger_price=D(110)))
    guard.arm(market, "CONTRACT_PRICE", 7, Rule(3, "LONG", "trailing_stop", callback_rate=D(5)),
              mark=D(100))
    guard.arm(market, "MARK_PRICE", 8, Rule(4, "LONG", "stop_loss", trigger_price=D(80)))
    (on_tick,) = hub.subscribed.values()
    on_tick(_tick("95", last="96"))
    assert fired == [] and guard.count() == 4
    on_tick(_tick("89", last="89"))   # key 7's stop-loss and trailing stop (96*0.95=91.2) cross
    assert len(fired) == 1 and fired[0][0] in (1, 3)
    assert guard.count() == 1 and guard.armed(4)   # key 7's other legs are gone (OCO)
    on_tick(_tick("79"))
    assert [f[0] for f in fired][1:] == [4] and guard.count() == 0
    assert hub.subscribed == {}                    # no rule left: the stream is left


def test_guard_keeps_moved_extremes_for_persisting() -> None:
    hub = FakeHub()
    guard = ServerGuard(hub, lambda rule, price: None)
    market = ("bybit", True, "BTCUSDT")
    guard.arm(market, "MARK_PRICE", 1, Rule(5, "LONG", "trailing_stop", callback_rate=D(1),
                                            activation_price=D(101)))
    guard.handle_tick(market, _tick("100"))
    assert guard.take_dirty() == {}
    guard.handle_tick(market, _tick("102"))
    guard.handle_tick(market, _tick("103"))
    assert guard.take_dirty() == {5: D(103)} and guard.take_dirty() == {}


def test_many_far_rules_cost_nothing_per_tick_in_the_guard() -> None:
    hub = FakeHub()
    guard = ServerGuard(hub, lambda rule, price: None)
    market = ("binance", False, "BTCUSDT")
    for i in range(1000):
        guard.arm(market, "MARK_PRICE", i, Rule(10_000 + i, "LONG", "stop_loss", trigger_price=D(10)))
        guard.arm(market, "MARK_PRICE", i, Rule(20_000 + i, "LONG", "trailing_stop",
                                                callback_rate=D(1), activation_price=D(500)))
    for k in range(200):
        guard.handle_tick(market, _tick(str(100 + k % 7)))
    assert guard.touched_total() == 0 and guard.count() == 2000
