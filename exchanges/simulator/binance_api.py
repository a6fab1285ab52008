"""Binance USD-M futures REST layer: routes, authentication, faults, error mapping.

Serves ``/api/v3/{ping,time}`` and ``/fapi/v1|v2|v3/...`` so that the real
python-binance ``Client`` works unchanged (see EXCHANGE_PROTOCOLS.md §1-2). Errors
are ``{"code", "msg"}`` with a real HTTP status and JSON content type; every reply
carries ``X-MBX-USED-WEIGHT-1M``: the request weight used in the current minute by
the client's IP, as Binance counts it (per IP, each endpoint its documented weight,
``request_weight``). With ``--ip-weight-limit`` (``RequestStats.ip_weight_limit``) a
request beyond the limit gets HTTP 429 ``-1003`` with ``Retry-After``. Faults (``faults.FaultRegistry``) are applied in
the middleware, before/after the handler, for REST paths only.

``reject_orders`` fault: a LIMIT IOC/FOK order is accepted and expires at once
(HTTP 200 with ``status: EXPIRED`` whatever ``newOrderRespType``, plus WS NEW and
EXPIRED updates); any other order gets HTTP 400
``{"code": -2010, "msg": "Order would immediately trigger."}``.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from exchanges.simulator import binance_account as ba
from exchanges.simulator import binance_format as bf
from exchanges.simulator.binance_auth import (
    KEY, NONE, SIGNED, BinanceError, Ctx, Handler, Params, account_for_key, engine_error,
    error_response, verify_signed,
)
from exchanges.simulator.binance_algo import AlgoRoutes
from exchanges.simulator.binance_orders import OrderRoutes
from exchanges.simulator.binance_streams import BinanceStreams
from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import Clock, FaultRegistry, RequestStats
from exchanges.simulator.models import EngineError

logger = logging.getLogger(__name__)

# Request weights of the endpoints served (Binance USD-M "General Info" and each
# endpoint's page): openOrders costs 40 without a symbol; a new order costs 0 on the
# IP limit (it counts on the account's order limits instead).
WEIGHTS = {
    ("GET", "/fapi/v2/account"): 5, ("GET", "/fapi/v3/account"): 5,
    ("GET", "/fapi/v2/balance"): 5, ("GET", "/fapi/v3/balance"): 5,
    ("GET", "/fapi/v2/positionRisk"): 5, ("GET", "/fapi/v3/positionRisk"): 5,
    ("GET", "/fapi/v1/userTrades"): 5, ("GET", "/fapi/v1/allOrders"): 5,
    ("POST", "/fapi/v1/order"): 0, ("GET", "/fapi/v1/ticker/bookTicker"): 2,
    ("POST", "/fapi/v1/algoOrder"): 0, ("GET", "/fapi/v1/income"): 30,
    ("GET", "/fapi/v1/allAlgoOrders"): 5,
}


def request_weight(method: str, path: str, has_symbol: bool) -> int:
    """The IP request weight of one call (1 unless ``WEIGHTS`` says otherwise)."""
    if method == "GET" and path in ("/fapi/v1/openOrders", "/fapi/v1/openAlgoOrders",
                                    "/fapi/v1/ticker/24hr"):
        return 1 if has_symbol else 40
    return WEIGHTS.get((method, path), 1)


class BinanceApi:
    """Registers the Binance REST routes on an aiohttp app."""

    def __init__(self, engine: Engine, faults: FaultRegistry, clock: Clock,
                 stats: RequestStats, streams: BinanceStreams) -> None:
        self.engine, self.faults, self.clock = engine, faults, clock
        self.stats, self.streams = stats, streams

    @staticmethod
    def is_rest_path(path: str) -> bool:
        """True for the REST paths this layer owns."""
        return path.startswith(("/fapi/", "/api/", "/sapi/"))

    # ---- middleware: counting, weight header, faults, unknown paths -----------------
    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        """Count the request, apply REST faults, answer JSON for unknown paths."""
        if not self.is_rest_path(request.path):
            return await handler(request)
        api_key = request.headers.get("X-MBX-APIKEY") or None
        cost = request_weight(request.method, request.path, "symbol" in request.rel_url.query)
        weight = self.stats.record(api_key, request.remote or "",
                                   f"{request.method} {request.path}", cost)
        headers = {"X-MBX-USED-WEIGHT-1M": str(weight)}
        limit = self.stats.ip_weight_limit
        if limit and weight > limit:  # Binance: 429 -1003, Retry-After to the next minute
            retry_s = max(1, 60 - int(time.time()) % 60)
            return error_response(BinanceError(
                -1003, f"Too many requests; current limit of IP is {limit} requests per minute.",
                429), {**headers, "Retry-After": str(retry_s)})
        plan = self.faults.plan_rest(api_key)
        if plan.delay_before_ms:
            await asyncio.sleep(plan.delay_before_ms / 1000)
        if plan.error is not None:
            return self._fault_reply(plan.error, plan.retry_after_s, headers)
        request["sim_skew_ms"] = plan.skew_ms
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = error_response(BinanceError(
                -5000, f"Path {request.path}, Method {request.method} is invalid", 404))
        except web.HTTPMethodNotAllowed:
            response = error_response(BinanceError(
                -5000, f"Path {request.path}, Method {request.method} is invalid", 405))
        response.headers.update(headers)
        if plan.delay_after_ms:
            await asyncio.sleep(plan.delay_after_ms / 1000)
        return response

    def _fault_reply(self, kind: str, retry_after_s: int, headers: dict) -> web.Response:
        if kind == "http_429":
            err = BinanceError(-1003, "Too many requests; current limit is 2400 requests per "
                                      "minute. Please use the websocket for live updates to "
                                      "avoid polling the API.", 429)
        elif kind == "http_418":
            until = self.clock.now_ms() + retry_after_s * 1000
            err = BinanceError(-1003, f"Way too many requests; IP banned until {until}. Please "
                                      "use the websocket for live updates to avoid bans.", 418)
        else:
            err = BinanceError(-1001, "Internal error; unable to process your request. "
                                      "Please try again.", 503)
        if kind in ("http_429", "http_418"):
            headers = {**headers, "Retry-After": str(retry_after_s)}
        return error_response(err, headers)

    # ---- endpoint wrapper ----------------------------------------------------------
    def _endpoint(self, fn: Handler, security: str) -> Callable[[web.Request], Awaitable]:
        async def view(request: web.Request) -> web.Response:
            raw_query = request.rel_url.raw_query_string
            raw_body = ""
            if request.can_read_body:
                raw_body = (await request.read()).decode("utf-8", "replace")
            try:
                params = Params.parse(raw_query, raw_body)
                now = self.clock.now_ms(request.get("sim_skew_ms"))
                account = None
                if security != NONE:
                    account = account_for_key(self.engine, request.headers.get("X-MBX-APIKEY"))
                if security == SIGNED:
                    verify_signed(account, params, raw_query, raw_body, now)
                result = await fn(Ctx(params, account, now))
            except EngineError as exc:
                err = engine_error(exc)
            except BinanceError as exc:
                err = exc
            else:
                return web.json_response(result)
            logger.debug("binance error reply path=%s code=%d", request.path, err.code)
            return error_response(err)
            return web.json_response(result)
        return view

    def add_routes(self, app: web.Application) -> None:
        """Register every REST route (see the table below)."""
        table: list[tuple[str, str, Handler, str]] = [
            ("GET", "/api/v3/ping", self.ping, NONE),
            ("GET", "/api/v3/time", self.time, NONE),
            ("GET", "/fapi/v1/ping", self.ping, NONE),
            ("GET", "/fapi/v1/time", self.time, NONE),
            ("GET", "/fapi/v1/exchangeInfo", self.exchange_info, NONE),
            ("GET", "/fapi/v1/premiumIndex", self.premium_index, NONE),
            ("GET", "/fapi/v1/ticker/price", self.ticker_price, NONE),
            ("GET", "/fapi/v2/ticker/price", self.ticker_price, NONE),
            ("GET", "/fapi/v1/ticker/bookTicker", self.book_ticker, NONE),
            ("GET", "/fapi/v1/ticker/24hr", self.ticker_24hr, NONE),
            ("GET", "/fapi/v1/leverageBracket", self.leverage_bracket, SIGNED),
            ("GET", "/sapi/v1/capital/config/getall", self.coins, SIGNED),
            ("GET", "/sapi/v1/margin/allPairs", self.no_margin_pairs, KEY),
            ("GET", "/sapi/v1/margin/isolated/allPairs", self.no_margin_pairs, SIGNED),
            ("POST", "/fapi/v1/listenKey", self.listen_key_post, KEY),
            ("PUT", "/fapi/v1/listenKey", self.listen_key_put, KEY),
            ("DELETE", "/fapi/v1/listenKey", self.listen_key_delete, KEY),
        ]
        for version in (2, 3):
            table += [
                ("GET", f"/fapi/v{version}/balance", self._versioned(self.balance, version), SIGNED),
                ("GET", f"/fapi/v{version}/account", self._versioned(self.account, version), SIGNED),
                ("GET", f"/fapi/v{version}/positionRisk",
                 self._versioned(self.position_risk, version), SIGNED),
            ]
        table += OrderRoutes(self.engine, self.faults).table()
        table += AlgoRoutes(self.engine).table()
        for method, path, fn, security in table:
            app.router.add_route(method, path, self._endpoint(fn, security))

    @staticmethod
    def _versioned(fn: Callable[[Ctx, int], Awaitable[object]], version: int) -> Handler:
        async def handler(ctx: Ctx) -> object:
            return await fn(ctx, version)
        return handler

    # ---- public -----------------------------------------------------------------------
    async def ping(self, ctx: Ctx) -> dict:
        """``{}``."""
        return {}

    async def time(self, ctx: Ctx) -> dict:
        """``{"serverTime": ms}`` (the possibly skewed server clock)."""
        return {"serverTime": ctx.now}

    async def exchange_info(self, ctx: Ctx) -> dict:
        """Symbols and their filters."""
        return bf.exchange_info(self.engine, ctx.now)

    def _symbols(self, ctx: Ctx) -> tuple[list[str], bool]:
        symbol = ctx.params.get("symbol")
        if symbol is None:
            return list(self.engine.symbols), False
        self.engine.spec(symbol)
        return [symbol], True

    async def premium_index(self, ctx: Ctx) -> object:
        """Mark price row (object with ``symbol``, else a list)."""
        symbols, single = self._symbols(ctx)
        rows = [bf.premium_index(self.engine, s, ctx.now) for s in symbols]
        return rows[0] if single else rows

    async def ticker_price(self, ctx: Ctx) -> object:
        """``{"symbol","price","time"}`` (object with ``symbol``, else a list)."""
        symbols, single = self._symbols(ctx)
        rows = [{"symbol": s, "price": bf.fmt(self.engine.last_prices[s],
                                              self.engine.symbols[s].price_precision),
                 "time": ctx.now} for s in symbols]
        return rows[0] if single else rows

    async def ticker_24hr(self, ctx: Ctx) -> object:
        """24 h statistics rows (object with ``symbol``, else a list); see
        ``binance_format.ticker_24hr``."""
        symbols, single = self._symbols(ctx)
        rows = [bf.ticker_24hr(self.engine, s, ctx.now) for s in symbols]
        return rows[0] if single else rows

    async def leverage_bracket(self, ctx: Ctx) -> list:
        """Notional brackets per symbol (a list, also with ``symbol``)."""
        symbols, _ = self._symbols(ctx)
        return [bf.leverage_brackets(self.engine, s) for s in symbols]

    async def coins(self, ctx: Ctx) -> list:
        """``GET /sapi/v1/capital/config/getall`` (the spot wallet's coin list that
        clients such as ccxt read for currencies): the margin coin and each symbol's
        base coin, an empty spot wallet, no deposit/withdrawal networks."""
        coins = ["USDT"] + sorted({s.base for s in self.engine.symbols.values()})
        zero = "0"
        return [{"coin": c, "name": c, "depositAllEnable": False, "withdrawAllEnable": False,
                 "free": zero, "locked": zero, "freeze": zero, "withdrawing": zero,
                 "ipoing": zero, "ipoable": zero, "storage": zero, "isLegalMoney": False,
                 "trading": True, "networkList": []} for c in coins]

    async def no_margin_pairs(self, ctx: Ctx) -> list:
        """``/sapi/v1/margin/allPairs`` and ``.../isolated/allPairs``: no spot margin
        pairs are simulated (an empty list, as for an account without margin)."""
        return []

    async def book_ticker(self, ctx: Ctx) -> object:
        """Best bid/ask one tick around the price (object with ``symbol``, else a list)."""
        symbols, single = self._symbols(ctx)
        rows = [bf.book_ticker(self.engine, s, ctx.now) for s in symbols]
        return rows[0] if single else rows

    # ---- listenKey (API key only) -----------------------------------------------------
    async def listen_key_post(self, ctx: Ctx) -> dict:
        """The active listenKey (extended) or a new one."""
        return {"listenKey": self.streams.create_or_extend(ctx.api_key).key}

    async def listen_key_put(self, ctx: Ctx) -> dict:
        """Extend the key by 60 min; -1125 when unknown or expired."""
        lk = self.streams.keepalive(ctx.api_key, ctx.params.get("listenKey"))
        if lk is None:
            raise BinanceError(-1125, "This listenKey does not exist.")
        return {"listenKey": lk.key}

    async def listen_key_delete(self, ctx: Ctx) -> dict:
        """Close the key; -1125 when unknown."""
        if not self.streams.delete(ctx.api_key, ctx.params.get("listenKey")):
            raise BinanceError(-1125, "This listenKey does not exist.")
        return {}

    # ---- account (SIGNED) -------------------------------------------------------------
    async def balance(self, ctx: Ctx, version: int) -> list:
        """One row per asset."""
        return ba.balance_rows(self.engine, ctx.account)

    async def account(self, ctx: Ctx, version: int) -> dict:
        """Account totals, assets and positions."""
        return ba.account_json(self.engine, ctx.account, version)

    async def position_risk(self, ctx: Ctx, version: int) -> list:
        """Positions (v3 only non-zero ones)."""
        symbol = ctx.params.get("symbol")
        if symbol is not None:
            self.engine.spec(symbol)
        return ba.position_risk(self.engine, ctx.account, version, symbol)
