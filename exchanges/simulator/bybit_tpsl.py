"""Bybit v5 position TP/SL/trailing stop (``POST /v5/position/trading-stop``) and the
conditional orders it creates, as the ``order`` topic and ``/v5/order/*`` show them.

After bybit-exchange.github.io/docs/v5/position/trading-stop: "Passing these parameters
will create conditional orders by the system internally. The system will cancel these
orders if the position is closed"; ``takeProfit``/``stopLoss``/``trailingStop`` ``"0"``
cancels that one; in ``tpslMode=Full`` a second call modifies the existing order.
Simulated: ``category=linear``, ``positionIdx=0``, ``tpslMode=Full`` (Partial -> 10001),
``tpTriggerBy``/``slTriggerBy`` LastPrice (default) or MarkPrice, ``trailingStop`` a
price distance with optional ``activePrice`` (trailing stops watch the last price).
Refusals (retCode 10001): no position ("can not set tp/sl/ts for zero position"), a
stop-loss on the wrong side of the watched price (a Buy position's must be lower), a
take-profit on the wrong side, an ``activePrice`` already passed, a price off the tick.

Each leg is a conditional Market order with ``orderLinkId`` ``""``, ``stopOrderType``
StopLoss / TakeProfit / TrailingStop, ``triggerPrice``, ``triggerBy``, ``reduceOnly``
and ``closeOnTrigger`` true, ``createType`` CreateByStopLoss / CreateByTakeProfit /
CreateByTrailingStop. ``orderStatus``: Untriggered while waiting, Triggered when fired,
then its market order (same ``orderId``) Filled; Deactivated when canceled or when the
position ended; Rejected when nothing was left to close.
"""
from __future__ import annotations

from decimal import Decimal

from exchanges.simulator.bybit_auth import BybitError, Ctx, Handler, category, params_error
from exchanges.simulator.bybit_format import SIDES, fmt, order_uuid, plain
from exchanges.simulator.engine import Engine
from exchanges.simulator.models import (
    CANCELED, CONTRACT_PRICE, EXPIRED, MARK_PRICE, NEW, REJECTED, STOP_MARKET,
    TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET, TRIGGERED, TRIGGERING, ZERO, EngineError, Leg,
)

VENUE = "bybit"
TRIGGER_BY = {"LastPrice": CONTRACT_PRICE, "MarkPrice": MARK_PRICE}
TRIGGER_BY_OUT = {v: k for k, v in TRIGGER_BY.items()}
STOP_ORDER_TYPE = {STOP_MARKET: "StopLoss", TAKE_PROFIT_MARKET: "TakeProfit",
                   TRAILING_STOP_MARKET: "TrailingStop"}
CREATE_TYPE = {STOP_MARKET: "CreateByStopLoss", TAKE_PROFIT_MARKET: "CreateByTakeProfit",
               TRAILING_STOP_MARKET: "CreateByTrailingStop"}
LEG_STATUS = {NEW: "Untriggered", TRIGGERING: "Triggered", TRIGGERED: "Triggered",
              CANCELED: "Deactivated", EXPIRED: "Deactivated", REJECTED: "Rejected"}


def bybit_legs(engine: Engine, api_key: str, symbol: str) -> dict[str, Leg]:
    """The account's waiting Bybit position legs (TP/SL/trailing, not conditional
    orders) of ``symbol`` by type."""
    return {l.type: l for l in engine.open_legs(api_key, symbol)
            if l.venue == VENUE and not l.label}


def leg_status(leg: Leg) -> str:
    """Bybit ``orderStatus`` of a leg that has no order of its own yet (or any more)."""
    return LEG_STATUS.get(leg.status, "Triggered")


def leg_fields(engine: Engine, leg: Leg) -> dict:
    """The conditional fields of a leg's order row (also of its fired market order)."""
    pp = engine.symbols[leg.symbol].price_precision
    trigger = leg.trigger_price if leg.trigger_price is not None else leg.trailing_trigger()
    by = TRIGGER_BY_OUT[leg.working_type]
    if leg.label:           # a conditional order of /v5/order/create
        return {
            "stopOrderType": leg.label, "createType": "CreateByStopOrder",
            "triggerPrice": fmt(trigger, pp) if trigger is not None else fmt(ZERO, pp),
            "triggerBy": by, "triggerDirection": 2 if (leg.side == "SELL") == (
                leg.type == STOP_MARKET) else 1,
            "tpTriggerBy": "", "slTriggerBy": "", "reduceOnly": True,
            "closeOnTrigger": False, "tpslMode": "",
        }
    return {
        "stopOrderType": STOP_ORDER_TYPE[leg.type], "createType": CREATE_TYPE[leg.type],
        "triggerPrice": fmt(trigger, pp) if trigger is not None else fmt(ZERO, pp),
        "triggerBy": by, "triggerDirection": 1 if (leg.side == "BUY") == (
            leg.type == STOP_MARKET or leg.type == TRAILING_STOP_MARKET) else 2,
        "tpTriggerBy": by if leg.type == TAKE_PROFIT_MARKET else "",
        "slTriggerBy": by if leg.type != TAKE_PROFIT_MARKET else "",
        "reduceOnly": True, "closeOnTrigger": True, "tpslMode": "Full",
    }


def leg_row(engine: Engine, leg: Leg, shape: str = "rest") -> dict:
    """A waiting (or canceled) leg as an order row of ``shape`` rest/history/ws."""
    spec = engine.symbols[leg.symbol]
    pp, qp = spec.price_precision, spec.qty_precision
    row = {
        "orderId": order_uuid(leg.leg_id), "orderLinkId": leg.client_id, "blockTradeId": "",
        "symbol": leg.symbol, "price": fmt(ZERO, pp), "qty": fmt(leg.quantity, qp),
        "side": SIDES[leg.side], "isLeverage": "", "positionIdx": 0,
        "orderStatus": leg_status(leg), "cancelType": "UNKNOWN",
        "rejectReason": "EC_NoError", "avgPrice": "", "leavesQty": fmt(ZERO, qp),
        "leavesValue": "0", "cumExecQty": fmt(ZERO, qp), "cumExecValue": "0",
        "cumExecFee": "0", "timeInForce": "IOC", "orderType": "Market", "orderIv": "",
        "takeProfit": fmt(ZERO, pp), "stopLoss": fmt(ZERO, pp),
        "lastPriceOnCreated": fmt(engine.last_prices[leg.symbol], pp),
        "smpType": "None", "smpGroup": 0, "smpOrderId": "", "tpLimitPrice": "",
        "slLimitPrice": "", "placeType": "", "createdTime": str(leg.time),
        "updatedTime": str(leg.update_time), "cumFeeDetail": {},
    }
    row.update(leg_fields(engine, leg))
    if leg.status == EXPIRED:
        row["cancelType"] = "CancelByTpSlTsClear"
    elif leg.status == CANCELED:
        row["cancelType"] = "CancelByUser"
    if shape == "history":
        row.update({"slippageToleranceType": "UNKNOWN", "slippageTolerance": "",
                    "extraFees": "", "rpiTakerAccess": False, "rpiMatchedQty": "0"})
    elif shape == "ws":
        row.update({"category": "linear", "closedPnl": "0", "feeCurrency": "",
                    "rpiTakerAccess": False, "rpiMatchedQty": "0"})
    return row


def position_tpsl(engine: Engine, api_key: str, symbol: str, ws: bool = False) -> dict:
    """``takeProfit``, ``stopLoss``, ``trailingStop`` (a distance) of a position row:
    prices with the symbol's decimals on REST (``"0.00"`` when unset), plain on the
    ``position`` topic (``"0"``), as the fixtures show."""
    pp = engine.symbols[symbol].price_precision
    legs = bybit_legs(engine, api_key, symbol)
    tp, sl = legs.get(TAKE_PROFIT_MARKET), legs.get(STOP_MARKET)
    ts = legs.get(TRAILING_STOP_MARKET)
    out = (lambda v: plain(v or ZERO)) if ws else (lambda v: fmt(v or ZERO, pp))
    return {"takeProfit": out(tp.trigger_price if tp else None),
            "stopLoss": out(sl.trigger_price if sl else None),
            "trailingStop": out(ts.trailing_distance if ts else None)}


class TradingStop:
    """``POST /v5/position/trading-stop``; ``table()`` lists its route."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def table(self) -> list[tuple[str, str, Handler, bool]]:
        """Routes served by this module."""
        return [("POST", "/v5/position/trading-stop", self.trading_stop, True)]

    def _price(self, ctx: Ctx, name: str) -> Decimal | None:
        value = ctx.params.decimal(name)
        if value is None:
            return None
        if value < 0:
            raise params_error(f"{name} cannot be less than 0")
        return value

    async def trading_stop(self, ctx: Ctx) -> dict:
        """Set, modify or cancel the position's TP / SL / trailing stop (module docstring)."""
        p, engine = ctx.params, self.engine
        category(p)
        symbol = p.require("symbol")
        spec = engine.spec(symbol)
        mode = p.get("tpslMode") or "Full"
        if mode != "Full":
            raise params_error("tpslMode Partial is not simulated")
        if p.integer("positionIdx", 0) != 0:
            raise params_error("position idx not match position mode")
        pos = ctx.account.position(symbol)
        if pos.amount == 0:
            raise BybitError(10001, "can not set tp/sl/ts for zero position")
        long = pos.amount > 0
        side = "SELL" if long else "BUY"
        tp, sl = self._price(ctx, "takeProfit"), self._price(ctx, "stopLoss")
        ts, active = self._price(ctx, "trailingStop"), self._price(ctx, "activePrice")
        by = {}
        for name in ("tpTriggerBy", "slTriggerBy"):
            text = p.get(name) or "LastPrice"
            if text not in TRIGGER_BY:
                raise params_error(f"{name} {text} is not simulated")
            by[name] = TRIGGER_BY[text]
        for name, value in (("takeProfit", tp), ("stopLoss", sl), ("activePrice", active)):
            if value and not spec.on_tick(value):
                raise params_error(f"{name} precision invalid, tickSize {spec.tick:f}")
        if tp is None and sl is None and ts is None:
            raise params_error("takeProfit, stopLoss or trailingStop is required")
        side_word = "Buy" if long else "Sell"
        if sl:
            base = engine.watched_price(symbol, by["slTriggerBy"])
            if (sl >= base) if long else (sl <= base):
                raise BybitError(10001, f"StopLoss:{sl:f} set for {side_word} position should "
                                        f"{'lower' if long else 'higher'} than "
                                        f"base_price:{base:f}??LastPrice")
        if tp:
            base = engine.watched_price(symbol, by["tpTriggerBy"])
            if (tp <= base) if long else (tp >= base):
                raise BybitError(10001, f"TakeProfit:{tp:f} set for {side_word} position should "
                                        f"{'higher' if long else 'lower'} than "
                                        f"base_price:{base:f}??LastPrice")
        if ts and active:
            base = engine.last_prices[symbol]
            if (active <= base) if long else (active >= base):
                raise BybitError(10001, f"ActivePrice:{active:f} set for {side_word} position "
                                        f"should be {'higher' if long else 'lower'} than the "
                                        f"last price {base:f}")
        legs = bybit_legs(engine, ctx.api_key, symbol)
        try:
            self._apply(ctx, symbol, side, legs, STOP_MARKET, sl, by["slTriggerBy"])
            self._apply(ctx, symbol, side, legs, TAKE_PROFIT_MARKET, tp, by["tpTriggerBy"])
            self._apply(ctx, symbol, side, legs, TRAILING_STOP_MARKET, ts, CONTRACT_PRICE,
                        active)
        except EngineError as exc:
            raise params_error(exc.message) from None
        return {}

    def _apply(self, ctx: Ctx, symbol: str, side: str, legs: dict[str, Leg], type_: str,
               value: Decimal | None, working: str, active: Decimal | None = None) -> None:
        if value is None:
            return
        engine, leg = self.engine, legs.get(type_)
        trailing = type_ == TRAILING_STOP_MARKET
        if value == 0:
            if leg is not None:
                engine.cancel_leg(leg, CANCELED)
            return
        if leg is not None:
            if trailing:
                engine.amend_leg(leg, trailing_distance=value, activate_price=active or None)
            else:
                engine.amend_leg(leg, trigger_price=value, working_type=working)
            return
        engine.place_leg(ctx.api_key, VENUE, symbol, side, type_, client_id="",
                         working_type=working,
                         trigger_price=None if trailing else value,
                         trailing_distance=value if trailing else None,
                         activate_price=active or None if trailing else None)
