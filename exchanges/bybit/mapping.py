"""Pure functions: raw Bybit v5 JSON (already ``json.loads``-ed) -> ``exchanges.types``.

No I/O, no logging of payloads. Decimals are built from Bybit's decimal strings
(``Decimal(str(v))``, never via float; ``""`` means "none" and becomes 0); ids become
``str``; times become ``int`` ms UTC (Bybit sends most of them as numeric strings).

REST parsers take the whole pybit return value, i.e. the envelope
``{"retCode": 0, "retMsg": "OK", "result": {...}, "retExtInfo": {}, "time": ms}``;
row parsers (``parse_order``, ``parse_fill``, ``parse_position``) take one element of
``result.list``. Stream parsers take one decoded private-topic frame
``{"id", "topic", "creationTime": ms, "data": [...]}``.

Malformed payloads raise ``ExchangeUnavailable`` ("unparseable reply").

Sources (bybit-exchange/docs, ``docs/v5/``): ``enum.mdx`` (orderStatus, side,
timeInForce, execType, tradeMode), ``order/open-order.mdx``, ``order/order-list.mdx``,
``order/execution.mdx``, ``position/position.mdx``, ``account/wallet-balance.mdx``,
``market/instrument.mdx``, ``market/tickers.mdx``, ``market/time.mdx``,
``websocket/private/{order,execution,position,wallet}.mdx``.
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from exchanges.bybit.spec import BYBIT
from exchanges.errors import ExchangeUnavailable
from exchanges.wire import ZERO, dec, lookup, ms, parser
from exchanges.types import (
    FILL_REASON_ADL, FILL_REASON_LIQUIDATION, AccountEvent, AssetBalance, Balance, Fill,
    FillEvent, FundingFee, Order, OrderEvent, OrderStatus, Position, PositionUpdate,
    ProtectionKind, ProtectionLeg, ProtectionLegUpdate, ProtectionStatus, StreamEvent,
    SymbolRules, Ticker, WalletUpdate, WorkingType,
)

EXCHANGE = BYBIT.name

# Bybit orderStatus -> OrderStatus. Deactivated (a conditional/TP-SL order cancelled
# before it triggered) and PartiallyFilledCanceled (remainder cancelled; the filled
# part stays in cumExecQty) are final cancellations. Untriggered/Triggered are the
# open states of conditional orders.
ORDER_STATUS: dict[str, OrderStatus] = {
    "New": OrderStatus.NEW,
    "PartiallyFilled": OrderStatus.PARTIALLY_FILLED,
    "Untriggered": OrderStatus.NEW,
    "Triggered": OrderStatus.NEW,
    "Filled": OrderStatus.FILLED,
    "Cancelled": OrderStatus.CANCELED,
    "PartiallyFilledCanceled": OrderStatus.CANCELED,
    "Deactivated": OrderStatus.CANCELED,
    "Rejected": OrderStatus.REJECTED,
}

ORDER_SIDE: dict[str, str] = {"Buy": "BUY", "Sell": "SELL"}
POSITION_SIDE: dict[str, str] = {"Buy": "LONG", "Sell": "SHORT"}
ORDER_TYPE: dict[str, str] = {"Market": "MARKET", "Limit": "LIMIT"}
# PostOnly (and RPI, a post-only maker order) is Binance's GTX.
TIME_IN_FORCE: dict[str, str] = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK",
                                 "PostOnly": "GTX", "RPI": "GTX"}
# Position tradeMode: 0 cross, 1 isolated (in a unified account the margin mode is
# account-wide and tradeMode is always 0).
TRADE_MODE: dict[int, str] = {0: "cross", 1: "isolated"}
# execType values that are trades on the account (Funding, Settle, Delivery... are
# not): our orders' Trade, and the venue's liquidation (BustTrade) and
# auto-deleveraging (AdlTrade) fills, which carry ``Fill.reason``.
FILL_EXEC_TYPES = frozenset({"Trade", "BustTrade", "AdlTrade"})
FILL_REASON: dict[str, str] = {"BustTrade": FILL_REASON_LIQUIDATION, "AdlTrade": FILL_REASON_ADL}

# Position TP/SL/trailing legs: the conditional orders trading-stop creates
# (stopOrderType; the Partial variants are the tpslMode=Partial ones).
STOP_ORDER_KIND: dict[str, ProtectionKind] = {
    "StopLoss": ProtectionKind.STOP_LOSS, "PartialStopLoss": ProtectionKind.STOP_LOSS,
    "TakeProfit": ProtectionKind.TAKE_PROFIT, "PartialTakeProfit": ProtectionKind.TAKE_PROFIT,
    "TrailingStop": ProtectionKind.TRAILING_STOP,
}
# orderStatus of such an order -> ProtectionStatus. Untriggered: waiting; Triggered
# (and its market order New/PartiallyFilled): fired; Deactivated: canceled by the user
# or by the venue when the position closed ("The system will cancel these orders if the
# position is closed").
LEG_STATUS: dict[str, ProtectionStatus] = {
    "Untriggered": ProtectionStatus.NEW, "Triggered": ProtectionStatus.TRIGGERED,
    "New": ProtectionStatus.TRIGGERED, "PartiallyFilled": ProtectionStatus.TRIGGERED,
    "Filled": ProtectionStatus.FILLED, "Deactivated": ProtectionStatus.CANCELED,
    "Cancelled": ProtectionStatus.CANCELED, "PartiallyFilledCanceled": ProtectionStatus.FILLED,
    "Rejected": ProtectionStatus.EXPIRED,
}
# triggerBy -> WorkingType; IndexPrice (not offered by us) is read as the mark price,
# which Bybit derives from the index.
TRIGGER_BY: dict[str, WorkingType] = {"MarkPrice": WorkingType.MARK_PRICE,
                                      "LastPrice": WorkingType.CONTRACT_PRICE,
                                      "IndexPrice": WorkingType.MARK_PRICE}
TRIGGER_BY_OUT: dict[WorkingType, str] = {WorkingType.MARK_PRICE: "MarkPrice",
                                          WorkingType.CONTRACT_PRICE: "LastPrice"}

_parser = parser(EXCHANGE, also=(IndexError,))


def _opt_dec(value: Any) -> Decimal | None:
    """Like :func:`dec`, but ``None``/``""`` -> None (a field the venue left empty)."""
    return None if value is None or value == "" else dec(value)




def order_status(raw: str) -> OrderStatus:
    """Map a Bybit ``orderStatus`` through :data:`ORDER_STATUS`; unknown -> ValueError."""
    return lookup(ORDER_STATUS, raw, "order status")


def result_of(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``result`` object of a successful envelope (pybit already raised for a
    non-zero retCode). Raises ExchangeUnavailable when it is missing."""
    result = raw.get("result") if isinstance(raw, Mapping) else None
    if not isinstance(result, Mapping):
        raise ExchangeUnavailable(EXCHANGE, None, "reply without a result object")
    return result


def rows_of(raw: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``result.list`` of an envelope (``[]`` when absent)."""
    rows = result_of(raw).get("list") or []
    if not isinstance(rows, list):
        raise ExchangeUnavailable(EXCHANGE, None, "result.list is not a list")
    return rows


def settle_coin(symbol: str) -> str:
    """Settle coin of a linear contract from its name (``BTCUSDT`` -> USDT, ``ETHPERP``
    and ``*USDC`` -> USDC); ``""`` when unknown. Used when ``feeCurrency`` is empty."""
    if symbol.endswith("USDT"):
        return "USDT"
    if symbol.endswith("PERP") or symbol.endswith("USDC") or "USDC-" in symbol:
        return "USDC"
    return ""


# ---- REST -------------------------------------------------------------------

@_parser
def parse_server_time(raw: Mapping[str, Any]) -> int:
    """``GET /v5/market/time`` -> server time, ms UTC (``timeNano`` // 10**6, else
    ``timeSecond`` * 1000, else the envelope ``time``)."""
    result = raw.get("result") or {}
    if result.get("timeNano"):
        return int(result["timeNano"]) // 1_000_000
    if result.get("timeSecond"):
        return int(result["timeSecond"]) * 1000
    return ms(raw["time"])


@_parser
def parse_order(row: Mapping[str, Any]) -> Order:
    """One order of ``/v5/order/realtime``, ``/v5/order/history`` or the WS ``order``
    topic. ``price`` is 0 for Market orders (Bybit reports a protection price there);
    ``avgPrice`` ``""``/``"0"`` -> 0; ``updated_at`` is ``updatedTime`` (else
    ``createdTime``); an empty ``orderLinkId`` stays ``""``."""
    order_type = lookup(ORDER_TYPE, row["orderType"], "order type")
    return Order(
        client_order_id=str(row.get("orderLinkId") or ""),
        order_id=str(row["orderId"]),
        symbol=row["symbol"],
        side=lookup(ORDER_SIDE, row["side"], "order side"),
        type=order_type,
        status=order_status(row["orderStatus"]),
        price=ZERO if order_type == "MARKET" else dec(row.get("price")),
        quantity=dec(row["qty"]),
        filled_quantity=dec(row.get("cumExecQty")),
        avg_price=dec(row.get("avgPrice")),
        time_in_force=lookup(TIME_IN_FORCE, row.get("timeInForce") or "GTC", "timeInForce"),
        reduce_only=bool(row.get("reduceOnly", False)),
        updated_at=ms(row.get("updatedTime") or row.get("createdTime")),
    )


def parse_orders(raw: Mapping[str, Any]) -> list[Order]:
    """All orders of a ``/v5/order/realtime`` or ``/v5/order/history`` envelope."""
    return [parse_order(r) for r in rows_of(raw)]


@_parser
def parse_fill(row: Mapping[str, Any]) -> Fill:
    """One execution (REST ``/v5/execution/list`` row or WS ``execution`` element).

    ``reason`` liquidation for ``execType`` BustTrade, adl for AdlTrade; trade id
    ``execId``; fee ``execFee`` in ``feeCurrency`` (the settle coin when
    empty); realized ``execPnl`` when present (WS), else 0 (the REST list has none);
    maker ``isMaker``; time ``execTime``. An empty ``orderLinkId`` -> ``None``.
    """
    return Fill(
        trade_id=str(row["execId"]),
        order_id=str(row["orderId"]),
        client_order_id=str(row["orderLinkId"]) if row.get("orderLinkId") else None,
        symbol=row["symbol"],
        side=lookup(ORDER_SIDE, row["side"], "order side"),
        price=dec(row["execPrice"]),
        quantity=dec(row["execQty"]),
        fee=dec(row.get("execFee")),
        fee_asset=row.get("feeCurrency") or settle_coin(row["symbol"]),
        realized_pnl=dec(row.get("execPnl")),
        is_maker=bool(row.get("isMaker", False)),
        time=ms(row["execTime"]),
        reason=FILL_REASON.get(row.get("execType", "Trade")),
    )


def is_trade(row: Mapping[str, Any]) -> bool:
    """True for executions that are trades (``execType`` in :data:`FILL_EXEC_TYPES`)."""
    return row.get("execType", "Trade") in FILL_EXEC_TYPES


def parse_fills(raw: Mapping[str, Any]) -> list[Fill]:
    """Trades of a ``/v5/execution/list`` envelope (funding etc. skipped), reply order."""
    return [parse_fill(r) for r in rows_of(raw) if is_trade(r)]


@_parser
def parse_balance(raw: Mapping[str, Any]) -> Balance:
    """``GET /v5/account/wallet-balance?accountType=UNIFIED`` -> Balance.

    Totals (USD) from ``list[0]``: ``totalWalletBalance``, ``totalPerpUPL``,
    ``totalMarginBalance``, ``totalAvailableBalance`` (the doc's figure for available
    margin under cross margin). Assets from ``coin[]`` (Bybit already omits zero
    coins): ``walletBalance``, ``unrealisedPnl``, margin balance ``equity``, and
    available = ``equity - totalPositionIM - totalOrderIM - locked`` floored at 0 (the
    account formula "margin balance minus initial margin" at coin level;
    ``availableToWithdraw`` is deprecated for unified accounts and often ``""``).
    ``updated_at`` is the envelope ``time``.
    """
    rows = rows_of(raw)
    account = rows[0]
    assets = []
    for c in account.get("coin") or []:
        equity = dec(c.get("equity"))
        available = equity - dec(c.get("totalPositionIM")) - dec(c.get("totalOrderIM")) \
            - dec(c.get("locked"))
        assets.append(AssetBalance(
            asset=c["coin"], wallet_balance=dec(c.get("walletBalance")),
            available_balance=max(ZERO, available),
            unrealized_pnl=dec(c.get("unrealisedPnl")), margin_balance=equity,
        ))
    return Balance(
        total_wallet_balance=dec(account["totalWalletBalance"]),
        total_unrealized_pnl=dec(account.get("totalPerpUPL")),
        total_margin_balance=dec(account["totalMarginBalance"]),
        available_balance=dec(account["totalAvailableBalance"]),
        assets=tuple(assets),
        updated_at=ms(raw.get("time")),
    )


@_parser
def parse_position(row: Mapping[str, Any]) -> Position | None:
    """One row of ``/v5/position/list`` -> Position; ``None`` when flat (size 0 or
    side ``""``). ``size`` is unsigned, ``side`` Buy -> LONG, Sell -> SHORT; entry is
    ``avgPrice``; ``liqPrice`` ``""`` -> 0; margin type from ``tradeMode``."""
    size = dec(row["size"])
    if size == 0 or not row.get("side"):
        return None
    return Position(
        symbol=row["symbol"],
        side=lookup(POSITION_SIDE, row["side"], "position side"),
        size=size,
        entry_price=dec(row.get("avgPrice")),
        mark_price=dec(row.get("markPrice")),
        unrealized_pnl=dec(row.get("unrealisedPnl")),
        leverage=dec(row.get("leverage")),
        liquidation_price=dec(row.get("liqPrice")),
        margin_type=lookup(TRADE_MODE, int(row.get("tradeMode") or 0), "tradeMode"),
        updated_at=ms(row.get("updatedTime")),
    )


def parse_positions(raw: Mapping[str, Any]) -> list[Position]:
    """Open positions of a ``/v5/position/list`` envelope, in reply order."""
    return [p for p in (parse_position(r) for r in rows_of(raw)) if p is not None]


@_parser
def parse_instrument(row: Mapping[str, Any]) -> SymbolRules:
    """One ``/v5/market/instruments-info`` row -> SymbolRules from
    ``priceFilter.tickSize`` and ``lotSizeFilter.qtyStep/minOrderQty/maxOrderQty/
    minNotionalValue`` (0 when absent)."""
    price_f, lot_f = row["priceFilter"], row["lotSizeFilter"]
    return SymbolRules(
        symbol=row["symbol"],
        tick_size=dec(price_f["tickSize"]),
        step_size=dec(lot_f["qtyStep"]),
        min_qty=dec(lot_f["minOrderQty"]),
        max_qty=dec(lot_f["maxOrderQty"]),
        min_notional=dec(lot_f.get("minNotionalValue")),
    )


def parse_symbol_rules(raw: Mapping[str, Any]) -> dict[str, SymbolRules]:
    """``GET /v5/market/instruments-info?category=linear`` -> {symbol: SymbolRules}."""
    return {r.symbol: r for r in (parse_instrument(row) for row in rows_of(raw))}


@_parser
def parse_ticker(raw: Mapping[str, Any]) -> Ticker | None:
    """``GET /v5/market/tickers?category=linear&symbol=X`` -> Ticker of ``list[0]``
    (``lastPrice``, ``markPrice``, ``bid1Price``, ``ask1Price``; an empty book side
    or last price is None, never a guess); ``ts`` the envelope ``time``. ``None`` when
    the list is empty."""
    rows = rows_of(raw)
    if not rows:
        return None
    t = rows[0]
    return Ticker(
        symbol=t["symbol"],
        last_price=_opt_dec(t.get("lastPrice")),
        mark_price=dec(t["markPrice"]),
        bid=_opt_dec(t.get("bid1Price")),
        ask=_opt_dec(t.get("ask1Price")),
        ts=ms(raw.get("time")),
    )


# ---- private WebSocket ------------------------------------------------------------

@_parser
def _position_update(p: Mapping[str, Any]) -> PositionUpdate:
    size = dec(p.get("size"))
    side = p.get("side") or ""
    if size != 0 and side not in POSITION_SIDE:
        raise ValueError(f"unknown position side {side!r}")
    return PositionUpdate(
        symbol=p["symbol"],
        amount=-size if side == "Sell" else size,
        entry_price=dec(p.get("entryPrice")),
        unrealized_pnl=dec(p.get("unrealisedPnl")),
        margin_type=lookup(TRADE_MODE, int(p.get("tradeMode") or 0), "tradeMode"),
    )


@_parser
def _wallet_updates(w: Mapping[str, Any]) -> tuple[WalletUpdate, ...]:
    return tuple(WalletUpdate(asset=c["coin"], wallet_balance=dec(c.get("walletBalance")),
                              cross_wallet_balance=dec(c.get("walletBalance")))
                 for c in w.get("coin") or [])


def parse_private_event(msg: Mapping[str, Any]) -> list[StreamEvent]:
    """One decoded private-topic frame -> events (``[]`` for topics we ignore).

    - ``order`` -> one OrderEvent(order, fill=None) per element, except the waiting,
      fired and deactivated states of a TP/SL/trailing leg (``stopOrderType`` in
      :data:`STOP_ORDER_KIND`), which have no order of their own yet; every leg
      element also gives a ProtectionLegUpdate;
    - ``execution`` -> one FillEvent per element with ``execType`` Trade, BustTrade or
      AdlTrade (``fill.reason`` set for the last two), one FundingFee per Funding;
    - ``position`` -> one AccountEvent(reason "position") with a PositionUpdate per
      element (``amount`` signed: Sell is negative; ``entryPrice``, ``unrealisedPnl``);
    - ``wallet`` -> one AccountEvent(reason "wallet") with a WalletUpdate per coin
      (``walletBalance`` in both balance fields).
    ``event_time`` is ``creationTime`` (ms). Topic names may carry a category suffix
    (``order.linear``). Raises ExchangeUnavailable for a known topic that does not parse.
    """
    topic = str(msg.get("topic") or "").split(".", 1)[0]
    data = msg.get("data")
    if topic not in ("order", "execution", "position", "wallet"):
        return []
    if not isinstance(data, list):
        raise ExchangeUnavailable(EXCHANGE, None, f"{topic} frame without a data list")
    event_time = _event_time(msg)
    if topic == "order":
        events: list[StreamEvent] = []
        for o in data:
            leg = is_leg(o)
            if not leg or o.get("orderStatus") in LEG_ORDER_STATUSES:
                events.append(OrderEvent(order=parse_order(o), fill=None, event_time=event_time))
            if leg:
                events.append(ProtectionLegUpdate(leg=parse_leg(o), event_time=event_time))
        return events
    if topic == "execution":
        out: list[StreamEvent] = []
        for x in data:
            if is_trade(x):
                out.append(FillEvent(fill=parse_fill(x), event_time=event_time))
            elif x.get("execType") == "Funding":
                out.append(parse_funding(x))
        return out
    if topic == "position":
        positions = tuple(_position_update(p) for p in data)
        return [AccountEvent(reason="position", wallets=(), positions=positions,
                             event_time=event_time)]
    wallets = tuple(w for row in data for w in _wallet_updates(row))
    return [AccountEvent(reason="wallet", wallets=wallets, positions=(), event_time=event_time)]


@_parser
def _event_time(msg: Mapping[str, Any]) -> int:
    return ms(msg.get("creationTime"))


# ---- protection legs and funding ---------------------------------------------------
# Sources: position/trading-stop.mdx, order/open-order.mdx (orderFilter StopOrder),
# websocket/private/order.mdx (stopOrderType, triggerPrice, triggerBy), enum.mdx.

# orderStatus values in which a leg's element is its market order's state.
LEG_ORDER_STATUSES = frozenset({"New", "PartiallyFilled", "Filled", "Cancelled",
                                "PartiallyFilledCanceled"})


def bybit_leg_id(symbol: str, kind: ProtectionKind) -> str:
    """The stable client id of a Bybit leg: ``"<symbol>-<kind>"`` (Bybit keeps one leg
    of each kind per position and gives them no orderLinkId)."""
    return f"{symbol}-{ProtectionKind(kind).value}"


def parse_leg_id(client_order_id: str) -> tuple[str, ProtectionKind] | None:
    """``(symbol, kind)`` of a :func:`bybit_leg_id`, None when it is not one."""
    symbol, _, kind = client_order_id.partition("-")
    try:
        return (symbol, ProtectionKind(kind)) if symbol else None
    except ValueError:
        return None


def is_leg(row: Mapping[str, Any]) -> bool:
    """True for an order row that is a position TP/SL/trailing leg."""
    return row.get("stopOrderType") in STOP_ORDER_KIND


@_parser
def parse_leg(row: Mapping[str, Any], trailing_distance: Decimal | None = None) -> ProtectionLeg:
    """An order row with ``stopOrderType`` StopLoss/TakeProfit/TrailingStop ->
    ProtectionLeg: ``client_order_id`` :func:`bybit_leg_id`, ``order_id`` ``orderId``
    (the fired market order keeps it: ``triggered_order_id`` once not Untriggered),
    ``trigger_price`` ``triggerPrice`` (a trailing stop's current stop level; None when
    0), ``working_type`` from ``triggerBy``, ``position_side`` LONG for a Sell leg,
    ``avg_price``/``filled_quantity`` ``avgPrice``/``cumExecQty``. The trailing
    distance is not on the order: pass the position's ``trailingStop``."""
    kind = lookup(STOP_ORDER_KIND, row["stopOrderType"], "stopOrderType")
    side = lookup(ORDER_SIDE, row["side"], "order side")
    status = lookup(LEG_STATUS, row["orderStatus"], "leg status")
    trigger = _opt_dec(row.get("triggerPrice"))
    return ProtectionLeg(
        kind=kind,
        symbol=row["symbol"],
        position_side="LONG" if side == "SELL" else "SHORT",
        status=status,
        trigger_price=trigger if trigger else None,
        callback_rate=None,
        activation_price=None,
        working_type=lookup(TRIGGER_BY, row.get("triggerBy") or "LastPrice", "triggerBy"),
        client_order_id=bybit_leg_id(row["symbol"], kind),
        order_id=str(row["orderId"]),
        updated_at=ms(row.get("updatedTime") or row.get("createdTime")),
        order_side=side,
        trailing_distance=trailing_distance if kind is ProtectionKind.TRAILING_STOP else None,
        triggered_order_id=None if status is ProtectionStatus.NEW else str(row["orderId"]),
        avg_price=dec(row.get("avgPrice")),
        filled_quantity=dec(row.get("cumExecQty")),
    )


@_parser
def parse_funding(row: Mapping[str, Any]) -> FundingFee:
    """An execution with ``execType`` Funding -> FundingFee: ``execFee`` is what the
    position paid (negative when received), so ``amount = -execFee``; ``id`` ``execId``;
    ``time_ms`` ``execTime``; asset ``feeCurrency`` (the settle coin when empty)."""
    return FundingFee(symbol=row["symbol"], amount=-dec(row.get("execFee")),
                      asset=row.get("feeCurrency") or settle_coin(row["symbol"]),
                      time_ms=ms(row["execTime"]), id=str(row["execId"]))
