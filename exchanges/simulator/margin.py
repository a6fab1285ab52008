"""Margin arithmetic of the simulated exchange (cross margin, one-way positions).

All amounts are ``Decimal`` USDT, rounded to 8 decimal places. Mixed into
``engine.Engine``, which provides ``self.prices`` (symbol -> mark price) and
``self.symbols`` (symbol -> SymbolSpec).
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from exchanges.simulator.models import ZERO, Account, SymbolSpec

Q8 = Decimal("0.00000001")


def q8(value: Decimal) -> Decimal:
    """``value`` rounded half-up to 8 decimal places."""
    return value.quantize(Q8, rounding=ROUND_HALF_UP)


class MarginMixin:
    """Account metrics computed at the current mark prices."""

    prices: dict[str, Decimal]
    symbols: dict[str, SymbolSpec]

    def unrealized(self, account: Account, symbol: str | None = None) -> Decimal:
        """Unrealised PnL at mark of one symbol or (``None``) all positions."""
        total = ZERO
        for sym, pos in account.positions.items():
            if pos.amount and (symbol is None or sym == symbol):
                total += (self.prices[sym] - pos.entry_price) * pos.amount
        return q8(total)

    def position_margin(self, account: Account, symbol: str | None = None) -> Decimal:
        """Initial margin of positions: ``|amount| * mark / leverage``."""
        total = ZERO
        for sym, pos in account.positions.items():
            if pos.amount and (symbol is None or sym == symbol):
                total += abs(pos.amount) * self.prices[sym] / account.leverage_of(sym)
        return q8(total)

    def maint_margin(self, account: Account, symbol: str | None = None) -> Decimal:
        """Maintenance margin: ``|amount| * mark * mmr``."""
        total = ZERO
        for sym, pos in account.positions.items():
            if pos.amount and (symbol is None or sym == symbol):
                total += abs(pos.amount) * self.prices[sym] * self.symbols[sym].mmr
        return q8(total)

    def order_margin(self, account: Account, symbol: str | None = None) -> Decimal:
        """Initial margin of open non-reduce-only orders: ``remaining * limit / leverage``."""
        total = ZERO
        for order in account.open_orders.values():
            if not order.reduce_only and order.price and (symbol is None or order.symbol == symbol):
                total += order.remaining * order.price / account.leverage_of(order.symbol)
        return q8(total)

    def available(self, account: Account) -> Decimal:
        """``wallet + unrealised - position margin - open order margin``."""
        return (account.wallet + self.unrealized(account) - self.position_margin(account)
                - self.order_margin(account))

    def liquidation_price(self, account: Account, symbol: str) -> Decimal:
        """Cross-margin liquidation estimate for ``symbol`` (0 when flat or never):
        the mark at which wallet + other positions' (uPnL - maint) + this uPnL equals
        this position's maintenance margin."""
        pos = account.positions.get(symbol)
        if pos is None or not pos.amount:
            return ZERO
        others = account.wallet + self.unrealized(account) - self.unrealized(account, symbol)
        others -= self.maint_margin(account) - self.maint_margin(account, symbol)
        mmr, qty = self.symbols[symbol].mmr, abs(pos.amount)
        if pos.amount > 0:
            price = (pos.entry_price * qty - others) / (qty * (1 - mmr))
        else:
            price = (others + pos.entry_price * qty) / (qty * (1 + mmr))
        return q8(max(price, ZERO))
