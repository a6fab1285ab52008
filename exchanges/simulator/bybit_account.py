"""Bybit v5 account, position and market JSON built from engine objects.

Shapes: ``rest_v5_account_wallet-balance.json`` / ``ws_private_wallet.json`` (unified
account, one ``coin`` row per balance), ``rest_v5_position_list.json`` /
``ws_private_position.json`` (one-way mode, ``positionIdx`` 0, cross margin
``tradeMode`` 0; REST ``avgPrice``, WS ``entryPrice``), and
``rest_v5_market_instruments-info_linear.json``. Tickers follow the v5 doc field list
(``market/tickers.mdx``, ``websocket/public/ticker.mdx``).

Money: USDT is the only collateral and counts 1:1 as USD. Other coins are listed with
their USD value at the engine's ``<COIN>USDT`` price (0 when there is none); they add
to ``totalEquity`` but not to the margin balance (``marginCollateral: false``).
Simplifications: 24 h statistics are the current price and zero volume, funding rate
is a constant 0.0001, open interest 0.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from exchanges.simulator.bybit_format import SIDES, fmt, plain
from exchanges.simulator.bybit_ledger import BybitLedger
from exchanges.simulator.bybit_tpsl import position_tpsl
from exchanges.simulator.engine import Engine
from exchanges.simulator.models import MARGIN_ASSET, ZERO, Account, Position, SymbolSpec

FUNDING_RATE = "0.0001"
FUNDING_INTERVAL_MS = 8 * 3600 * 1000
RISK_LIMIT_VALUE = "2000000"


def next_funding_ms(now_ms: int) -> int:
    """The next 00/08/16 UTC funding time after ``now_ms``."""
    return (now_ms // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS


def _rate(part: Decimal, whole: Decimal) -> str:
    if whole <= 0:
        return "0"
    return plain((part / whole).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def wallet_row(engine: Engine, ledger: BybitLedger, account: Account) -> dict:
    """``/v5/account/wallet-balance`` ``result.list[0]`` and the ``wallet`` topic
    element (accountType UNIFIED)."""
    upnl = engine.unrealized(account)
    pos_im, ord_im = engine.position_margin(account), engine.order_margin(account)
    maint = engine.maint_margin(account)
    margin_balance = account.wallet + upnl
    initial = pos_im + ord_im
    coins, equity = [], margin_balance
    for coin, amount in sorted(account.balances.items()):
        usdt = coin == MARGIN_ASSET
        price = Decimal(1) if usdt else engine.prices.get(f"{coin}USDT", ZERO)
        coin_equity = amount + upnl if usdt else amount
        if not usdt:
            equity += amount * price
        realised = sum((p.cumulative for (k, _), p in ledger.pnl.items()
                        if k == account.api_key), ZERO) if usdt else ZERO
        coins.append({
            "coin": coin, "equity": plain(coin_equity), "usdValue": plain(coin_equity * price),
            "walletBalance": plain(amount), "locked": "0", "spotHedgingQty": "0",
            "borrowAmount": "0", "accruedInterest": "0",
            "totalOrderIM": plain(ord_im if usdt else ZERO),
            "totalPositionIM": plain(pos_im if usdt else ZERO),
            "totalPositionMM": plain(maint if usdt else ZERO),
            "unrealisedPnl": plain(upnl if usdt else ZERO), "cumRealisedPnl": plain(realised),
            "bonus": "0", "marginCollateral": usdt, "collateralSwitch": usdt,
            "spotBorrow": "0", "availableToWithdraw": "", "availableToBorrow": "",
        })
    rate_im, rate_mm = _rate(initial, margin_balance), _rate(maint, margin_balance)
    return {
        "accountType": "UNIFIED", "accountIMRate": rate_im, "accountMMRate": rate_mm,
        "totalEquity": plain(equity), "totalWalletBalance": plain(account.wallet),
        "totalMarginBalance": plain(margin_balance),
        "totalAvailableBalance": plain(max(ZERO, margin_balance - initial)),
        "totalPerpUPL": plain(upnl), "totalInitialMargin": plain(initial),
        "totalMaintenanceMargin": plain(maint), "accountIMRateByMp": rate_im,
        "accountMMRateByMp": rate_mm, "totalInitialMarginByMp": plain(initial),
        "totalMaintenanceMarginByMp": plain(maint), "accountLTV": "0", "coin": coins,
    }


def _break_even(engine: Engine, amount: Decimal, entry: Decimal) -> Decimal:
    if not amount:
        return ZERO
    fee = engine.taker_fee
    return entry * (1 + fee) / (1 - fee) if amount > 0 else entry * (1 - fee) / (1 + fee)


def position_row(engine: Engine, ledger: BybitLedger, account: Account, symbol: str,
                 ws: bool = False) -> dict:
    """One ``/v5/position/list`` row (``avgPrice``) or ``position`` topic element
    (``entryPrice`` plus ``category``). ``size`` is unsigned; ``side`` is Buy, Sell or
    ``""`` when flat."""
    spec = engine.symbols[symbol]
    pp, qp = spec.price_precision, spec.qty_precision
    pos = account.positions.get(symbol) or Position(symbol)     # a read never adds a row
    amount, entry, mark = pos.amount, pos.entry_price, engine.prices[symbol]
    pnl = ledger.position_pnl(account.api_key, symbol)
    leverage = account.leverage_of(symbol)
    size = abs(amount)
    liq = engine.liquidation_price(account, symbol) if amount else ZERO
    bust = ZERO
    if amount:
        bust = entry * (1 - Decimal(1) / leverage) if amount > 0 else \
            entry * (1 + Decimal(1) / leverage)
    pos_im = engine.position_margin(account, symbol)
    pos_mm = engine.maint_margin(account, symbol)
    row = {
        "positionIdx": 0, "riskId": 1, "riskLimitValue": RISK_LIMIT_VALUE,
        "symbol": symbol, "side": SIDES[("BUY" if amount > 0 else "SELL")] if amount else "",
        "size": fmt(size, qp),
        ("entryPrice" if ws else "avgPrice"): plain(entry),
        "positionValue": plain(size * entry), "tradeMode": 0, "positionStatus": "Normal",
        "autoAddMargin": 0, "adlRankIndicator": 2 if amount else 0,
        "leverage": str(leverage),
        "breakEvenPrice": plain(_break_even(engine, amount, entry)),
        "positionBalance": plain(pos_im), "markPrice": fmt(mark, pp),
        "liqPrice": fmt(liq, pp) if liq else "", "bustPrice": fmt(bust, pp) if bust else "",
        "positionMM": plain(pos_mm), "positionMMByMp": plain(pos_mm),
        "positionIM": plain(pos_im), "positionIMByMp": plain(pos_im), "tpslMode": "Full",
        **position_tpsl(engine, account.api_key, symbol, ws),
        "unrealisedPnl": plain(engine.unrealized(account, symbol)),
        "curRealisedPnl": plain(pnl.current), "cumRealisedPnl": plain(pnl.cumulative),
        "seq": pnl.seq, "isReduceOnly": False, "mmrSysUpdatedTime": "",
        "leverageSysUpdatedTime": "", "sessionAvgPrice": "",
        "createdTime": str(account.created), "updatedTime": str(pos.update_time or account.created),
    }
    if ws:
        row["category"] = "linear"
    else:
        row["mmrSysUpdateTime"] = ""       # sic: the REST doc example spells it so
        row["openTime"] = 0
    return row


def instrument_row(spec: SymbolSpec, symbol_id: int) -> dict:
    """One ``/v5/market/instruments-info?category=linear`` row from the engine spec
    (``symbol_id``: a small stable number per symbol)."""
    pp, qp = spec.price_precision, spec.qty_precision
    return {
        "symbol": spec.symbol, "symbolId": symbol_id, "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": spec.base, "quoteCoin": MARGIN_ASSET, "launchTime": "1585526400000",
        "deliveryTime": "0", "deliveryFeeRate": "", "priceScale": str(pp),
        "leverageFilter": {"minLeverage": "1", "maxLeverage": f"{spec.max_leverage}.00",
                           "leverageStep": "0.01"},
        "priceFilter": {"minPrice": fmt(spec.min_price, pp), "maxPrice": fmt(spec.max_price, pp),
                        "tickSize": f"{spec.tick:f}"},
        "lotSizeFilter": {"maxOrderQty": fmt(spec.max_qty, qp),
                          "minOrderQty": fmt(spec.min_qty, qp), "qtyStep": f"{spec.step:f}",
                          "postOnlyMaxOrderQty": fmt(spec.max_qty, qp),
                          "maxMktOrderQty": fmt(spec.max_market_qty, qp),
                          "minNotionalValue": plain(spec.min_notional)},
        "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin": MARGIN_ASSET,
        "copyTrading": "both", "upperFundingRate": "0.00375", "lowerFundingRate": "-0.00375",
        "isPreListing": False, "preListingInfo": None,
        "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
        "symbolType": "",
    }


def ticker_prices(engine: Engine, symbol: str) -> dict:
    """The price fields of a ticker: mark = index, the last price (equal unless
    ``/_sim/price`` set it apart), best bid/ask one tick around the mark."""
    spec = engine.symbols[symbol]
    pp = spec.price_precision
    price = fmt(engine.prices[symbol], pp)
    bid, ask = engine.bid_ask(symbol)
    return {"symbol": symbol, "lastPrice": fmt(engine.last_prices[symbol], pp),
            "markPrice": price, "indexPrice": price,
            "bid1Price": fmt(bid, pp), "ask1Price": fmt(ask, pp)}


def ticker_row(engine: Engine, symbol: str, now_ms: int, ws: bool = False) -> dict:
    """A ``/v5/market/tickers`` row, or (``ws``) the ``tickers.<SYMBOL>`` snapshot data."""
    spec = engine.symbols[symbol]
    prices = ticker_prices(engine, symbol)
    last, size = prices["lastPrice"], fmt(spec.min_qty * 1000, spec.qty_precision)
    row = dict(prices)
    row.update({
        "prevPrice24h": last, "price24hPcnt": "0", "highPrice24h": last, "lowPrice24h": last,
        "prevPrice1h": last, "openInterest": "0", "openInterestValue": "0",
        "turnover24h": "0", "volume24h": "0", "fundingRate": FUNDING_RATE,
        "nextFundingTime": str(next_funding_ms(now_ms)), "bid1Size": size, "ask1Size": size,
    })
    if ws:
        row["tickDirection"] = "ZeroPlusTick"
    else:
        row.update({"predictedDeliveryPrice": "", "basisRate": "", "deliveryFeeRate": "",
                    "deliveryTime": "0", "basis": ""})
    return row
