"""RateGovernor: budgets, priority for orders, back-off after 429/418."""
from __future__ import annotations

import pytest

from exchanges.errors import IpBanned, RateLimited
from exchanges.governor import ORDER, QUERY, Governors, RateGovernor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_after_a_429_nothing_is_sent_until_retry_after() -> None:
    clock = Clock()
    gov = RateGovernor("binance", clock=clock)
    gov.before(QUERY)
    gov.on_limited(RateLimited("binance", -1003, "too many", 429, retry_after_ms=2000))
    for priority in (QUERY, ORDER):
        with pytest.raises(RateLimited) as e:
            gov.before(priority)
        assert e.value.code is None and 1900 <= e.value.retry_after_ms <= 2001
    clock.now += 2.1
    gov.before(ORDER)
    stats = gov.stats()
    assert stats["refused_locally"] == 2 and stats["limited_by_exchange"] == 1
    assert stats["requests"] == 2 and stats["blocked_for_ms"] == 0


def test_a_ban_is_reported_as_a_ban_and_lasts() -> None:
    clock = Clock()
    gov = RateGovernor("binance", clock=clock)
    gov.on_limited(IpBanned("binance", -1003, "banned", 418, retry_after_ms=120_000))
    clock.now += 60
    with pytest.raises(IpBanned):
        gov.before(ORDER)
    assert gov.stats()["banned"] is True


def test_queries_stop_at_their_share_and_orders_keep_the_rest() -> None:
    gov = RateGovernor("binance", weight_limit=100, query_share=0.8)
    gov.after(79)
    gov.before(QUERY)
    gov.after(80)
    with pytest.raises(RateLimited) as e:
        gov.before(QUERY)
    assert 0 < e.value.retry_after_ms <= 60_001
    gov.before(ORDER)  # orders still go
    assert gov.stats()["used_weight_1m"] == 80


def test_one_governor_per_venue() -> None:
    govs = Governors()
    assert govs.get("binance", False) is govs.get("binance", False)
    assert govs.get("binance", True) is not govs.get("binance", False)
    assert set(govs.stats()) == {"binance", "binance-testnet"}
