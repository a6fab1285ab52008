"""Bybit v5 WebSockets: the private stream ``/v5/private`` and public ``/v5/public/linear``.

Client frames (EXCHANGE_PROTOCOLS.md §5.2, as pybit 5.17.0 sends them), processed in
order on each socket, every reply queued behind the frames already queued:

- ``{"op": "auth", "args": [api_key, expires, signature]}`` (private): ``expires`` (ms)
  must be later than the server clock and ``signature == HMAC_SHA256(secret,
  "GET/realtime" + str(expires))``; reply ``{"success", "ret_msg", "op": "auth",
  "conn_id"}``. A failed auth leaves the socket open and unauthenticated.
- ``{"op": "subscribe", "req_id"?, "args": [topic, ...]}``: private topics ``order``,
  ``execution``, ``position``, ``wallet`` (also ``order.linear``, ``execution.linear``,
  ``position.linear``; only after auth); public ``tickers.<SYMBOL>``. One reply per
  frame, ``req_id`` echoed; one unknown topic fails the whole frame. A public ticker
  subscription is followed by a ``snapshot`` frame. ``unsubscribe`` mirrors it.
- ``{"op": "ping"}``: private reply ``{"req_id", "op": "pong", "args": ["<ms>"],
  "conn_id"}``; public ``{"success": true, "ret_msg": "pong", "conn_id", "req_id",
  "op": "ping"}``.

Data frames go only to sockets subscribed to the topic, with the topic name the client
used: private ``{"id", "topic", "creationTime", "data": [...]}`` (shapes of
``ws_private_*.json``); for a fill the order is order(New), execution,
order(PartiallyFilled|Filled), position, wallet. Public ``{"topic", "type":
"snapshot"|"delta", "data": {...}, "cs", "ts"}`` with a delta of the price fields on
every price change and every second. The drop_ws fault closes the private sockets of
the key (every Bybit socket without a key) with code 1011. No idle cut-off.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import uuid
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from exchanges.simulator import bybit_account as bac
from exchanges.simulator.bybit_auth import sign
from exchanges.simulator.bybit_format import execution_row, order_row
from exchanges.simulator.bybit_ledger import BybitLedger
from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import Clock, FaultRegistry, mask
from exchanges.simulator.bybit_format import funding_row
from exchanges.simulator.bybit_tpsl import VENUE as BYBIT, leg_row
from exchanges.simulator.models import (
    FINISHED, SOURCE_LEG, TRIGGERED, AccountEvent, FundingEvent, LegEvent, LeverageEvent,
    OrderEvent, PriceEvent,
)

logger = logging.getLogger(__name__)

PRIVATE_TOPICS = {"order": "order", "order.linear": "order", "execution": "execution",
                  "execution.linear": "execution", "position": "position",
                  "position.linear": "position", "wallet": "wallet"}
TICKER_INTERVAL_S = 1.0
_CLOSE = object()


@dataclass(eq=False)
class BybitConn:
    """One socket. ``kind``: ``private`` (``api_key`` once authenticated) or ``public``;
    ``topics``: the names subscribed; frames go through ``queue`` to one writer."""

    ws: web.WebSocketResponse
    kind: str
    conn_id: str
    api_key: str | None = None
    topics: set[str] = field(default_factory=set)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    peer: str = ""  # the client's IP address

    def send(self, payload: dict | str) -> None:
        """Queue a text frame (a dict is JSON-encoded)."""
        self.queue.put_nowait(payload if isinstance(payload, str) else json.dumps(payload))

    def close(self, code: int, message: bytes = b"") -> None:
        """Queue a close after the frames already queued."""
        self.queue.put_nowait((_CLOSE, code, message))


class BybitStreams:
    """Owns the Bybit sockets and turns engine events into frames."""

    def __init__(self, engine: Engine, faults: FaultRegistry, clock: Clock,
                 ledger: BybitLedger) -> None:
        self.engine, self.clock, self.ledger = engine, clock, ledger
        self.conns: set[BybitConn] = set()
        self.private: dict[str, set[BybitConn]] = {}     # api key -> authenticated sockets
        self.public: dict[str, set[BybitConn]] = {}      # symbol -> ticker subscribers
        self._cs = itertools.count(1)
        self._ticker: asyncio.Task | None = None
        engine.add_listener(self.on_event)
        faults.add_hook("drop_ws", self.drop)

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Start the once-a-second ticker push."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> None:
        """Stop the ticker push and close every socket."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for conn in list(self.conns):
            conn.close(1001, b"server shutdown")

    def drop(self, api_key: str | None) -> int:
        """Fault hook: close the private sockets of ``api_key`` (all sockets when None)."""
        victims = list(self.conns) if api_key is None else list(self.private.get(api_key, ()))
        for conn in victims:
            conn.close(1011, b"dropped by fault")
        return len(victims)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICKER_INTERVAL_S)
            for symbol, subs in list(self.public.items()):
                if subs:
                    self._ticker_frame(symbol, subs, "delta")

    # ---- event fan-out -------------------------------------------------------------
    def on_event(self, event: object) -> None:
        """Engine listener: build each topic's data once, queue it on subscribers."""
        if isinstance(event, PriceEvent):
            subs = self.public.get(event.symbol)
            if subs:
                self._ticker_frame(event.symbol, subs, "delta")
            return
        if isinstance(event, OrderEvent):
            order = event.order
            if not self.private.get(order.api_key):
                return
            if event.exec_type == "NEW" and self.ledger.order(order).rejected:
                return                                   # only the Rejected frame is sent
            if event.exec_type == "NEW" and order.source == SOURCE_LEG and \
                    order.order_id in self.engine.legs:
                return                        # a fired leg: Triggered, then Filled
            if event.fill is not None:
                self._push(order.api_key, "execution",
                           [execution_row(self.engine, self.ledger, event.fill, ws=True)])
            self._push(order.api_key, "order", [order_row(self.engine, self.ledger, order, "ws")])
        elif isinstance(event, AccountEvent):
            account = event.account
            if not self.private.get(account.api_key):
                return
            if event.symbols:
                self._push(account.api_key, "position", [
                    bac.position_row(self.engine, self.ledger, account, s, ws=True)
                    for s in event.symbols])
            self._push(account.api_key, "wallet",
                       [bac.wallet_row(self.engine, self.ledger, account)])
        elif isinstance(event, LegEvent):
            leg = event.leg
            if leg.venue != BYBIT or not self.private.get(leg.api_key):
                return
            if leg.status not in (TRIGGERED, FINISHED):    # its own order reports those
                self._push(leg.api_key, "order", [leg_row(self.engine, leg, "ws")])
            self._push(leg.api_key, "position", [bac.position_row(
                self.engine, self.ledger, self.engine.accounts[leg.api_key], leg.symbol,
                ws=True)])
        elif isinstance(event, FundingEvent):
            if self.private.get(event.account.api_key):
                self._push(event.account.api_key, "execution",
                           [funding_row(self.engine, event.row, ws=True)])
        elif isinstance(event, LeverageEvent):
            if self.private.get(event.account.api_key):
                self._push(event.account.api_key, "position", [bac.position_row(
                    self.engine, self.ledger, event.account, event.symbol, ws=True)])

    def _push(self, api_key: str, base: str, data: list[dict]) -> None:
        now = self.clock.now_ms()
        for conn in self.private.get(api_key, ()):
            for topic in conn.topics:
                if PRIVATE_TOPICS.get(topic) == base:
                    conn.send({"id": str(uuid.uuid4()), "topic": topic,
                               "creationTime": now, "data": data})

    def _ticker_frame(self, symbol: str, subs: set[BybitConn], kind: str) -> None:
        now = self.clock.now_ms()
        data = (bac.ticker_row(self.engine, symbol, now, ws=True) if kind == "snapshot"
                else bac.ticker_prices(self.engine, symbol))
        frame = json.dumps({"topic": f"tickers.{symbol}", "type": kind, "data": data,
                            "cs": next(self._cs), "ts": now})
        for conn in subs:
            conn.send(frame)

    # ---- WebSocket handlers --------------------------------------------------------
    async def handle_private(self, request: web.Request) -> web.WebSocketResponse:
        """``/v5/private``."""
        return await self._serve(request, "private")

    async def handle_public(self, request: web.Request) -> web.WebSocketResponse:
        """``/v5/public/linear``."""
        return await self._serve(request, "public")

    async def _serve(self, request: web.Request, kind: str) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        conn = BybitConn(ws, kind, uuid.uuid4().hex[:20] + "-" + kind[:3],
                         peer=request.remote or "")
        self.conns.add(conn)
        writer = asyncio.get_running_loop().create_task(self._write(conn))
        try:
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_frame(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._forget(conn)
            if not writer.done():
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return ws

    @staticmethod
    async def _write(conn: BybitConn) -> None:
        try:
            while True:
                item = await conn.queue.get()
                if isinstance(item, tuple):
                    await conn.ws.close(code=item[1], message=item[2])
                    return
                await conn.ws.send_str(item)
        except ConnectionError:          # the peer went away; the reader loop ends too
            logger.debug("bybit stream send failed conn=%s", conn.conn_id)

    def _forget(self, conn: BybitConn) -> None:
        self.conns.discard(conn)
        if conn.api_key is not None:
            subs = self.private.get(conn.api_key)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.private[conn.api_key]
        for subs in self.public.values():
            subs.discard(conn)

    # ---- client frames -------------------------------------------------------------
    def _on_frame(self, conn: BybitConn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            conn.send({"success": False, "ret_msg": "error:invalid JSON", "op": "",
                       "conn_id": conn.conn_id})
            return
        op = msg.get("op")
        if op == "auth" and conn.kind == "private":
            self._auth(conn, msg)
        elif op in ("subscribe", "unsubscribe"):
            self._subscribe(conn, msg, op)
        elif op == "ping":
            self._pong(conn, msg)
        else:
            conn.send({"success": False, "ret_msg": f"error:unsupported op {op}", "op": op,
                       "conn_id": conn.conn_id})

    def _auth(self, conn: BybitConn, msg: dict) -> None:
        error = self._check_auth(conn, msg.get("args"))
        reply = {"success": error is None, "ret_msg": error or "", "op": "auth",
                 "conn_id": conn.conn_id}
        if msg.get("req_id"):
            reply["req_id"] = msg["req_id"]
        conn.send(reply)

    def _check_auth(self, conn: BybitConn, args: object) -> str | None:
        """Authenticate ``conn``; the failure message, or None on success."""
        if conn.api_key is not None:
            return "error:already authenticated"
        if not isinstance(args, list) or len(args) != 3:
            return "error:params error, args must be [api_key, expires, signature]"
        api_key, expires, signature = args
        account = self.engine.accounts.get(api_key) if isinstance(api_key, str) else None
        if account is None:
            return "error:invalid api_key"
        try:
            expires_ms = int(expires)
        except (TypeError, ValueError):
            return "error:params error, expires invalid"
        if expires_ms <= self.clock.now_ms():
            return "error:request expired"
        expected = sign(account.api_secret, f"GET/realtime{expires}")
        if not hmac.compare_digest(expected, str(signature).lower()):
            return "error:signature verification failed"
        conn.api_key = api_key
        self.private.setdefault(api_key, set()).add(conn)
        logger.debug("bybit private stream authenticated api_key=%s", mask(api_key))
        return None

    def _subscribe(self, conn: BybitConn, msg: dict, op: str) -> None:
        topics = msg.get("args")
        error = None
        if not isinstance(topics, list) or not topics or \
                not all(isinstance(t, str) for t in topics):
            error = "error:args must be a non-empty list of topics"
        elif conn.kind == "private" and conn.api_key is None:
            error = "Request not authorized"
        else:
            bad = [t for t in topics if not self._known_topic(conn, t)]
            if bad:
                error = f"error:handler not found,topic:{bad[0]}"
        reply = {"success": error is None, "ret_msg": error or "", "conn_id": conn.conn_id,
                 "op": op}
        if "req_id" in msg:
            reply["req_id"] = msg["req_id"]
        conn.send(reply)
        if error is not None:
            return
        for topic in topics:
            symbol = topic.partition(".")[2] if conn.kind == "public" else ""
            if op == "unsubscribe":
                conn.topics.discard(topic)
                self.public.get(symbol, set()).discard(conn)
                continue
            conn.topics.add(topic)
            if conn.kind == "public":
                self.public.setdefault(symbol, set()).add(conn)
                self._ticker_frame(symbol, {conn}, "snapshot")

    def _known_topic(self, conn: BybitConn, topic: str) -> bool:
        if conn.kind == "private":
            return topic in PRIVATE_TOPICS
        name, _, symbol = topic.partition(".")
        return name == "tickers" and symbol in self.engine.symbols

    def _pong(self, conn: BybitConn, msg: dict) -> None:
        req_id = msg.get("req_id", "")
        if conn.kind == "private":
            conn.send({"req_id": req_id, "op": "pong", "args": [str(self.clock.now_ms())],
                       "conn_id": conn.conn_id})
        else:
            conn.send({"success": True, "ret_msg": "pong", "conn_id": conn.conn_id,
                       "req_id": req_id, "op": "ping"})

    def snapshot(self) -> list[dict]:
        """Open Bybit sockets for ``/_sim/state``."""
        out = []
        for conn in self.conns:
            row = {"protocol": "bybit", "kind": conn.kind, "conn_id": conn.conn_id,
                   "topics": sorted(conn.topics)}
            if conn.kind == "private":
                row.update({"api_key": conn.api_key, "authenticated": conn.api_key is not None,
                            "peers": [conn.peer]})
            out.append(row)
        return out
