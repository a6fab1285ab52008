"""Bybit v5 linear (USDT perpetual) REST adapter on pybit's ``unified_trading.HTTP``.

Routing: pybit hard-codes ``https://api[-testnet].bybit.com``, so we build it with
``testnet=False`` and set ``session.endpoint = endpoints.rest_url`` (pybit composes
``f"{self.endpoint}/v5/..."`` per call). Construction does no network I/O.

pybit's own retries never happen (pybit 5.17.0 ``_http_manager._submit_request``):
``max_retries=1`` loops once; ``force_retry=False`` re-raises network errors and turns
bad JSON into ``FailedRequestError(409)`` at once; ``retry_codes`` must be *empty* so
10002/10006 raise ``InvalidRequestError`` instead of sleeping, widening
``recv_window`` by 2500 ms (10002) and ending in "Retries exceeded". Passing
``retry_codes=set()`` is not enough (``__post_init__`` swaps a falsy value for its
defaults), so :class:`OffsetHTTP` empties it after ``__post_init__``.
``recv_window`` stays 5000 ms.

Clock: pybit signs with the local clock; :class:`OffsetHTTP` overrides
``_prepare_headers`` to add ``time_offset_ms``, sampled from ``GET /v5/market/time``
(median of 3) before the first signed call (or adopted from another client of this
process for the same host: ``GovernedRestClient.ensure_clock``). On 10002 (ClockSkew)
we resample once and, for GETs and ``create_order`` only, retry once (safe: the ``orderLinkId`` is
fixed, a replay of an order that went through gets 110072). Bybit doc
``v5/guide.mdx`` "Authentication": ``server_time - recv_window <= timestamp <
server_time + 1000``.

Every public method raises only ``exchanges.errors`` classes; blocking I/O goes
through ``requests`` (cooperative under eventlet's monkey patching).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from typing import Any

from clock import now_ms
from exchanges.bybit import mapping
from exchanges.bybit.errors import EXCHANGE, bybit_errors
from exchanges.bybit.http import OffsetHTTP
from exchanges.bybit.spec import BYBIT
from exchanges.bybit.stream import BybitUserStream
from exchanges.errors import (
    ExchangeError,
    ExchangeUnavailable,
    InvalidOrder,
    OrderNotFound,
    ProtectionLegNotFound,
)
from exchanges.governor import ORDER
from exchanges.legs import check_leg_args, closing_side
from exchanges.rest_base import GovernedRestClient, order_ref, plain
from exchanges.types import (
    Balance,
    Fill,
    FundingFee,
    Order,
    OrderRequest,
    OrderStatus,
    Position,
    ProtectionKind,
    ProtectionLeg,
    ProtectionStatus,
    SymbolRules,
    Ticker,
    WorkingType,
)
from exchanges.wire import dec, ms

logger = logging.getLogger(__name__)

CATEGORY = "linear"
SETTLE_COIN = BYBIT.settle_assets[0]
RECV_WINDOW_MS = 5000
MAX_PAGES = 20
LOOKUP_DELAYS_S = (0.05, 0.2, 0.5)   # re-reads of an order right after create/cancel
SIDE = {"BUY": "Buy", "SELL": "Sell"}
ORDER_TYPE = {"MARKET": "Market", "LIMIT": "Limit"}
TIME_IN_FORCE = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "GTX": "PostOnly"}


class BybitLinearClient(GovernedRestClient):
    """``exchanges.base.ExchangeClient`` for one Bybit unified-account API key,
    trading ``category=linear`` USDT perpetuals; the constructor's arguments are
    ``GovernedRestClient``'s, with ``endpoints.rest_url`` like ``https://api.bybit.com``
    and ``ws_url`` like ``wss://stream.bybit.com`` (``/v5/private`` is appended).
    """

    spec = BYBIT
    exchange = EXCHANGE

    def _build(self, api_key: str, api_secret: str) -> None:
        self._api_key, self._api_secret = api_key, api_secret   # the private stream signs
        self._http = OffsetHTTP(api_key=api_key, api_secret=api_secret, testnet=False,
                                 timeout=self.timeout_s, recv_window=RECV_WINDOW_MS,
                                 max_retries=1, retry_delay=0, retry_codes=set(),
                                 log_requests=False)
        self._http.endpoint = self.endpoints.rest_url.rstrip("/")

    # ---- clock ---------------------------------------------------------------

    @property
    def time_offset_ms(self) -> int:
        """Current server-minus-local clock offset, ms."""
        return int(self._http.time_offset_ms)

    def server_now_ms(self) -> int:
        """The server's clock as we estimate it (local + offset), ms UTC; no I/O."""
        return now_ms() + self._http.time_offset_ms

    # ---- hooks of GovernedRestClient -----------------------------------------

    def _fetch_server_time(self) -> int:
        """``GET /v5/market/time``, ms UTC."""
        return mapping.parse_server_time(self._public(lambda: self._http.get_server_time(),
                                                      self._w("time")))

    def _set_clock_offset(self, offset_ms: int) -> None:
        self._http.time_offset_ms = offset_ms   # OffsetHTTP signs with local + offset

    def _fetch_symbol_rules(self) -> dict[str, SymbolRules]:
        """Every linear symbol's rules from ``GET /v5/market/instruments-info``."""
        rows = self._paged(self._http.get_instruments_info, {"category": CATEGORY}, 1000,
                           self._w("symbol_rules"), signed=False)
        return {r.symbol: r for r in (mapping.parse_instrument(row) for row in rows)}

    def _session(self) -> Any:
        return self._http.client

    def _errors(self):  # type: ignore[no-untyped-def]
        # pybit does not hand back the X-Bapi-Limit-Status headers without changing
        # every call's return shape, so no weight is recorded for Bybit
        return bybit_errors(self.server_now_ms)

    def _paged(self, call: Callable[..., Any], params: dict[str, Any], page_size: int,
               weight: int, max_rows: int | None = None,
               signed: bool = True) -> list[Mapping[str, Any]]:
        """GET following ``nextPageCursor`` (at most ``MAX_PAGES`` pages or ``max_rows``
        rows), ``weight`` a page. Returns the raw ``result.list`` rows."""
        rows: list[Mapping[str, Any]] = []
        cursor = ""
        for _ in range(MAX_PAGES):
            page = dict(params, limit=page_size)
            if cursor:
                page["cursor"] = cursor
            fetch = lambda page=page: call(**page)  # noqa: E731
            raw = (self._signed(fetch, retry_on_skew=True, weight=weight) if signed
                   else self._public(fetch, weight))
            rows.extend(mapping.rows_of(raw))
            cursor = str(mapping.result_of(raw).get("nextPageCursor") or "")
            if not cursor or (max_rows is not None and len(rows) >= max_rows):
                break
        return rows if max_rows is None else rows[:max_rows]

    # ---- ExchangeClient ------------------------------------------------------

    def validate_credentials(self) -> None:
        """One signed call (``GET /v5/account/wallet-balance?accountType=UNIFIED``).
        Raises AuthFailed (10003/10004/10005 or HTTP 401), ExchangeUnavailable,
        ExchangeTimeout."""
        self._signed(lambda: self._http.get_wallet_balance(accountType="UNIFIED"),
                     retry_on_skew=True, weight=self._w("credentials"))

    def get_balance(self) -> Balance:
        """``GET /v5/account/wallet-balance?accountType=UNIFIED`` (``mapping.parse_balance``)."""
        raw = self._signed(lambda: self._http.get_wallet_balance(accountType="UNIFIED"),
                           retry_on_skew=True, weight=self._w("balance"))
        return mapping.parse_balance(raw)

    def get_positions(self) -> list[Position]:
        """Open positions: ``GET /v5/position/list?settleCoin=USDT`` (size > 0 only)."""
        rows = self._paged(self._http.get_positions,
                           {"category": CATEGORY, "settleCoin": SETTLE_COIN}, 200, self._w("positions"))
        return [p for p in (mapping.parse_position(r) for r in rows) if p is not None]

    def get_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Open orders of ``symbol`` (all USDT symbols when None), ``/v5/order/realtime``."""
        params = {"category": CATEGORY, "orderFilter": "Order"}   # legs: open_protection_legs
        params.update({"symbol": symbol} if symbol else {"settleCoin": SETTLE_COIN})
        rows = self._paged(self._http.get_open_orders, params, 50,
                           self._w("open_orders" if symbol else "open_orders_all"))
        return [o for o in (mapping.parse_order(r) for r in rows if not mapping.is_leg(r))
                if not o.status.is_final]

    def get_order(self, symbol: str, client_order_id: str | None = None,
                  order_id: str | None = None) -> Order:
        """One order by ``orderId`` (preferred) or ``orderLinkId``: ``/v5/order/realtime``
        (open and recent closed orders), then ``/v5/order/history``. Raises
        OrderNotFound (code 110001) when neither knows it, ValueError without an id."""
        ref = order_ref(symbol, client_order_id, order_id, "orderLinkId", category=CATEGORY)
        for call, weight in ((self._http.get_open_orders, self._w("order")),
                             (self._http.get_order_history, self._w("order_history"))):
            raw = self._signed(partial(call, **ref), retry_on_skew=True, weight=weight)
            orders = mapping.parse_orders(raw)
            if orders:
                return orders[0]
        raise OrderNotFound(EXCHANGE, 110001, "Order does not exist.")

    def create_order(self, request: OrderRequest) -> Order:
        """``POST /v5/order/create``, then read the order back (``get_order``; for
        MARKET/IOC/FOK until final) since Bybit acknowledges with ``{orderId,
        orderLinkId}`` only. If the read-back fails after the ack, the order is known to
        be accepted and is returned as NEW built from the request and the ack (later
        stream or poll updates move it forward). Raises InvalidOrder (local check, 10001,
        110xxx, 110072 duplicate orderLinkId), InsufficientBalance (110004/110007/110012),
        ExchangeTimeout (fate unknown: reconcile by ``client_order_id``), RateLimited,
        AuthFailed.
        """
        params = order_params(request)
        logger.info("bybit create_order key=%s symbol=%s side=%s type=%s qty=%s coid=%s",
                    self._api_key_hint, request.symbol, params["side"], params["orderType"],
                    params["qty"], request.client_order_id)
        raw = self._signed(lambda: self._http.place_order(**params), retry_on_skew=True,
                           priority=ORDER, weight=self._w("order_create"))
        order_id = str(mapping.result_of(raw).get("orderId") or "")
        # MARKET, IOC and FOK orders end at once on the exchange: read until final.
        immediate = params["orderType"] == "Market" or params.get("timeInForce") in ("IOC", "FOK")
        try:
            return self._read_back(request.symbol, order_id, request.client_order_id,
                                   want_final=immediate)
        except ExchangeError as e:
            logger.warning("bybit create_order read-back failed key=%s order_id=%s err=%s",
                           self._api_key_hint, order_id, type(e).__name__)
            return _acked_order(request, order_id, ms(raw.get("time")) or now_ms())

    def cancel_order(self, symbol: str, client_order_id: str | None = None,
                     order_id: str | None = None) -> Order:
        """``POST /v5/order/cancel`` then read the order back until it is final.
        Raises OrderNotFound (110001 unknown or already closed, 110008/110010) and,
        on 10002, ClockSkew after resampling (a cancel is not retried here)."""
        ref = order_ref(symbol, client_order_id, order_id, "orderLinkId", category=CATEGORY)
        logger.info("bybit cancel_order key=%s symbol=%s order_id=%s coid=%s",
                    self._api_key_hint, symbol, order_id, client_order_id)
        raw = self._signed(lambda: self._http.cancel_order(**ref), retry_on_skew=False,
                           priority=ORDER, weight=self._w("order_cancel"))
        acked_id = str(mapping.result_of(raw).get("orderId") or order_id or "")
        return self._read_back(symbol, acked_id, client_order_id, want_final=True)

    def _read_back(self, symbol: str, order_id: str, client_order_id: str | None,
                   want_final: bool) -> Order:
        """``get_order`` with short pauses (``LOOKUP_DELAYS_S``) while the order is not
        visible yet, or (``want_final``) not final yet; returns the last state seen."""
        last: Order | None = None
        for delay in (0.0, *LOOKUP_DELAYS_S):
            if delay:
                time.sleep(delay)
            try:
                last = self.get_order(symbol, client_order_id=client_order_id,
                                      order_id=order_id or None)
            except OrderNotFound:
                continue
            if not want_final or last.status.is_final:
                return last
        if last is None:
            raise OrderNotFound(EXCHANGE, 110001, "Order does not exist.")
        return last

    def get_fills(self, symbol: str, order_id: str | None = None,
                  start_time: int | None = None, limit: int = 500) -> list[Fill]:
        """Trades from ``GET /v5/execution/list`` (pages of up to 100, newest first
        on the wire), returned oldest first; ``start_time`` ms UTC (Bybit then
        covers 7 days from it)."""
        params: dict[str, Any] = {"category": CATEGORY, "symbol": symbol}
        if order_id is not None:
            params["orderId"] = str(order_id)
        if start_time is not None:
            params["startTime"] = int(start_time)
        rows = self._paged(self._http.get_executions, params, min(100, max(1, int(limit))),
                           self._w("fills"), max_rows=int(limit))
        fills = [mapping.parse_fill(r) for r in rows if mapping.is_trade(r)]
        return sorted(fills, key=lambda f: (f.time, f.trade_id))

    def get_ticker(self, symbol: str) -> Ticker:
        """``GET /v5/market/tickers``. Raises InvalidOrder(10001) for an unknown symbol."""
        raw = self._public(lambda: self._http.get_tickers(category=CATEGORY, symbol=symbol),
                           self._w("ticker"))
        ticker = mapping.parse_ticker(raw)
        if ticker is None:
            raise self._unknown_symbol(symbol)
        return ticker

    # ---- protection legs: position trading-stop ---------------------------------

    def place_protection_leg(self, symbol: str, position_side: str, kind: ProtectionKind,
                             client_order_id: str, *,
                             trigger_price: Decimal | None = None,
                             callback_rate: Decimal | None = None,
                             activation_price: Decimal | None = None,
                             working_type: WorkingType = WorkingType.MARK_PRICE,
                             ) -> ProtectionLeg:
        """``POST /v5/position/trading-stop`` (``tpslMode=Full``, ``positionIdx=0``:
        the whole position, never opening or flipping one) setting ``stopLoss`` /
        ``takeProfit`` with ``slTriggerBy`` / ``tpTriggerBy`` (MarkPrice or LastPrice),
        or ``trailingStop`` (a distance: ``callback_rate`` % of ``activation_price``, or
        of the mark price when there is none, rounded to the tick, at least one tick)
        with optional ``activePrice``. A leg of that kind already held is modified in
        place (Full mode). The reply is empty, so the conditional order is read back
        (``/v5/order/realtime?orderFilter=StopOrder``).

        The returned leg's ``client_order_id`` is ``"<symbol>-<kind>"``
        (``mapping.bybit_leg_id``); the ``client_order_id`` given is only logged. Bybit
        applies the leg to the position it holds in ``symbol``: the returned leg's
        ``position_side`` says which (compare it with ``position_side``).
        Raises InvalidOrder (local checks; 10001: no position, a trigger on the wrong
        side), ExchangeTimeout (fate unknown: ``get_protection_leg``),
        ExchangeUnavailable when the accepted leg cannot be read back.
        """
        spec = self.spec.protection
        assert spec is not None
        check_leg_args(EXCHANGE, spec, kind, position_side, trigger_price, callback_rate,
                       activation_price, working_type)
        kind = ProtectionKind(kind)
        closing_side(position_side)
        params: dict[str, Any] = {"category": CATEGORY, "symbol": symbol, "tpslMode": "Full",
                                  "positionIdx": 0}
        by = mapping.TRIGGER_BY_OUT[WorkingType(working_type)]
        if kind is ProtectionKind.STOP_LOSS:
            params.update(stopLoss=plain(trigger_price), slTriggerBy=by)  # type: ignore[arg-type]
        elif kind is ProtectionKind.TAKE_PROFIT:
            params.update(takeProfit=plain(trigger_price), tpTriggerBy=by)  # type: ignore[arg-type]
        else:
            distance = self._trailing_distance(symbol, callback_rate, activation_price)  # type: ignore[arg-type]
            params["trailingStop"] = plain(distance)
            if activation_price is not None:
                params["activePrice"] = plain(activation_price)
        logger.info("bybit place_protection_leg key=%s symbol=%s kind=%s coid=%s",
                    self._api_key_hint, symbol, kind.value, client_order_id)
        self._signed(lambda: self._http.set_trading_stop(**params), retry_on_skew=True,
                     priority=ORDER, weight=self._w("trading_stop"))
        for delay in (0.0, *LOOKUP_DELAYS_S):
            if delay:
                time.sleep(delay)
            leg = self._open_leg(symbol, kind)
            if leg is not None:
                return leg
        raise ExchangeUnavailable(EXCHANGE, None, f"{kind.value} set but not listed yet")

    def _trailing_distance(self, symbol: str, callback_rate: Decimal,
                           activation_price: Decimal | None) -> Decimal:
        """``callback_rate`` % of the activation (or mark) price, on the tick grid."""
        tick = self.get_symbol_rules(symbol).tick_size
        ref = activation_price if activation_price is not None else \
            self.get_ticker(symbol).mark_price
        ticks = (ref * callback_rate / 100 / tick).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return max(ticks, Decimal(1)) * tick

    def _legs(self, symbol: str | None) -> list[ProtectionLeg]:
        params: dict[str, Any] = {"category": CATEGORY, "orderFilter": "StopOrder"}
        params.update({"symbol": symbol} if symbol else {"settleCoin": SETTLE_COIN})
        rows = [r for r in self._paged(self._http.get_open_orders, params, 50,
                                       self._w("open_orders" if symbol else "open_orders_all"))
                if mapping.is_leg(r) and r.get("orderStatus") == "Untriggered"]
        distances: dict[str, Decimal] = {}
        if any(r["stopOrderType"] == "TrailingStop" for r in rows):
            pos_params = {"category": CATEGORY}
            pos_params.update({"symbol": symbol} if symbol else {"settleCoin": SETTLE_COIN})
            for p in self._paged(self._http.get_positions, pos_params, 200,
                                 self._w("positions")):
                if dec(p.get("trailingStop")):
                    distances[p["symbol"]] = dec(p["trailingStop"])
        return [mapping.parse_leg(r, distances.get(r["symbol"])) for r in rows]

    def _open_leg(self, symbol: str, kind: ProtectionKind) -> ProtectionLeg | None:
        return next((leg for leg in self._legs(symbol) if leg.kind is kind), None)

    def cancel_protection_leg(self, symbol: str, client_order_id: str) -> ProtectionLeg:
        """Trading-stop with the leg's field ``"0"`` (Bybit: "0 means cancel"); returns
        the leg as CANCELED. ``client_order_id`` is ``"<symbol>-<kind>"``. Raises
        ProtectionLegNotFound (code None) when no such leg waits (it may have fired)."""
        ref = mapping.parse_leg_id(client_order_id)
        leg = self._open_leg(symbol, ref[1]) if ref and ref[0] == symbol else None
        if leg is None:
            raise ProtectionLegNotFound(EXCHANGE, None, f"no waiting leg {client_order_id}")
        field = {ProtectionKind.STOP_LOSS: "stopLoss", ProtectionKind.TAKE_PROFIT: "takeProfit",
                 ProtectionKind.TRAILING_STOP: "trailingStop"}[leg.kind]
        logger.info("bybit cancel_protection_leg key=%s symbol=%s coid=%s",
                    self._api_key_hint, symbol, client_order_id)
        self._signed(lambda: self._http.set_trading_stop(
            category=CATEGORY, symbol=symbol, tpslMode="Full", positionIdx=0, **{field: "0"}),
            retry_on_skew=False, priority=ORDER, weight=self._w("trading_stop"))
        return replace(leg, status=ProtectionStatus.CANCELED, updated_at=self.server_now_ms())

    def open_protection_legs(self, symbol: str | None = None) -> list[ProtectionLeg]:
        """Waiting legs: ``/v5/order/realtime?orderFilter=StopOrder`` rows with a TP/SL/
        trailing ``stopOrderType`` in ``Untriggered``; a trailing leg's distance from
        ``/v5/position/list`` ``trailingStop`` (one more call when there is one)."""
        return self._legs(symbol)

    def get_protection_leg(self, symbol: str, client_order_id: str) -> ProtectionLeg:
        """The leg ``"<symbol>-<kind>"``: the waiting one, else the newest of that kind
        in ``/v5/order/history`` (fired: its market order keeps the leg's ``orderId``;
        Deactivated: canceled). Raises ProtectionLegNotFound."""
        ref = mapping.parse_leg_id(client_order_id)
        if ref is None or ref[0] != symbol:
            raise ProtectionLegNotFound(EXCHANGE, None, f"not a Bybit leg id: {client_order_id}")
        leg = self._open_leg(symbol, ref[1])
        if leg is not None:
            return leg
        rows = self._paged(self._http.get_order_history,
                           {"category": CATEGORY, "symbol": symbol, "orderFilter": "StopOrder"},
                           50, self._w("order_history"), max_rows=200)
        for row in rows:                                  # newest first
            if mapping.is_leg(row) and mapping.STOP_ORDER_KIND[row["stopOrderType"]] is ref[1]:
                return mapping.parse_leg(row)
        raise ProtectionLegNotFound(EXCHANGE, None, f"no leg {client_order_id}")

    def get_funding_fees(self, symbol: str | None = None, start_time: int | None = None,
                         limit: int = 1000) -> list[FundingFee]:
        """``GET /v5/execution/list?execType=Funding`` (pages of 100; ``start_time`` ms
        UTC, Bybit then covers 7 days), oldest first."""
        params: dict[str, Any] = {"category": CATEGORY, "execType": "Funding"}
        if symbol:
            params["symbol"] = symbol
        if start_time is not None:
            params["startTime"] = int(start_time)
        rows = self._paged(self._http.get_executions, params, 100, self._w("funding"),
                           max_rows=int(limit))
        fees = [mapping.parse_funding(r) for r in rows if r.get("execType") == "Funding"]
        return sorted(fees, key=lambda f: (f.time_ms, f.id))

    def user_stream(self) -> BybitUserStream:
        """A new, unconnected private stream (auth ``expires`` uses our clock offset)."""
        return BybitUserStream(self._api_key, self._api_secret, self.endpoints.ws_url,
                               self.timeout_s, server_now_ms=self._stream_clock,
                               key_hint=self._api_key_hint, source_address=self._egress)

    def _stream_clock(self) -> int:
        self.ensure_clock()
        return self.server_now_ms()


def order_params(request: OrderRequest) -> dict[str, Any]:
    """``POST /v5/order/create`` body for ``request``: qty/price as plain decimal
    strings, ``orderType`` Market/Limit, ``timeInForce`` GTC/IOC/FOK/PostOnly (LIMIT
    only; GTX -> PostOnly; default GTC), ``reduceOnly`` a JSON bool, ``orderLinkId`` the
    client order id. Raises InvalidOrder (code None) for an unsupported type, side or
    time in force, or a LIMIT without price. Bybit doc ``order/create-order.mdx``.
    """
    order_type, side = request.type.upper(), request.side.upper()
    if order_type not in ORDER_TYPE:
        raise InvalidOrder(EXCHANGE, None, f"unsupported order type {request.type}")
    if side not in SIDE:
        raise InvalidOrder(EXCHANGE, None, f"unsupported side {request.side}")
    params: dict[str, Any] = {
        "category": CATEGORY,
        "symbol": request.symbol,
        "side": SIDE[side],
        "orderType": ORDER_TYPE[order_type],
        "qty": plain(request.quantity),
    }
    if order_type == "LIMIT":
        if request.price is None:
            raise InvalidOrder(EXCHANGE, None, "LIMIT order without price")
        tif = (request.time_in_force or "GTC").upper()
        if tif not in TIME_IN_FORCE:
            raise InvalidOrder(EXCHANGE, None, f"unsupported time in force {request.time_in_force}")
        params["price"] = plain(request.price)
        params["timeInForce"] = TIME_IN_FORCE[tif]
    params["orderLinkId"] = request.client_order_id
    params["reduceOnly"] = bool(request.reduce_only)
    return params


def _acked_order(request: OrderRequest, order_id: str, at_ms: int) -> Order:
    """The order as accepted (NEW, nothing filled) from the request and Bybit's ack."""
    limit = request.type.upper() == "LIMIT"
    return Order(
        client_order_id=request.client_order_id, order_id=order_id, symbol=request.symbol,
        side=request.side.upper(), type=request.type.upper(), status=OrderStatus.NEW,
        price=Decimal(request.price or 0) if limit else Decimal(0),
        quantity=Decimal(request.quantity), filled_quantity=Decimal(0), avg_price=Decimal(0),
        time_in_force=(request.time_in_force or "GTC").upper() if limit else "IOC",
        reduce_only=request.reduce_only, updated_at=at_ms)
