"""Leg rows -> the CONTRACT.md protection object.

Per kind the newest row is shown. While a leg of the symbol is live (``pending`` or
``active``), final legs older than the oldest live one belong to an earlier protection
and are hidden (a stop-loss that fired on the previous position does not show beside
the take-profit set on the new one). ``canceled`` legs show as ``null`` except in
DELETE's answer (``show_canceled``), which returns them ``canceled``.
"""
from __future__ import annotations

from models import LIVE_LEG_STATUSES, LegStatus, ProtectionLeg
from services.serialize import dec

KINDS = ("stop_loss", "take_profit", "trailing_stop")


def leg_data(row: ProtectionLeg) -> dict:
    """One CONTRACT.md leg (decimal strings, ms UTC)."""
    return {"trigger_price": dec(row.trigger_price), "callback_rate": dec(row.callback_rate),
            "activation_price": dec(row.activation_price), "status": row.status,
            "client_order_id": row.client_order_id, "order_id": row.order_id,
            "error_code": row.error_code, "updated_at": row.updated_at}


def protection_view(key_id: int, symbol: str, rows: list[ProtectionLeg],
                    show_canceled: bool = False) -> dict | None:
    """The protection of ``symbol`` from all its leg rows (any order); None without rows."""
    if not rows:
        return None
    newest: dict[str, ProtectionLeg] = {}
    for row in sorted(rows, key=lambda r: r.id):
        newest[row.kind] = row
    live = [r for r in newest.values() if r.status in LIVE_LEG_STATUSES]
    oldest_live = min((r.id for r in live), default=None)
    legs: dict[str, dict | None] = {}
    for kind in KINDS:
        shown = newest.get(kind)
        if shown is None or (oldest_live is not None and shown.status not in LIVE_LEG_STATUSES
                             and shown.id < oldest_live) or \
                (shown.status == LegStatus.CANCELED.value and not show_canceled):
            legs[kind] = None
        else:
            legs[kind] = leg_data(shown)
    head = max(live, key=lambda r: r.id) if live else max(newest.values(), key=lambda r: r.id)
    visible = [newest[k] for k in KINDS if legs[k] is not None]
    return {"key_id": key_id, "symbol": symbol, "side": head.side, "mode": head.mode,
            "working_type": head.working_type,
            "legs": legs, "updated_at": max(r.updated_at for r in visible or [head])}


EMPTY_FIELDS: dict[str, object] = {"stop_loss": None, "take_profit": None, "trailing_stop": None}
LEG_ORDER_TYPES = {"stop_loss": "STOP_MARKET", "take_profit": "TAKE_PROFIT_MARKET",
                   "trailing_stop": "TRAILING_STOP_MARKET"}


def position_fields(rows: list[ProtectionLeg]) -> dict:
    """A ``positions`` row's ``stop_loss``, ``take_profit`` (trigger prices) and
    ``trailing_stop`` (``{"callback_rate", "activation_price"}``) from the symbol's live
    legs; null for a kind without one."""
    fields: dict[str, object] = dict(EMPTY_FIELDS)
    for row in rows:
        if row.status not in LIVE_LEG_STATUSES:
            continue
        if row.kind == "trailing_stop":
            fields["trailing_stop"] = {"callback_rate": dec(row.callback_rate),
                                       "activation_price": dec(row.activation_price)}
        else:
            fields[row.kind] = dec(row.trigger_price)
    return fields


def leg_order_row(row: ProtectionLeg) -> dict:
    """An exchange-held leg as an ``orders`` row: the closing side, the conditional
    type, ``trigger_price`` (a trailing stop's activation price, null without one),
    quantity ``0`` (it closes the whole position, as Binance shows ``closePosition``
    orders), ``time_in_force`` ``GTE_GTC``, reduce-only."""
    return {"client_order_id": row.client_order_id, "order_id": row.order_id or "",
            "symbol": row.symbol, "side": "SELL" if row.side == "LONG" else "BUY",
            "type": LEG_ORDER_TYPES[row.kind], "status": "NEW", "price": "0", "quantity": "0",
            "filled_quantity": "0", "avg_price": "0", "time_in_force": "GTE_GTC",
            "reduce_only": True, "updated_at": row.updated_at,
            "trigger_price": dec(row.trigger_price if row.kind != "trailing_stop"
                                 else row.activation_price)}
