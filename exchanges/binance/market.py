"""Binance USD-M price streams for one symbol: mark price and best bid/ask.

Wire (developers.binance.com, USD-M "WebSocket Market Streams", with the 2026 URL
split): ``{ws_url}/market/ws/<symbol>@markPrice@1s`` pushes every second
``{"e": "markPriceUpdate", "E": ms, "s", "p": mark, ...}``, and
``{ws_url}/public/ws/<symbol>@bookTicker`` pushes every book change
``{"e": "bookTicker", "E": ms, "s", "b": bid, "B", "a": ask, "A"}``. Two sockets,
read alternately with short timeouts. The mark price stream carries no last trade
price, so ``last_price`` stays None (never invented).
"""
from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation

from exchanges.binance.errors import EXCHANGE
from exchanges.errors import ExchangeUnavailable
from exchanges.types import Ticker
from exchanges.wsjson import JsonWebSocket


def parse_mark_price(msg: object) -> Ticker | None:
    """A ``markPriceUpdate`` frame -> Ticker(mark_price, ts=E); None for other frames.
    Raises ExchangeUnavailable for a malformed update."""
    if not isinstance(msg, dict) or msg.get("e") != "markPriceUpdate":
        return None
    try:
        return Ticker(symbol=str(msg["s"]), last_price=None, mark_price=Decimal(str(msg["p"])),
                      bid=None, ask=None, ts=int(msg["E"]))
    except (KeyError, InvalidOperation, ValueError, TypeError) as e:
        raise ExchangeUnavailable(EXCHANGE, None, "malformed markPriceUpdate") from e


def parse_book_ticker(msg: object) -> tuple[Decimal, Decimal, int] | None:
    """A ``bookTicker`` frame -> ``(bid, ask, E)``; None for other frames."""
    if not isinstance(msg, dict) or msg.get("e") != "bookTicker":
        return None
    try:
        return Decimal(str(msg["b"])), Decimal(str(msg["a"])), int(msg.get("E") or msg.get("T"))
    except (KeyError, InvalidOperation, ValueError, TypeError) as e:
        raise ExchangeUnavailable(EXCHANGE, None, "malformed bookTicker") from e


class BinanceMarkPriceStream:
    """``exchanges.base.MarketStream`` for one symbol (public; no key): mark price
    plus best bid/ask."""

    def __init__(self, symbol: str, ws_url: str, timeout_s: float = 10.0) -> None:
        self.symbol = symbol
        base, lower = ws_url.rstrip("/"), symbol.lower()
        self._mark_url = f"{base}/market/ws/{lower}@markPrice@1s"
        self._book_url = f"{base}/public/ws/{lower}@bookTicker"
        self._timeout_s = timeout_s
        self._mark_ws = JsonWebSocket(EXCHANGE, "mark price stream")
        self._book_ws = JsonWebSocket(EXCHANGE, "book ticker stream")
        self._mark: Decimal | None = None
        self._book: tuple[Decimal, Decimal] | None = None

    def connect(self) -> None:
        """Open both sockets. Raises ExchangeTimeout, ExchangeUnavailable."""
        self._mark, self._book = None, None
        self._mark_ws.connect(self._mark_url, self._timeout_s)
        try:
            self._book_ws.connect(self._book_url, self._timeout_s)
        except ExchangeUnavailable:
            self._mark_ws.close()
            raise

    def recv(self, timeout_s: float) -> list[Ticker]:
        """Ticks from whatever arrived within ``timeout_s`` (a tick once the mark
        price is known; bid/ask None until the first book frame)."""
        deadline = time.monotonic() + timeout_s
        ticks: list[Ticker] = []
        while not ticks and time.monotonic() < deadline:
            book = parse_book_ticker(self._book_ws.recv_json(0.01))
            if book is not None:
                self._book = book[:2]
                if self._mark is not None:
                    ticks.append(self._tick(book[2]))
            mark = parse_mark_price(self._mark_ws.recv_json(
                max(0.0, min(0.05, deadline - time.monotonic()))))
            if mark is not None:
                self._mark = mark.mark_price
                ticks.append(self._tick(mark.ts))
        return ticks[-1:]

    def _tick(self, ts: int) -> Ticker:
        assert self._mark is not None
        bid, ask = self._book if self._book is not None else (None, None)
        return Ticker(symbol=self.symbol, last_price=None, mark_price=self._mark,
                      bid=bid, ask=ask, ts=ts)

    def close(self) -> None:
        """Close both sockets; never raises."""
        self._mark_ws.close()
        self._book_ws.close()
