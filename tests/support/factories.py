"""Small domain objects shared by unit tests."""
from __future__ import annotations

from decimal import Decimal

from exchanges.types import Position


def btc_long(upnl: str, mark: str = "101") -> Position:
    """0.01 BTCUSDT LONG entered at 100, marked at ``mark``, with ``upnl`` unrealized
    PnL (decimal strings), leverage 20, liquidation price 50, cross margin."""
    return Position("BTCUSDT", "LONG", Decimal("0.01"), Decimal("100"), Decimal(mark),
                    Decimal(upnl), Decimal("20"), Decimal("50"), "cross")
