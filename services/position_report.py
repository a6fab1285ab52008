"""The position reporter of an account stream: hands the write-behind (and so the
ledger) the open positions whenever their shape changes, never on a mark move."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal

from clock import now_ms
from exchanges.types import Position
from services.account_state import AccountState

# ``on_positions(positions, as_of ms UTC, complete)``
OnPositions = Callable[[list[Position], int, bool], None]


class PositionReporter:
    """Reports the position shape changes of one account (``state``) to
    ``on_positions`` (None: nothing is reported)."""

    def __init__(self, state: AccountState, on_positions: OnPositions | None) -> None:
        self._state = state
        self._on_positions = on_positions
        self._shape: tuple[tuple[object, ...], ...] | None = None  # None: never reported
        self._reported: dict[str, Position] = {}

    def report(self) -> None:
        """Hand ``on_positions`` the open positions when their shape (side, size, entry
        price, leverage, margin type) changed, with the ones closed since the last
        report as size 0; the first report is marked complete (the ledger then closes
        every other stored symbol)."""
        held = {p.symbol: p for p in (self._state.positions or {}).values()}
        shape = tuple((p.symbol, p.side, p.size, p.entry_price, p.leverage, p.margin_type)
                      for p in sorted(held.values(), key=lambda p: p.symbol))
        if self._on_positions is None or shape == self._shape:
            return
        first = self._shape is None
        closed = [replace(p, size=Decimal(0)) for s, p in self._reported.items()
                  if s not in held]
        self._shape, self._reported = shape, held
        self._on_positions(list(held.values()) + closed, now_ms(), first)
