"""A minimal asyncio Socket.IO client for the benchmarks: Engine.IO v4 + Socket.IO v5
over one aiohttp WebSocket, no polling, no reconnection, default namespace only.

Why not python-socketio's ``AsyncClient``: at a few thousand connections and tens of
thousands of pushes a second its per-packet work (decoding every payload, a task per
event, its own ping bookkeeping) made the client, not the server, the bottleneck. This
one does what the benchmarks need and no more:

- Engine.IO: ``GET /socket.io/?EIO=4&transport=websocket``, the open packet ``0{...}``,
  answering every ping ``2`` with a pong ``3``; a close ``1`` or a closed socket ends it.
- Socket.IO: connect ``40{"token": ...}`` -> ``40{"sid": ...}`` or ``44{"message": ...}``
  (refused), events ``42["name", data]``, emits with acknowledgement ``42<id>[...]`` ->
  ``43<id>[...]``. Binary packets (``45``/``46``) are not supported (the server sends none).

Each received event goes to ``on_event(client, name, raw_text, t_recv)`` with the raw
packet text, so the caller decodes only what it looks at. ``t_recv`` is ``time.time()``
when the frame was handed over by aiohttp.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

EventHandler = Callable[["RawClient", str, str, float], None]


class Refused(RuntimeError):
    """The server answered the Socket.IO connect with ``44`` (``message`` from it)."""


class RawClient:
    """One Socket.IO connection. ``cid`` is the caller's id for it; ``state`` is free for
    the caller (per-client bookkeeping)."""

    def __init__(self, cid: int, on_event: EventHandler) -> None:
        self.cid = cid
        self.on_event = on_event
        self.state: dict[str, Any] = {}
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = False
        self.closed_reason: str | None = None
        self.handler_errors = 0
        self.last_handler_error: str | None = None
        self._acks: dict[int, asyncio.Future] = {}
        self._next_ack = 0
        self._sio_open: asyncio.Future | None = None
        self._eio_open: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None

    async def connect(self, session: aiohttp.ClientSession, url: str, auth: dict | None,
                      timeout: float) -> None:
        """WebSocket handshake, Engine.IO open, Socket.IO connect with ``auth``. Raises
        Refused, asyncio.TimeoutError or aiohttp.ClientError."""
        loop = asyncio.get_running_loop()
        self._eio_open, self._sio_open = loop.create_future(), loop.create_future()
        base, _, query = url.partition("?")  # a query of the caller's (e.g. affinity=) is kept
        ws_url = base.rstrip("/") + "/socket.io/?" + (query + "&" if query else "") + \
            "EIO=4&transport=websocket"
        self.ws = await asyncio.wait_for(
            session.ws_connect(ws_url, autoping=True, max_msg_size=0, compress=0), timeout)
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._eio_open, timeout)
        await self.ws.send_str("40" + (json.dumps(auth) if auth else ""))
        await asyncio.wait_for(self._sio_open, timeout)
        self.connected = True

    async def call(self, event: str, data: Any, timeout: float) -> Any:
        """Emit ``event`` with ``data`` and wait for the acknowledgement; returns its first
        argument (None when it had none). Raises asyncio.TimeoutError, ConnectionError."""
        if self.ws is None or self.ws.closed:
            raise ConnectionError("not connected")
        ack_id, self._next_ack = self._next_ack, self._next_ack + 1
        fut = self._acks[ack_id] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(f"42{ack_id}" + json.dumps([event, data]))
        try:
            args = await asyncio.wait_for(fut, timeout)
        finally:
            self._acks.pop(ack_id, None)
        return args[0] if args else None

    async def close(self) -> None:
        """Socket.IO disconnect ``41`` then a WebSocket close (best effort)."""
        ws, self.connected = self.ws, False
        if ws is not None and not ws.closed:
            try:
                await ws.send_str("41")
                await ws.close()
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass
        if self._reader is not None:
            self._reader.cancel()

    def abort(self) -> None:
        """Drop the TCP connection without any goodbye (a phone losing its network)."""
        self.connected = False
        if self.ws is not None:
            transport = getattr(getattr(self.ws, "_response", None), "connection", None)
            transport = getattr(transport, "transport", None)
            if transport is not None:
                transport.abort()
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        reason = "closed"
        try:
            async for msg in ws:
                t = time.time()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    if msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                        reason = f"ws {msg.type.name}"
                        break
                    continue
                text = msg.data
                kind = text[:1]
                if kind == "4":
                    self._socketio(text, t)
                elif kind == "2":
                    await ws.send_str("3" + text[1:])
                elif kind == "0":
                    if self._eio_open is not None and not self._eio_open.done():
                        self._eio_open.set_result(json.loads(text[1:]))
                elif kind == "1":
                    reason = "engine.io close"
                    break
        except asyncio.CancelledError:
            reason = "cancelled"
        except Exception as e:  # recorded, the connection is gone either way
            reason = f"{type(e).__name__}: {e}"[:160]
        finally:
            self.connected = False
            self.closed_reason = self.closed_reason or reason
            for fut in (self._eio_open, self._sio_open, *self._acks.values()):
                if fut is not None and not fut.done():
                    fut.set_exception(ConnectionError(reason))

    def _socketio(self, text: str, t: float) -> None:
        kind = text[1:2]
        if kind == "2":
            if text[2:3] == "[":
                end = text.find('"', 4)
                try:
                    self.on_event(self, text[4:end], text, t)
                except Exception as e:  # the caller's bug must not kill the connection
                    self.handler_errors += 1
                    self.last_handler_error = f"{type(e).__name__}: {e}"[:160]
        elif kind == "3":
            i = 2
            while i < len(text) and text[i].isdigit():
                i += 1
            fut = self._acks.get(int(text[2:i] or -1))
            if fut is not None and not fut.done():
                fut.set_result(json.loads(text[i:]))
        elif kind == "0":
            if self._sio_open is not None and not self._sio_open.done():
                self._sio_open.set_result(json.loads(text[2:] or "{}"))
        elif kind == "4":
            body = json.loads(text[2:] or "{}")
            if self._sio_open is not None and not self._sio_open.done():
                self._sio_open.set_exception(Refused(str(body.get("message", body))))
        elif kind == "1":
            self.connected = False
