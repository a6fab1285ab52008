"""Binance USD-M futures REST adapter on python-binance's synchronous ``Client``.

The library client is built with ``ping=False`` and ``testnet=False`` always:
python-binance's ``testnet`` flag swaps in its own hard-wired testnet host and ignores
``FUTURES_URL``. Mainnet/testnet/simulator selection comes only from the
``VenueEndpoints`` we are given (instance attributes ``FUTURES_URL``/``API_URL``).
Construction does no network I/O.

Blocking I/O goes through ``requests``; under eventlet's monkey patching it is
cooperative. Every public method raises only ``exchanges.errors`` classes.

Clock: python-binance signs with ``time.time() + timestamp_offset`` and never syncs
by itself. Before the first signed call we sample ``GET /fapi/v1/time`` three times
and keep the median offset. On ``-1021`` (ClockSkew) we resample once and, for
idempotent GETs and ``create_order`` only, retry once; recvWindow stays at the
library's 10000 ms (never widened). Binance doc: "General Info / Timing security".
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

from binance.client import Client

from exchanges.binance import mapping
from exchanges.binance.errors import EXCHANGE, binance_errors
from exchanges.binance.spec import BINANCE
from exchanges.binance.stream import BinanceUserStream, ListenKeyHold
from exchanges.egress import bind_session
from exchanges.errors import InvalidOrder
from exchanges.governor import ORDER, RateGovernor
from exchanges.rest_base import GovernedRestClient
from exchanges.types import (
    Balance, Fill, Order, OrderRequest, Position, SymbolRules, Ticker, VenueEndpoints,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

SYMBOL_RULES_TTL_S = 3600.0
CLOCK_SAMPLES = 3
SUPPORTED_ORDER_TYPES = ("LIMIT", "MARKET")
W = BINANCE.weight   # an endpoint's request weight on the IP limit (the spec's table)


def now_ms() -> int:
    """Local wall clock, ms UTC."""
    return int(time.time() * 1000)


def mask(secret: str | None, keep: int = 4) -> str:
    """First ``keep`` characters of a key/listenKey followed by ``...`` (for logs)."""
    if not secret:
        return "-"
    return secret[:keep] + "..."


class BinanceFuturesClient(GovernedRestClient):
    """``exchanges.base.ExchangeClient`` for one Binance USD-M API key.

    Args:
        api_key, api_secret: the key pair (the secret is never logged).
        testnet: whether ``endpoints`` is the testnet (informational; routing comes
            from ``endpoints``).
        endpoints: ``rest_url`` like ``https://fapi.binance.com`` (``/fapi`` and
            ``/api`` are appended) and ``ws_url`` like ``wss://fstream.binance.com``.
        timeout_s: per-request ``requests`` timeout, seconds.
        governor: the venue's shared RateGovernor (None: no admission control); its
            ``egress`` address, when set, is where this key's REST session and
            private stream connect from.
    """

    exchange = EXCHANGE

    def __init__(self, api_key: str, api_secret: str, testnet: bool,
                 endpoints: VenueEndpoints, timeout_s: float = 10.0,
                 governor: RateGovernor | None = None) -> None:
        self.testnet = testnet
        self._governor = governor
        self.created_at = now_ms()
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self._api_key_hint = mask(api_key)
        rest = endpoints.rest_url.rstrip("/")
        self._client = Client(api_key, api_secret, requests_params={"timeout": timeout_s},
                              ping=False, testnet=False)
        self._client.FUTURES_URL = rest + "/fapi"
        self._client.API_URL = rest + "/api"
        self._egress = governor.egress if governor is not None else None
        if self._egress:
            bind_session(self._client.session, self._egress)
        self._listen_key_hold = ListenKeyHold()
        self._closed = False
        self._clock_synced = False
        self._rules_lock = threading.Lock()
        self._rules: dict[str, SymbolRules] = {}
        self._rules_fetched_at: float | None = None   # time.monotonic() of the last fetch

    def __repr__(self) -> str:
        return (f"BinanceFuturesClient(key={self._api_key_hint}, testnet={self.testnet}, "
                f"rest={self.endpoints.rest_url})")

    # ---- clock ---------------------------------------------------------------

    def sync_clock(self) -> int:
        """Sample ``GET /fapi/v1/time`` ``CLOCK_SAMPLES`` times, set the library's
        ``timestamp_offset`` to the median of ``serverTime - local midpoint`` and
        return it (ms). Raises ExchangeUnavailable/ExchangeTimeout/RateLimited."""
        offsets = []
        for _ in range(CLOCK_SAMPLES):
            before = time.time() * 1000
            raw = self._public(self._client.futures_time, W("time"))
            server = mapping.parse_server_time(raw)
            after = time.time() * 1000
            offsets.append(int(server - (before + after) / 2))
        offset = sorted(offsets)[len(offsets) // 2]
        self._client.timestamp_offset = offset
        self._clock_synced = True
        logger.info("binance clock synced key=%s offset_ms=%s", self._api_key_hint, offset)
        return offset

    def _errors(self):  # type: ignore[no-untyped-def]
        return binance_errors()

    def _used_weight(self) -> int | None:
        response = getattr(self._client, "response", None)
        header = BINANCE.rate_limit.used_weight_header
        value = response.headers.get(header) if response is not None and header else None
        return int(value) if value and value.isdigit() else None

    # ---- ExchangeClient ------------------------------------------------------

    def is_alive(self) -> bool:
        """True until ``close()``; no network I/O."""
        return not self._closed and self._client.session is not None

    def validate_credentials(self) -> None:
        """One signed call (``GET /fapi/v3/balance``). Raises AuthFailed with Binance's
        code (-2015 bad key, -1022 bad signature), ExchangeUnavailable, ExchangeTimeout."""
        self._signed(lambda: self._client.futures_account_balance(), retry_on_skew=True,
                     weight=W("credentials"))

    def server_time(self) -> int:
        """``GET /fapi/v1/time`` serverTime, ms UTC."""
        return mapping.parse_server_time(self._public(lambda: self._client.futures_time(),
                                                      W("time")))

    def get_balance(self) -> Balance:
        """``GET /fapi/v2/account`` -> Balance (assets with a non-zero wallet or margin
        balance)."""
        raw = self._signed(lambda: self._client.futures_account(), retry_on_skew=True,
                           weight=W("balance"))
        return mapping.parse_balance(raw)

    def get_positions(self) -> list[Position]:
        """Non-zero positions from ``GET /fapi/v2/positionRisk`` (v2 because it carries
        ``leverage`` and ``marginType``, which v3 lacks)."""
        raw = self._signed(lambda: self._client.futures_position_information(version=2),
                           retry_on_skew=True, weight=W("positions"))
        return mapping.parse_positions(raw)

    def get_open_orders(self, symbol: str | None = None) -> list[Order]:
        """``GET /fapi/v1/openOrders`` (all symbols when ``symbol`` is None: weight 40
        instead of 1)."""
        params = {"symbol": symbol} if symbol else {}
        raw = self._signed(lambda: self._client.futures_get_open_orders(**params),
                           retry_on_skew=True,
                           weight=W("open_orders" if symbol else "open_orders_all"))
        return [mapping.parse_order(o) for o in raw]

    def get_order(self, symbol: str, client_order_id: str | None = None,
                  order_id: str | None = None) -> Order:
        """``GET /fapi/v1/order`` by ``orderId`` (preferred) or ``origClientOrderId``.
        Raises OrderNotFound (-2013), ValueError when neither id is given."""
        params = _order_ref(symbol, client_order_id, order_id)
        raw = self._signed(lambda: self._client.futures_get_order(**params), retry_on_skew=True,
                           weight=W("order"))
        return mapping.parse_order(raw)

    def create_order(self, request: OrderRequest) -> Order:
        """``POST /fapi/v1/order`` with ``newOrderRespType=RESULT`` (the reply carries
        status and avgPrice). Decimals go out as plain strings (``f"{d:f}"``),
        ``reduceOnly`` as ``"true"``/``"false"``. Only LIMIT and MARKET are accepted
        (python-binance routes conditional types to ``/fapi/v1/algoOrder``).

        Raises InvalidOrder (local check or Binance -1102/-1111/-4xxx...),
        InsufficientBalance (-2019), ExchangeTimeout (fate unknown: reconcile by
        ``client_order_id``), RateLimited, AuthFailed.
        """
        params = order_params(request)
        logger.info("binance create_order key=%s symbol=%s side=%s type=%s qty=%s coid=%s",
                    self._api_key_hint, request.symbol, request.side, request.type,
                    params["quantity"], request.client_order_id)
        raw = self._signed(lambda: self._client.futures_create_order(**params),
                           retry_on_skew=True, priority=ORDER, weight=W("order_create"))
        return mapping.parse_order(raw)

    def cancel_order(self, symbol: str, client_order_id: str | None = None,
                     order_id: str | None = None) -> Order:
        """``DELETE /fapi/v1/order`` -> the order as CANCELED. Raises OrderNotFound
        (-2011) when unknown or already final. Not retried on ClockSkew (the offset is
        resampled; the caller may retry)."""
        params = _order_ref(symbol, client_order_id, order_id)
        logger.info("binance cancel_order key=%s symbol=%s order_id=%s coid=%s",
                    self._api_key_hint, symbol, order_id, client_order_id)
        raw = self._signed(lambda: self._client.futures_cancel_order(**params),
                           retry_on_skew=False, priority=ORDER, weight=W("order_cancel"))
        return mapping.parse_order(raw)

    def get_fills(self, symbol: str, order_id: str | None = None,
                  start_time: int | None = None, limit: int = 500) -> list[Fill]:
        """``GET /fapi/v1/userTrades`` (``limit`` max 1000; ``start_time`` ms UTC)."""
        params: dict[str, Any] = {"symbol": symbol, "limit": int(limit)}
        if order_id is not None:
            params["orderId"] = str(order_id)
        if start_time is not None:
            params["startTime"] = int(start_time)
        raw = self._signed(lambda: self._client.futures_account_trades(**params),
                           retry_on_skew=True, weight=W("fills"))
        return [mapping.parse_fill(t) for t in raw]

    def get_symbol_rules(self, symbol: str) -> SymbolRules:
        """Rules of ``symbol`` from ``GET /fapi/v1/exchangeInfo``, cached per client for
        ``SYMBOL_RULES_TTL_S``. Raises InvalidOrder(-1121) for an unknown symbol."""
        with self._rules_lock:
            fetched = self._rules_fetched_at
            fresh = fetched is not None and time.monotonic() - fetched < SYMBOL_RULES_TTL_S
            rules = self._rules.get(symbol) if fresh else None
        if rules is None and not fresh:
            raw = self._public(lambda: self._client.futures_exchange_info(), W("symbol_rules"))
            parsed = mapping.parse_symbol_rules(raw)
            with self._rules_lock:
                self._rules, self._rules_fetched_at = parsed, time.monotonic()
            rules = parsed.get(symbol)
        if rules is None:
            raise InvalidOrder(EXCHANGE, -1121, f"Invalid symbol {symbol}.")
        return rules

    def get_ticker(self, symbol: str) -> Ticker:
        """Mark (``/fapi/v1/premiumIndex``), last (``/fapi/v2/ticker/price``) and best
        bid/ask (``/fapi/v1/ticker/bookTicker``) of ``symbol``."""
        premium = self._public(lambda: self._client.futures_mark_price(symbol=symbol),
                               W("mark_price"))
        last = self._public(lambda: self._client.futures_symbol_ticker(symbol=symbol),
                            W("ticker_price"))
        book = self._public(lambda: self._client.futures_orderbook_ticker(symbol=symbol),
                            W("book_ticker"))
        return mapping.parse_ticker(premium, last, book)

    def user_stream(self) -> BinanceUserStream:
        """A new, unconnected user-data stream for this key."""
        return BinanceUserStream(self._client, self.endpoints.ws_url, self.timeout_s,
                                 key_hint=self._api_key_hint,
                                 rest=lambda call, priority: self._io(call, priority,
                                                                      W("listen_key")),
                                 source_address=self._egress, hold=self._listen_key_hold)

    def close(self) -> None:
        """Close the HTTP session; never raises."""
        self._closed = True
        try:
            self._client.close_connection()
        except Exception as e:  # isolation boundary: close must not raise
            logger.debug("binance close failed key=%s err=%s", self._api_key_hint, type(e).__name__)


def _order_ref(symbol: str, client_order_id: str | None, order_id: str | None) -> dict[str, str]:
    if order_id is not None:
        return {"symbol": symbol, "orderId": str(order_id)}
    if client_order_id is not None:
        return {"symbol": symbol, "origClientOrderId": client_order_id}
    raise ValueError("order_id or client_order_id is required")


def order_params(request: OrderRequest) -> dict[str, str]:
    """``POST /fapi/v1/order`` parameters for ``request`` (all values strings).

    Raises InvalidOrder (code None) for an unsupported type, a side other than
    BUY/SELL, or a LIMIT without price. Binance doc: "New Order (TRADE)".
    """
    order_type, side = request.type.upper(), request.side.upper()
    if order_type not in SUPPORTED_ORDER_TYPES:
        raise InvalidOrder(EXCHANGE, None, f"unsupported order type {request.type}")
    if side not in mapping.ORDER_SIDE:
        raise InvalidOrder(EXCHANGE, None, f"unsupported side {request.side}")
    params = {
        "symbol": request.symbol,
        "side": side,
        "type": order_type,
        "quantity": _plain(request.quantity),
        "newClientOrderId": request.client_order_id,
        "reduceOnly": "true" if request.reduce_only else "false",
        "newOrderRespType": "RESULT",
    }
    if order_type == "LIMIT":
        if request.price is None:
            raise InvalidOrder(EXCHANGE, None, "LIMIT order without price")
        params["price"] = _plain(request.price)
        params["timeInForce"] = (request.time_in_force or "GTC").upper()
    return params


def _plain(d: Decimal) -> str:
    """Decimal as a plain decimal string (``Decimal("1E-3")`` -> ``"0.001"``)."""
    return f"{Decimal(d):f}"
