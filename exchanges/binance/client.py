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
and keep the median offset (a client built with a governor, as the server builds them,
adopts the offset another client of this process sampled for the same host within 5
minutes instead: ``GovernedRestClient.ensure_clock``). On ``-1021`` (ClockSkew) we resample once and, for
idempotent GETs and ``create_order`` only, retry once; recvWindow stays at the
library's 10000 ms (never widened). Binance doc: "General Info / Timing security".
"""
from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from binance.client import Client

from exchanges.binance import mapping
from exchanges.binance.errors import EXCHANGE, binance_errors
from exchanges.binance.spec import BINANCE
from exchanges.binance.stream import BinanceUserStream, ListenKeyHold
from exchanges.errors import InvalidOrder, OrderNotFound, ProtectionLegNotFound
from exchanges.governor import ORDER
from exchanges.legs import check_leg_args, closing_side
from exchanges.rest_base import GovernedRestClient, order_ref, plain
from exchanges.types import (
    Balance,
    Fill,
    FundingFee,
    Order,
    OrderRequest,
    Position,
    ProtectionKind,
    ProtectionLeg,
    SymbolRules,
    Ticker,
    WorkingType,
)

logger = logging.getLogger(__name__)

SUPPORTED_ORDER_TYPES = ("LIMIT", "MARKET")


class BinanceFuturesClient(GovernedRestClient):
    """``exchanges.base.ExchangeClient`` for one Binance USD-M API key; the
    constructor's arguments are ``GovernedRestClient``'s, with ``endpoints.rest_url``
    like ``https://fapi.binance.com`` (``/fapi`` and ``/api`` are appended) and
    ``ws_url`` like ``wss://fstream.binance.com``.
    """

    spec = BINANCE
    exchange = EXCHANGE

    # ---- hooks of GovernedRestClient -----------------------------------------

    def _build(self, api_key: str, api_secret: str) -> None:
        rest = self.endpoints.rest_url.rstrip("/")
        self._client = Client(api_key, api_secret, requests_params={"timeout": self.timeout_s},
                              ping=False, testnet=False)
        self._client.FUTURES_URL = rest + "/fapi"
        self._client.API_URL = rest + "/api"
        self._listen_key_hold = ListenKeyHold()

    def _fetch_server_time(self) -> int:
        """``GET /fapi/v1/time`` serverTime, ms UTC."""
        return mapping.parse_server_time(self._public(lambda: self._client.futures_time(),
                                                      self._w("time")))

    def _set_clock_offset(self, offset_ms: int) -> None:
        # python-binance signs with time.time() + timestamp_offset
        self._client.timestamp_offset = offset_ms

    def _fetch_symbol_rules(self) -> dict[str, SymbolRules]:
        """Every symbol's rules from ``GET /fapi/v1/exchangeInfo``."""
        raw = self._public(lambda: self._client.futures_exchange_info(), self._w("symbol_rules"))
        return mapping.parse_symbol_rules(raw)

    def _session(self) -> Any:
        return self._client.session

    def _close_session(self) -> None:
        self._client.close_connection()

    def _errors(self):  # type: ignore[no-untyped-def]
        return binance_errors()

    def _used_weight(self) -> int | None:
        response = getattr(self._client, "response", None)
        header = self.spec.rate_limit.used_weight_header
        value = response.headers.get(header) if response is not None and header else None
        return int(value) if value and value.isdigit() else None

    # ---- ExchangeClient ------------------------------------------------------

    def validate_credentials(self) -> None:
        """One signed call (``GET /fapi/v3/balance``). Raises AuthFailed with Binance's
        code (-2015 bad key, -1022 bad signature), ExchangeUnavailable, ExchangeTimeout."""
        self._signed(lambda: self._client.futures_account_balance(), retry_on_skew=True,
                     weight=self._w("credentials"))

    def get_balance(self) -> Balance:
        """``GET /fapi/v2/account`` -> Balance (assets with a non-zero wallet or margin
        balance)."""
        raw = self._signed(lambda: self._client.futures_account(), retry_on_skew=True,
                           weight=self._w("balance"))
        return mapping.parse_balance(raw)

    def get_positions(self) -> list[Position]:
        """Non-zero positions from ``GET /fapi/v2/positionRisk`` (v2 because it carries
        ``leverage`` and ``marginType``, which v3 lacks)."""
        raw = self._signed(lambda: self._client.futures_position_information(version=2),
                           retry_on_skew=True, weight=self._w("positions"))
        return mapping.parse_positions(raw)

    def get_open_orders(self, symbol: str | None = None) -> list[Order]:
        """``GET /fapi/v1/openOrders`` (all symbols when ``symbol`` is None: weight 40
        instead of 1)."""
        params = {"symbol": symbol} if symbol else {}
        raw = self._signed(lambda: self._client.futures_get_open_orders(**params),
                           retry_on_skew=True,
                           weight=self._w("open_orders" if symbol else "open_orders_all"))
        return [mapping.parse_order(o) for o in raw]

    def get_order(self, symbol: str, client_order_id: str | None = None,
                  order_id: str | None = None) -> Order:
        """``GET /fapi/v1/order`` by ``orderId`` (preferred) or ``origClientOrderId``.
        Raises OrderNotFound (-2013), ValueError when neither id is given."""
        params = order_ref(symbol, client_order_id, order_id, "origClientOrderId")
        raw = self._signed(lambda: self._client.futures_get_order(**params), retry_on_skew=True,
                           weight=self._w("order"))
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
                           retry_on_skew=True, priority=ORDER, weight=self._w("order_create"))
        return mapping.parse_order(raw)

    def cancel_order(self, symbol: str, client_order_id: str | None = None,
                     order_id: str | None = None) -> Order:
        """``DELETE /fapi/v1/order`` -> the order as CANCELED. Raises OrderNotFound
        (-2011) when unknown or already final. Not retried on ClockSkew (the offset is
        resampled; the caller may retry)."""
        params = order_ref(symbol, client_order_id, order_id, "origClientOrderId")
        logger.info("binance cancel_order key=%s symbol=%s order_id=%s coid=%s",
                    self._api_key_hint, symbol, order_id, client_order_id)
        raw = self._signed(lambda: self._client.futures_cancel_order(**params),
                           retry_on_skew=False, priority=ORDER, weight=self._w("order_cancel"))
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
                           retry_on_skew=True, weight=self._w("fills"))
        return [mapping.parse_fill(t) for t in raw]

    def get_ticker(self, symbol: str) -> Ticker:
        """Mark (``/fapi/v1/premiumIndex``), last (``/fapi/v2/ticker/price``) and best
        bid/ask (``/fapi/v1/ticker/bookTicker``) of ``symbol``."""
        premium = self._public(lambda: self._client.futures_mark_price(symbol=symbol),
                               self._w("mark_price"))
        last = self._public(lambda: self._client.futures_symbol_ticker(symbol=symbol),
                            self._w("ticker_price"))
        book = self._public(lambda: self._client.futures_orderbook_ticker(symbol=symbol),
                            self._w("book_ticker"))
        return mapping.parse_ticker(premium, last, book)

    # ---- protection legs: the Algo Service ---------------------------------------

    def place_protection_leg(self, symbol: str, position_side: str, kind: ProtectionKind,
                             client_order_id: str, *,
                             trigger_price: Decimal | None = None,
                             callback_rate: Decimal | None = None,
                             activation_price: Decimal | None = None,
                             working_type: WorkingType = WorkingType.MARK_PRICE,
                             ) -> ProtectionLeg:
        """``POST /fapi/v1/algoOrder`` (``algoType=CONDITIONAL``, ``clientAlgoId`` =
        ``client_order_id``). Stop-loss / take-profit: STOP_MARKET /
        TAKE_PROFIT_MARKET with ``closePosition=true`` (the whole position at trigger
        time; never opens or flips). Trailing: TRAILING_STOP_MARKET with
        ``callbackRate`` (0.1..10 %), optional ``activatePrice``, ``reduceOnly=true``
        and ``quantity`` = the position's size now (Binance allows Close-All only for
        the other two types; one extra ``GET /fapi/v2/positionRisk``).

        Returns the leg (status NEW). Raises InvalidOrder (local checks; -2021 would
        trigger at once, -2007 callback rate, -4130 a second close-all leg of the
        type, -4509 no position nor order, or no position for a trailing stop),
        ExchangeTimeout (fate unknown: ``get_protection_leg``), RateLimited, AuthFailed.
        """
        spec = self.spec.protection
        assert spec is not None
        check_leg_args(EXCHANGE, spec, kind, position_side, trigger_price, callback_rate,
                       activation_price, working_type)
        kind = ProtectionKind(kind)
        params: dict[str, Any] = {
            "algoType": "CONDITIONAL", "symbol": symbol, "side": closing_side(position_side),
            "type": mapping.KIND_ALGO_TYPE[kind], "workingType": WorkingType(working_type).value,
            "clientAlgoId": client_order_id,
        }
        if kind is ProtectionKind.TRAILING_STOP:
            size = next((p.size for p in self.get_positions()
                         if p.symbol == symbol and p.side == position_side), None)
            if size is None:
                raise InvalidOrder(EXCHANGE, None, f"no {position_side} position in {symbol}")
            params.update({"quantity": plain(size), "reduceOnly": "true",
                           "callbackRate": plain(callback_rate)})  # type: ignore[arg-type]
            if activation_price is not None:
                params["activatePrice"] = plain(activation_price)
        else:
            params.update({"triggerPrice": plain(trigger_price), "closePosition": "true"})  # type: ignore[arg-type]
        logger.info("binance place_protection_leg key=%s symbol=%s kind=%s coid=%s",
                    self._api_key_hint, symbol, kind.value, client_order_id)
        raw = self._signed(lambda: self._client.futures_create_algo_order(**params),
                           retry_on_skew=True, priority=ORDER,
                           weight=self._w("algo_order_create"))
        return mapping.parse_algo_order(raw)

    def cancel_protection_leg(self, symbol: str, client_order_id: str) -> ProtectionLeg:
        """``DELETE /fapi/v1/algoOrder`` by ``clientAlgoId``, then ``GET`` it (the cancel
        reply carries ids only). Raises ProtectionLegNotFound (-2011: unknown or no
        longer waiting: it may have fired)."""
        logger.info("binance cancel_protection_leg key=%s symbol=%s coid=%s",
                    self._api_key_hint, symbol, client_order_id)
        try:
            self._signed(lambda: self._client.futures_cancel_algo_order(
                clientAlgoId=client_order_id), retry_on_skew=False, priority=ORDER,
                weight=self._w("algo_order_cancel"))
        except OrderNotFound as e:
            raise ProtectionLegNotFound(e.exchange, e.code, e.message, e.http_status) from e
        return self.get_protection_leg(symbol, client_order_id)

    def open_protection_legs(self, symbol: str | None = None) -> list[ProtectionLeg]:
        """``GET /fapi/v1/openAlgoOrders`` (weight 1 with a symbol, 40 without)."""
        params = {"symbol": symbol} if symbol else {}
        raw = self._signed(lambda: self._client.futures_get_open_algo_orders(**params),
                           retry_on_skew=True,
                           weight=self._w("open_algo_orders" if symbol else "open_algo_orders_all"))
        rows = raw.get("orders", []) if isinstance(raw, dict) else raw
        return [mapping.parse_algo_order(r) for r in rows]

    def get_protection_leg(self, symbol: str, client_order_id: str) -> ProtectionLeg:
        """``GET /fapi/v1/algoOrder`` by ``clientAlgoId``, final ones included. Raises
        ProtectionLegNotFound (-2013)."""
        try:
            raw = self._signed(lambda: self._client.futures_get_algo_order(
                clientAlgoId=client_order_id), retry_on_skew=True, weight=self._w("algo_order"))
        except OrderNotFound as e:
            raise ProtectionLegNotFound(e.exchange, e.code, e.message, e.http_status) from e
        return mapping.parse_algo_order(raw)

    def get_funding_fees(self, symbol: str | None = None, start_time: int | None = None,
                         limit: int = 1000) -> list[FundingFee]:
        """``GET /fapi/v1/income?incomeType=FUNDING_FEE`` (weight 30; ``limit`` max
        1000; ``start_time`` ms UTC), oldest first."""
        params: dict[str, Any] = {"incomeType": "FUNDING_FEE", "limit": min(int(limit), 1000)}
        if symbol:
            params["symbol"] = symbol
        if start_time is not None:
            params["startTime"] = int(start_time)
        raw = self._signed(lambda: self._client.futures_income_history(**params),
                           retry_on_skew=True, weight=self._w("income"))
        return mapping.parse_income_funding(raw)

    def user_stream(self) -> BinanceUserStream:
        """A new, unconnected user-data stream for this key."""
        return BinanceUserStream(self._client, self.endpoints.ws_url, self.timeout_s,
                                 key_hint=self._api_key_hint,
                                 rest=lambda call, priority: self._io(call, priority,
                                                                      self._w("listen_key")),
                                 source_address=self._egress, hold=self._listen_key_hold)


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
        "quantity": plain(request.quantity),
        "newClientOrderId": request.client_order_id,
        "reduceOnly": "true" if request.reduce_only else "false",
        "newOrderRespType": "RESULT",
    }
    if order_type == "LIMIT":
        if request.price is None:
            raise InvalidOrder(EXCHANGE, None, "LIMIT order without price")
        params["price"] = plain(request.price)
        params["timeInForce"] = (request.time_in_force or "GTC").upper()
    return params
