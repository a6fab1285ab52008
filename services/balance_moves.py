"""How an account's balance moves between two REST snapshots: pure functions of a
``Balance`` (``exchanges.types``), used by ``services.account_state.AccountState``.

marginBalance = walletBalance + unrealizedProfit (Binance USD-M), per asset and in
the totals; ``available_balance`` is never recomputed here (only the exchange knows
it: a REST refresh brings it).
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import replace
from decimal import Decimal

from exchanges.types import AssetBalance, Balance, WalletUpdate


def move_unrealized(b: Balance, margin_asset: str | None, delta: Decimal) -> Balance:
    """``b`` with the unrealized PnL and margin balance of the totals and of
    ``margin_asset``'s row moved by ``delta`` (a decimal of the asset)."""
    assets = tuple(AssetBalance(a.asset, a.wallet_balance, a.available_balance,
                                a.unrealized_pnl + delta, a.margin_balance + delta)
                   if a.asset == margin_asset else a for a in b.assets)
    return Balance(b.total_wallet_balance, b.total_unrealized_pnl + delta,
                   b.total_margin_balance + delta, b.available_balance, assets, b.updated_at)


def apply_wallets(b: Balance, wallets: Iterable[WalletUpdate],
                  settle_assets: Collection[str]) -> Balance | None:
    """``b`` with the wallet balances of an account event (Binance ``a.B[]``, Bybit
    ``wallet``): each known asset's wallet and margin balance, and the totals by the
    change of the ``settle_assets`` among them (the venue's: the totals are in them).
    None when no known asset's wallet balance changed (an asset ``b`` has no row of
    is left for the REST refresh)."""
    rows = {a.asset: a for a in b.assets}
    delta = Decimal(0)
    for w in wallets:
        row = rows.get(w.asset)
        if row is None or row.wallet_balance == w.wallet_balance:
            continue
        if w.asset in settle_assets:
            delta += w.wallet_balance - row.wallet_balance
        rows[w.asset] = replace(row, wallet_balance=w.wallet_balance,
                                margin_balance=w.wallet_balance + row.unrealized_pnl)
    assets = tuple(rows[a.asset] for a in b.assets)
    if assets == b.assets:
        return None
    return replace(b, assets=assets, total_wallet_balance=b.total_wallet_balance + delta,
                   total_margin_balance=b.total_margin_balance + delta)
