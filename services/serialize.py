"""Exchange types -> CONTRACT.md ``data`` payloads (decimal strings, ms UTC)."""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from exchanges.types import Balance, Fill, Order, Position

if TYPE_CHECKING:
    from services.realized import Realized

V = TypeVar("V")


class RowCache(Generic[V]):
    """Payload rows of values keyed by an id (a symbol, an order id), each built once
    per value object (``build(value)``): the values are frozen and replaced on every
    change, so an account with many open orders builds only the changed rows when it
    sends them all again. Rows of ids no longer asked for are dropped once more than
    ``spare(live)`` are held."""

    def __init__(self, build: Callable[[V], dict[str, Any]],
                 spare: Callable[[int], int] = lambda live: live + 16) -> None:
        self._build = build
        self._spare = spare
        self._rows: dict[str, tuple[V, dict[str, Any]]] = {}

    def row(self, ident: str, value: V) -> dict[str, Any]:
        """The row of ``value`` (built now if ``ident`` held another value object)."""
        held = self._rows.get(ident)
        if held is None or held[0] is not value:
            held = self._rows[ident] = (value, self._build(value))
        return held[1]

    def trim(self, live: Collection[str]) -> None:
        """Forget the rows of ids not in ``live`` once too many are held."""
        if len(self._rows) > self._spare(len(live)):
            self._rows = {k: v for k, v in self._rows.items() if k in live}


def dec(value: Decimal | None) -> str | None:
    """A Decimal as a plain decimal string (``"0.001"``, never ``"1E-3"``); None stays None."""
    if value is None:
        return None
    text = str(value)  # C-fast; exponent form only for very small or normalized values
    if "E" in text:
        text = f"{value.normalize():f}" if value == value.to_integral() else f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def balance_data(balance: Balance) -> dict:
    """CONTRACT.md ``balance`` data."""
    return {
        "total_wallet_balance": dec(balance.total_wallet_balance),
        "total_unrealized_pnl": dec(balance.total_unrealized_pnl),
        "total_margin_balance": dec(balance.total_margin_balance),
        "available_balance": dec(balance.available_balance),
        "assets": [{"asset": a.asset, "wallet_balance": dec(a.wallet_balance),
                    "available_balance": dec(a.available_balance),
                    "unrealized_pnl": dec(a.unrealized_pnl),
                    "margin_balance": dec(a.margin_balance)} for a in balance.assets],
    }


def position_row(p: Position) -> dict:
    """One CONTRACT.md ``positions`` row."""
    return {"symbol": p.symbol, "side": p.side, "size": dec(p.size),
            "entry_price": dec(p.entry_price), "mark_price": dec(p.mark_price),
            "unrealized_pnl": dec(p.unrealized_pnl), "leverage": dec(p.leverage),
            "liquidation_price": dec(p.liquidation_price), "margin_type": p.margin_type}


def positions_data(positions: Iterable[Position]) -> list[dict]:
    """CONTRACT.md ``positions`` data: open positions, sorted by symbol."""
    return [position_row(p) for p in sorted(positions, key=lambda p: (p.symbol, p.side))
            if p.size != 0]


def roe_pct(p: Position) -> Decimal:
    """Return on initial margin in percent: ``unrealized / (size * entry / leverage) * 100``,
    rounded to 2 places (Binance app's ROE definition)."""
    margin = p.size * p.entry_price / (p.leverage or Decimal(1))
    if margin == 0:
        return Decimal(0)
    return (p.unrealized_pnl / margin * 100).quantize(Decimal("0.01"))


def pnl_data(positions: Iterable[Position], realized: Realized,
             unknown: Mapping[str, Collection[str]] | None = None) -> dict:
    """CONTRACT.md ``pnl`` data plus ``realized_pnl_today``; realized figures come
    from the ledger (``services.ledger.Realized``). ``roe_pct`` is ``null`` for a
    position whose leverage is not known yet (``unknown[symbol]`` names it)."""
    open_positions = [p for p in sorted(positions, key=lambda p: p.symbol) if p.size != 0]
    total = sum((p.unrealized_pnl for p in open_positions), Decimal(0))
    unknown = unknown or {}
    return {"unrealized_pnl": dec(total), "realized_pnl": dec(realized.all_time),
            "realized_pnl_today": dec(realized.today),
            "positions": [{"symbol": p.symbol, "side": p.side,
                           "unrealized_pnl": dec(p.unrealized_pnl),
                           "roe_pct": None if "leverage" in unknown.get(p.symbol, ())
                           else dec(roe_pct(p))} for p in open_positions]}


def order_data(o: Order) -> dict:
    """One CONTRACT.md ``orders`` row."""
    return {"client_order_id": o.client_order_id, "order_id": o.order_id, "symbol": o.symbol,
            "side": o.side, "type": o.type, "status": o.status.value, "price": dec(o.price),
            "quantity": dec(o.quantity), "filled_quantity": dec(o.filled_quantity),
            "avg_price": dec(o.avg_price), "time_in_force": o.time_in_force,
            "reduce_only": o.reduce_only, "updated_at": o.updated_at}


def fill_data(f: Fill) -> dict:
    """One CONTRACT.md ``fills`` row (``trade_id`` is the exchange's trade id)."""
    return {"trade_id": f.trade_id, "order_id": f.order_id,
            "client_order_id": f.client_order_id, "symbol": f.symbol, "side": f.side,
            "price": dec(f.price), "quantity": dec(f.quantity), "fee": dec(f.fee),
            "fee_asset": f.fee_asset, "realized_pnl": dec(f.realized_pnl), "time": f.time,
            "reason": getattr(f, "reason", None)}
