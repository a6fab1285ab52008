"""Bybit v5 REST layer: routes, middleware (counting, rate-limit headers, faults), the
public market endpoints and the account/position endpoints. Orders: ``bybit_orders``.

Every reply is the v5 envelope ``{"retCode", "retMsg", "result", "retExtInfo": {},
"time"}`` with ``Content-Type: application/json`` and the headers ``X-Bapi-Limit``,
``X-Bapi-Limit-Status`` (requests left in the current second for this key and
endpoint, reported, not enforced) and ``X-Bapi-Limit-Reset-Timestamp`` (now, or the
reset time after a limit) (Bybit ``rate-limit.mdx``).

Faults (``faults.FaultRegistry.plan_rest``, shared with the Binance layer, keyed by
``X-BAPI-API-KEY``): ``http_429`` -> HTTP 200 retCode 10006 "Too many visits..." with
``X-Bapi-Limit-Status: 0`` and the reset timestamp ``Retry-After`` seconds ahead (pybit
sleeps until it, then retries); ``http_418`` -> HTTP 403 (Bybit's IP ban, "access too
frequent", body retCode 10009) with ``Retry-After`` and the reset header; ``http_5xx``
-> HTTP 503 (retCode 10016); ``latency``/``timeout``/``clock_skew`` as for Binance.
Unknown ``/v5`` paths -> HTTP 404 retCode 10017 "Route not found".
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from exchanges.simulator import bybit_account as bac
from exchanges.simulator.bybit_auth import (
    BybitError, Ctx, Handler, Params, category, engine_error, envelope, error_response,
    page, params_error, verify_request,
)
from exchanges.simulator.bybit_ledger import BybitLedger
from exchanges.simulator.bybit_orders import BybitOrders
from exchanges.simulator.bybit_tpsl import TradingStop
from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import Clock, FaultRegistry, RequestStats
from exchanges.simulator.models import MARGIN_ASSET, EngineError

logger = logging.getLogger(__name__)

# Categories a client may ask for whose markets the simulator does not list: answered
# with an empty list (a paper venue with linear USDT perpetuals only), not an error.
OTHER_CATEGORIES = frozenset({"spot", "inverse", "option"})
ORDER_LIMIT, QUERY_LIMIT = 10, 50          # requests per second per key and endpoint
ORDER_PATHS = frozenset({"/v5/order/create", "/v5/order/cancel", "/v5/order/cancel-all",
                         "/v5/position/set-leverage", "/v5/position/trading-stop"})


class BybitApi:
    """Registers the Bybit REST routes on an aiohttp app."""

    def __init__(self, engine: Engine, faults: FaultRegistry, clock: Clock,
                 stats: RequestStats, ledger: BybitLedger) -> None:
        self.engine, self.faults, self.clock = engine, faults, clock
        self.stats, self.ledger = stats, ledger
        self._windows: dict[tuple[str, str], list[int]] = {}

    @staticmethod
    def is_rest_path(path: str) -> bool:
        """True for ``/v5/...`` except the WebSocket paths."""
        return path.startswith("/v5/") and path != "/v5/private" \
            and not path.startswith("/v5/public/")

    # ---- middleware ----------------------------------------------------------------
    @web.middleware
    async def middleware(self, request: web.Request, handler) -> web.StreamResponse:
        """Count the request, apply REST faults, add the rate-limit headers."""
        if not self.is_rest_path(request.path):
            return await handler(request)
        api_key = request.headers.get("X-BAPI-API-KEY") or None
        endpoint = f"{request.method} {request.path}"
        self.stats.record(api_key, request.remote or "", endpoint, venue="bybit")
        limit = ORDER_LIMIT if request.path in ORDER_PATHS else QUERY_LIMIT
        used = self._count(api_key or f"ip:{request.remote}", endpoint)
        plan = self.faults.plan_rest(api_key)
        if plan.delay_before_ms:
            await asyncio.sleep(plan.delay_before_ms / 1000)
        if plan.error is not None:
            return self._fault_reply(plan.error, plan.retry_after_s, limit)
        request["sim_skew_ms"] = plan.skew_ms
        try:
            response = await handler(request)
        except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
            response = error_response(BybitError(10017, "Route not found", 404),
                                      self.clock.now_ms(plan.skew_ms))
        response.headers.update({
            "X-Bapi-Limit": str(limit), "X-Bapi-Limit-Status": str(max(0, limit - used)),
            "X-Bapi-Limit-Reset-Timestamp": str(self.clock.now_ms(plan.skew_ms))})
        if plan.delay_after_ms:
            await asyncio.sleep(plan.delay_after_ms / 1000)
        return response

    def _count(self, who: str, endpoint: str) -> int:
        """Requests of ``who`` to ``endpoint`` in the current wall-clock second."""
        second = int(time.time())
        window = self._windows.setdefault((who, endpoint), [second, 0])
        if window[0] != second:
            window[0], window[1] = second, 0
        window[1] += 1
        return window[1]

    def _fault_reply(self, kind: str, retry_after_s: int, limit: int) -> web.Response:
        now = self.clock.now_ms()
        reset = {"X-Bapi-Limit": str(limit), "X-Bapi-Limit-Status": "0",
                 "X-Bapi-Limit-Reset-Timestamp": str(now + retry_after_s * 1000)}
        if kind == "http_429":
            err = BybitError(10006, "Too many visits. Exceeded the API Rate Limit.", 200, reset)
        elif kind == "http_418":
            err = BybitError(10009, "403, access too frequent", 403,
                             {**reset, "Retry-After": str(retry_after_s)})
        else:
            err = BybitError(10016, "Internal System Error.", 503)
        logger.info("bybit fault reply kind=%s status=%d", kind, err.status)
        return error_response(err, now)

    # ---- endpoint wrapper ----------------------------------------------------------
    def _endpoint(self, fn: Handler, private: bool) -> Callable[[web.Request], Awaitable]:
        async def view(request: web.Request) -> web.Response:
            raw_query = request.rel_url.raw_query_string
            raw_body = ""
            if request.can_read_body:
                raw_body = (await request.read()).decode("utf-8", "replace")
            now = self.clock.now_ms(request.get("sim_skew_ms"))
            try:
                account = None
                if private:
                    payload = raw_query if request.method == "GET" else raw_body
                    account = verify_request(self.engine, request.headers, payload, now)
                params = Params.parse(request.method, raw_query, raw_body)
                result = await fn(Ctx(params, account, now))
            except EngineError as exc:
                err = engine_error(exc)
            except BybitError as exc:
                err = exc
            else:
                return web.json_response(envelope(result, now))
            logger.debug("bybit error reply path=%s code=%d", request.path, err.code)
            return error_response(err, now)
        return view

    def add_routes(self, app: web.Application) -> None:
        """Register every ``/v5`` REST route."""
        table: list[tuple[str, str, Handler, bool]] = [
            ("GET", "/v5/market/time", self.server_time, False),
            ("GET", "/v5/market/instruments-info", self.instruments_info, False),
            ("GET", "/v5/market/tickers", self.tickers, False),
            ("GET", "/v5/account/wallet-balance", self.wallet_balance, True),
            ("GET", "/v5/asset/coin/query-info", self.coin_info, True),
            ("GET", "/v5/user/query-api", self.api_key_info, True),
            ("GET", "/v5/account/info", self.account_info, True),
            ("GET", "/v5/position/list", self.position_list, True),
            ("POST", "/v5/position/set-leverage", self.set_leverage, True),
            ("POST", "/v5/position/switch-mode", self.switch_mode, True),
        ]
        table += BybitOrders(self.engine, self.faults, self.ledger).table()
        table += TradingStop(self.engine).table()
        for method, path, fn, private in table:
            app.router.add_route(method, path, self._endpoint(fn, private))

    # ---- market (public) -----------------------------------------------------------
    async def server_time(self, ctx: Ctx) -> dict:
        """``{"timeSecond", "timeNano"}`` of the (possibly skewed) server clock."""
        nano = ctx.now * 1_000_000 + time.time_ns() % 1_000_000
        return {"timeSecond": str(ctx.now // 1000), "timeNano": str(nano)}

    def _symbols(self, params: Params) -> list[str]:
        symbol = params.get("symbol")
        if symbol is None:
            return list(self.engine.symbols)
        return [symbol] if symbol in self.engine.symbols else []

    async def instruments_info(self, ctx: Ctx) -> dict:
        """Rules per symbol (filters ``symbol``, ``baseCoin``, ``status``; unknown
        symbol -> empty list)."""
        p = ctx.params
        if p.require("category") in OTHER_CATEGORIES:     # markets the simulator lists none of
            return {"category": p.require("category"), "list": [], "nextPageCursor": ""}
        category(p)
        base, status = p.get("baseCoin"), p.get("status")
        specs = [self.engine.symbols[s] for s in self._symbols(p)
                 if (base is None or self.engine.symbols[s].base == base)
                 and status in (None, "Trading")]
        ids = {symbol: i for i, symbol in enumerate(self.engine.symbols, start=1)}
        rows, cursor = page([bac.instrument_row(s, ids[s.symbol]) for s in specs], p, 500, 1000)
        return {"category": "linear", "list": rows, "nextPageCursor": cursor}

    async def tickers(self, ctx: Ctx) -> dict:
        """Ticker rows (10001 for an unknown ``symbol``)."""
        if ctx.params.require("category") in OTHER_CATEGORIES and ctx.params.get("symbol") is None:
            return {"category": ctx.params.require("category"), "list": []}
        category(ctx.params)
        symbols = self._symbols(ctx.params)
        if not symbols:
            raise params_error("symbol invalid")
        return {"category": "linear",
                "list": [bac.ticker_row(self.engine, s, ctx.now) for s in symbols]}

    # ---- account and positions (private) -------------------------------------------
    async def api_key_info(self, ctx: Ctx) -> dict:
        """``/v5/user/query-api`` (user/apikey-info.mdx): a read-write key of a unified
        trading account (``uta`` 1) with contract-trading permissions, no IP binding."""
        account = ctx.account
        uid = int.from_bytes(account.api_key.encode()[:6].ljust(6, b"\0"), "big") % 10**8
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(account.created / 1000))
        return {"id": str(uid), "note": "simulator", "apiKey": account.api_key, "readOnly": 0,
                "secret": "", "permissions": {
                    "ContractTrade": ["Order", "Position"], "Spot": [], "Wallet": [],
                    "Options": [], "Derivatives": [], "CopyTrading": [], "BlockTrade": [],
                    "Exchange": [], "NFT": [], "Affiliate": []},
                "ips": ["*"], "type": 1, "deadlineDay": -1, "expiredAt": "",
                "createdAt": created, "unified": 0, "uta": 1, "userID": uid, "inviterID": 0,
                "vipLevel": "No VIP", "mktMakerLevel": "0", "affiliateID": 0,
                "rsaPublicKey": "", "isMaster": True, "parentUid": "0",
                "kycLevel": "LEVEL_DEFAULT", "kycRegion": ""}

    async def account_info(self, ctx: Ctx) -> dict:
        """``/v5/account/info`` (account/account-info.mdx): regular (cross) margin, a
        unified account (``unifiedMarginStatus`` 6, UTA 2.0)."""
        return {"marginMode": "REGULAR_MARGIN", "updatedTime": str(ctx.account.created),
                "unifiedMarginStatus": 6, "dcpStatus": "OFF", "timeWindow": 10,
                "smpGroup": 0, "isMasterTrader": False, "spotHedgingStatus": "OFF"}

    async def coin_info(self, ctx: Ctx) -> dict:
        """``/v5/asset/coin/query-info``: the coins of the simulated markets (the margin
        coin and each symbol's base coin), no deposit/withdrawal chains."""
        coins = [MARGIN_ASSET] + sorted({s.base for s in self.engine.symbols.values()})
        wanted = ctx.params.get("coin")
        return {"rows": [{"name": c, "coin": c, "remainAmount": "0", "chains": []}
                         for c in coins if wanted in (None, c)]}

    async def wallet_balance(self, ctx: Ctx) -> dict:
        """``accountType=UNIFIED`` (``coin`` filters the coin rows, comma-separated)."""
        account_type = ctx.params.require("accountType")
        if account_type != "UNIFIED":
            raise params_error(f"accountType {account_type} is not supported "
                               "(only UNIFIED is simulated)")
        row = bac.wallet_row(self.engine, self.ledger, ctx.account)
        coins = ctx.params.get("coin")
        if coins is not None:
            wanted = set(coins.split(","))
            row["coin"] = [c for c in row["coin"] if c["coin"] in wanted]
        return {"list": [row]}

    async def position_list(self, ctx: Ctx) -> dict:
        """With ``symbol``: that position, even flat; with ``settleCoin`` only: the
        positions with size > 0. Neither -> 10001."""
        p = ctx.params
        category(p)
        symbol, settle = p.get("symbol"), p.get("settleCoin")
        if symbol is not None:
            self.engine.spec(symbol)
            symbols = [symbol]
        elif settle is not None:
            symbols = [s for s, pos in sorted(ctx.account.positions.items())
                       if pos.amount and settle == MARGIN_ASSET]
        else:
            raise params_error("symbol or settleCoin is required")
        rows, cursor = page([bac.position_row(self.engine, self.ledger, ctx.account, s)
                             for s in symbols], p, 20, 200)
        return {"category": "linear", "list": rows, "nextPageCursor": cursor}

    async def set_leverage(self, ctx: Ctx) -> dict:
        """One-way mode: ``buyLeverage`` must equal ``sellLeverage`` and be a whole
        number from 1 to the symbol's maximum (10001); unchanged -> 110043."""
        p = ctx.params
        category(p)
        symbol = p.require("symbol")
        self.engine.spec(symbol)
        buy, sell = p.decimal("buyLeverage", True), p.decimal("sellLeverage", True)
        if buy != sell:
            raise params_error("buyLeverage must equal sellLeverage in one-way mode")
        if buy != buy.to_integral_value():
            raise params_error("leverage must be a whole number in the simulator")
        if int(buy) == ctx.account.leverage_of(symbol):
            raise BybitError(110043, "Set leverage not modified")
        self.engine.set_leverage(ctx.api_key, symbol, int(buy))
        return {}

    async def switch_mode(self, ctx: Ctx) -> dict:
        """Only one-way mode is simulated: ``mode=0`` -> 110025, ``3`` -> 10001."""
        category(ctx.params)
        if ctx.params.integer("mode") == 0:
            raise BybitError(110025, "Position mode is not modified")
        raise params_error("hedge mode is not simulated")
