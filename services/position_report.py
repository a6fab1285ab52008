"""The position reporter of an account stream: hands the write-behind (and so the
ledger) the open positions whenever their shape changes, never on a mark move.

``PositionReporter`` is a part of ``services.account_stream.AccountStream``; it uses
the stream's ``state``, ``_on_positions``, ``_positions_shape`` and
``_positions_reported``.
"""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from services.account_state import now_ms


class PositionReporter:
    """Reports position shape changes of one account."""

    def _report_positions(self) -> None:
        """Hand the write-behind the open positions when their shape changed, with the
        ones closed since the last report as size 0; the first report of this stream
        is marked complete (the ledger then closes every other stored symbol)."""
        held = {p.symbol: p for p in (self.state.positions or {}).values()}
        shape = tuple((p.symbol, p.side, p.size, p.entry_price, p.leverage, p.margin_type)
                      for p in sorted(held.values(), key=lambda p: p.symbol))
        if self._on_positions is None or shape == self._positions_shape:
            return
        first = self._positions_shape is None
        closed = [replace(p, size=Decimal(0)) for s, p in self._positions_reported.items()
                  if s not in held]
        self._positions_shape, self._positions_reported = shape, held
        self._on_positions(list(held.values()) + closed, now_ms(), first)
