"""Public price streams of both venues against the simulator."""
from __future__ import annotations

from decimal import Decimal

import pytest

from exchanges.factory import create_market_stream
from exchanges.types import VenueEndpoints


def _ticks_until(stream, predicate, tries: int = 20):  # type: ignore[no-untyped-def]
    for _ in range(tries):
        for tick in stream.recv(1.0):
            if predicate(tick):
                return tick
    raise AssertionError("no matching tick")


@pytest.fixture(params=["binance", "bybit"])
def eth_stream(request, sim):  # type: ignore[no-untyped-def]
    """``(exchange, stream)``: a connected ETHUSDT stream that has seen the mark 3400."""
    sim.set_price("ETHUSDT", "3400")
    stream = create_market_stream(request.param, "ETHUSDT", VenueEndpoints(sim.url, sim.ws_url))
    stream.connect()
    try:
        _ticks_until(stream, lambda t: t.mark_price == Decimal("3400"))
        yield request.param, stream
    finally:
        stream.close()


def test_price_moves_arrive_as_ticks(sim, eth_stream) -> None:  # type: ignore[no-untyped-def]
    exchange, stream = eth_stream
    sim.set_price("ETHUSDT", "3411.5")
    tick = _ticks_until(stream, lambda t: t.mark_price == Decimal("3411.5"))
    assert tick.symbol == "ETHUSDT" and tick.ts > 0
    tick = _ticks_until(stream, lambda t: t.bid == Decimal("3411.49"))
    assert tick.ask == Decimal("3411.51") and tick.mark_price == Decimal("3411.5")
    if exchange == "bybit":   # Binance's mark price stream has no last trade price
        assert tick.last_price == Decimal("3411.5")


def test_recv_with_no_time_left_keeps_the_stream(sim, eth_stream) -> None:  # type: ignore[no-untyped-def]
    """``recv(0)`` (a deadline just passed) is "no tick yet", not a lost connection."""
    _, stream = eth_stream
    for _ in range(20):
        # the check is that this does not raise: each call raised ExchangeUnavailable
        # (BlockingIOError) before the fix and the stream was gone
        stream.recv(0.0)
    sim.set_price("ETHUSDT", "3401")
    # the same socket, never reconnected, still delivers the next move
    _ticks_until(stream, lambda t: t.mark_price == Decimal("3401"))
