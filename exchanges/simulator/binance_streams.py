"""Binance WebSocket streams: listenKeys, the user data stream and markPrice streams.

Paths (one aiohttp app):
- user data: ``/private/ws?listenKey=<lk>``, ``/private/ws/<lk>``, ``/ws/<lk>``;
- market: ``/ws/<symbol>@markPrice`` (also ``@markPrice@1s``), same under ``/market/ws/``;
  book: ``<symbol>@bookTicker`` under ``/ws/`` and ``/public/ws/``.

Frames are raw event JSON (no ``{"stream","data"}`` wrapper). A listenKey lives 60
min (``--listen-key-ttl-s``) from its last POST/PUT; on expiry every connection of it
gets ``{"e":"listenKeyExpired","E":"<ms as string>","listenKey":...}`` and is closed
(code 1000). An unknown listenKey or an unsupported stream name: the socket is
accepted and closed at once with code 1008. The drop_ws fault closes sockets with
code 1011. Fan-out per event is O(connections of that account or symbol).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import string
import time
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from exchanges.simulator import binance_algo
from exchanges.simulator import binance_format as bf
from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import Clock, FaultRegistry, mask
from exchanges.simulator.models import (
    AccountEvent, LegEvent, LeverageEvent, MarginCallEvent, OrderEvent, PriceEvent,
)

logger = logging.getLogger(__name__)

LISTEN_KEY_VALIDITY_S = 3600.0
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class _Close:
    code: int
    message: bytes = b""


@dataclass(eq=False)
class StreamConn:
    """One WebSocket connection. ``kind``: ``user`` (with ``listen_key``/``api_key``) or
    ``market`` (with ``symbol``). Frames go through ``queue`` to one writer task."""

    ws: web.WebSocketResponse
    kind: str
    api_key: str | None = None
    listen_key: str | None = None
    symbol: str | None = None
    connected_ms: int = 0
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    peer: str = ""  # the client's IP address

    def send(self, text: str) -> None:
        """Queue a text frame (never blocks)."""
        self.queue.put_nowait(text)

    def close(self, code: int, message: bytes = b"") -> None:
        """Queue a close after the frames already queued."""
        self.queue.put_nowait(_Close(code, message))


@dataclass(eq=False)
class ListenKey:
    """An active listenKey of ``api_key``; ``expires`` is a monotonic deadline (s)."""

    key: str
    api_key: str
    expires: float
    conns: set[StreamConn] = field(default_factory=set)


class BinanceStreams:
    """Owns listenKeys and WS connections and turns engine events into frames."""

    def __init__(self, engine: Engine, faults: FaultRegistry, clock: Clock,
                 validity_s: float = LISTEN_KEY_VALIDITY_S) -> None:
        self.engine, self.clock, self.validity_s = engine, clock, validity_s
        self.keys: dict[str, ListenKey] = {}
        self.by_api_key: dict[str, ListenKey] = {}
        self.market: dict[str, set[StreamConn]] = {}
        self.book: dict[str, set[StreamConn]] = {}   # @bookTicker subscribers
        self._book_ids = itertools.count(1)
        self._sweeper: asyncio.Task | None = None
        engine.add_listener(self.on_event)
        faults.add_hook("drop_ws", self.drop)
        faults.add_hook("expire_listen_key", self.expire_for)

    # ---- listenKey lifecycle ---------------------------------------------------------
    def create_or_extend(self, api_key: str) -> ListenKey:
        """POST: the account's active key extended by 60 min, or a new one."""
        lk = self.by_api_key.get(api_key)
        if lk is not None and lk.expires > time.monotonic():
            lk.expires = time.monotonic() + self.validity_s
            return lk
        if lk is not None:
            self._expire(lk)
        key = "".join(secrets.choice(_ALPHABET) for _ in range(64))
        lk = ListenKey(key, api_key, time.monotonic() + self.validity_s)
        self.keys[key] = self.by_api_key[api_key] = lk
        logger.info("listen key created api_key=%s key=%s...", mask(api_key), key[:6])
        return lk

    def find(self, api_key: str, key: str | None) -> ListenKey | None:
        """The account's live key (``key`` must match when given)."""
        lk = self.by_api_key.get(api_key)
        if lk is None or lk.expires <= time.monotonic() or (key and key != lk.key):
            return None
        return lk

    def keepalive(self, api_key: str, key: str | None) -> ListenKey | None:
        """PUT: extend the key by 60 min; None when unknown or expired (-1125)."""
        lk = self.find(api_key, key)
        if lk is not None:
            lk.expires = time.monotonic() + self.validity_s
        return lk

    def delete(self, api_key: str, key: str | None) -> bool:
        """DELETE: close the key and its connections (code 1000); False when unknown."""
        lk = self.find(api_key, key)
        if lk is None:
            return False
        self._remove(lk)
        for conn in list(lk.conns):
            conn.close(1000, b"listenKey closed")
        return True

    def _remove(self, lk: ListenKey) -> None:
        self.keys.pop(lk.key, None)
        if self.by_api_key.get(lk.api_key) is lk:
            del self.by_api_key[lk.api_key]

    def _expire(self, lk: ListenKey) -> None:
        self._remove(lk)
        frame = json.dumps({"e": "listenKeyExpired", "E": str(self.clock.now_ms()),
                            "listenKey": lk.key})
        for conn in list(lk.conns):
            conn.send(frame)
            conn.close(1000, b"listenKey expired")
        logger.info("listen key expired api_key=%s connections=%d", mask(lk.api_key), len(lk.conns))

    def expire_for(self, api_key: str | None) -> int:
        """Fault hook: expire the keys of ``api_key`` (all when None) now."""
        victims = [lk for lk in self.keys.values() if api_key is None or lk.api_key == api_key]
        for lk in victims:
            self._expire(lk)
        return len(victims)

    def drop(self, api_key: str | None) -> int:
        """Fault hook: close user sockets of ``api_key`` (every socket when None)."""
        conns = [c for lk in self.keys.values() if api_key is None or lk.api_key == api_key
                 for c in lk.conns]
        if api_key is None:
            conns += [c for group in (self.market, self.book) for subs in group.values()
                      for c in subs]
        for conn in conns:
            conn.close(1011, b"dropped by fault")
        return len(conns)

    def start(self) -> None:
        """Start the expiry sweeper (every second, or a quarter of a short validity)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        """Stop the sweeper and close every socket."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for conn in [c for lk in self.keys.values() for c in lk.conns] + \
                [c for group in (self.market, self.book) for subs in group.values() for c in subs]:
            conn.close(1001, b"server shutdown")

    async def _sweep(self) -> None:
        period = min(1.0, self.validity_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for lk in [lk for lk in self.keys.values() if lk.expires <= now]:
                self._expire(lk)

    # ---- event fan-out ---------------------------------------------------------------
    def on_event(self, event: object) -> None:
        """Engine listener: build each frame once and queue it on the matching sockets."""
        if isinstance(event, PriceEvent):
            subs = self.market.get(event.symbol)
            if subs:
                frame = json.dumps(bf.mark_price_update(event.symbol, event.price, event.time))
                for conn in subs:
                    conn.send(frame)
            book = self.book.get(event.symbol)
            if book:
                bid, ask = self.engine.bid_ask(event.symbol)
                frame = json.dumps(bf.book_ticker_event(event.symbol, bid, ask, event.time,
                                                  next(self._book_ids)))
                for conn in book:
                    conn.send(frame)
            return
        if isinstance(event, OrderEvent):
            lk = self.by_api_key.get(event.order.api_key)
            if lk and lk.conns:
                self._fan_out(lk, bf.order_trade_update(self.engine, event.order, event.exec_type,
                                                        event.time, event.fill))
        elif isinstance(event, AccountEvent):
            lk = self.by_api_key.get(event.account.api_key)
            if lk and lk.conns:
                self._fan_out(lk, bf.account_update(self.engine, event.account, event.reason,
                                                    event.time, event.symbols,
                                                    event.balance_change))
        elif isinstance(event, LegEvent):
            lk = self.by_api_key.get(event.leg.api_key)
            if lk and lk.conns and event.leg.venue == binance_algo.VENUE:
                self._fan_out(lk, binance_algo.algo_update(self.engine, event.leg, event.time))
        elif isinstance(event, MarginCallEvent):
            lk = self.by_api_key.get(event.account.api_key)
            if lk and lk.conns:
                self._fan_out(lk, binance_algo.margin_call(self.engine, event.account,
                                                           event.symbols, event.time))
        elif isinstance(event, LeverageEvent):
            lk = self.by_api_key.get(event.account.api_key)
            if lk and lk.conns:
                self._fan_out(lk, {"e": "ACCOUNT_CONFIG_UPDATE", "E": event.time, "T": event.time,
                                   "ac": {"s": event.symbol, "l": event.leverage}})

    @staticmethod
    def _fan_out(lk: ListenKey, payload: dict) -> None:
        frame = json.dumps(payload)
        for conn in lk.conns:
            conn.send(frame)

    # ---- WebSocket handlers ----------------------------------------------------------
    async def handle_private(self, request: web.Request) -> web.WebSocketResponse:
        """``/private/ws?listenKey=`` and ``/private/ws/{key}``."""
        key = request.match_info.get("key") or request.query.get("listenKey", "")
        return await self._serve_user(request, key)

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        """``/ws/{name}`` and ``/market/ws/{name}``: a market stream if the name has an
        ``@``, else a listenKey."""
        name = request.match_info["name"]
        if "@" not in name:
            return await self._serve_user(request, name)
        symbol, _, stream = name.partition("@")
        symbol = symbol.upper()
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        if stream not in ("markPrice", "markPrice@1s", "markPrice@3s", "bookTicker") or \
                symbol not in self.engine.symbols:
            await ws.prepare(request)
            await ws.close(code=1008, message=b"unsupported stream")
            return ws
        # Registered before the handshake completes, so no event after it is missed.
        kind = "book" if stream == "bookTicker" else "market"
        conn = StreamConn(ws, kind, symbol=symbol, connected_ms=self.clock.now_ms())
        subs = (self.book if kind == "book" else self.market).setdefault(symbol, set())
        subs.add(conn)
        # Like Binance, markPrice also pushes on its interval (1 s or 3 s) whether or
        # not the price moved; bookTicker sends the current book at once, then changes.
        interval_s = None if kind == "book" else (1.0 if stream.endswith("@1s") else 3.0)
        ticker = asyncio.get_running_loop().create_task(
            self._tick_every(conn, symbol, interval_s))
        try:
            await ws.prepare(request)
            await self._pump(conn)
        finally:
            subs.discard(conn)
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        return ws

    def _frame(self, conn: StreamConn, symbol: str) -> str:
        if conn.kind == "book":
            bid, ask = self.engine.bid_ask(symbol)
            return json.dumps(bf.book_ticker_event(symbol, bid, ask, self.clock.now_ms(),
                                                        next(self._book_ids)))
        return json.dumps(bf.mark_price_update(symbol, self.engine.prices[symbol],
                                               self.clock.now_ms()))

    async def _tick_every(self, conn: StreamConn, symbol: str, interval_s: float | None) -> None:
        try:
            while True:
                conn.send(self._frame(conn, symbol))
                if interval_s is None:
                    return
                await asyncio.sleep(interval_s)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must show, not silence the stream
            logger.exception("market stream writer failed symbol=%s kind=%s", symbol, conn.kind)

    async def _serve_user(self, request: web.Request, key: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        lk = self.keys.get(key)
        if lk is None or lk.expires <= time.monotonic():
            await ws.prepare(request)
            await ws.close(code=1008, message=b"invalid listenKey")
            return ws
        conn = StreamConn(ws, "user", api_key=lk.api_key, listen_key=lk.key,
                          connected_ms=self.clock.now_ms(), peer=request.remote or "")
        lk.conns.add(conn)    # before the handshake completes: no event is missed
        logger.debug("user stream open api_key=%s", mask(lk.api_key))
        try:
            await ws.prepare(request)
            await self._pump(conn)
        finally:
            lk.conns.discard(conn)
        return ws

    @staticmethod
    async def _pump(conn: StreamConn) -> None:
        """Run the writer task and read (and ignore) client frames until closed."""
        async def writer() -> None:
            try:
                while True:
                    item = await conn.queue.get()
                    if isinstance(item, _Close):
                        await conn.ws.close(code=item.code, message=item.message)
                        return
                    await conn.ws.send_str(item)
            except ConnectionError:      # the peer went away; the reader loop ends too
                logger.debug("stream send failed kind=%s", conn.kind)

        task = asyncio.get_running_loop().create_task(writer())
        try:
            async for msg in conn.ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            if not task.done():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def snapshot(self) -> list[dict]:
        """Open streams for ``/_sim/state``."""
        now = time.monotonic()
        out = [{"protocol": "binance", "kind": "user", "listen_key": lk.key,
                "api_key": lk.api_key, "connections": len(lk.conns),
                "peers": sorted(c.peer for c in lk.conns),
                "expires_in_s": round(lk.expires - now, 1)} for lk in self.keys.values()]
        out += [{"protocol": "binance", "kind": "market", "symbol": symbol,
                 "stream": f"{symbol.lower()}@markPrice", "connections": len(subs)}
                for symbol, subs in self.market.items() if subs]
        out += [{"protocol": "binance", "kind": "book", "symbol": symbol,
                 "stream": f"{symbol.lower()}@bookTicker", "connections": len(subs)}
                for symbol, subs in self.book.items() if subs]
        return out
