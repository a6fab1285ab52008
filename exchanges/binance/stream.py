"""Binance USD-M user data stream over ``websocket-client``.

Why not python-binance's ``ThreadedWebsocketManager``: it runs an asyncio loop in a
thread (and builds an ``AsyncClient`` that pings the spot host), which does not mix
with eventlet's monkey patching. ``websocket-client`` is plain blocking sockets, so
under eventlet every ``recv`` is a cooperative green wait.

Protocol (developers.binance.com/docs/derivatives/usds-margined-futures/user-data-streams):
``POST /fapi/v1/listenKey`` returns the account's active key (valid 60 min, extended
by ``PUT``, released by ``DELETE``); the socket is
``{ws_url}/private/ws?listenKey=<key>`` (the legacy ``/ws/<key>`` path also exists).
No auth or subscribe frame: the key in the URL is the credential. The server sends
pings; ``websocket-client`` answers them inside ``recv``.

Note: Binance keeps one listenKey per account, so ``close()`` (which DELETEs it) also
ends any other stream on the same API key. The design runs one stream per key.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from binance.client import Client

from exchanges.binance.errors import EXCHANGE, binance_errors
from exchanges.binance.mapping import parse_user_event
from exchanges.binance.spec import BINANCE
from exchanges.errors import ExchangeError, ExchangeUnavailable
from exchanges.governor import ORDER, QUERY
from exchanges.rest_base import mask
from exchanges.types import StreamEvent
from exchanges.wsjson import MIN_WAIT_S, JsonWebSocket

logger = logging.getLogger(__name__)

LISTEN_KEY_VALIDITY_S = 60 * 60
KEEPALIVE_INTERVAL_S = BINANCE.stream_keepalive_s   # PUT every 30 min
WAITING_FRAMES = 8  # ignored frames skipped by one recv_waiting() at most


def _mapped(call: Callable[[], Any], priority: str) -> Any:
    with binance_errors():
        return call()


class ListenKeyHold:
    """The listenKey of a connect whose handshake failed on the way or on the server's
    side (timeout, connection error, HTTP 5xx), for the next connect of the same API
    key within ``REUSE_S``: it opens the socket with it instead of a new ``POST``.

    Why: while a venue's user data streams are down, every account retries with
    backoff, and a POST per try (weight 1 each) spent about half an IP's query budget
    in ``bench.streams`` (7 POSTs per key per minute) that the polling fallback needed.
    The key stays valid: a POST extends it by 60 minutes, and Binance answers a POST
    with the account's active key anyway (USD-M "Start User Data Stream"). A handshake
    refused with 4xx (the key is not valid) holds nothing; the next connect POSTs."""

    REUSE_S = 600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._key: str | None = None
        self._posted_at = 0.0

    def take(self) -> tuple[str, float] | None:
        """``(listen_key, posted_at)`` if a key is held and was POSTed at most
        ``REUSE_S`` ago (it is given out once), else None."""
        key, self._key = self._key, None
        if key is not None and self._clock() - self._posted_at <= self.REUSE_S:
            return key, self._posted_at
        return None

    def hold(self, listen_key: str, posted_at: float) -> None:
        """Keep ``listen_key``, POSTed at ``posted_at`` (``clock()``)."""
        self._key, self._posted_at = listen_key, posted_at


class BinanceUserStream:
    """``exchanges.base.UserStream`` for one Binance USD-M key.

    Args:
        client: the python-binance ``Client`` of the owning ``BinanceFuturesClient``
            (already pointed at the venue's REST URL); used for the listenKey calls.
        ws_url: the venue's WebSocket base, e.g. ``wss://fstream.binance.com``.
        timeout_s: connect timeout (seconds) for the listenKey POST and the handshake.
        key_hint: masked API key for log lines.
        rest: runs one listenKey call, ``rest(call, priority)``, mapping the library's
            errors (the owning client passes its rate-governed ``_io``: each listenKey
            call weighs 1; keepalives go with order priority, since a lapsed key costs
            a reconnect and a snapshot). Default: errors mapped, no governor.
        source_address: the local address the socket leaves from (the key's egress,
            ``exchanges.egress``); None: the default route.
        hold: the key's ListenKeyHold, shared by its successive streams (None: every
            connect POSTs).
    """

    keepalive_interval_s: float = KEEPALIVE_INTERVAL_S

    def __init__(self, client: Client, ws_url: str, timeout_s: float = 10.0,
                 key_hint: str = "-",
                 rest: Callable[[Callable[[], Any], str], Any] | None = None,
                 source_address: str | None = None, hold: ListenKeyHold | None = None) -> None:
        self._client = client
        self._hold = hold
        self._posted_at = 0.0
        self._source_address = source_address
        self._rest = rest or _mapped
        self._ws_url = ws_url.rstrip("/")
        self._timeout_s = timeout_s
        self._key_hint = key_hint
        self._listen_key: str | None = None
        # only this stream's reader uses the socket (keepalives are REST)
        self._ws = JsonWebSocket(EXCHANGE, "user stream", multithread=False)

    @property
    def connected(self) -> bool:
        """True while the socket is open (as far as we know without I/O)."""
        return self._ws.connected

    def connect(self) -> None:
        """``POST /fapi/v1/listenKey`` (unless the key's ListenKeyHold has one) then open
        ``/private/ws?listenKey=``.

        Raises AuthFailed (-2015 etc. from the POST), RateLimited, ExchangeTimeout,
        ExchangeUnavailable (handshake refused, connection error).
        """
        held = self._hold.take() if self._hold is not None else None
        if held is not None:
            listen_key, self._posted_at = held
        else:
            listen_key = self._rest(self._client.futures_stream_get_listen_key, QUERY)
            self._posted_at = time.monotonic()
        self._listen_key = listen_key
        url = f"{self._ws_url}/private/ws?listenKey={listen_key}"
        try:
            self._ws.connect(url, self._timeout_s, self._source_address)
        except ExchangeError as e:
            # a timeout, a connection error or a 5xx: the key is fine, keep it
            if e.http_status is None or e.http_status >= 500:
                self._hold_key()
            raise
        logger.debug("binance user stream connected key=%s listen_key=%s",
                    self._key_hint, mask(listen_key))

    def _hold_key(self) -> None:
        if self._hold is not None and self._listen_key is not None:
            self._hold.hold(self._listen_key, self._posted_at)

    def recv(self, timeout_s: float) -> list[StreamEvent]:
        """Wait up to ``timeout_s`` seconds for one frame and return its events.

        Returns ``[]`` on timeout or for an ignored frame (``error``, unknown ``e``).
        Raises ExchangeUnavailable when the socket is closed or broken, or a known
        event does not parse (reconnect and resnapshot).
        """
        return self._parse(self._ws.recv_json(timeout_s))

    def recv_waiting(self) -> list[StreamEvent]:
        """The events of the next frame that has already arrived (ignored frames are
        skipped), ``[]`` when none is waiting: never waits for the network. Raises
        ExchangeUnavailable like ``recv``."""
        for _ in range(WAITING_FRAMES):
            if not self._ws.waiting():
                break
            events = self._parse(self._ws.recv_json(MIN_WAIT_S))
            if events:
                return events
        return []

    def _parse(self, msg: Any) -> list[StreamEvent]:
        if not isinstance(msg, dict):
            return []
        if msg.get("e") == "error":
            logger.debug("binance user stream error frame key=%s type=%s",
                         self._key_hint, msg.get("type"))
        events = parse_user_event(msg)
        if not events and msg.get("e") not in ("error", None):
            logger.debug("binance user stream ignored event e=%s", msg.get("e"))
        return events

    def keepalive(self) -> None:
        """``PUT /fapi/v1/listenKey``: extend the key by 60 min. Raises
        ExchangeUnavailable when the key is gone (-1125: reconnect), RateLimited,
        ExchangeTimeout."""
        if self._listen_key is None:
            raise ExchangeUnavailable(EXCHANGE, None, "user stream not connected")
        listen_key = self._listen_key
        self._rest(lambda: self._client.futures_stream_keepalive(listen_key), ORDER)
        logger.debug("binance user stream keepalive key=%s listen_key=%s",
                     self._key_hint, mask(listen_key))

    def close(self) -> None:
        """Close the socket and ``DELETE /fapi/v1/listenKey``; never raises (errors are
        logged at debug)."""
        listen_key, self._listen_key = self._listen_key, None
        self._ws.close()
        if listen_key is not None:
            try:
                self._rest(lambda: self._client.futures_stream_close(listen_key), QUERY)
            except Exception as e:  # isolation boundary: close must not raise
                logger.debug("binance listenKey close failed key=%s listen_key=%s err=%s",
                             self._key_hint, mask(listen_key), type(e).__name__)
        logger.debug("binance user stream closed key=%s", self._key_hint)
