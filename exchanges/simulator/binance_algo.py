"""Binance USD-M Algo Service (conditional orders), income history, and the JSON of
legs, margin calls and liquidation markers.

Endpoints (SIGNED), after developers.binance.com/docs/derivatives/usds-margined-futures
``trade/rest-api/New-Algo-Order``, ``Cancel-Algo-Order``, ``Query-Algo-Order``,
``Current-All-Algo-Open-Orders``, ``account/rest-api/Get-Income-History``:

- ``POST /fapi/v1/algoOrder``: ``algoType=CONDITIONAL``; ``type`` STOP_MARKET,
  TAKE_PROFIT_MARKET (with ``triggerPrice``; ``closePosition=true`` for the whole
  position, else ``quantity`` with ``reduceOnly=true``: an opening conditional order
  is not simulated, -1102) or TRAILING_STOP_MARKET
  (``callbackRate`` 0.1..10 percent, optional ``activatePrice``, ``quantity``;
  closePosition is refused for it, as the doc limits Close-All to the first two);
  ``workingType`` MARK_PRICE / CONTRACT_PRICE (default CONTRACT_PRICE);
  ``clientAlgoId``. STOP / TAKE_PROFIT (limit) are not simulated (-1116).
- ``DELETE /fapi/v1/algoOrder`` (``algoId`` or ``clientAlgoId``) ->
  ``{"algoId","clientAlgoId","code":"200","msg":"success"}``.
- ``GET /fapi/v1/algoOrder``, ``GET /fapi/v1/openAlgoOrders[?symbol]``,
  ``GET /fapi/v1/allAlgoOrders?symbol`` (every status),
  ``DELETE /fapi/v1/algoOpenOrders?symbol``.
- ``GET /fapi/v1/income`` (``symbol``, ``incomeType``, ``startTime``, ``endTime``,
  ``limit`` 1..1000 default 100): FUNDING_FEE rows.

Error codes: -2021 "Order would immediately trigger."; -2007 "Invalid callBack rate.";
-4130 a second open closePosition order of the same type and direction; -4509 a
closePosition order with neither a position nor open orders in the symbol; -1106 a
parameter that must not be sent; -2013 (query) / -2011 (cancel) unknown algo order.
``POST /fapi/v1/order`` answers -4120 for the conditional types (``binance_orders``).
"""
from __future__ import annotations

from decimal import Decimal

from exchanges.simulator import binance_format as bf
from exchanges.simulator.binance_auth import SIGNED, BinanceError, Ctx, Handler, engine_error
from exchanges.simulator.binance_orders import CLIENT_ID_RE, limit_param
from exchanges.simulator.engine import Engine
from exchanges.simulator.models import (
    CANCELED, CONTRACT_PRICE, EXPIRED, LEG_TYPES, MARK_PRICE, REJECTED,
    TRAILING_STOP_MARKET, ZERO, Account, EngineError, IncomeRow, Leg,
)

VENUE = "binance"
MIN_CALLBACK, MAX_CALLBACK = Decimal("0.1"), Decimal("10")
INCOME_TYPES = ("FUNDING_FEE",)


def algo_json(engine: Engine, leg: Leg, with_actual: bool = True) -> dict:
    """An algo order object (New/Query Algo Order response fields)."""
    spec = engine.symbols[leg.symbol]
    pp, qp = spec.price_precision, spec.qty_precision
    order = engine.orders.get(leg.order_id) if leg.order_id is not None else None
    out = {
        "algoId": leg.leg_id, "clientAlgoId": leg.client_id, "algoType": "CONDITIONAL",
        "orderType": leg.type, "symbol": leg.symbol, "side": leg.side,
        "positionSide": "BOTH", "timeInForce": "GTE_GTC" if leg.close_position else "GTC",
        "quantity": bf.fmt(leg.quantity, qp), "algoStatus": leg.status,
    }
    if with_actual:
        out["actualOrderId"] = str(leg.order_id) if leg.order_id is not None else ""
        out["actualPrice"] = bf.fmt(order.avg_price if order else ZERO, pp + 3)
    out.update({
        "triggerPrice": bf.fmt(leg.trigger_price or ZERO, pp), "price": bf.fmt(ZERO, pp),
        "icebergQuantity": None, "selfTradePreventionMode": "EXPIRE_MAKER",
        "workingType": leg.working_type, "priceMatch": "NONE",
        "closePosition": leg.close_position, "priceProtect": False,
        "reduceOnly": not leg.close_position,
        "activatePrice": bf.fmt(leg.activate_price, pp) if leg.activate_price else "",
        "callbackRate": bf.plain(leg.callback_rate) if leg.callback_rate is not None else "",
        "createTime": leg.time, "updateTime": leg.update_time,
        "triggerTime": leg.trigger_time, "goodTillDate": 0,
    })
    return out


def algo_update(engine: Engine, leg: Leg, event_ms: int) -> dict:
    """An ``ALGO_UPDATE`` frame (user-data-streams/Event-Algo-Order-Update)."""
    spec = engine.symbols[leg.symbol]
    pp, qp = spec.price_precision, spec.qty_precision
    order = engine.orders.get(leg.order_id) if leg.order_id is not None else None
    o = {
        "caid": leg.client_id, "aid": leg.leg_id, "at": "CONDITIONAL", "o": leg.type,
        "s": leg.symbol, "S": leg.side, "ps": "BOTH",
        "f": "GTE_GTC" if leg.close_position else "GTC", "q": bf.fmt(leg.quantity, qp),
        "X": leg.status, "ai": str(leg.order_id) if leg.order_id is not None else "",
    }
    if order is not None:
        o.update({"ap": bf.fmt(order.avg_price, pp + 3), "aq": bf.fmt(order.executed_qty, qp),
                  "act": order.type})
    o.update({
        "tp": bf.fmt(leg.trigger_price or ZERO, pp), "p": bf.fmt(ZERO, pp),
        "V": "EXPIRE_MAKER", "wt": leg.working_type, "pm": "NONE",
        "cp": leg.close_position, "pP": False, "R": not leg.close_position,
        "tt": leg.trigger_time, "gtd": 0,
    })
    if leg.type == TRAILING_STOP_MARKET:
        # "cr" as captured ALGO_UPDATEs carry it; "AP" (activation) by analogy with
        # ORDER_TRADE_UPDATE, the doc example being a TAKE_PROFIT without either.
        o["cr"] = bf.plain(leg.callback_rate or ZERO)
        if leg.activate_price is not None:
            o["AP"] = bf.fmt(leg.activate_price, pp)
    if leg.status in (REJECTED, EXPIRED) and leg.reason:
        o["rm"] = leg.reason
    return {"e": "ALGO_UPDATE", "T": event_ms, "E": event_ms, "o": o}


def margin_call(engine: Engine, account: Account, symbols: tuple[str, ...], event_ms: int) -> dict:
    """A ``MARGIN_CALL`` frame (user-data-streams/Event-Margin-Call): ``cw`` cross
    wallet, one ``p`` row per position (``pa`` signed, ``mp`` mark, ``up``, ``mm``)."""
    rows = []
    for symbol in symbols:
        pos = account.position(symbol)
        spec = engine.symbols[symbol]
        rows.append({"s": symbol, "ps": "BOTH", "pa": bf.fmt(pos.amount, spec.qty_precision),
                     "mt": "CROSSED", "iw": "0", "mp": bf.money(engine.prices[symbol]),
                     "up": bf.money(engine.unrealized(account, symbol)),
                     "mm": bf.money(engine.maint_margin(account, symbol))})
    return {"e": "MARGIN_CALL", "E": event_ms, "cw": bf.money(account.wallet), "p": rows}


def income_json(row: IncomeRow) -> dict:
    """One ``GET /fapi/v1/income`` row."""
    return {"symbol": row.symbol, "incomeType": row.kind, "income": bf.money(row.amount),
            "asset": row.asset, "info": "", "time": row.time, "tranId": row.tran_id,
            "tradeId": ""}


class AlgoRoutes:
    """The algo and income handlers; ``table()`` lists ``(method, path, handler, security)``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def table(self) -> list[tuple[str, str, Handler, str]]:
        """Routes served by this module."""
        return [
            ("POST", "/fapi/v1/algoOrder", self.new_algo, SIGNED),
            ("DELETE", "/fapi/v1/algoOrder", self.cancel_algo, SIGNED),
            ("GET", "/fapi/v1/algoOrder", self.get_algo, SIGNED),
            ("GET", "/fapi/v1/openAlgoOrders", self.open_algos, SIGNED),
            ("GET", "/fapi/v1/allAlgoOrders", self.all_algos, SIGNED),
            ("DELETE", "/fapi/v1/algoOpenOrders", self.cancel_all_algos, SIGNED),
            ("GET", "/fapi/v1/income", self.income, SIGNED),
        ]

    async def new_algo(self, ctx: Ctx) -> dict:
        """Place a conditional order (see the module docstring)."""
        p, engine = ctx.params, self.engine
        if p.require("algoType").upper() != "CONDITIONAL":
            raise BinanceError(-1116, "Invalid algoType.")
        symbol, side = p.require("symbol"), p.require("side").upper()
        type_ = p.require("type").upper()
        engine.spec(symbol)
        if type_ not in LEG_TYPES:
            raise BinanceError(-1116, "Invalid orderType.")
        if (p.get("positionSide") or "BOTH").upper() != "BOTH":
            raise BinanceError(-4061, "Order's position side does not match user's setting.")
        working = (p.get("workingType") or CONTRACT_PRICE).upper()
        if working not in (MARK_PRICE, CONTRACT_PRICE):
            raise BinanceError(-1100, "Illegal characters found in parameter 'workingType'.")
        client_id = p.get("clientAlgoId")
        if client_id is not None and not CLIENT_ID_RE.match(client_id):
            raise BinanceError(-4015, "Client order id is not valid.")
        close = p.boolean("closePosition")
        quantity = p.decimal("quantity")
        if close:
            if type_ == TRAILING_STOP_MARKET:
                raise BinanceError(-1106, "Parameter 'closePosition' sent when not required.")
            if quantity is not None:
                raise BinanceError(-1106, "Parameter 'quantity' sent when not required.")
            if p.get("reduceOnly") is not None:
                raise BinanceError(-1106, "Parameter 'reduceOnly' sent when not required.")
        elif quantity is None:
            raise BinanceError(-1102, "Mandatory parameter 'quantity' was not sent, was "
                                      "empty/null, or malformed.")
        trigger = p.decimal("triggerPrice")
        rate = p.decimal("callbackRate")
        activate = p.decimal("activatePrice")
        if type_ == TRAILING_STOP_MARKET:
            if rate is None or not MIN_CALLBACK <= rate <= MAX_CALLBACK:
                raise BinanceError(-2007, "Invalid callBack rate.")
        elif trigger is None:
            raise BinanceError(-1102, "Mandatory parameter 'triggerPrice' was not sent, was "
                                      "empty/null, or malformed.")
        account = ctx.account
        if close:
            pos = account.position(symbol)
            if pos.amount == 0 and not engine.open_orders(ctx.api_key, symbol):
                raise BinanceError(-4509, "TIF GTE can only be used with open positions or "
                                          "open orders.")
            if any(l.type == type_ and l.side == side and l.close_position
                   for l in engine.open_legs(ctx.api_key, symbol)):
                raise BinanceError(-4130, "An open stop or take profit order with GTE and "
                                          "closePosition in the direction is existing.")
        if quantity is not None:
            spec = engine.spec(symbol)
            if quantity <= 0 or not spec.on_step(quantity):
                raise BinanceError(-1111, "Precision is over the maximum defined for this asset.")
            if not p.boolean("reduceOnly"):
                # Binance would accept it (and it could open a position); the simulator
                # holds closing legs only.
                raise BinanceError(-1102, "Mandatory parameter 'reduceOnly' was not sent, was "
                                          "empty/null, or malformed (conditional orders that "
                                          "open a position are not simulated).")
        leg = engine.place_leg(
            ctx.api_key, VENUE, symbol, side, type_, client_id=client_id or _auto_id(engine),
            working_type=working, trigger_price=trigger, close_position=close,
            quantity=quantity or ZERO, activate_price=activate, callback_rate=rate)
        return algo_json(engine, leg, with_actual=False)

    def _leg(self, ctx: Ctx, unknown_code: int) -> Leg:
        algo_id, client_id = ctx.params.integer("algoId"), ctx.params.get("clientAlgoId")
        if algo_id is None and client_id is None:
            raise BinanceError(-1102, "Param 'clientAlgoId' or 'algoId' must be sent, but "
                                      "both were empty/null!")
        try:
            leg = self.engine.find_leg(ctx.api_key, algo_id, client_id)
        except EngineError:
            raise BinanceError(unknown_code, "Unknown order sent." if unknown_code == -2011
                               else "Order does not exist.") from None
        if leg.venue != VENUE:
            raise BinanceError(unknown_code, "Order does not exist.")
        return leg

    async def cancel_algo(self, ctx: Ctx) -> dict:
        """Cancel a waiting algo order; -2011 when unknown or no longer waiting."""
        leg = self._leg(ctx, -2011)
        try:
            self.engine.cancel_leg(leg, CANCELED)
        except EngineError as exc:
            raise engine_error(exc, unknown_order_code=-2011) from None
        return {"algoId": leg.leg_id, "clientAlgoId": leg.client_id, "code": "200",
                "msg": "success"}

    async def get_algo(self, ctx: Ctx) -> dict:
        """One algo order, final ones included; -2013 when unknown."""
        return algo_json(self.engine, self._leg(ctx, -2013))

    async def open_algos(self, ctx: Ctx) -> list:
        """Waiting algo orders, optionally of one ``symbol``."""
        symbol = ctx.params.get("symbol")
        if symbol is not None:
            self.engine.spec(symbol)
        return [algo_json(self.engine, l) for l in self.engine.open_legs(ctx.api_key, symbol)
                if l.venue == VENUE]

    async def all_algos(self, ctx: Ctx) -> list:
        """Algo orders of ``symbol`` of every status: from ``algoId`` on, within
        ``startTime``..``endTime``, at most ``limit`` (default 500; the latest ones when
        no ``algoId``), oldest first."""
        p = ctx.params
        symbol = p.require("symbol")
        self.engine.spec(symbol)
        from_id, start, end = p.integer("algoId"), p.integer("startTime"), p.integer("endTime")
        legs = [l for l in ctx.account.legs.values() if l.venue == VENUE and l.symbol == symbol
                and (from_id is None or l.leg_id >= from_id)
                and (start is None or l.time >= start) and (end is None or l.time <= end)]
        limit = limit_param(p)
        legs = legs[:limit] if from_id is not None else legs[-limit:]
        return [algo_json(self.engine, l) for l in legs]

    async def cancel_all_algos(self, ctx: Ctx) -> dict:
        """Cancel every waiting algo order of ``symbol``."""
        symbol = ctx.params.require("symbol")
        self.engine.spec(symbol)
        for leg in self.engine.open_legs(ctx.api_key, symbol):
            if leg.venue == VENUE:
                self.engine.cancel_leg(leg, CANCELED)
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    async def income(self, ctx: Ctx) -> list:
        """Income rows (FUNDING_FEE) filtered by ``symbol``, ``incomeType``,
        ``startTime``/``endTime``; at most ``limit`` (default 100), oldest first."""
        p = ctx.params
        symbol, kind = p.get("symbol"), p.get("incomeType")
        if kind is not None and kind not in INCOME_TYPES + ("REALIZED_PNL", "COMMISSION",
                                                             "TRANSFER"):
            raise BinanceError(-1100, "Illegal characters found in parameter 'incomeType'.")
        start, end = p.integer("startTime"), p.integer("endTime")
        rows = [r for r in ctx.account.income
                if (symbol is None or r.symbol == symbol) and (kind is None or r.kind == kind)
                and (start is None or r.time >= start) and (end is None or r.time <= end)]
        return [income_json(r) for r in rows[:limit_param(p, default=100)]]


def _auto_id(engine: Engine) -> str:
    engine._next_order_id += 1
    return f"algo-{engine._next_order_id}"

