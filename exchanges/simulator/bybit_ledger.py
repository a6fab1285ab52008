"""What the Bybit layer remembers beyond the engine's own objects.

Bybit replies carry a few numbers the protocol-neutral engine does not keep: the last
price when an order was created (``lastPriceOnCreated``, the Market protection price),
the cumulative fee and realised PnL per order (``cumExecFee``, ``closedPnl``), the mark
price, closed size and leaves quantity at each execution, and per position the
realised PnL net of fees since it was opened (``curRealisedPnl``) and ever
(``cumRealisedPnl``). ``BybitLedger`` is an engine listener registered before the
Bybit stream fan-out, so frames built for an event already see these values. It sees
every order and fill of the engine, whichever protocol placed it.

Memory grows by one small record per order and per fill, like the engine's own lists.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from exchanges.simulator.engine import Engine
from exchanges.simulator.models import ZERO, Fill, Order, OrderEvent


@dataclass
class OrderExtra:
    """Per order: ``last_price`` at creation, summed ``fee`` and gross ``pnl`` of its
    fills, and ``rejected`` when the reject_orders fault refused it through Bybit."""

    last_price: Decimal
    fee: Decimal = ZERO
    pnl: Decimal = ZERO
    rejected: bool = False


@dataclass(frozen=True)
class FillExtra:
    """Per fill: the ``mark`` price, the position size it closed and the order's
    quantity left after it."""

    mark: Decimal
    closed_size: Decimal
    leaves_qty: Decimal


@dataclass
class PositionPnl:
    """Per (api key, symbol): realised PnL net of fees since the position was last
    opened from flat (``current``) and since the account exists (``cumulative``);
    ``seq`` is the trade id of the last fill."""

    current: Decimal = ZERO
    cumulative: Decimal = ZERO
    seq: int = 0


class BybitLedger:
    """Engine listener keeping the Bybit-only numbers (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.orders: dict[int, OrderExtra] = {}
        self.fills: dict[int, FillExtra] = {}
        self.pnl: dict[tuple[str, str], PositionPnl] = {}
        self._rejecting: str | None = None
        engine.add_listener(self.on_event)

    @contextmanager
    def rejecting(self, api_key: str | None) -> Iterator[None]:
        """Mark the orders ``api_key`` creates inside the block as fault-rejected
        (``None``: no marking)."""
        self._rejecting = api_key
        try:
            yield
        finally:
            self._rejecting = None

    def order(self, order: Order) -> OrderExtra:
        """The record of ``order`` (created from the current price if unseen)."""
        extra = self.orders.get(order.order_id)
        if extra is None:
            extra = self.orders[order.order_id] = OrderExtra(self.engine.prices[order.symbol])
        return extra

    def fill(self, fill: Fill) -> FillExtra:
        """The record of ``fill`` (a neutral one if unseen)."""
        extra = self.fills.get(fill.trade_id)
        if extra is None:
            extra = FillExtra(fill.price, ZERO, ZERO)
        return extra

    def position_pnl(self, api_key: str, symbol: str) -> PositionPnl:
        """Realised PnL record of a position (zeros when it never traded)."""
        return self.pnl.get((api_key, symbol)) or PositionPnl()

    def on_event(self, event: object) -> None:
        """Engine listener: record NEW orders and TRADE fills."""
        if not isinstance(event, OrderEvent):
            return
        order = event.order
        if event.exec_type == "NEW":
            self.orders[order.order_id] = OrderExtra(
                self.engine.prices[order.symbol], rejected=self._rejecting == order.api_key)
        elif event.exec_type == "TRADE" and event.fill is not None:
            self._record_fill(order, event.fill)

    def _record_fill(self, order: Order, fill: Fill) -> None:
        extra = self.order(order)
        extra.fee += fill.commission
        extra.pnl += fill.realized_pnl
        after = self.engine.accounts[order.api_key].position(order.symbol).amount
        signed = fill.qty if fill.side == "BUY" else -fill.qty
        before = after - signed
        reduces = before != 0 and (before > 0) != (signed > 0)
        closed = min(fill.qty, abs(before)) if reduces else ZERO
        self.fills[fill.trade_id] = FillExtra(self.engine.prices[order.symbol], closed,
                                              order.remaining)
        pnl = self.pnl.setdefault((order.api_key, order.symbol), PositionPnl())
        net = fill.realized_pnl - fill.commission
        opened = before == 0 or (after != 0 and (after > 0) != (before > 0))
        pnl.current = net if opened else pnl.current + net
        pnl.cumulative += net
        pnl.seq = fill.trade_id
