"""Bybit v5 private stream (``/v5/private``) over ``websocket-client``.

Why not pybit's ``WebSocket``: it connects inside its constructor, runs
``WebSocketApp.run_forever`` in a daemon thread and busy-waits for the connection,
then delivers frames to callbacks on that thread; that does not fit the server's
eventlet green threads (a real OS thread outside the hub, callbacks off the green
loop). ``websocket-client``'s blocking socket is cooperative under monkey patching,
so ``recv`` is a green wait on the caller's green thread.

Protocol (Bybit doc ``docs/v5/ws/connect.mdx``, ``websocket/private/*.mdx``; frames as
pybit 5.17.0 ``_websocket_stream.py`` sends them):

1. connect ``{ws_url}/v5/private``;
2. ``{"op": "auth", "args": [api_key, expires, signature]}`` with ``expires`` = server
   now + ``AUTH_EXPIRES_MS`` (ms) and ``signature = HMAC_SHA256(secret,
   "GET/realtime" + str(expires))`` hex; reply ``{"op": "auth", "success": bool, ...}``;
3. ``{"op": "subscribe", "req_id": uuid, "args": ["order", "execution", "position",
   "wallet"]}``; reply ``{"op": "subscribe", "success": bool, "req_id": uuid}``;
4. a text ``{"op": "ping"}`` every 20 s (the server drops idle connections after
   10 min without one); replies ``{"op": "pong"}`` are ignored.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from exchanges.bybit.errors import EXCHANGE
from exchanges.bybit.mapping import parse_private_event
from exchanges.bybit.spec import BYBIT
from exchanges.errors import AuthFailed, ExchangeTimeout, ExchangeUnavailable
from exchanges.types import StreamEvent
from exchanges.wsjson import MIN_WAIT_S, JsonWebSocket

logger = logging.getLogger(__name__)

PRIVATE_PATH = "/v5/private"
TOPICS = ("order", "execution", "position", "wallet")
PING_INTERVAL_S = BYBIT.stream_keepalive_s   # 20 s
AUTH_EXPIRES_MS = 5000
WAITING_FRAMES = 8  # ignored frames skipped by one recv_waiting() at most
_IGNORED_OPS = frozenset({"pong", "ping", "subscribe", "unsubscribe", "auth"})


def auth_signature(api_secret: str, expires: int) -> str:
    """``HMAC_SHA256(secret, "GET/realtime" + str(expires))`` as hex (as pybit)."""
    return hmac.new(api_secret.encode(), f"GET/realtime{expires}".encode(),
                    hashlib.sha256).hexdigest()


class BybitUserStream:
    """``exchanges.base.UserStream`` for one Bybit API key.

    Args:
        api_key, api_secret: the key pair (never logged; the secret only signs).
        ws_url: the venue's WebSocket base, e.g. ``wss://stream.bybit.com``.
        timeout_s: handshake, auth and subscribe timeout, seconds.
        server_now_ms: the server's clock in ms UTC (local + the client's offset);
            default the local clock.
        key_hint: masked API key for log lines.
        source_address: the local address the socket leaves from (the key's egress,
            ``exchanges.egress``); None: the default route.
    """

    keepalive_interval_s: float = PING_INTERVAL_S

    def __init__(self, api_key: str, api_secret: str, ws_url: str, timeout_s: float = 10.0,
                 server_now_ms: Callable[[], int] | None = None, key_hint: str = "-",
                 source_address: str | None = None) -> None:
        self._api_key, self._api_secret = api_key, api_secret
        self._source_address = source_address
        self._url = ws_url.rstrip("/") + PRIVATE_PATH
        self._timeout_s = timeout_s
        self._server_now_ms = server_now_ms or (lambda: int(time.time() * 1000))
        self._key_hint = key_hint
        # multithread: keepalive() may send from another green thread
        self._ws = JsonWebSocket(EXCHANGE, "private stream", multithread=True)
        self._pending: list[StreamEvent] = []
        self._last_ping = 0.0     # time.monotonic() of the last ping sent

    @property
    def connected(self) -> bool:
        """True while the socket is open (as far as we know without I/O)."""
        return self._ws.connected

    def connect(self) -> None:
        """Open ``/v5/private``, authenticate and subscribe to order, execution,
        position and wallet.

        Raises AuthFailed (``success: false`` on auth), ExchangeTimeout (no handshake or
        reply within ``timeout_s``), ExchangeUnavailable (refused, closed, subscribe
        refused).
        """
        self._ws.connect(self._url, self._timeout_s, self._source_address)
        self._pending = []
        try:
            expires = self._server_now_ms() + AUTH_EXPIRES_MS
            signature = auth_signature(self._api_secret, expires)
            self._ws.send_json({"op": "auth", "args": [self._api_key, expires, signature]})
            reply = self._await_op("auth", None)
            if not reply.get("success"):
                raise AuthFailed(EXCHANGE, None,
                                 f"private stream auth refused: {reply.get('ret_msg', '')}"[:300])
            req_id = str(uuid.uuid4())
            self._ws.send_json({"op": "subscribe", "req_id": req_id, "args": list(TOPICS)})
            reply = self._await_op("subscribe", req_id)
            if not reply.get("success"):
                message = f"private stream subscribe refused: {reply.get('ret_msg', '')}"
                raise ExchangeUnavailable(EXCHANGE, None, message[:300])
        except BaseException:
            self._drop()
            raise
        self._last_ping = time.monotonic()
        logger.debug("bybit private stream connected key=%s", self._key_hint)

    def _await_op(self, op: str, req_id: str | None) -> dict[str, Any]:
        """Read frames until the reply to ``op`` (and ``req_id`` when given) arrives;
        topic frames seen meanwhile are parsed into the pending queue."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExchangeTimeout(EXCHANGE, None, f"no {op} reply on the private stream")
            msg = self._read(remaining)
            if msg is None:
                continue
            echoed = msg.get("req_id")
            if msg.get("op") == op and (req_id is None or not echoed or echoed == req_id):
                return msg
            if "topic" in msg:
                self._pending.extend(parse_private_event(msg))

    def recv(self, timeout_s: float) -> list[StreamEvent]:
        """Wait up to ``timeout_s`` seconds for one frame and return its events.

        Sends the ``{"op": "ping"}`` heartbeat first when it is due, and never waits
        past the next one (it may return ``[]`` early). Returns ``[]`` on timeout and
        for pong/subscribe/unknown frames. Raises ExchangeUnavailable when the socket
        is closed or broken, or a known topic does not parse (reconnect, resnapshot).
        """
        if self._pending:
            events, self._pending = self._pending, []
            return events
        since_ping = time.monotonic() - self._last_ping
        if since_ping >= PING_INTERVAL_S:
            self.keepalive()
            since_ping = 0.0
        wait = max(0.01, min(timeout_s, PING_INTERVAL_S - since_ping))
        return self._events(self._read(wait))

    def recv_waiting(self) -> list[StreamEvent]:
        """The events of the next frame that has already arrived (ignored frames are
        skipped), ``[]`` when none is waiting: never waits for the network (nor sends
        the heartbeat: ``recv`` does). Raises ExchangeUnavailable like ``recv``."""
        if self._pending:
            events, self._pending = self._pending, []
            return events
        for _ in range(WAITING_FRAMES):
            if not self._ws.waiting():
                break
            events = self._events(self._read(MIN_WAIT_S))
            if events:
                return events
        return []

    @staticmethod
    def _events(msg: dict[str, Any] | None) -> list[StreamEvent]:
        if msg is None:
            return []
        if msg.get("op") in _IGNORED_OPS or "topic" not in msg:
            if msg.get("op") not in ("pong", "ping"):
                logger.debug("bybit private stream ignored frame op=%s", msg.get("op"))
            return []
        return parse_private_event(msg)

    def _read(self, timeout_s: float) -> dict[str, Any] | None:
        """One decoded JSON object frame, or ``None`` on timeout / non-object / binary
        control frames. Raises ExchangeUnavailable when the connection is gone."""
        msg = self._ws.recv_json(timeout_s)
        return msg if isinstance(msg, dict) else None

    def keepalive(self) -> None:
        """Send the ``{"op": "ping"}`` heartbeat. Raises ExchangeUnavailable when the
        socket is gone."""
        self._ws.send_json({"op": "ping"})
        self._last_ping = time.monotonic()

    def _drop(self) -> None:
        self._pending = []
        self._ws.close()

    def close(self) -> None:
        """Close the socket; never raises (errors are logged at debug)."""
        self._drop()
        logger.debug("bybit private stream closed key=%s", self._key_hint)
