"""Bybit v5 (linear) JSON shapes of orders and executions, plus the id codec.

Shapes follow ``tests/fixtures/bybit/`` (``rest_v5_order_realtime.json``,
``rest_v5_order_history.json``, ``rest_v5_execution_list.json``,
``ws_private_order.json``, ``ws_private_execution.json``) plus the fields the v5 docs
list for linear: decimals are strings, times inside ``result`` are ms as strings,
``positionIdx``/``smpGroup``/``triggerDirection`` are ints, ``seq`` is a long.

Ids: the engine numbers orders and fills with ints; Bybit's ``orderId``/``execId`` are
UUID strings. ``order_uuid``/``exec_uuid`` scramble the int into a version-4-looking
UUID that ``parse_order_uuid`` turns back into the int, so no mapping table is kept
and orders placed through the Binance layer get a stable Bybit id too.

Status mapping (engine -> Bybit): NEW -> New, PARTIALLY_FILLED -> PartiallyFilled,
FILLED -> Filled, CANCELED -> Cancelled, EXPIRED -> Cancelled (``rejectReason`` says
why: IOC ``EC_NoImmediateQtyToFill``, FOK ``EC_CancelForNoFullFill``, PostOnly
``EC_PostOnlyWillTakeLiquidity``; a reduce-only order cut by a flat position gets
``cancelType`` ``CancelByReduceOnly``), and an order refused by the reject_orders
fault -> Rejected (``EC_Others``).
"""
from __future__ import annotations

import uuid
from decimal import ROUND_HALF_UP, Decimal

from exchanges.simulator.bybit_ledger import BybitLedger, FillExtra, OrderExtra
from exchanges.simulator.engine import Engine
from exchanges.simulator.models import (
    CANCELED, EXPIRED, FILLED, FOK, GTX, IOC, MARGIN_ASSET, MARKET, NEW, PARTIALLY_FILLED,
    SOURCE_ADL, SOURCE_LEG, SOURCE_LIQUIDATION, ZERO, Fill, IncomeRow, Order, SymbolSpec,
)

CATEGORY = "linear"
SIDES = {"BUY": "Buy", "SELL": "Sell"}
TYPES = {"MARKET": "Market", "LIMIT": "Limit"}
TIFS = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "GTX": "PostOnly"}
STATUSES = {NEW: "New", PARTIALLY_FILLED: "PartiallyFilled", FILLED: "Filled",
            CANCELED: "Cancelled", EXPIRED: "Cancelled"}
OPEN_STATUSES = frozenset({"New", "PartiallyFilled"})
MARKET_SLIPPAGE = Decimal("0.01")   # protection price of a Market order: last +- 1 %

_MASK62 = (1 << 62) - 1
_MASK64 = (1 << 64) - 1
_MUL = 0x1E3779B97F4A7C15                     # odd, so invertible modulo 2**62
_MUL_INV = pow(_MUL, -1, 1 << 62)
_ORDER_SALT, _EXEC_SALT = 0x5BD1E9955BD1E995, 0x27D4EB2F165667C5


def fmt(value: Decimal, places: int) -> str:
    """``value`` as a plain decimal string with exactly ``places`` decimals."""
    return f"{value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"


def plain(value: Decimal) -> str:
    """A decimal without trailing zeros (at most 8 places): ``"0.385"``, ``"0"``."""
    text = fmt(value, 8).rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _check_bits(scrambled: int, salt: int) -> int:
    hi = ((scrambled ^ salt) * 0x9E3779B97F4A7C15 + salt) & _MASK64
    return (hi & ~(0xF << 12)) | (0x4 << 12)          # version nibble = 4


def _to_uuid(number: int, salt: int) -> str:
    scrambled = ((number * _MUL) ^ salt) & _MASK62
    lo = (0b10 << 62) | scrambled                      # RFC 4122 variant bits
    return str(uuid.UUID(int=(_check_bits(scrambled, salt) << 64) | lo))


def order_uuid(order_id: int) -> str:
    """The Bybit ``orderId`` of engine order ``order_id``."""
    return _to_uuid(order_id, _ORDER_SALT)


def exec_uuid(trade_id: int) -> str:
    """The Bybit ``execId`` of engine fill ``trade_id``."""
    return _to_uuid(trade_id, _EXEC_SALT)


def parse_order_uuid(text: str) -> int | None:
    """The engine order id behind a Bybit ``orderId`` (None when it is not one of ours)."""
    try:
        value = uuid.UUID(str(text)).int
    except ValueError:
        return None
    lo, hi = value & _MASK64, value >> 64
    scrambled = lo & _MASK62
    if lo >> 62 != 0b10 or hi != _check_bits(scrambled, _ORDER_SALT):
        return None
    return (((scrambled ^ _ORDER_SALT) & _MASK62) * _MUL_INV) & _MASK62


def link_id(order: Order) -> str:
    """``orderLinkId``: the client id, ``""`` when the engine generated it or the venue
    made the order (liquidation, ADL)."""
    cid = order.client_order_id
    if order.source in (SOURCE_LIQUIDATION, SOURCE_ADL):
        return ""
    return "" if cid == f"sim-{order.order_id}" else cid


# execType and createType of a venue-made order's executions (enum.mdx: execType
# Trade|AdlTrade|Funding|BustTrade...; createType CreateByLiq, CreateByAdl_PassThrough).
EXEC_TYPE = {SOURCE_LIQUIDATION: "BustTrade", SOURCE_ADL: "AdlTrade"}
CREATE_TYPE = {SOURCE_LIQUIDATION: "CreateByLiq", SOURCE_ADL: "CreateByAdl_PassThrough"}


def _leg_overlay(engine: Engine, order: Order) -> dict:
    """The conditional fields of an order a Bybit leg fired (same ``orderId``)."""
    leg = engine.legs.get(order.order_id) if order.source == SOURCE_LEG else None
    if leg is None:
        return {}
    from exchanges.simulator.bybit_tpsl import leg_fields   # bybit_tpsl imports this module
    return leg_fields(engine, leg)


def order_status(order: Order, extra: OrderExtra) -> str:
    """Bybit ``orderStatus`` of an engine order."""
    if extra.rejected and order.status == EXPIRED:
        return "Rejected"
    return STATUSES.get(order.status, "Rejected")


def _reject_reason(order: Order, extra: OrderExtra) -> tuple[str, str]:
    """``(cancelType, rejectReason)``."""
    if order.status == EXPIRED:
        if extra.rejected:
            return "UNKNOWN", "EC_Others"
        if order.reduce_only:
            return "CancelByReduceOnly", "EC_NoError"
        reason = {IOC: "EC_NoImmediateQtyToFill", FOK: "EC_CancelForNoFullFill",
                  GTX: "EC_PostOnlyWillTakeLiquidity"}.get(order.time_in_force, "EC_NoError")
        return "UNKNOWN", reason
    if order.status == CANCELED:
        return "CancelByUser", "EC_PerCancelRequest"
    return "UNKNOWN", "EC_NoError"


def order_price(spec: SymbolSpec, order: Order, extra: OrderExtra) -> Decimal:
    """Limit price, or for Market orders the slippage-protection price (last +- 1 %)."""
    if order.price is not None:
        return order.price
    factor = 1 + MARKET_SLIPPAGE if order.side == "BUY" else 1 - MARKET_SLIPPAGE
    return spec.round_price(extra.last_price * factor)


def order_row(engine: Engine, ledger: BybitLedger, order: Order, shape: str = "rest") -> dict:
    """One order. ``shape``: ``rest`` (``/v5/order/realtime``), ``history``
    (``/v5/order/history``: plus slippage/extraFees/rpi fields) or ``ws`` (the
    ``order`` topic: plus ``category``, ``closedPnl``, ``feeCurrency``, rpi fields)."""
    spec = engine.symbols[order.symbol]
    extra = ledger.order(order)
    pp, qp = spec.price_precision, spec.qty_precision
    price = order_price(spec, order, extra)
    open_ = order.is_open
    leaves = order.remaining if open_ else ZERO
    cancel_type, reject_reason = _reject_reason(order, extra)
    # No conditional/TP-SL orders: REST says UNKNOWN / 0.00, the WS topic says "".
    unknown, no_price = ("", "") if shape == "ws" else ("UNKNOWN", fmt(ZERO, pp))
    row = {
        "orderId": order_uuid(order.order_id), "orderLinkId": link_id(order),
        "blockTradeId": "", "symbol": order.symbol, "price": fmt(price, pp),
        "qty": fmt(order.orig_qty, qp), "side": SIDES[order.side], "isLeverage": "",
        "positionIdx": 0, "orderStatus": order_status(order, extra),
        "createType": "CreateByUser", "cancelType": cancel_type,
        "rejectReason": reject_reason,
        "avgPrice": plain(order.avg_price) if order.executed_qty else "",
        "leavesQty": fmt(leaves, qp), "leavesValue": plain(leaves * price),
        "cumExecQty": fmt(order.executed_qty, qp), "cumExecValue": plain(order.cum_quote),
        "cumExecFee": plain(extra.fee),
        "timeInForce": "IOC" if order.type == MARKET else TIFS[order.time_in_force],
        "orderType": TYPES[order.type], "stopOrderType": unknown, "orderIv": "",
        "triggerPrice": no_price, "takeProfit": no_price, "stopLoss": no_price,
        "tpTriggerBy": unknown, "slTriggerBy": unknown, "triggerDirection": 0,
        "triggerBy": unknown,
        "lastPriceOnCreated": fmt(extra.last_price, pp), "reduceOnly": order.reduce_only,
        "closeOnTrigger": False, "smpType": "None", "smpGroup": 0, "smpOrderId": "",
        "tpslMode": "", "tpLimitPrice": "", "slLimitPrice": "", "placeType": "",
        "createdTime": str(order.time), "updatedTime": str(order.update_time),
        "cumFeeDetail": {MARGIN_ASSET: plain(extra.fee)} if extra.fee else {},
    }
    if order.source in CREATE_TYPE:
        row["createType"] = CREATE_TYPE[order.source]
    row.update(_leg_overlay(engine, order))
    if shape == "history":
        row.update({"slippageToleranceType": "UNKNOWN", "slippageTolerance": "",
                    "extraFees": "", "rpiTakerAccess": False, "rpiMatchedQty": "0"})
    elif shape == "ws":
        row.update({"category": CATEGORY, "closedPnl": plain(extra.pnl),
                    "feeCurrency": MARGIN_ASSET if extra.fee else "",
                    "rpiTakerAccess": False, "rpiMatchedQty": "0"})
    return row


def execution_row(engine: Engine, ledger: BybitLedger, fill: Fill, ws: bool = False) -> dict:
    """One execution: a ``/v5/execution/list`` row, or (``ws``) an element of the
    ``execution`` topic (with ``category``, ``execPnl``, ``isLeverage``...)."""
    spec = engine.symbols[fill.symbol]
    order = engine.orders[fill.order_id]
    extra: FillExtra = ledger.fill(fill)
    pp, qp = spec.price_precision, spec.qty_precision
    row = {
        "symbol": fill.symbol, "orderType": TYPES[order.type], "underlyingPrice": "",
        "orderLinkId": link_id(order), "side": SIDES[fill.side], "indexPrice": "",
        "orderId": order_uuid(order.order_id), "stopOrderType": "UNKNOWN",
        "leavesQty": fmt(extra.leaves_qty, qp), "execTime": str(fill.time),
        "feeCurrency": fill.commission_asset, "isMaker": fill.maker,
        "execFee": plain(fill.commission),
        "feeRate": f"{engine.maker_fee if fill.maker else engine.taker_fee:f}",
        "execId": exec_uuid(fill.trade_id), "tradeIv": "", "blockTradeId": "",
        "markPrice": fmt(extra.mark, pp), "execPrice": fmt(fill.price, pp), "markIv": "",
        "orderQty": fmt(order.orig_qty, qp),
        "orderPrice": fmt(order_price(spec, order, ledger.order(order)), pp),
        "execValue": plain(fill.quote_qty), "execType": EXEC_TYPE.get(fill.source, "Trade"),
        "execQty": fmt(fill.qty, qp),
        "closedSize": fmt(extra.closed_size, qp) if extra.closed_size else "",
        "extraFees": "", "seq": fill.trade_id,
        "createType": CREATE_TYPE.get(fill.source, "CreateByUser"),
    }
    overlay = _leg_overlay(engine, order)
    if overlay:
        row["stopOrderType"], row["createType"] = overlay["stopOrderType"], overlay["createType"]
    if ws:
        row.update({"category": CATEGORY, "isLeverage": "0", "marketUnit": "",
                    "execPnl": plain(fill.realized_pnl), "extraFees": []})
    return row


def funding_row(engine: Engine, row: IncomeRow, ws: bool = False) -> dict:
    """A funding payment as an execution (``execType`` Funding): ``execFee`` is what the
    position paid (negative when it received), ``execQty`` the position size, ``execPrice``
    the mark price, ``feeRate`` the funding rate; no order."""
    spec = engine.symbols[row.symbol]
    pp, qp = spec.price_precision, spec.qty_precision
    size = abs(row.position_qty)
    out = {
        "symbol": row.symbol, "orderType": "UNKNOWN", "underlyingPrice": "",
        "orderLinkId": "", "side": "Buy" if row.position_qty > 0 else "Sell",
        "indexPrice": "", "orderId": "", "stopOrderType": "UNKNOWN",
        "leavesQty": fmt(ZERO, qp), "execTime": str(row.time), "feeCurrency": row.asset,
        "isMaker": False, "execFee": plain(-row.amount), "feeRate": f"{row.rate:f}",
        "execId": exec_uuid(row.tran_id), "tradeIv": "", "blockTradeId": "",
        "markPrice": fmt(row.mark_price, pp), "execPrice": fmt(row.mark_price, pp),
        "markIv": "", "orderQty": fmt(ZERO, qp), "orderPrice": fmt(ZERO, pp),
        "execValue": plain(size * row.mark_price), "execType": "Funding",
        "execQty": fmt(size, qp), "closedSize": "", "extraFees": "", "seq": row.tran_id,
        "createType": "",
    }
    if ws:
        out.update({"category": CATEGORY, "isLeverage": "0", "marketUnit": "",
                    "execPnl": "0", "extraFees": []})
    return out
