"""Binance USD-M order and trade endpoints (all SIGNED), on top of the engine.

- ``POST /fapi/v1/order``: -4120 for STOP/STOP_MARKET/TAKE_PROFIT/TAKE_PROFIT_MARKET/
  TRAILING_STOP_MARKET (Binance change log 2025-11-06, effective 2025-12-09: the Algo
  Service, ``binance_algo``); MARKET and LIMIT (GTC/IOC/FOK/GTX), ``reduceOnly``,
  ``newClientOrderId``, ``newOrderRespType`` ACK (default: the order as accepted,
  status NEW) or RESULT (after matching). Only ``positionSide=BOTH`` (one-way).
- ``GET|DELETE /fapi/v1/order``, ``GET /fapi/v1/openOrder``, ``GET /fapi/v1/openOrders``,
  ``DELETE /fapi/v1/allOpenOrders``, ``GET /fapi/v1/allOrders``, ``GET /fapi/v1/userTrades``,
  ``GET /fapi/v1/commissionRate``, ``POST /fapi/v1/leverage``, ``POST /fapi/v1/marginType``
  (cross only), ``GET|POST /fapi/v1/positionSide/dual`` (one-way only).
"""
from __future__ import annotations

import re

from exchanges.simulator import binance_format as bf
from exchanges.simulator.binance_auth import (
    SIGNED, BinanceError, Ctx, Handler, Params, engine_error,
)
from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import FaultRegistry
from exchanges.simulator.models import FOK, IOC, LIMIT, EngineError, Order

# Conditional types moved to POST /fapi/v1/algoOrder on 2025-12-09 (-4120 here).
CONDITIONAL_TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                     "TRAILING_STOP_MARKET")
CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
MAX_LIMIT = 1000


def order_ref(params: Params) -> tuple[int | None, str | None]:
    """``(orderId, origClientOrderId)``; -1102 when both are missing."""
    order_id = params.integer("orderId")
    client_id = params.get("origClientOrderId")
    if order_id is None and client_id is None:
        raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, "
                                  "but both were empty/null!")
    return order_id, client_id


def limit_param(params: Params, default: int = 500) -> int:
    """``limit`` clamped to 1..1000 (default 500)."""
    value = params.integer("limit")
    return default if value is None else max(1, min(value, MAX_LIMIT))


class OrderRoutes:
    """The order/trade handlers; ``table()`` lists ``(method, path, handler, security)``."""

    def __init__(self, engine: Engine, faults: FaultRegistry) -> None:
        self.engine, self.faults = engine, faults

    def table(self) -> list[tuple[str, str, Handler, str]]:
        """Routes served by this module."""
        return [
            ("POST", "/fapi/v1/order", self.new_order, SIGNED),
            ("GET", "/fapi/v1/order", self.get_order, SIGNED),
            ("DELETE", "/fapi/v1/order", self.cancel_order, SIGNED),
            ("GET", "/fapi/v1/openOrder", self.get_open_order, SIGNED),
            ("GET", "/fapi/v1/openOrders", self.open_orders, SIGNED),
            ("DELETE", "/fapi/v1/allOpenOrders", self.cancel_all, SIGNED),
            ("GET", "/fapi/v1/allOrders", self.all_orders, SIGNED),
            ("GET", "/fapi/v1/userTrades", self.user_trades, SIGNED),
            ("GET", "/fapi/v1/commissionRate", self.commission_rate, SIGNED),
            ("POST", "/fapi/v1/leverage", self.leverage, SIGNED),
            ("POST", "/fapi/v1/marginType", self.margin_type, SIGNED),
            ("GET", "/fapi/v1/positionSide/dual", self.get_position_mode, SIGNED),
            ("POST", "/fapi/v1/positionSide/dual", self.set_position_mode, SIGNED),
        ]

    def _json(self, order: Order, shape: str, ack: bool = False) -> dict:
        return bf.order_json(self.engine.symbols[order.symbol], order, shape, ack)

    async def new_order(self, ctx: Ctx) -> dict:
        """Place an order; ACK or RESULT reply (see the module docstring)."""
        p = ctx.params
        symbol, side = p.require("symbol"), p.require("side").upper()
        type_ = p.require("type").upper()
        if type_ in CONDITIONAL_TYPES:   # since 2025-12-09: the Algo Service's
            raise BinanceError(-4120, "Order type not supported for this endpoint. Please "
                                      "use the Algo Order API endpoints instead.")
        quantity = p.decimal("quantity", required=True)
        price = p.decimal("price", required=True) if type_ == LIMIT else None
        tif = p.require("timeInForce").upper() if type_ == LIMIT else None
        if (p.get("positionSide") or "BOTH").upper() != "BOTH":
            raise BinanceError(-4061, "Order's position side does not match user's setting.")
        if p.boolean("closePosition"):
            raise BinanceError(-1106, "Parameter 'closePosition' sent when not required.")
        client_id = p.get("newClientOrderId")
        if client_id is not None and not CLIENT_ID_RE.match(client_id):
            raise BinanceError(-4015, "Client order id is not valid.")
        resp_type = (p.get("newOrderRespType") or "ACK").upper()
        if resp_type not in ("ACK", "RESULT"):
            raise BinanceError(-1100, "Illegal characters found in parameter "
                                      "'newOrderRespType'.")
        self.engine.spec(symbol)
        rejected = self.faults.take("reject_orders", ctx.api_key) is not None
        if rejected and not (type_ == LIMIT and tif in (IOC, FOK)):
            raise BinanceError(-2010, "Order would immediately trigger.")
        order = self.engine.place_order(
            ctx.api_key, symbol, side, type_, quantity, price=price, time_in_force=tif,
            reduce_only=p.boolean("reduceOnly"), client_order_id=client_id or "",
            force_expire=rejected)
        return self._json(order, "post", ack=resp_type == "ACK" and not rejected)

    async def get_order(self, ctx: Ctx) -> dict:
        """One order by ``orderId`` or ``origClientOrderId``; -2013 when unknown."""
        order_id, client_id = order_ref(ctx.params)
        order = self.engine.find_order(ctx.api_key, ctx.params.require("symbol"),
                                       order_id, client_id)
        return self._json(order, "get")

    async def get_open_order(self, ctx: Ctx) -> dict:
        """One open order; -2013 when unknown or no longer open."""
        order_id, client_id = order_ref(ctx.params)
        order = self.engine.find_order(ctx.api_key, ctx.params.require("symbol"),
                                       order_id, client_id)
        if not order.is_open:
            raise BinanceError(-2013, "Order does not exist.")
        return self._json(order, "get")

    async def cancel_order(self, ctx: Ctx) -> dict:
        """Cancel one order; -2011 when unknown or already final."""
        order_id, client_id = order_ref(ctx.params)
        try:
            order = self.engine.cancel_order(ctx.api_key, ctx.params.require("symbol"),
                                             order_id, client_id)
        except EngineError as exc:
            raise engine_error(exc, unknown_order_code=-2011) from None
        return self._json(order, "delete")

    async def open_orders(self, ctx: Ctx) -> list:
        """Open orders, optionally of one ``symbol``."""
        symbol = ctx.params.get("symbol")
        if symbol is not None:
            self.engine.spec(symbol)
        return [self._json(o, "get") for o in self.engine.open_orders(ctx.api_key, symbol)]

    async def cancel_all(self, ctx: Ctx) -> dict:
        """Cancel every open order of ``symbol``."""
        self.engine.cancel_all(ctx.api_key, ctx.params.require("symbol"))
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    async def all_orders(self, ctx: Ctx) -> list:
        """Orders of ``symbol``: from ``orderId`` on, within ``startTime``..``endTime``,
        at most ``limit`` (the latest ones when no ``orderId``), oldest first."""
        p = ctx.params
        symbol = p.require("symbol")
        self.engine.spec(symbol)
        from_id, start, end = p.integer("orderId"), p.integer("startTime"), p.integer("endTime")
        orders = [o for o in self.engine.account_orders(ctx.api_key, symbol)
                  if (from_id is None or o.order_id >= from_id)
                  and (start is None or o.time >= start) and (end is None or o.time <= end)]
        limit = limit_param(p)
        orders = orders[:limit] if from_id is not None else orders[-limit:]
        return [self._json(o, "get") for o in orders]

    async def user_trades(self, ctx: Ctx) -> list:
        """Fills of ``symbol`` filtered by ``orderId``, ``startTime``, ``endTime``,
        ``fromId`` (trade id >=), at most ``limit`` (the latest when no ``fromId``)."""
        p = ctx.params
        symbol = p.require("symbol")
        self.engine.spec(symbol)
        order_id, from_id = p.integer("orderId"), p.integer("fromId")
        start, end = p.integer("startTime"), p.integer("endTime")
        fills = [f for f in ctx.account.fills if f.symbol == symbol
                 and (order_id is None or f.order_id == order_id)
                 and (from_id is None or f.trade_id >= from_id)
                 and (start is None or f.time >= start) and (end is None or f.time <= end)]
        limit = limit_param(p)
        fills = fills[:limit] if from_id is not None else fills[-limit:]
        return [bf.user_trade(self.engine, f) for f in fills]

    async def commission_rate(self, ctx: Ctx) -> dict:
        """Maker/taker fee rates of ``symbol``."""
        symbol = ctx.params.require("symbol")
        self.engine.spec(symbol)
        return {"symbol": symbol, "makerCommissionRate": f"{self.engine.maker_fee:f}",
                "takerCommissionRate": f"{self.engine.taker_fee:f}",
                "rpiCommissionRate": "0.00005"}

    async def leverage(self, ctx: Ctx) -> dict:
        """Set the leverage of ``symbol`` (1..max); -4028 when out of range."""
        symbol = ctx.params.require("symbol")
        value = ctx.params.integer("leverage", required=True)
        self.engine.set_leverage(ctx.api_key, symbol, value)
        return {"leverage": value, "maxNotionalValue": "1000000", "symbol": symbol}

    async def margin_type(self, ctx: Ctx) -> dict:
        """Only cross margin is simulated: CROSSED -> -4046, ISOLATED -> -4047."""
        self.engine.spec(ctx.params.require("symbol"))
        if ctx.params.require("marginType").upper() in ("CROSSED", "CROSS"):
            raise BinanceError(-4046, "No need to change margin type.")
        raise BinanceError(-4047, "Margin type cannot be changed if there exists "
                                  "position or open orders (isolated margin is not simulated).")

    async def get_position_mode(self, ctx: Ctx) -> dict:
        """Always one-way mode."""
        return {"dualSidePosition": False}

    async def set_position_mode(self, ctx: Ctx) -> dict:
        """One-way only: ``false`` -> -4059 (no change), ``true`` -> -4068 (refused)."""
        if ctx.params.boolean("dualSidePosition"):
            raise BinanceError(-4068, "Position side cannot be changed if there exists "
                                      "position (hedge mode is not simulated).")
        raise BinanceError(-4059, "No need to change position side.")
