"""Bybit v5 order and execution endpoints (all private, ``category=linear`` only).

- ``POST /v5/order/create``: ``Market``/``Limit``, ``timeInForce`` GTC/IOC/FOK/PostOnly
  (Market always IOC), ``reduceOnly``, ``orderLinkId`` (<= 36 of ``[A-Za-z0-9_-]``,
  unique for ever per account: a reuse is 110072), ``positionIdx`` 0 only. Conditional
  and TP/SL parameters are refused with 10001 (not simulated). Reply ``{orderId,
  orderLinkId}``: an acknowledgement; the state is read from ``/v5/order/realtime`` or
  the ``order`` topic. The reject_orders fault acknowledges the order and ends it at
  once with ``orderStatus`` Rejected.
- ``POST /v5/order/cancel`` (``orderId`` wins over ``orderLinkId``; unknown or final ->
  110001), ``POST /v5/order/cancel-all`` (``symbol`` or ``settleCoin``).
- ``GET /v5/order/realtime``: open orders (newest first) by ``symbol``/``baseCoin``/
  ``settleCoin``; by ``orderId``/``orderLinkId`` any order of the account whatever its
  status (real Bybit keeps the recent 500 closed ones); ``openOnly=1``: closed only.
- ``GET /v5/order/history``: all statuses, default window the last 7 days.
- ``GET /v5/execution/list``: fills, newest first, default window the last 7 days;
  ``execType`` Trade, BustTrade (liquidation), AdlTrade, Funding (funding payments).
- Position TP/SL/trailing legs (``bybit_tpsl``) are conditional orders: listed by
  ``/v5/order/realtime`` while Untriggered (``orderFilter`` StopOrder/tpslOrder: only
  them; Order: none of them), found by ``orderId``, canceled by ``/v5/order/cancel``,
  and in ``/v5/order/history`` once Deactivated; a fired leg is its market order
  (same ``orderId``).
"""
from __future__ import annotations

import re

from exchanges.simulator.bybit_auth import (
    BybitError, Ctx, Handler, category, page, params_error,
)
from exchanges.simulator.bybit_format import (
    EXEC_TYPE, SIDES, TYPES, execution_row, funding_row, link_id, order_row, order_status,
    order_uuid, parse_order_uuid,
)
from exchanges.simulator.bybit_tpsl import VENUE as BYBIT, leg_row, leg_status
from exchanges.simulator.bybit_ledger import BybitLedger
from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import FaultRegistry
from exchanges.simulator.models import (
    CANCELED, CONTRACT_PRICE, GTX, LIMIT, MARGIN_ASSET, MARK_PRICE, MARKET, STOP_MARKET,
    TAKE_PROFIT_MARKET, IncomeRow, Leg, Order,
)

LINK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
TIF_IN = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "PostOnly": GTX}
SIDE_IN = {v: k for k, v in SIDES.items()}
TYPE_IN = {v: k for k, v in TYPES.items()}
WEEK_MS = 7 * 24 * 3600 * 1000
CLOSED_KEPT = 500
UNSUPPORTED = ("takeProfit", "stopLoss", "tpslMode", "orderIv")
TRIGGER_BY = {"LastPrice": CONTRACT_PRICE, "MarkPrice": MARK_PRICE}


class BybitOrders:
    """The order handlers; ``table()`` lists ``(method, path, handler, private)``."""

    def __init__(self, engine: Engine, faults: FaultRegistry, ledger: BybitLedger) -> None:
        self.engine, self.faults, self.ledger = engine, faults, ledger

    def table(self) -> list[tuple[str, str, Handler, bool]]:
        """Routes served by this module."""
        return [
            ("POST", "/v5/order/create", self.create, True),
            ("POST", "/v5/order/cancel", self.cancel, True),
            ("POST", "/v5/order/cancel-all", self.cancel_all, True),
            ("GET", "/v5/order/realtime", self.realtime, True),
            ("GET", "/v5/order/history", self.history, True),
            ("GET", "/v5/execution/list", self.executions, True),
        ]

    # ---- create / cancel -----------------------------------------------------------
    async def create(self, ctx: Ctx) -> dict:
        """Place an order; ``{orderId, orderLinkId}`` (see the module docstring)."""
        p = ctx.params
        category(p)
        symbol = p.require("symbol")
        spec = self.engine.spec(symbol)
        side = SIDE_IN.get(p.require("side"))
        type_ = TYPE_IN.get(p.require("orderType"))
        if side is None or type_ is None:
            raise params_error("side or orderType invalid")
        qty = p.decimal("qty", required=True)
        price = tif = None
        if type_ == LIMIT:
            price = p.decimal("price", required=True)
            tif = TIF_IN.get(p.get("timeInForce") or "GTC")
            if tif is None:
                raise params_error("timeInForce invalid")
            if price > 0 and not spec.on_tick(price):
                raise params_error(f"price precision invalid, tickSize {spec.tick:f}")
        if qty > 0 and not spec.on_step(qty):
            raise params_error(f"qty precision invalid, qtyStep {spec.step:f}")
        if p.integer("positionIdx", 0) != 0:
            raise params_error("position idx not match position mode")
        if any(p.get(name) is not None for name in UNSUPPORTED):
            raise params_error("conditional and TP/SL orders are not simulated")
        link = p.get("orderLinkId") or ""
        if link and not LINK_ID_RE.match(link):
            raise params_error("orderLinkId invalid")
        if link and (link in ctx.account.client_ids or
                     any(l.client_id == link for l in ctx.account.legs.values())):
            raise BybitError(110072, "OrderLinkedID is duplicate")
        if p.get("triggerPrice") is not None:
            return self._conditional(ctx, symbol, side, type_, qty, link)
        rejected = self.faults.take("reject_orders", ctx.api_key) is not None
        with self.ledger.rejecting(ctx.api_key if rejected else None):
            order = self.engine.place_order(
                ctx.api_key, symbol, side, type_, qty, price=price, time_in_force=tif,
                reduce_only=p.boolean("reduceOnly"), client_order_id=link,
                force_expire=rejected)
        return {"orderId": order_uuid(order.order_id), "orderLinkId": link}

    def _conditional(self, ctx: Ctx, symbol: str, side: str, type_: str, qty,
                     link: str) -> dict:
        """A conditional order (``triggerPrice`` + ``triggerDirection`` 1 rising / 2
        falling, ``triggerBy`` LastPrice/MarkPrice): held Untriggered with
        ``stopOrderType`` Stop, then a Market order (same ``orderId``). Simulated:
        Market and ``reduceOnly`` only (10001 otherwise). Already past its trigger:
        110092 / 110093 (error-codes.mdx)."""
        p, engine = ctx.params, self.engine
        spec = engine.spec(symbol)
        if type_ != MARKET or not p.boolean("reduceOnly"):
            raise params_error("only reduce-only Market conditional orders are simulated")
        trigger = p.decimal("triggerPrice", required=True)
        direction = p.integer("triggerDirection")
        by = TRIGGER_BY.get(p.get("triggerBy") or "LastPrice")
        if direction not in (1, 2) or by is None:
            raise params_error("triggerDirection or triggerBy invalid")
        if trigger <= 0 or not spec.on_tick(trigger):
            raise params_error(f"triggerPrice precision invalid, tickSize {spec.tick:f}")
        current = engine.watched_price(symbol, by)
        word = "LastPrice" if by == CONTRACT_PRICE else "MarkPrice"
        if direction == 1 and trigger <= current:
            raise BybitError(110092, f"expect Rising, but trigger_price[{trigger:f}] <= "
                                     f"current[{current:f}]??{word}")
        if direction == 2 and trigger >= current:
            raise BybitError(110093, f"expect Falling, but trigger_price[{trigger:f}] >= "
                                     f"current[{current:f}]??{word}")
        # A SELL that waits for a fall is a stop; one that waits for a rise a take-profit.
        kind = STOP_MARKET if (side == "SELL") == (direction == 2) else TAKE_PROFIT_MARKET
        leg = engine.place_leg(ctx.api_key, BYBIT, symbol, side, kind, client_id=link,
                               working_type=by, trigger_price=trigger, close_position=False,
                               quantity=qty, label="Stop")
        return {"orderId": order_uuid(leg.leg_id), "orderLinkId": link}

    def _find(self, ctx: Ctx, symbol: str | None = None) -> Order | None:
        """The account's order named by ``orderId`` (wins) or ``orderLinkId``."""
        text, link = ctx.params.get("orderId"), ctx.params.get("orderLinkId")
        account = ctx.account
        if text is not None:
            order_id = parse_order_uuid(text)
        elif link is not None:
            order_id = account.client_ids.get(link)
        else:
            raise params_error("orderId or orderLinkId is required")
        order = self.engine.orders.get(order_id) if order_id is not None else None
        if order is None or order.api_key != account.api_key or \
                (symbol is not None and order.symbol != symbol):
            return None
        return order

    def _find_leg(self, ctx: Ctx, symbol: str | None = None) -> Leg | None:
        """The account's Bybit leg named by ``orderId`` (or a conditional order's
        ``orderLinkId``) when it has no order of its own (a fired leg is its market
        order)."""
        text, link = ctx.params.get("orderId"), ctx.params.get("orderLinkId")
        leg_id = parse_order_uuid(text) if text is not None else None
        if text is None and link:
            leg_id = next((l.leg_id for l in reversed(list(ctx.account.legs.values()))
                           if l.client_id == link), None)
        leg = ctx.account.legs.get(leg_id) if leg_id is not None else None
        if leg is None or leg.venue != BYBIT or leg_id in self.engine.orders or \
                (symbol is not None and leg.symbol != symbol):
            return None
        return leg

    async def cancel(self, ctx: Ctx) -> dict:
        """Cancel one open order; 110001 when unknown or already final."""
        category(ctx.params)
        symbol = ctx.params.require("symbol")
        self.engine.spec(symbol)
        leg = self._find_leg(ctx, symbol)
        if leg is not None:
            if not leg.is_open:
                raise BybitError(110001, "order not exists or too late to cancel")
            self.engine.cancel_leg(leg, CANCELED)
            return {"orderId": order_uuid(leg.leg_id), "orderLinkId": ""}
        order = self._find(ctx, symbol)
        if order is None or not order.is_open:
            raise BybitError(110001, "order not exists or too late to cancel")
        self.engine.cancel_order(ctx.api_key, symbol, order.order_id)
        return {"orderId": order_uuid(order.order_id), "orderLinkId": link_id(order)}

    async def cancel_all(self, ctx: Ctx) -> dict:
        """Cancel the open orders of ``symbol`` (or every symbol for ``settleCoin``)."""
        category(ctx.params)
        symbol, settle = ctx.params.get("symbol"), ctx.params.get("settleCoin")
        if symbol is not None:
            symbols = [symbol]
        elif settle is not None:
            symbols = list(self.engine.symbols) if settle == MARGIN_ASSET else []
        else:
            raise params_error("symbol or settleCoin is required")
        kinds = ctx.params.get("orderFilter")
        done = []
        for sym in symbols:
            if kinds in (None, "Order"):
                done += [{"orderId": order_uuid(o.order_id), "orderLinkId": link_id(o)}
                         for o in self.engine.cancel_all(ctx.api_key, sym)]
            if kinds in (None, "StopOrder"):      # conditional orders, not position TP/SL
                for leg in self.engine.open_legs(ctx.api_key, sym):
                    if leg.venue == BYBIT and leg.label:
                        self.engine.cancel_leg(leg, CANCELED)
                        done.append({"orderId": order_uuid(leg.leg_id),
                                     "orderLinkId": leg.client_id})
        return {"list": done, "success": "1"}

    # ---- queries -------------------------------------------------------------------
    def _matches(self, order: Order, symbol: str | None, base: str | None,
                 settle: str | None) -> bool:
        return (symbol is None or order.symbol == symbol) and \
            (base is None or self.engine.symbols[order.symbol].base == base) and \
            (settle is None or settle == MARGIN_ASSET)

    def _listing(self, ctx: Ctx, orders: list[Order | Leg], shape: str) -> dict:
        key = lambda o: o.leg_id if isinstance(o, Leg) else o.order_id  # noqa: E731
        orders.sort(key=key, reverse=True)     # newest first
        chunk, cursor = page(orders, ctx.params, 20, 50)
        return {"category": "linear", "nextPageCursor": cursor,
                "list": [leg_row(self.engine, o, shape) if isinstance(o, Leg)
                         else order_row(self.engine, self.ledger, o, shape) for o in chunk]}

    def _legs(self, ctx: Ctx, open_: bool, symbol: str | None, base: str | None,
              settle: str | None) -> list[Leg]:
        """The account's Bybit legs without an order of their own: waiting ones
        (``open_``) or final ones."""
        return [l for l in ctx.account.legs.values()
                if l.venue == BYBIT and l.is_open == open_ and l.leg_id not in self.engine.orders
                and (symbol is None or l.symbol == symbol)
                and (base is None or self.engine.symbols[l.symbol].base == base)
                and (settle is None or settle == MARGIN_ASSET)]

    async def realtime(self, ctx: Ctx) -> dict:
        """Open orders, or one order by id whatever its status (module docstring)."""
        p = ctx.params
        category(p)
        symbol, base, settle = p.get("symbol"), p.get("baseCoin"), p.get("settleCoin")
        if p.get("orderId") is not None or p.get("orderLinkId") is not None:
            leg = self._find_leg(ctx)
            if leg is not None:
                return self._listing(ctx, [leg], "rest")
            order = self._find(ctx)
            return self._listing(ctx, [order] if order is not None else [], "rest")
        if symbol is None and base is None and settle is None:
            raise params_error("symbol, baseCoin or settleCoin is required")
        if symbol is not None:
            self.engine.spec(symbol)
        kinds = p.get("orderFilter")
        open_only = p.integer("openOnly", 0) == 0
        orders: list[Order | Leg] = []
        if kinds in (None, "Order"):
            if open_only:
                orders += [o for o in ctx.account.open_orders.values()
                           if self._matches(o, symbol, base, settle)]
            else:
                closed = [self.engine.orders[i] for i in ctx.account.order_ids
                          if not self.engine.orders[i].is_open]
                orders += [o for o in closed[-CLOSED_KEPT:]
                           if self._matches(o, symbol, base, settle)]
        if kinds in (None, "StopOrder", "tpslOrder"):
            orders += self._legs(ctx, open_only, symbol, base, settle)
        return self._listing(ctx, orders, "rest")

    def _window(self, ctx: Ctx) -> tuple[int, int]:
        """``(startTime, endTime)``: both or neither (the last 7 days; no upper bound, so a
        per-key clock_skew fault cannot hide fresh orders), at most 7 days apart."""
        start, end = ctx.params.integer("startTime"), ctx.params.integer("endTime")
        if start is None and end is None:
            return ctx.now - WEEK_MS, ctx.now + WEEK_MS
        if start is None or end is None:
            start = end - WEEK_MS if start is None else start
            end = start + WEEK_MS if end is None else end
        if end < start or end - start > WEEK_MS:
            raise params_error("startTime and endTime must be within 7 days")
        return start, end

    async def history(self, ctx: Ctx) -> dict:
        """Orders of every status in the time window, newest first."""
        p = ctx.params
        category(p)
        if p.get("orderId") is not None or p.get("orderLinkId") is not None:
            leg = self._find_leg(ctx)
            if leg is not None:
                return self._listing(ctx, [leg], "history")
            order = self._find(ctx)
            return self._listing(ctx, [order] if order is not None else [], "history")
        symbol, base, settle = p.get("symbol"), p.get("baseCoin"), p.get("settleCoin")
        status = p.get("orderStatus")
        start, end = self._window(ctx)
        orders: list[Order | Leg] = [
            o for o in (self.engine.orders[i] for i in ctx.account.order_ids)
            if start <= o.time <= end and self._matches(o, symbol, base, settle)
            and (status is None or order_status(o, self.ledger.order(o)) == status)]
        orders += [l for l in self._legs(ctx, False, symbol, base, settle)
                   if start <= l.time <= end and status in (None, leg_status(l))]
        return self._listing(ctx, orders, "history")

    async def executions(self, ctx: Ctx) -> dict:
        """Fills (``execType`` Trade) by symbol/orderId/orderLinkId/time, newest first."""
        p = ctx.params
        category(p)
        symbol, base = p.get("symbol"), p.get("baseCoin")
        exec_type = p.get("execType")
        order_id: int | None = None
        if p.get("orderId") is not None or p.get("orderLinkId") is not None:
            order = self._find(ctx)
            if order is None:
                return {"category": "linear", "nextPageCursor": "", "list": []}
            order_id = order.order_id
        start, end = self._window(ctx)
        rows = [(f.time, f.trade_id, f) for f in ctx.account.fills
                if start <= f.time <= end
                and exec_type in (None, EXEC_TYPE.get(f.source, "Trade"))
                and (order_id is None or f.order_id == order_id)
                and (symbol is None or f.symbol == symbol)
                and (base is None or self.engine.symbols[f.symbol].base == base)]
        if order_id is None and exec_type in (None, "Funding"):
            rows += [(r.time, r.tran_id, r) for r in ctx.account.income
                     if r.kind == "FUNDING_FEE" and start <= r.time <= end
                     and (symbol is None or r.symbol == symbol)
                     and (base is None or self.engine.symbols[r.symbol].base == base)]
        rows.sort(key=lambda t: (t[0], t[1]), reverse=True)      # newest first
        chunk, cursor = page([r for _, _, r in rows], p, 50, 100)
        return {"category": "linear", "nextPageCursor": cursor,
                "list": [funding_row(self.engine, r) if isinstance(r, IncomeRow)
                         else execution_row(self.engine, self.ledger, r) for r in chunk]}
