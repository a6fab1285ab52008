"""Bybit v5 public linear ticker stream for one symbol.

Wire (bybit-exchange docs, v5/websocket/public/ticker): connect
``{ws_url}/v5/public/linear``, send ``{"op": "subscribe", "args": ["tickers.<SYMBOL>"]}``;
frames ``{"topic": "tickers.BTCUSDT", "type": "snapshot"|"delta", "ts": ms, "data":
{"lastPrice", "markPrice", "bid1Price", "ask1Price", ...}}``. A delta carries only
the fields that changed, so the last snapshot is kept and updated. Clients send
``{"op": "ping"}`` every 20 s.
"""
from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from exchanges.bybit.errors import EXCHANGE
from exchanges.bybit.spec import BYBIT
from exchanges.errors import ExchangeUnavailable
from exchanges.types import Ticker
from exchanges.wsjson import JsonWebSocket

PING_INTERVAL_S = BYBIT.stream_keepalive_s   # the public stream wants the same ping
FIELDS = {"lastPrice": "last_price", "markPrice": "mark_price", "bid1Price": "bid", "ask1Price": "ask"}


class BybitTickerStream:
    """``exchanges.base.MarketStream`` for one symbol (public; no key)."""

    def __init__(self, symbol: str, ws_url: str, timeout_s: float = 10.0) -> None:
        self.symbol = symbol
        self._url = f"{ws_url.rstrip('/')}/v5/public/linear"
        self._timeout_s = timeout_s
        self._ws = JsonWebSocket(EXCHANGE, "ticker stream")
        self._fields: dict[str, Decimal] = {}
        self._ping_at = 0.0

    def connect(self) -> None:
        """Open and subscribe. Raises ExchangeTimeout, ExchangeUnavailable."""
        self._fields = {}
        self._ws.connect(self._url, self._timeout_s)
        self._ws.send_json({"op": "subscribe", "args": [f"tickers.{self.symbol}"]})
        self._ping_at = time.monotonic() + PING_INTERVAL_S

    def recv(self, timeout_s: float) -> list[Ticker]:
        """The tick carried by the next frame within ``timeout_s`` (none for acks,
        pongs, or before the mark price is known)."""
        if time.monotonic() >= self._ping_at:
            self._ws.send_json({"op": "ping"})
            self._ping_at = time.monotonic() + PING_INTERVAL_S
        msg = self._ws.recv_json(timeout_s)
        if not isinstance(msg, dict) or msg.get("topic") != f"tickers.{self.symbol}":
            if isinstance(msg, dict) and msg.get("op") == "subscribe" and not msg.get("success", True):
                raise ExchangeUnavailable(EXCHANGE, None, f"ticker subscribe refused: {msg.get('ret_msg')}")
            return []
        return [t] if (t := self._apply(msg)) is not None else []

    def _apply(self, msg: dict[str, Any]) -> Ticker | None:
        data = msg.get("data") or {}
        if msg.get("type") == "snapshot":
            self._fields = {}
        try:
            for wire, name in FIELDS.items():
                if data.get(wire) not in (None, ""):
                    self._fields[name] = Decimal(str(data[wire]))
            ts = int(msg.get("ts") or time.time() * 1000)
        except (InvalidOperation, ValueError, TypeError) as e:
            raise ExchangeUnavailable(EXCHANGE, None, "malformed ticker frame") from e
        if "mark_price" not in self._fields:
            return None
        return Ticker(symbol=self.symbol, last_price=self._fields.get("last_price"),
                      mark_price=self._fields["mark_price"], bid=self._fields.get("bid"),
                      ask=self._fields.get("ask"), ts=ts)

    def close(self) -> None:
        """Close the socket; never raises."""
        self._ws.close()
