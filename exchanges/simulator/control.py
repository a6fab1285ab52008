"""The simulator's control API under ``/_sim/*`` (loopback peers only, no signature).

Replies are JSON; errors are ``{"error": {"code": "snake_case", "message": "..."}}``
(400 bad input, 403 non-loopback peer, 404 unknown order, 409 api key taken).

- ``POST /_sim/accounts {"api_key", "api_secret", "balances"?: {"USDT": "10000"}}``:
  201 new account; 200 when the key exists with the same secret (unchanged, idempotent);
  409 when it exists with another secret.
- ``POST /_sim/price {"symbol", "price", "last_price"?}``: sets the mark price (and the
  last price: ``last_price`` or the same) now -> 200; fires the legs it reaches.
- ``POST /_sim/liquidate {"api_key", "symbol", "kind"?: "liquidation" | "adl"}`` -> 200
  the closing order: the position is closed by the venue with each protocol's markers
  (Binance client order id ``autoclose-<ms>`` / ``adl_autoclose``, ``x`` CALCULATED for
  a liquidation; Bybit ``execType`` BustTrade / AdlTrade); 409 ``no_position``.
- ``POST /_sim/margin_call {"api_key"}`` -> 200 ``{"symbols"}``: Binance ``MARGIN_CALL``
  for the account's positions; 409 ``no_position``.
- ``POST /_sim/funding {"symbol", "rate"}`` -> 200 ``{"rows"}``: charges (rate > 0: longs
  pay) funding on every position in the symbol: Binance ``ACCOUNT_UPDATE`` reason
  FUNDING_FEE and an income row; Bybit a ``Funding`` execution.
- ``POST /_sim/faults {...}`` -> 201; ``DELETE /_sim/faults`` -> 200; ``GET /_sim/faults``.
- ``POST /_sim/orders/{order_id}/fill {"quantity"?, "price"?}`` -> 200 the order
  (``order_id``: the engine's integer id, or an id a protocol layer hands out and
  registered a parser for in ``order_id_parsers``, e.g. a Bybit ``orderId``).
- ``GET /_sim/state[?api_key=K]`` -> everything (one account's part with ``api_key``),
  with ``weight_per_minute``: ``{"<venue> <ip>": {"<minute epoch s>": weight}}``.
- ``PUT /_sim/limits {"ip_weight_limit": N}`` -> 200: enforce Binance's per-IP weight
  limit from now on (0: off).
- ``POST /_sim/replay {"symbol", "csv", "seconds_per_candle"?: 1}`` -> 201.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, overload

from aiohttp import web
from aiohttp.typedefs import Handler as NextHandler

from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import FaultRegistry, RequestStats, mask
from exchanges.simulator.market import MarketFeed
from exchanges.simulator.models import (
    FINISHED,
    MARGIN_ASSET,
    SOURCE_ADL,
    SOURCE_LIQUIDATION,
    EngineError,
    Fill,
    Leg,
    Order,
)

logger = logging.getLogger(__name__)


def is_loopback(peer: object) -> bool:
    """True when ``peer`` (a transport peername tuple or a host string) is a loopback
    address (127.0.0.0/8, ::1, or IPv4-mapped loopback). Anything else is False."""
    host = peer[0] if isinstance(peer, (tuple, list)) and peer else peer
    if not isinstance(host, str) or not host:
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class BadRequest(Exception):
    """Invalid control input (400, ``code`` names the problem)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@overload
def _decimal(body: dict[str, Any], name: str, required: Literal[True] = True) -> Decimal: ...
@overload
def _decimal(body: dict[str, Any], name: str, required: bool) -> Decimal | None: ...


def _decimal(body: dict[str, Any], name: str, required: bool = True) -> Decimal | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest("missing_field", f"{name} is required")
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise BadRequest("invalid_field", f"{name} must be a decimal string") from None
    if not number.is_finite():
        raise BadRequest("invalid_field", f"{name} must be finite")
    return number


def order_state(order: Order) -> dict[str, Any]:
    """Protocol-neutral JSON of an order (decimals as strings, times in ms)."""
    return {"order_id": order.order_id, "api_key": order.api_key, "symbol": order.symbol,
            "side": order.side, "type": order.type, "time_in_force": order.time_in_force,
            "status": order.status, "price": f"{order.price:f}" if order.price else None,
            "orig_qty": f"{order.orig_qty:f}", "executed_qty": f"{order.executed_qty:f}",
            "avg_price": f"{order.avg_price.normalize():f}", "reduce_only": order.reduce_only,
            "client_order_id": order.client_order_id, "time": order.time,
            "update_time": order.update_time, "trigger_price": None,
            "source": order.source or None}


def leg_state(leg: Leg, engine: Engine) -> dict[str, Any]:
    """A held leg as an ``orders`` row of ``/_sim/state``: ``type`` (STOP_MARKET,
    TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET), ``trigger_price`` (a trailing stop's
    current stop once activated), ``status`` NEW while waiting (also while its order
    is being sent), then FILLED, CANCELED, EXPIRED or REJECTED."""
    order = engine.orders.get(leg.order_id) if leg.order_id is not None else None
    if leg.status == FINISHED:
        status = "FILLED" if order is not None and order.executed_qty > 0 else "EXPIRED"
    elif leg.status in ("TRIGGERING", "TRIGGERED"):
        status = "NEW"
    else:
        status = leg.status
    trigger = leg.trigger_price if leg.trigger_price is not None else leg.trailing_trigger()
    if trigger is not None:
        trigger = trigger.quantize(engine.symbols[leg.symbol].tick)
    return {"order_id": leg.leg_id, "api_key": leg.api_key, "venue": leg.venue,
            "symbol": leg.symbol, "side": leg.side, "type": leg.type,
            "status": status, "leg_status": leg.status,
            "trigger_price": f"{trigger:f}" if trigger is not None else None,
            "working_type": leg.working_type, "close_position": leg.close_position,
            "orig_qty": f"{leg.quantity:f}",
            "callback_rate": f"{leg.callback_rate:f}" if leg.callback_rate is not None else None,
            "trailing_distance": (f"{leg.trailing_distance:f}"
                                  if leg.trailing_distance is not None else None),
            "activation_price": (f"{leg.activate_price:f}"
                                 if leg.activate_price is not None else None),
            "client_order_id": leg.client_id, "triggered_order_id": leg.order_id,
            "time": leg.time, "update_time": leg.update_time}


def fill_state(fill: Fill) -> dict[str, Any]:
    """Protocol-neutral JSON of a fill."""
    return {"trade_id": fill.trade_id, "order_id": fill.order_id, "api_key": fill.api_key,
            "symbol": fill.symbol, "side": fill.side, "price": f"{fill.price:f}",
            "qty": f"{fill.qty:f}", "commission": f"{fill.commission:f}",
            "commission_asset": fill.commission_asset,
            "realized_pnl": f"{fill.realized_pnl:f}", "maker": fill.maker, "time": fill.time,
            "source": fill.source or None}


class Control:
    """The ``/_sim`` handlers. ``stream_snapshots``: callables returning the open streams
    of each protocol layer (list of dicts). ``order_id_parsers``: callables turning a
    protocol layer's order id text into the engine id (None when not theirs)."""

    def __init__(self, engine: Engine, faults: FaultRegistry, stats: RequestStats,
                 market: MarketFeed, stream_snapshots: list[Callable[[], list[dict[str, Any]]]]) -> None:
        self.engine, self.faults, self.stats, self.market = engine, faults, stats, market
        self.stream_snapshots = stream_snapshots
        self.order_id_parsers: list[Callable[[str], int | None]] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: NextHandler) -> web.StreamResponse:
        """Refuse ``/_sim`` from non-loopback peers (403); map BadRequest to 400."""
        if not request.path.startswith("/_sim"):
            return await handler(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not is_loopback(peer):
            logger.warning("control refused path=%s peer=%s", request.path, peer)
            return _error(403, "forbidden", "the control API is only served to loopback peers")
        try:
            return await handler(request)
        except BadRequest as exc:
            return _error(400, exc.code, exc.message)

    def add_routes(self, app: web.Application) -> None:
        """Register the ``/_sim`` routes."""
        app.router.add_post("/_sim/accounts", self.create_account)
        app.router.add_post("/_sim/price", self.set_price)
        app.router.add_post("/_sim/liquidate", self.liquidate)
        app.router.add_post("/_sim/margin_call", self.margin_call)
        app.router.add_post("/_sim/funding", self.funding)
        app.router.add_post("/_sim/faults", self.add_fault)
        app.router.add_delete("/_sim/faults", self.clear_faults)
        app.router.add_get("/_sim/faults", self.list_faults)
        app.router.add_post("/_sim/orders/{order_id}/fill", self.fill)
        app.router.add_get("/_sim/state", self.state)
        app.router.add_post("/_sim/replay", self.replay)
        app.router.add_put("/_sim/limits", self.set_limits)

    async def set_limits(self, request: web.Request) -> web.Response:
        """``{"ip_weight_limit": N}`` (integer >= 0)."""
        body = await self._body(request)
        limit = body.get("ip_weight_limit")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise BadRequest("invalid_ip_weight_limit", "ip_weight_limit must be an integer >= 0")
        self.stats.ip_weight_limit = limit
        logger.info("ip weight limit set limit=%d", limit)
        return web.json_response({"ip_weight_limit": limit})

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError:
            raise BadRequest("invalid_json", "body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadRequest("invalid_json", "body must be a JSON object")
        return body

    async def create_account(self, request: web.Request) -> web.Response:
        """Create (201), confirm (200, same secret) or refuse (409) an account."""
        body = await self._body(request)
        api_key, api_secret = body.get("api_key"), body.get("api_secret")
        if not isinstance(api_key, str) or not api_key or not isinstance(api_secret, str) \
                or not api_secret:
            raise BadRequest("missing_field", "api_key and api_secret must be non-empty strings")
        raw = body.get("balances", {MARGIN_ASSET: "10000"})
        if not isinstance(raw, dict):
            raise BadRequest("invalid_field", "balances must be an object")
        balances = {str(asset): _decimal(raw, asset) for asset in raw}
        if any(v < 0 for v in balances.values()):
            raise BadRequest("invalid_field", "balances must not be negative")
        account, created = self.engine.create_account(api_key, api_secret, balances)
        if not created and account.api_secret != api_secret:
            return _error(409, "api_key_taken", "an account with this api_key already exists")
        if created:
            logger.info("account created api_key=%s", mask(api_key))
        return web.json_response(
            {"api_key": api_key, "created": created,
             "balances": {a: f"{v:f}" for a, v in account.balances.items()}},
            status=201 if created else 200)

    async def set_price(self, request: web.Request) -> web.Response:
        """Set a symbol's mark/last price now."""
        body = await self._body(request)
        symbol, price = body.get("symbol"), _decimal(body, "price")
        last = _decimal(body, "last_price", required=False)
        try:
            stored = self.engine.set_price(str(symbol), price, last, fire_legs=False)
        except EngineError as exc:
            raise BadRequest(exc.reason, exc.message) from None
        # the legs the move crossed, one at a time: each one's events are written to its
        # account's streams before the next fires (a venue's user data stream does not
        # wait for other accounts' triggers; firing all first held the first one's
        # frames back ~0.5 ms per other leg)
        for leg in self.engine.crossed_legs(str(symbol)):
            self.engine.fire_leg(leg)
            await asyncio.sleep(0)
        return web.json_response({"symbol": symbol, "price": f"{stored:f}",
                                  "last_price": f"{self.engine.last_prices[str(symbol)]:f}"})

    async def liquidate(self, request: web.Request) -> web.Response:
        """Close a position as a liquidation or an ADL (see the module docstring)."""
        body = await self._body(request)
        kind = body.get("kind", SOURCE_LIQUIDATION)
        if kind not in (SOURCE_LIQUIDATION, SOURCE_ADL):
            raise BadRequest("invalid_field", "kind must be liquidation or adl")
        try:
            order = self.engine.liquidate(str(body.get("api_key")), str(body.get("symbol")),
                                          kind)
        except EngineError as exc:
            if exc.reason == "no_position":
                return _error(409, "no_position", exc.message)
            raise BadRequest(exc.reason, exc.message) from None
        logger.info("liquidated api_key=%s symbol=%s kind=%s", mask(order.api_key),
                    order.symbol, kind)
        return web.json_response(order_state(order))

    async def margin_call(self, request: web.Request) -> web.Response:
        """Send the account's venues' margin call for its open positions."""
        body = await self._body(request)
        try:
            symbols = self.engine.margin_call(str(body.get("api_key")))
        except EngineError as exc:
            if exc.reason == "no_position":
                return _error(409, "no_position", exc.message)
            raise BadRequest(exc.reason, exc.message) from None
        return web.json_response({"symbols": list(symbols)})

    async def funding(self, request: web.Request) -> web.Response:
        """Charge or pay funding on every position in ``symbol`` at ``rate``."""
        body = await self._body(request)
        rate = _decimal(body, "rate")
        try:
            rows = self.engine.charge_funding(str(body.get("symbol")), rate)
        except EngineError as exc:
            raise BadRequest(exc.reason, exc.message) from None
        return web.json_response({"rows": [
            {"api_key": r.api_key, "symbol": r.symbol, "amount": f"{r.amount:f}",
             "asset": r.asset, "time": r.time, "tran_id": r.tran_id} for r in rows]})

    async def add_fault(self, request: web.Request) -> web.Response:
        """Add a fault (or run drop_ws / expire_listen_key now)."""
        body = await self._body(request)
        try:
            fault = self.faults.add(str(body.get("kind")), count=body.get("count"),
                                    duration_s=body.get("duration_s"), ms=body.get("ms"),
                                    api_key=body.get("api_key"))
        except ValueError as exc:
            raise BadRequest("invalid_fault", str(exc)) from None
        return web.json_response(fault, status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        """Remove every fault (clock skew included)."""
        return web.json_response({"cleared": self.faults.clear()})

    async def list_faults(self, request: web.Request) -> web.Response:
        """The active faults."""
        return web.json_response(self.faults.snapshot())

    async def fill(self, request: web.Request) -> web.Response:
        """Fill a resting order now (partial when quantity < remaining)."""
        text = request.match_info["order_id"]
        order_id: int | None
        try:
            order_id = int(text)
        except ValueError:
            parsed = (parse(text) for parse in self.order_id_parsers)
            order_id = next((i for i in parsed if i is not None), None)
            if order_id is None:
                raise BadRequest("invalid_order_id", "order id must be an integer or an "
                                                     "exchange order id") from None
        body = await self._body(request)
        try:
            order = self.engine.fill_order(order_id, _decimal(body, "quantity", False),
                                           _decimal(body, "price", False))
        except EngineError as exc:
            if exc.reason == "unknown_order":
                return _error(404, "unknown_order", exc.message)
            raise BadRequest(exc.reason, exc.message) from None
        return web.json_response(order_state(order))

    async def replay(self, request: web.Request) -> web.Response:
        """Start replaying a candle CSV for a symbol."""
        body = await self._body(request)
        try:
            replay = self.market.start_replay(str(body.get("symbol")), str(body.get("csv")),
                                              body.get("seconds_per_candle", 1))
        except ValueError as exc:
            raise BadRequest("invalid_replay", str(exc)) from None
        return web.json_response(replay.to_json(), status=201)

    async def state(self, request: web.Request) -> web.Response:
        """Accounts, orders, positions, fills, streams, prices, faults and request counts."""
        only = request.query.get("api_key")
        engine = self.engine
        accounts = [a for k, a in engine.accounts.items() if only is None or k == only]
        out_accounts, positions, orders, fills = [], [], [], []
        for acct in accounts:
            out_accounts.append({
                "api_key": acct.api_key,
                "balances": {a: f"{v:f}" for a, v in acct.balances.items()},
                "unrealized_pnl": f"{engine.unrealized(acct):f}",
                "available_balance": f"{engine.available(acct):f}",
                "position_margin": f"{engine.position_margin(acct):f}",
                "order_margin": f"{engine.order_margin(acct):f}",
                "leverage": dict(acct.leverage), "open_orders": len(acct.open_orders)})
            for symbol, pos in acct.positions.items():
                if pos.amount or pos.cum_realized:
                    positions.append({
                        "api_key": acct.api_key, "symbol": symbol, "amount": f"{pos.amount:f}",
                        "entry_price": f"{pos.entry_price:f}",
                        "mark_price": f"{engine.prices[symbol]:f}",
                        "unrealized_pnl": f"{engine.unrealized(acct, symbol):f}",
                        "realized_pnl": f"{pos.cum_realized:f}",
                        "leverage": acct.leverage_of(symbol),
                        "liquidation_price": f"{engine.liquidation_price(acct, symbol):f}"})
            orders += [order_state(engine.orders[i]) for i in acct.order_ids]
            orders += [leg_state(leg, engine) for leg in acct.legs.values()]
            fills += [fill_state(f) for f in acct.fills]
        streams = [s for snap in self.stream_snapshots for s in snap()
                   if only is None or s.get("api_key") in (None, only)]
        prices = {}
        for symbol, price in engine.prices.items():
            bid, ask = engine.bid_ask(symbol)
            prices[symbol] = {"price": f"{price:f}", "bid": f"{bid:f}", "ask": f"{ask:f}",
                              "last_price": f"{engine.last_prices[symbol]:f}"}
        requests = self.stats.counts if only is None else {only: self.stats.counts.get(only, {})}
        return web.json_response({
            "time": engine.now_ms(), "accounts": out_accounts, "positions": positions,
            "orders": orders, "fills": fills, "streams": streams, "prices": prices,
            "faults": self.faults.snapshot(),
            "replays": {s: r.to_json() for s, r in self.market.replays.items()},
            "requests": requests,
            "weight_per_minute": {who: {str(m): w for m, w in sorted(h.items())}
                                  for who, h in self.stats.weight_history.items()}})
