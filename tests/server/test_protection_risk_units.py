"""Units of issue 20's third round: ``FillTags`` (a leg's fill known before it is
pushed) and ``RiskAlerts`` (liquidation-near once per position until it moves out;
liquidation / ADL once per venue order), without processes."""
from __future__ import annotations

from decimal import Decimal as D
from types import SimpleNamespace

from exchanges.types import Fill
from services.protection.fill_tags import FillTags
from services.protection.risk import RiskAlerts, Watched


def _fill(order_id: str = "1", coid: str | None = None, reason: str | None = None,
          symbol: str = "BTCUSDT") -> Fill:
    return Fill("t" + order_id, order_id, coid, symbol, "SELL", D("100"), D("1"), D("0"),
                "USDT", D("0"), False, 0, reason)


def test_fill_tags_by_client_id_order_id_and_exit() -> None:
    tags = FillTags()
    row = SimpleNamespace(mode="exchange", key_id=1, kind="stop_loss", client_order_id="psl-a",
                          venue_leg_id="psl-a", order_id="777")
    tags.note_rows([row])
    assert tags.reason(1, _fill("5", "psl-a")) == "stop_loss"      # Binance: the algo's id
    assert tags.reason(1, _fill("777", "")) == "stop_loss"         # Bybit: same orderId
    assert tags.reason(2, _fill("777", "")) is None                # another key
    assert tags.reason(1, _fill("9", "mine-1")) is None            # an ordinary order
    tags.note_leg(1, SimpleNamespace(kind=SimpleNamespace(value="take_profit"),
                                     client_order_id="ptp-b", order_id="42",
                                     triggered_order_id="43"))
    assert tags.reason(1, _fill("43", "")) == "take_profit"        # ALGO_UPDATE ai
    # server mode: the exit's fills while the rule's exit works, then by exit id
    assert tags.reason(1, _fill("50", "exit-12-0-abc")) is None
    tags.firing(1, "BTCUSDT", "trailing_stop")
    assert tags.reason(1, _fill("51", "exit-12-0-abc")) == "trailing_stop"
    tags.fired_done(1, "BTCUSDT")
    assert tags.reason(1, _fill("52", "exit-12-1-def")) == "trailing_stop"
    assert tags.reason(1, _fill("53", "exit-13-0-aaa")) is None


def test_fill_tags_bounded() -> None:
    tags = FillTags(max_ids=3)
    for i in range(5):
        tags.note_ids(1, "stop_loss", f"id{i}")
    assert tags.reason(1, _fill("x", "id0")) is None and tags.reason(1, _fill("x", "id4"))


class _Spawn:
    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        self.calls.append((fn.__name__, args))


def test_liquidation_near_once_until_it_moves_out() -> None:
    spawn = _Spawn()
    risk = RiskAlerts(None, None, None, spawn, lambda *a: None)  # type: ignore[arg-type]
    market = ("binance", False, "BTCUSDT")
    risk._watched[market] = {(1, "BTCUSDT"): Watched(7, 1, "BTCUSDT", "LONG", D("50000"), D("10"))}
    assert risk.check(market, D("60000")) == []          # 16.7 % away
    assert len(risk.check(market, D("55000"))) == 1      # 9.1 %: enters
    assert risk.check(market, D("54000")) == []          # still near: once
    assert risk.check(market, D("56000")) == []          # 10.7 %: out
    assert len(risk.check(market, D("55500"))) == 1      # 9.9 %: in again
    assert [c[0] for c in spawn.calls] == ["_near", "_near"]


def test_liquidation_alert_once_per_venue_order() -> None:
    spawn = _Spawn()
    risk = RiskAlerts(None, None, None, spawn, lambda *a: None)  # type: ignore[arg-type]
    risk.on_fill(7, 1, _fill("9", "autoclose-1", "liquidation"))
    risk.on_fill(7, 1, _fill("9", "autoclose-1", "liquidation"))   # a second part / replay
    risk.on_fill(7, 1, _fill("10", "adl_autoclose", "adl"))
    risk.on_fill(7, 1, _fill("11", "mine", None))
    assert [c[0] for c in spawn.calls] == ["_venue_close", "_venue_close"]
