"""Binance USD-M mark price stream for one symbol.

Wire (developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams/Mark-Price-Stream):
``{ws_url}/market/ws/<symbol lower>@markPrice@1s`` pushes every second
``{"e": "markPriceUpdate", "E": ms, "s": "BTCUSDT", "p": mark, "i": index,
"P": est. settle, "r": funding rate, "T": next funding ms}``. The stream carries
no last price or book, so those Ticker fields are None (never invented).
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from exchanges.binance.errors import EXCHANGE
from exchanges.errors import ExchangeUnavailable
from exchanges.types import Ticker
from exchanges.wsjson import JsonWebSocket


def parse_mark_price(msg: dict) -> Ticker | None:
    """A ``markPriceUpdate`` frame -> Ticker(mark_price, ts=E); None for other frames.
    Raises ExchangeUnavailable for a malformed update."""
    if not isinstance(msg, dict) or msg.get("e") != "markPriceUpdate":
        return None
    try:
        return Ticker(symbol=str(msg["s"]), last_price=None, mark_price=Decimal(str(msg["p"])),
                      bid=None, ask=None, ts=int(msg["E"]))
    except (KeyError, InvalidOperation, ValueError, TypeError) as e:
        raise ExchangeUnavailable(EXCHANGE, None, "malformed markPriceUpdate") from e


class BinanceMarkPriceStream:
    """``exchanges.base.MarketStream`` for one symbol (public; no key)."""

    def __init__(self, symbol: str, ws_url: str, timeout_s: float = 10.0) -> None:
        self.symbol = symbol
        self._url = f"{ws_url.rstrip('/')}/market/ws/{symbol.lower()}@markPrice@1s"
        self._timeout_s = timeout_s
        self._ws = JsonWebSocket(EXCHANGE, "mark price stream")

    def connect(self) -> None:
        """Open the socket. Raises ExchangeTimeout, ExchangeUnavailable."""
        self._ws.connect(self._url, self._timeout_s)

    def recv(self, timeout_s: float) -> list[Ticker]:
        """The ticks received within ``timeout_s`` (at most one frame)."""
        tick = parse_mark_price(self._ws.recv_json(timeout_s))
        return [tick] if tick is not None else []

    def close(self) -> None:
        """Close the socket; never raises."""
        self._ws.close()
