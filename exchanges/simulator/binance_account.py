"""Binance USD-M account JSON: balance, account and positionRisk (v2 and v3 shapes).

Cross margin, one-way mode: ``positionSide`` is always ``BOTH``, isolated fields are
0. Money is 8-decimal strings; ``positionAmt`` is signed (negative = short).
Fixtures: ``rest_fapi_v{2,3}_{balance,account,positionRisk}.json``.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from exchanges.simulator.binance_format import fmt, money, open_notional, plain
from exchanges.simulator.engine import Engine
from exchanges.simulator.models import MARGIN_ASSET, ZERO, Account

MAX_NOTIONAL = "1000000"


def _totals(engine: Engine, account: Account) -> dict[str, Decimal]:
    upnl = engine.unrealized(account)
    pos_im, ord_im = engine.position_margin(account), engine.order_margin(account)
    available = account.wallet + upnl - pos_im - ord_im
    return {"wallet": account.wallet, "upnl": upnl, "pos_im": pos_im, "ord_im": ord_im,
            "maint": engine.maint_margin(account), "available": available,
            "max_withdraw": max(ZERO, min(available, account.wallet))}


def balance_rows(engine: Engine, account: Account) -> list[dict[str, Any]]:
    """``GET /fapi/v2|v3/balance``: one row per asset (USDT is the margin asset)."""
    t = _totals(engine, account)
    rows = []
    for asset, amount in sorted(account.balances.items()):
        usdt = asset == MARGIN_ASSET
        rows.append({
            "accountAlias": "SimA", "asset": asset, "balance": money(amount),
            "crossWalletBalance": money(amount), "crossUnPnl": money(t["upnl"] if usdt else ZERO),
            "availableBalance": money(t["available"] if usdt else amount),
            "maxWithdrawAmount": money(t["max_withdraw"] if usdt else amount),
            "marginAvailable": usdt, "updateTime": account.update_time,
        })
    return rows


def _asset_row(t: dict[str, Decimal], account: Account, asset: str, amount: Decimal,
               v2: bool) -> dict[str, Any]:
    usdt = asset == MARGIN_ASSET
    upnl = t["upnl"] if usdt else ZERO
    row: dict[str, Any] = {
        "asset": asset, "walletBalance": money(amount), "unrealizedProfit": money(upnl),
        "marginBalance": money(amount + upnl), "maintMargin": money(t["maint"] if usdt else ZERO),
        "initialMargin": money(t["pos_im"] + t["ord_im"] if usdt else ZERO),
        "positionInitialMargin": money(t["pos_im"] if usdt else ZERO),
        "openOrderInitialMargin": money(t["ord_im"] if usdt else ZERO),
        "crossWalletBalance": money(amount), "crossUnPnl": money(upnl),
        "availableBalance": money(t["available"] if usdt else amount),
        "maxWithdrawAmount": money(t["max_withdraw"] if usdt else amount),
    }
    if v2:
        row["marginAvailable"] = usdt
    row["updateTime"] = account.update_time
    return row


def account_json(engine: Engine, account: Account, version: int) -> dict[str, Any]:
    """``GET /fapi/v2/account`` (all symbols in ``positions``) or ``/fapi/v3/account``
    (only symbols with a position or open orders, no fee/permission flags)."""
    t = _totals(engine, account)
    out: dict[str, Any] = {}
    if version == 2:
        out.update({"feeTier": 0, "feeBurn": False, "canTrade": True, "canDeposit": True,
                    "canWithdraw": True, "updateTime": 0, "multiAssetsMargin": False,
                    "tradeGroupId": -1})
    out.update({
        "totalInitialMargin": money(t["pos_im"] + t["ord_im"]),
        "totalMaintMargin": money(t["maint"]), "totalWalletBalance": money(t["wallet"]),
        "totalUnrealizedProfit": money(t["upnl"]),
        "totalMarginBalance": money(t["wallet"] + t["upnl"]),
        "totalPositionInitialMargin": money(t["pos_im"]),
        "totalOpenOrderInitialMargin": money(t["ord_im"]),
        "totalCrossWalletBalance": money(t["wallet"]), "totalCrossUnPnl": money(t["upnl"]),
        "availableBalance": money(t["available"]), "maxWithdrawAmount": money(t["max_withdraw"]),
    })
    out["assets"] = [_asset_row(t, account, asset, amount, version == 2)
                     for asset, amount in sorted(account.balances.items())]
    open_symbols = {o.symbol for o in account.open_orders.values()}
    positions = []
    for symbol, spec in engine.symbols.items():
        pos = account.positions.get(symbol)
        amount = pos.amount if pos else ZERO
        if version == 3 and not amount and symbol not in open_symbols:
            continue
        pos_im = engine.position_margin(account, symbol)
        ord_im = engine.order_margin(account, symbol)
        upnl = engine.unrealized(account, symbol)
        row: dict[str, Any] = {"symbol": symbol}
        if version == 2:
            bids, asks = open_notional(account, symbol)
            row.update({
                "initialMargin": money(pos_im + ord_im),
                "maintMargin": money(engine.maint_margin(account, symbol)),
                "unrealizedProfit": money(upnl), "positionInitialMargin": money(pos_im),
                "openOrderInitialMargin": money(ord_im),
                "leverage": str(account.leverage_of(symbol)), "isolated": False,
                "entryPrice": plain(pos.entry_price if pos else ZERO),
                "breakEvenPrice": plain(_break_even(engine, amount, pos.entry_price if pos else ZERO)),
                "maxNotional": MAX_NOTIONAL, "bidNotional": plain(bids),
                "askNotional": plain(asks), "positionSide": "BOTH",
                "positionAmt": fmt(amount, spec.qty_precision),
                "updateTime": pos.update_time if pos else 0})
        else:
            row.update({
                "positionSide": "BOTH", "positionAmt": fmt(amount, spec.qty_precision),
                "unrealizedProfit": money(upnl), "isolatedMargin": "0",
                "notional": money(amount * engine.prices[symbol]), "isolatedWallet": "0",
                "initialMargin": money(pos_im + ord_im),
                "maintMargin": money(engine.maint_margin(account, symbol)),
                "updateTime": pos.update_time if pos else 0})
        positions.append(row)
    out["positions"] = positions
    return out


def _break_even(engine: Engine, amount: Decimal, entry: Decimal) -> Decimal:
    if not amount:
        return ZERO
    return entry * (1 + engine.taker_fee) if amount > 0 else entry * (1 - engine.taker_fee)


def position_risk(engine: Engine, account: Account, version: int,
                  symbol: str | None = None) -> list[dict[str, Any]]:
    """``GET /fapi/v2/positionRisk`` (every symbol, with ``leverage``/``marginType``) or
    ``/fapi/v3/positionRisk`` (only non-zero positions)."""
    rows = []
    for sym, spec in engine.symbols.items():
        if symbol is not None and sym != symbol:
            continue
        pos = account.positions.get(sym)
        amount = pos.amount if pos else ZERO
        if version == 3 and not amount:
            continue
        entry = pos.entry_price if pos else ZERO
        mark = engine.prices[sym]
        common: dict[str, Any] = {
            "symbol": sym, "positionSide": "BOTH",
            "positionAmt": fmt(amount, spec.qty_precision), "entryPrice": plain(entry),
            "breakEvenPrice": plain(_break_even(engine, amount, entry)),
            "markPrice": money(mark), "unRealizedProfit": money(engine.unrealized(account, sym)),
            "liquidationPrice": plain(engine.liquidation_price(account, sym)),
            "isolatedMargin": "0", "notional": money(amount * mark), "isolatedWallet": "0",
        }
        if version == 3:
            pos_im = engine.position_margin(account, sym)
            ord_im = engine.order_margin(account, sym)
            bids, asks = open_notional(account, sym)
            common.update({
                "marginAsset": MARGIN_ASSET, "initialMargin": money(pos_im + ord_im),
                "maintMargin": money(engine.maint_margin(account, sym)),
                "positionInitialMargin": money(pos_im), "openOrderInitialMargin": money(ord_im),
                "adl": 0, "bidNotional": plain(bids), "askNotional": plain(asks)})
        else:
            common.update({
                "leverage": str(account.leverage_of(sym)), "maxNotionalValue": MAX_NOTIONAL,
                "marginType": "cross", "isAutoAddMargin": "false", "isolated": False,
                "adlQuantile": 0})
        common["updateTime"] = pos.update_time if pos else 0
        rows.append(common)
    return rows
