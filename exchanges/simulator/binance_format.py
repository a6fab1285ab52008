"""Binance USD-M JSON shapes built from engine objects (REST replies and WS events).

Shapes follow the fixtures in ``tests/fixtures/binance/``: decimals are strings,
ids and times are JSON numbers (ms). Prices use the symbol's price precision,
quantities its quantity precision, money 8 decimal places.
"""
from __future__ import annotations

from decimal import Decimal

from exchanges.simulator.engine import Engine
from exchanges.simulator.models import (
    MARGIN_ASSET, MARKET, ZERO, Account, Fill, Order, SymbolSpec,
)

FUNDING_RATE = "0.00010000"
INTEREST_RATE = "0.00010000"
FUNDING_INTERVAL_MS = 8 * 3600 * 1000


def fmt(value: Decimal, places: int) -> str:
    """``value`` as a plain decimal string with exactly ``places`` decimals."""
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


def money(value: Decimal) -> str:
    """A USDT amount with 8 decimals."""
    return fmt(value, 8)


def plain(value: Decimal) -> str:
    """A decimal without trailing zeros (at most 8 places), e.g. ``"0.385"``."""
    text = fmt(value, 8).rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def next_funding_ms(now_ms: int) -> int:
    """The next 00/08/16 UTC funding time after ``now_ms``."""
    return (now_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS


def order_json(spec: SymbolSpec, order: Order, shape: str = "get", ack: bool = False) -> dict:
    """An order object. ``shape``: ``post``/``delete`` (with ``cumQty``, no ``time``) or
    ``get`` (with ``time``). ``ack``: the state at acceptance (status NEW, nothing
    filled), what ``newOrderRespType=ACK`` returns before matching."""
    pp, qp = spec.price_precision, spec.qty_precision
    executed = ZERO if ack else order.executed_qty
    cum_quote = ZERO if ack else order.cum_quote
    avg = ZERO if ack else order.avg_price
    out = {
        "orderId": order.order_id, "symbol": order.symbol,
        "status": "NEW" if ack else order.status,
        "clientOrderId": order.client_order_id,
        "price": fmt(order.price, pp) if order.price is not None else fmt(ZERO, pp),
        "avgPrice": fmt(avg, pp + 3), "origQty": fmt(order.orig_qty, qp),
        "executedQty": fmt(executed, qp),
    }
    if shape != "get":
        out["cumQty"] = fmt(executed, qp)
    out.update({
        "cumQuote": fmt(cum_quote, pp + qp), "timeInForce": order.time_in_force,
        "type": order.type, "reduceOnly": order.reduce_only, "closePosition": False,
        "side": order.side, "positionSide": "BOTH", "stopPrice": fmt(ZERO, pp),
        "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": order.type,
        "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0,
    })
    if shape == "get":
        out["time"] = order.time
    out["updateTime"] = order.time if ack else order.update_time
    return out


def open_notional(account: Account, symbol: str) -> tuple[Decimal, Decimal]:
    """``(bid notional, ask notional)`` of the account's open LIMIT orders in ``symbol``."""
    bids = asks = ZERO
    for order in account.open_orders.values():
        if order.symbol == symbol and order.price is not None:
            if order.side == "BUY":
                bids += order.remaining * order.price
            else:
                asks += order.remaining * order.price
    return bids, asks


def order_trade_update(engine: Engine, order: Order, exec_type: str, event_ms: int,
                       fill: Fill | None = None) -> dict:
    """An ``ORDER_TRADE_UPDATE`` frame (field set of the real SUSHIUSDT capture;
    ``n``/``N`` only on TRADE)."""
    spec = engine.symbols[order.symbol]
    pp, qp = spec.price_precision, spec.qty_precision
    bids, asks = open_notional(engine.accounts[order.api_key], order.symbol)
    o = {
        "s": order.symbol, "c": order.client_order_id, "S": order.side, "o": order.type,
        "f": order.time_in_force, "q": fmt(order.orig_qty, qp),
        "p": "0" if order.type == MARKET else fmt(order.price or ZERO, pp),
        "ap": plain(order.avg_price), "sp": "0",
        "x": "CALCULATED" if exec_type == "TRADE" and order.source == "liquidation" else exec_type,
        "X": order.status,
        "i": order.order_id, "l": fmt(fill.qty if fill else ZERO, qp),
        "z": fmt(order.executed_qty, qp), "L": fmt(fill.price, pp) if fill else "0",
    }
    if fill is not None:
        o["n"], o["N"] = money(fill.commission), fill.commission_asset
    o.update({
        "T": event_ms, "t": fill.trade_id if fill else 0, "b": plain(bids), "a": plain(asks),
        "m": fill.maker if fill else False, "R": order.reduce_only, "wt": "CONTRACT_PRICE",
        "ot": order.orig_type or order.type, "ps": "BOTH", "cp": False,
        "rp": money(fill.realized_pnl) if fill else "0", "pP": False, "si": 0, "ss": 0,
        "V": "NONE", "pm": "NONE", "gtd": 0,
    })
    return {"e": "ORDER_TRADE_UPDATE", "T": event_ms, "E": event_ms, "o": o}


def account_update(engine: Engine, account: Account, reason: str, event_ms: int,
                   symbols: tuple[str, ...], balance_change: Decimal = ZERO) -> dict:
    """An ``ACCOUNT_UPDATE`` frame: the USDT ``B`` row and one ``P`` row per symbol
    (field set of the real BTCUSDT capture; cross margin so ``iw`` is 0)."""
    wallet = money(account.wallet)
    rows = []
    for symbol in symbols:
        pos = account.position(symbol)
        rows.append({
            "s": symbol, "pa": fmt(pos.amount, engine.symbols[symbol].qty_precision),
            "ep": plain(pos.entry_price), "cr": money(pos.cum_realized),
            "up": money(engine.unrealized(account, symbol)), "mt": "cross", "iw": "0",
            "ps": "BOTH", "ma": MARGIN_ASSET,
        })
    return {"e": "ACCOUNT_UPDATE", "T": event_ms, "E": event_ms, "a": {
        "B": [{"a": MARGIN_ASSET, "wb": wallet, "cw": wallet, "bc": money(balance_change)}],
        "P": rows, "m": reason}}


def book_ticker_event(symbol: str, bid: Decimal, ask: Decimal, event_ms: int, update_id: int) -> dict:
    """A ``bookTicker`` frame (best bid/ask; quantities are nominal)."""
    return {"e": "bookTicker", "u": update_id, "E": event_ms, "T": event_ms, "s": symbol,
            "b": f"{bid:f}", "B": "10", "a": f"{ask:f}", "A": "10"}


def mark_price_update(symbol: str, price: Decimal, event_ms: int) -> dict:
    """A ``markPriceUpdate`` frame (mark = index = estimated settle price)."""
    text = money(price)
    return {"e": "markPriceUpdate", "E": event_ms, "s": symbol, "p": text, "i": text,
            "P": text, "r": FUNDING_RATE, "T": next_funding_ms(event_ms)}


def premium_index(engine: Engine, symbol: str, now_ms: int) -> dict:
    """``GET /fapi/v1/premiumIndex`` row."""
    text = money(engine.prices[symbol])
    return {"symbol": symbol, "markPrice": text, "indexPrice": text,
            "estimatedSettlePrice": text, "lastFundingRate": FUNDING_RATE,
            "interestRate": INTEREST_RATE, "nextFundingTime": next_funding_ms(now_ms),
            "time": now_ms}


def book_ticker(engine: Engine, symbol: str, now_ms: int) -> dict:
    """``GET /fapi/v1/ticker/bookTicker`` row (bid/ask one tick around the price)."""
    spec = engine.symbols[symbol]
    bid, ask = engine.bid_ask(symbol)
    size = fmt(spec.min_qty * 1000, spec.qty_precision)
    return {"symbol": symbol, "bidPrice": fmt(bid, spec.price_precision), "bidQty": size,
            "askPrice": fmt(ask, spec.price_precision), "askQty": size, "time": now_ms,
            "lastUpdateId": now_ms}


def user_trade(engine: Engine, fill: Fill) -> dict:
    """``GET /fapi/v1/userTrades`` row."""
    spec = engine.symbols[fill.symbol]
    return {"buyer": fill.side == "BUY", "commission": money(fill.commission),
            "commissionAsset": fill.commission_asset, "id": fill.trade_id,
            "maker": fill.maker, "orderId": fill.order_id,
            "price": fmt(fill.price, spec.price_precision),
            "qty": fmt(fill.qty, spec.qty_precision),
            "quoteQty": fmt(fill.quote_qty, spec.price_precision + spec.qty_precision),
            "realizedPnl": money(fill.realized_pnl), "side": fill.side,
            "positionSide": "BOTH", "symbol": fill.symbol, "time": fill.time}


def exchange_info(engine: Engine, now_ms: int) -> dict:
    """``GET /fapi/v1/exchangeInfo`` (real shape, one entry per simulated symbol)."""
    symbols = []
    for spec in engine.symbols.values():
        pp, qp = spec.price_precision, spec.qty_precision
        symbols.append({
            "symbol": spec.symbol, "pair": spec.symbol, "contractType": "PERPETUAL",
            "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": "TRADING",
            "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
            "baseAsset": spec.base, "quoteAsset": MARGIN_ASSET, "marginAsset": MARGIN_ASSET,
            "pricePrecision": pp, "quantityPrecision": qp, "baseAssetPrecision": 8,
            "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
            "triggerProtect": "0.0500", "liquidationFee": "0.012500",
            "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": fmt(spec.min_price, pp),
                 "maxPrice": fmt(spec.max_price, pp), "tickSize": f"{spec.tick:f}"},
                {"filterType": "LOT_SIZE", "minQty": fmt(spec.min_qty, qp),
                 "maxQty": fmt(spec.max_qty, qp), "stepSize": f"{spec.step:f}"},
                {"filterType": "MARKET_LOT_SIZE", "minQty": fmt(spec.min_qty, qp),
                 "maxQty": fmt(spec.max_market_qty, qp), "stepSize": f"{spec.step:f}"},
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                {"filterType": "MIN_NOTIONAL", "notional": f"{spec.min_notional:f}"},
                {"filterType": "PERCENT_PRICE", "multiplierUp": f"{spec.percent_up:f}",
                 "multiplierDown": f"{spec.percent_down:f}", "multiplierDecimal": "4"},
            ],
            # the conditional types are placed through POST /fapi/v1/algoOrder
            "orderTypes": ["LIMIT", "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET",
                           "TRAILING_STOP_MARKET"],
            "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
        })
    return {
        "timezone": "UTC", "serverTime": now_ms, "futuresType": "U_MARGINED",
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
             "limit": 2400},
            {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
        ],
        "exchangeFilters": [],
        "assets": [{"asset": MARGIN_ASSET, "marginAvailable": True,
                    "autoAssetExchange": "-10000"}],
        "symbols": symbols,
    }


def ticker_24hr(engine: Engine, symbol: str, now_ms: int) -> dict:
    """A ``GET /fapi/v1/ticker/24hr`` row. The simulator keeps no 24 h statistics: like
    the Bybit layer's tickers, open/high/low are the last price and volumes 0."""
    pp = engine.symbols[symbol].price_precision
    last = fmt(engine.last_prices[symbol], pp)
    return {"symbol": symbol, "priceChange": fmt(ZERO, pp), "priceChangePercent": "0.000",
            "weightedAvgPrice": last, "lastPrice": last, "lastQty": "0", "openPrice": last,
            "highPrice": last, "lowPrice": last, "volume": "0", "quoteVolume": "0",
            "openTime": now_ms - 86_400_000, "closeTime": now_ms, "firstId": 0, "lastId": 0,
            "count": 0}


def leverage_brackets(engine: Engine, symbol: str) -> dict:
    """A ``GET /fapi/v1/leverageBracket`` element: the simulator's margin model has one
    bracket per symbol (its maximum leverage and maintenance margin rate)."""
    spec = engine.symbols[symbol]
    return {"symbol": symbol, "notionalCoef": 1.0, "brackets": [{
        "bracket": 1, "initialLeverage": spec.max_leverage, "notionalCap": 1_000_000_000,
        "notionalFloor": 0, "maintMarginRatio": float(spec.mmr), "cum": 0.0}]}
