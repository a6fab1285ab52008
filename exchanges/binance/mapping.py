"""Pure functions: raw Binance USD-M JSON (already ``json.loads``-ed) -> ``exchanges.types``.

No I/O, no logging of payloads. Decimals are built from Binance's decimal strings
(``Decimal(str(v))``, never via float); ids become ``str``; times become ``int`` ms
UTC (``int(v)`` also accepts the stringified ints of ccxt recordings and the
string ``E`` of the current ``listenKeyExpired`` example).

Malformed payloads raise ``ExchangeUnavailable`` ("unparseable reply").

Sources (developers.binance.com/docs/derivatives/usds-margined-futures/...):
``trade/rest-api/New-Order`` / ``Query-Order`` (order objects),
``account/rest-api/Account-Information-V2``, ``trade/rest-api/Position-Information-V2``
and ``-V3``, ``trade/rest-api/Account-Trade-List``,
``market-data/rest-api/Exchange-Information``, ``user-data-streams/Event-Order-Update``,
``Event-Balance-and-Position-Update``, ``Event-User-Data-Stream-Expired``.
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from exchanges.binance.spec import BINANCE
from exchanges.wire import ZERO, dec, lookup, ms, parser
from exchanges.types import (
    FILL_REASON_ADL, FILL_REASON_LIQUIDATION, AccountEvent, AssetBalance, Balance, Fill,
    FundingFee, MarginCall, Order, OrderEvent, OrderStatus, Position, PositionUpdate,
    ProtectionKind, ProtectionLeg, ProtectionLegUpdate, ProtectionStatus, StreamEvent,
    StreamExpired, SymbolRules, Ticker, WalletUpdate, WorkingType,
)

EXCHANGE = BINANCE.name

# Binance order status ("status" in REST, "X" in ORDER_TRADE_UPDATE) -> OrderStatus.
ORDER_STATUS: dict[str, OrderStatus] = {
    "NEW": OrderStatus.NEW,
    "PARTIALLY_FILLED": OrderStatus.PARTIALLY_FILLED,
    "FILLED": OrderStatus.FILLED,
    "CANCELED": OrderStatus.CANCELED,
    "REJECTED": OrderStatus.REJECTED,
    "EXPIRED": OrderStatus.EXPIRED,
    "EXPIRED_IN_MATCH": OrderStatus.EXPIRED,   # self-trade prevention expired it
}

# Binance order side -> our side (same words; the table rejects anything else).
ORDER_SIDE: dict[str, str] = {"BUY": "BUY", "SELL": "SELL"}

# ACCOUNT_UPDATE / positionRisk margin type -> ours.
MARGIN_TYPE: dict[str, str] = {"cross": "cross", "crossed": "cross", "isolated": "isolated"}

_parser = parser(EXCHANGE)


def as_bool(value: Any) -> bool:
    """A JSON bool, or Binance's occasional ``"true"``/``"false"`` string."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"not a boolean: {value!r}")
        return value.lower() == "true"
    return bool(value)


def order_status(raw: str) -> OrderStatus:
    """Map a Binance order status through :data:`ORDER_STATUS`; unknown -> ValueError."""
    return lookup(ORDER_STATUS, raw, "order status")


def order_side(raw: str) -> str:
    """``BUY``/``SELL`` through :data:`ORDER_SIDE`; anything else -> ValueError."""
    return lookup(ORDER_SIDE, raw, "order side")


def margin_type(raw: str) -> str:
    """``cross``/``isolated`` through :data:`MARGIN_TYPE` (case-insensitive)."""
    try:
        return MARGIN_TYPE[raw.lower()]
    except KeyError:
        raise ValueError(f"unknown margin type {raw!r}") from None


# ---- REST -------------------------------------------------------------------

@_parser
def parse_server_time(raw: Mapping[str, Any]) -> int:
    """``GET /fapi/v1/time`` ``{"serverTime": ms}`` -> ms UTC."""
    return ms(raw["serverTime"])


@_parser
def parse_order(raw: Mapping[str, Any]) -> Order:
    """An order object of POST/GET/DELETE ``/fapi/v1/order`` or ``openOrders``.

    ``avgPrice`` is absent in ACK replies and some doc examples -> 0.
    ``updated_at`` is ``updateTime`` (falls back to ``time``).
    """
    return Order(
        client_order_id=str(raw["clientOrderId"]),
        order_id=str(raw["orderId"]),
        symbol=raw["symbol"],
        side=order_side(raw["side"]),
        type=raw["type"],
        status=order_status(raw["status"]),
        price=dec(raw.get("price")),
        quantity=dec(raw["origQty"]),
        filled_quantity=dec(raw.get("executedQty")),
        avg_price=dec(raw.get("avgPrice")),
        time_in_force=raw.get("timeInForce", "GTC"),
        reduce_only=as_bool(raw.get("reduceOnly", False)),
        updated_at=ms(raw.get("updateTime") or raw.get("time")),
    )


@_parser
def parse_fill(raw: Mapping[str, Any]) -> Fill:
    """One row of ``GET /fapi/v1/userTrades`` (no client order id in that reply)."""
    return Fill(
        trade_id=str(raw["id"]),
        order_id=str(raw["orderId"]),
        client_order_id=None,
        symbol=raw["symbol"],
        side=order_side(raw["side"]),
        price=dec(raw["price"]),
        quantity=dec(raw["qty"]),
        fee=dec(raw.get("commission")),
        fee_asset=raw.get("commissionAsset", ""),
        realized_pnl=dec(raw.get("realizedPnl")),
        is_maker=as_bool(raw.get("maker", False)),
        time=ms(raw["time"]),
    )


@_parser
def parse_balance(raw: Mapping[str, Any]) -> Balance:
    """``GET /fapi/v2/account`` (or v3) -> Balance.

    Assets are kept when ``walletBalance`` or ``marginBalance`` is non-zero; an asset's
    available balance is its ``availableBalance``. ``updated_at`` is the newest of the
    top-level and per-asset ``updateTime``.
    """
    assets = []
    newest = ms(raw.get("updateTime"))
    for a in raw.get("assets", []):
        wallet, margin = dec(a.get("walletBalance")), dec(a.get("marginBalance"))
        if wallet == 0 and margin == 0:
            continue
        assets.append(AssetBalance(
            asset=a["asset"], wallet_balance=wallet,
            available_balance=dec(a.get("availableBalance")),
            unrealized_pnl=dec(a.get("unrealizedProfit")), margin_balance=margin,
        ))
        newest = max(newest, ms(a.get("updateTime")))
    return Balance(
        total_wallet_balance=dec(raw["totalWalletBalance"]),
        total_unrealized_pnl=dec(raw["totalUnrealizedProfit"]),
        total_margin_balance=dec(raw["totalMarginBalance"]),
        available_balance=dec(raw["availableBalance"]),
        assets=tuple(assets),
        updated_at=newest,
    )


@_parser
def parse_position(raw: Mapping[str, Any]) -> Position | None:
    """One row of ``GET /fapi/v2/positionRisk`` (or v3) -> Position, ``None`` when flat.

    v2 carries ``leverage`` and ``marginType``. v3 has neither: leverage is then
    ``notional / initialMargin`` (initial margin = notional / leverage) and the margin
    type is ``isolated`` when ``isolatedWallet`` is non-zero. One-way mode: ``positionAmt``
    is signed, > 0 is LONG.
    """
    amount = dec(raw["positionAmt"])
    if amount == 0:
        return None
    if raw.get("leverage") not in (None, ""):
        leverage = dec(raw["leverage"])
    else:
        initial = dec(raw.get("initialMargin"))
        leverage = (abs(dec(raw.get("notional"))) / initial).quantize(Decimal(1)) \
            if initial != 0 else ZERO
    if raw.get("marginType"):
        mtype = margin_type(raw["marginType"])
    else:
        mtype = "isolated" if dec(raw.get("isolatedWallet")) != 0 else "cross"
    return Position(
        symbol=raw["symbol"],
        side="LONG" if amount > 0 else "SHORT",
        size=abs(amount),
        entry_price=dec(raw.get("entryPrice")),
        mark_price=dec(raw.get("markPrice")),
        unrealized_pnl=dec(raw.get("unRealizedProfit")),
        leverage=leverage,
        liquidation_price=dec(raw.get("liquidationPrice")),
        margin_type=mtype,
        updated_at=ms(raw.get("updateTime")),
    )


def parse_positions(rows: list[Mapping[str, Any]]) -> list[Position]:
    """All non-zero positions of a positionRisk reply, in reply order."""
    return [p for p in (parse_position(r) for r in rows) if p is not None]


@_parser
def parse_symbol_rules(exchange_info: Mapping[str, Any]) -> dict[str, SymbolRules]:
    """``GET /fapi/v1/exchangeInfo`` -> {symbol: SymbolRules} from the PRICE_FILTER
    (``tickSize``), LOT_SIZE (``stepSize``/``minQty``/``maxQty``) and MIN_NOTIONAL
    (``notional``; 0 when the filter is absent) filters."""
    rules: dict[str, SymbolRules] = {}
    for s in exchange_info["symbols"]:
        filters = {f["filterType"]: f for f in s.get("filters", [])}
        price_f, lot_f = filters["PRICE_FILTER"], filters["LOT_SIZE"]
        rules[s["symbol"]] = SymbolRules(
            symbol=s["symbol"],
            tick_size=dec(price_f["tickSize"]),
            step_size=dec(lot_f["stepSize"]),
            min_qty=dec(lot_f["minQty"]),
            max_qty=dec(lot_f["maxQty"]),
            min_notional=dec(filters.get("MIN_NOTIONAL", {}).get("notional")),
        )
    return rules


@_parser
def parse_ticker(premium_index: Mapping[str, Any], last: Mapping[str, Any],
                 book: Mapping[str, Any]) -> Ticker:
    """``premiumIndex`` (mark), ``/fapi/v2/ticker/price`` (last) and
    ``/fapi/v1/ticker/bookTicker`` (bid/ask) of one symbol -> Ticker; ``ts`` is the
    newest of their ``time`` fields."""
    return Ticker(
        symbol=premium_index["symbol"],
        last_price=dec(last["price"]),
        mark_price=dec(premium_index["markPrice"]),
        bid=dec(book["bidPrice"]),
        ask=dec(book["askPrice"]),
        ts=max(ms(premium_index.get("time")), ms(last.get("time")), ms(book.get("time"))),
    )


# ---- user data stream -----------------------------------------------------------

def _stream_order(o: Mapping[str, Any], event_time: int) -> Order:
    return Order(
        client_order_id=str(o["c"]),
        order_id=str(o["i"]),
        symbol=o["s"],
        side=order_side(o["S"]),
        type=o["o"],
        status=order_status(o["X"]),
        price=dec(o.get("p")),
        quantity=dec(o["q"]),
        filled_quantity=dec(o.get("z")),
        avg_price=dec(o.get("ap")),
        time_in_force=o.get("f", "GTC"),
        reduce_only=as_bool(o.get("R", False)),
        updated_at=ms(o.get("T")) or event_time,
    )


def _stream_fill(o: Mapping[str, Any]) -> Fill:
    return Fill(
        trade_id=str(o["t"]),
        order_id=str(o["i"]),
        client_order_id=str(o["c"]),
        symbol=o["s"],
        side=order_side(o["S"]),
        price=dec(o["L"]),
        quantity=dec(o["l"]),
        fee=dec(o.get("n")),
        fee_asset=o.get("N") or "",
        realized_pnl=dec(o.get("rp")),
        is_maker=as_bool(o.get("m", False)),
        time=ms(o["T"]),
        reason=fill_reason(str(o["c"])),
    )


# ORDER_TRADE_UPDATE execution types that carry a fill: TRADE, and CALCULATED (a
# liquidation execution, "x" of the order Binance sends as ``autoclose-...``).
FILL_EXECUTIONS = frozenset({"TRADE", "CALCULATED"})


@_parser
def parse_order_update(msg: Mapping[str, Any]) -> OrderEvent:
    """``ORDER_TRADE_UPDATE`` -> OrderEvent; ``fill`` set when ``o.x`` is TRADE or
    CALCULATED (trade id ``t``, last qty/price ``l``/``L``, fee ``n``/``N``, realized
    ``rp``, maker ``m``, time ``T``; ``reason`` from the client id ``c``)."""
    o = msg["o"]
    event_time = ms(msg.get("E"))
    fill = _stream_fill(o) if o.get("x") in FILL_EXECUTIONS else None
    return OrderEvent(order=_stream_order(o, event_time), fill=fill, event_time=event_time)


@_parser
def parse_account_update(msg: Mapping[str, Any]) -> AccountEvent:
    """``ACCOUNT_UPDATE`` -> AccountEvent: wallets from ``a.B`` (``wb``, ``cw``),
    positions from ``a.P`` (``pa`` signed, ``ep``, ``up``, ``mt``); reason ``a.m``."""
    a = msg["a"]
    wallets = tuple(
        WalletUpdate(asset=b["a"], wallet_balance=dec(b["wb"]), cross_wallet_balance=dec(b.get("cw")))
        for b in a.get("B", [])
    )
    positions = tuple(
        PositionUpdate(symbol=p["s"], amount=dec(p["pa"]), entry_price=dec(p.get("ep")),
                       unrealized_pnl=dec(p.get("up")), margin_type=margin_type(p.get("mt", "cross")))
        for p in a.get("P", [])
    )
    return AccountEvent(reason=a.get("m", ""), wallets=wallets, positions=positions,
                        event_time=ms(msg.get("E")))


def parse_user_event(msg: Mapping[str, Any]) -> list[StreamEvent]:
    """One decoded user-data frame -> events (``[]`` for frames we ignore).

    Handles ORDER_TRADE_UPDATE, ACCOUNT_UPDATE (plus one FundingFee per changed asset
    when its reason is FUNDING_FEE), ALGO_UPDATE (ProtectionLegUpdate), MARGIN_CALL
    (one MarginCall per position) and listenKeyExpired (``E`` as int or string).
    ``{"e": "error", ...}``, TRADE_LITE, ACCOUNT_CONFIG_UPDATE and unknown ``e`` are
    ignored. A ``{"stream": ..., "data": {...}}`` wrapper (``/stream`` path)
    is unwrapped. Raises ExchangeUnavailable for a known event that does not parse.
    """
    if "e" not in msg and isinstance(msg.get("data"), Mapping):
        msg = msg["data"]
    kind = msg.get("e")
    if kind == "ORDER_TRADE_UPDATE":
        return [parse_order_update(msg)]
    if kind == "ACCOUNT_UPDATE":
        events: list[StreamEvent] = [parse_account_update(msg)]
        if isinstance(msg.get("a"), Mapping) and msg["a"].get("m") == "FUNDING_FEE":
            events += parse_funding_update(msg)
        return events
    if kind == "ALGO_UPDATE":
        return [parse_algo_update(msg)]
    if kind == "MARGIN_CALL":
        return list(parse_margin_call(msg))
    if kind == "listenKeyExpired":
        return [_parse_expired(msg)]
    return []


@_parser
def _parse_expired(msg: Mapping[str, Any]) -> StreamExpired:
    return StreamExpired(event_time=ms(msg.get("E")))


# ---- protection legs (Algo Service), margin call, funding -------------------------
# Sources: trade/rest-api/New-Algo-Order, Query-Algo-Order, Current-All-Algo-Open-Orders;
# user-data-streams/Event-Algo-Order-Update, Event-Margin-Call,
# Event-Balance-and-Position-Update (reason FUNDING_FEE); account/rest-api/
# Get-Income-History.

# Algo ``type`` -> ProtectionKind (the limit variants STOP / TAKE_PROFIT map too).
ALGO_KIND: dict[str, ProtectionKind] = {
    "STOP_MARKET": ProtectionKind.STOP_LOSS, "STOP": ProtectionKind.STOP_LOSS,
    "TAKE_PROFIT_MARKET": ProtectionKind.TAKE_PROFIT, "TAKE_PROFIT": ProtectionKind.TAKE_PROFIT,
    "TRAILING_STOP_MARKET": ProtectionKind.TRAILING_STOP,
}
KIND_ALGO_TYPE: dict[ProtectionKind, str] = {
    ProtectionKind.STOP_LOSS: "STOP_MARKET", ProtectionKind.TAKE_PROFIT: "TAKE_PROFIT_MARKET",
    ProtectionKind.TRAILING_STOP: "TRAILING_STOP_MARKET",
}
# algoStatus / ALGO_UPDATE ``X`` -> ProtectionStatus. FINISHED is FILLED when its order
# executed something, else EXPIRED (it fired and its order ended empty).
ALGO_STATUS: dict[str, ProtectionStatus] = {
    "NEW": ProtectionStatus.NEW, "TRIGGERING": ProtectionStatus.TRIGGERED,
    "TRIGGERED": ProtectionStatus.TRIGGERED, "FINISHED": ProtectionStatus.FILLED,
    "CANCELED": ProtectionStatus.CANCELED, "EXPIRED": ProtectionStatus.EXPIRED,
    "REJECTED": ProtectionStatus.EXPIRED,
}
# Client order ids Binance gives the orders it makes itself (EXCHANGE_PROTOCOLS.md).
LIQUIDATION_PREFIX, ADL_CLIENT_ID = "autoclose-", "adl_autoclose"


def fill_reason(client_order_id: str | None) -> str | None:
    """``"liquidation"`` for ``autoclose-...``, ``"adl"`` for ``adl_autoclose``, else None."""
    if not client_order_id:
        return None
    if client_order_id == ADL_CLIENT_ID:
        return FILL_REASON_ADL
    if client_order_id.startswith(LIQUIDATION_PREFIX):
        return FILL_REASON_LIQUIDATION
    return None


def _algo_status(raw: str, executed: Decimal) -> ProtectionStatus:
    status = lookup(ALGO_STATUS, raw, "algo status")
    if raw == "FINISHED" and executed <= 0:
        return ProtectionStatus.EXPIRED
    return status


def _position_side(raw_position_side: str | None, order_side: str) -> str:
    """The position a leg protects: hedge mode says it; one-way (BOTH) -> the side the
    closing order reduces (SELL closes a LONG)."""
    if raw_position_side in ("LONG", "SHORT"):
        return raw_position_side
    return "LONG" if order_side == "SELL" else "SHORT"


def _opt(value: Any) -> Decimal | None:
    """A decimal, None for ``""``/None/zero (Binance writes unset prices as 0)."""
    if value is None or value == "":
        return None
    number = dec(value)
    return number if number != 0 else None


@_parser
def parse_algo_order(raw: Mapping[str, Any]) -> ProtectionLeg:
    """A New/Query/Open Algo Order object -> ProtectionLeg (``algoId``,
    ``clientAlgoId``, ``orderType``, ``side``, ``algoStatus``, ``triggerPrice``,
    ``callbackRate``, ``activatePrice``, ``workingType``, ``actualOrderId``,
    ``actualPrice``, ``updateTime``)."""
    side = order_side(raw["side"])
    actual = str(raw.get("actualOrderId") or "")
    avg = dec(raw.get("actualPrice"))
    status_raw = raw["algoStatus"]
    return ProtectionLeg(
        kind=lookup(ALGO_KIND, raw["orderType"], "algo order type"),
        symbol=raw["symbol"],
        position_side=_position_side(raw.get("positionSide"), side),
        status=(ProtectionStatus.FILLED if status_raw == "FINISHED" and avg > 0
                else _algo_status(status_raw, avg)),
        trigger_price=_opt(raw.get("triggerPrice")),
        callback_rate=_opt(raw.get("callbackRate")),
        activation_price=_opt(raw.get("activatePrice")),
        working_type=lookup(WORKING_TYPE, raw.get("workingType") or "CONTRACT_PRICE",
                            "working type"),
        client_order_id=str(raw["clientAlgoId"]),
        order_id=str(raw["algoId"]),
        updated_at=ms(raw.get("updateTime") or raw.get("createTime")),
        order_side=side,
        triggered_order_id=actual or None,
        avg_price=avg,
    )


WORKING_TYPE: dict[str, WorkingType] = {"MARK_PRICE": WorkingType.MARK_PRICE,
                                        "CONTRACT_PRICE": WorkingType.CONTRACT_PRICE}


@_parser
def parse_algo_update(msg: Mapping[str, Any]) -> ProtectionLegUpdate:
    """``ALGO_UPDATE`` -> ProtectionLegUpdate from ``o``: ``caid``, ``aid``, ``o``
    (type), ``s``, ``S``, ``ps``, ``X`` (algo status), ``tp`` (trigger), ``wt``,
    ``ai`` (the order it created), ``ap``/``aq`` (its average price / executed
    quantity once triggered), ``cr`` / ``AP`` (trailing callback / activation when
    present), ``tt``. ``updated_at`` is the event's ``E``."""
    o = msg["o"]
    side = order_side(o["S"])
    executed = dec(o.get("aq"))
    event_time = ms(msg.get("E"))
    leg = ProtectionLeg(
        kind=lookup(ALGO_KIND, o["o"], "algo order type"),
        symbol=o["s"],
        position_side=_position_side(o.get("ps"), side),
        status=_algo_status(o["X"], executed),
        trigger_price=_opt(o.get("tp")),
        callback_rate=_opt(o.get("cr")),
        activation_price=_opt(o.get("AP")),
        working_type=lookup(WORKING_TYPE, o.get("wt") or "CONTRACT_PRICE", "working type"),
        client_order_id=str(o["caid"]),
        order_id=str(o["aid"]),
        updated_at=event_time,
        order_side=side,
        triggered_order_id=str(o["ai"]) if o.get("ai") else None,
        avg_price=dec(o.get("ap")),
        filled_quantity=executed,
    )
    return ProtectionLegUpdate(leg=leg, event_time=event_time)


@_parser
def parse_margin_call(msg: Mapping[str, Any]) -> list[MarginCall]:
    """``MARGIN_CALL`` -> one MarginCall per ``p`` row (``s``, ``ps``, ``pa`` signed,
    ``mt``, ``mp`` mark, ``up``, ``mm``; ``cw`` of the event)."""
    cw = _opt_text(msg.get("cw"))
    event_time = ms(msg.get("E"))
    calls = []
    for p in msg.get("p") or []:
        amount = dec(p["pa"])
        side = p.get("ps") if p.get("ps") in ("LONG", "SHORT") else (
            "LONG" if amount >= 0 else "SHORT")
        calls.append(MarginCall(
            symbol=p["s"], position_side=side, position_amount=amount,
            margin_type=margin_type(p.get("mt", "cross")), mark_price=dec(p.get("mp")),
            unrealized_pnl=dec(p.get("up")), maintenance_margin=dec(p.get("mm")),
            cross_wallet_balance=cw, event_time=event_time))
    return calls


def _opt_text(value: Any) -> Decimal | None:
    return None if value is None or value == "" else dec(value)


@_parser
def parse_funding_update(msg: Mapping[str, Any]) -> list[FundingFee]:
    """``ACCOUNT_UPDATE`` with ``a.m == "FUNDING_FEE"`` -> one FundingFee per ``a.B`` row
    with a non-zero balance change ``bc`` (signed as the wallet sees it). The symbol is
    the single ``a.P`` row's (isolated); a cross position's event carries no ``P`` and
    the symbol is ``""``. ``id`` ``"FUNDING_FEE-<asset>-<T>"``, ``time_ms`` ``T``."""
    a = msg["a"]
    time_ms = ms(msg.get("T") or msg.get("E"))
    rows = a.get("P") or []
    symbol = rows[0]["s"] if len(rows) == 1 else ""
    return [FundingFee(symbol=symbol, amount=dec(b["bc"]), asset=b["a"], time_ms=time_ms,
                       id=f"FUNDING_FEE-{b['a']}-{time_ms}")
            for b in a.get("B", []) if dec(b.get("bc")) != 0]


@_parser
def parse_income_funding(rows: list[Mapping[str, Any]]) -> list[FundingFee]:
    """``GET /fapi/v1/income`` rows with ``incomeType == "FUNDING_FEE"`` -> FundingFee
    (``income`` signed, ``asset``, ``time``, ``tranId``), oldest first."""
    fees = [FundingFee(symbol=r.get("symbol") or "", amount=dec(r["income"]), asset=r["asset"],
                       time_ms=ms(r["time"]), id=str(r["tranId"]))
            for r in rows if r.get("incomeType") == "FUNDING_FEE"]
    return sorted(fees, key=lambda f: (f.time_ms, f.id))
