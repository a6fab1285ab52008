"""In-memory state of one account (one API key) and change detection for pushes.

A push envelope (CONTRACT.md) is made only when a type's content (its ``data`` and
``stale`` flag) changed since the last one; ``seq`` grows by one per
(user, key, type).
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace
from decimal import Decimal

from exchanges.types import AccountEvent, Balance, Order, Position
from services import serialize

ACCOUNT_TYPES = ("balance", "positions", "pnl", "orders")


def now_ms() -> int:
    """Milliseconds since the Unix epoch, UTC."""
    return int(time.time() * 1000)


class AccountState:
    """Last known balance, positions, open orders and realized PnL of one key.

    Values are exactly what the exchange (or the ledger, for realized PnL) said; a
    type never seen is ``None`` and is not pushed.
    """

    def __init__(self, user_id: int, key_id: int, exchange: str, testnet: bool) -> None:
        self.user_id = user_id
        self.key_id = key_id
        self.exchange = exchange
        self.testnet = testnet
        self.balance: Balance | None = None
        self.positions: dict[str, Position] | None = None
        self.orders: dict[str, Order] | None = None
        self.realized_pnl = None  # services.ledger.Realized once read from the ledger
        self._lock = threading.Lock()
        self._seq: dict[str, int] = {}
        self._last: dict[str, tuple] = {}
        self._envelopes: dict[str, dict] = {}
        self._unseen: dict[str, tuple[str, int]] = {}  # kind -> (source, as_of) not built
        self._order_rows: dict[str, tuple[Order, dict]] = {}  # order id -> (order, its row)

    # ---- updates ---------------------------------------------------------------
    def set_balance(self, balance: Balance) -> None:
        """Replace the balance snapshot."""
        self.balance = balance

    def set_positions(self, positions: list[Position]) -> None:
        """Replace the open positions snapshot."""
        self.positions = {p.symbol: p for p in positions if p.size != 0}

    def set_orders(self, orders: list[Order]) -> None:
        """Replace the open orders snapshot."""
        self.orders = {o.order_id: o for o in orders if not o.status.is_final}

    def apply_order(self, order: Order) -> None:
        """Apply one order update; final orders leave the open set. Older updates
        (smaller ``updated_at``) than the one held are ignored."""
        if self.orders is None:
            self.orders = {}
        held = self.orders.get(order.order_id)
        if held is not None and held.updated_at > order.updated_at:
            return
        if order.status.is_final:
            self.orders.pop(order.order_id, None)
        else:
            self.orders[order.order_id] = order

    def apply_mark(self, symbol: str, mark_price: Decimal) -> bool:
        """Revalue the ``symbol`` position at a new mark price. True if it changed.

        unrealized PnL = (mark - entry) * size, negated for SHORT (Binance USD-M
        "Unrealized PnL" definition); the balance's total and the margin asset's
        unrealized PnL and margin balance move by the same delta
        (marginBalance = walletBalance + unrealizedProfit). ``available_balance``
        is left as the exchange last reported it.
        """
        held = (self.positions or {}).get(symbol)
        if held is None or held.mark_price == mark_price:
            return False
        sign = 1 if held.side == "LONG" else -1
        upnl = (mark_price - held.entry_price) * held.size * sign
        delta = upnl - held.unrealized_pnl
        assert self.positions is not None
        self.positions[symbol] = replace(held, mark_price=mark_price, unrealized_pnl=upnl)
        self._move_unrealized(symbol, delta)
        return True

    def apply_account_event(self, event: AccountEvent) -> tuple[set[str], set[str]]:
        """Apply an account update from the stream (Binance ACCOUNT_UPDATE, Bybit
        ``position``/``wallet``): positions take the event's size, side, entry price and
        unrealized PnL (recomputed at the mark price held, like ``apply_mark``, when
        there is one), wallets their balance, and the balance totals move by the same
        deltas. Returns ``(changed, incomplete)``: the types
        changed now, and those a REST refresh must complete: the event carries no
        available balance, and a position that is new or changed size has no
        leverage or liquidation price in it."""
        changed: set[str] = set()
        incomplete: set[str] = set()
        if event.positions:
            if self.positions is None:
                incomplete.add("positions")
            else:
                for u in event.positions:
                    held = self.positions.get(u.symbol)
                    if u.amount == 0:
                        if held is not None:
                            self._move_unrealized(u.symbol, -held.unrealized_pnl)
                            del self.positions[u.symbol]
                            changed |= {"positions", "pnl"}
                        continue
                    if held is None:
                        incomplete.add("positions")
                        continue
                    side, size = ("LONG" if u.amount > 0 else "SHORT"), abs(u.amount)
                    if size != held.size or side != held.side:
                        incomplete.add("positions")
                    upnl = u.unrealized_pnl  # the exchange's, at its mark; ours when we have one
                    if held.mark_price:
                        upnl = (held.mark_price - u.entry_price) * size * (1 if side == "LONG" else -1)
                    moved = replace(held, side=side, size=size, entry_price=u.entry_price,
                                    unrealized_pnl=upnl, margin_type=u.margin_type)
                    if moved != held:
                        self._move_unrealized(u.symbol, upnl - held.unrealized_pnl)
                        self.positions[u.symbol] = moved
                        changed |= {"positions", "pnl"}
        if event.wallets:
            incomplete.add("balance")  # available balance is not in the event
            b = self.balance
            if b is not None:
                rows = {a.asset: a for a in b.assets}
                delta = Decimal(0)
                for w in event.wallets:
                    row = rows.get(w.asset)
                    if row is None or row.wallet_balance == w.wallet_balance:
                        continue
                    if w.asset == "USDT":
                        delta += w.wallet_balance - row.wallet_balance
                    rows[w.asset] = replace(row, wallet_balance=w.wallet_balance,
                                            margin_balance=w.wallet_balance + row.unrealized_pnl)
                assets = tuple(rows[a.asset] for a in b.assets)
                if assets != b.assets:
                    self.balance = replace(b, assets=assets,
                                           total_wallet_balance=b.total_wallet_balance + delta,
                                           total_margin_balance=b.total_margin_balance + delta)
                    changed.add("balance")
        if "positions" in changed and self.balance is not None:
            changed.add("balance")
        return changed, incomplete

    def _move_unrealized(self, symbol: str, delta: Decimal) -> None:
        """Move the balance's unrealized PnL and margin balance (total and the margin
        asset's) by ``delta`` of ``symbol``'s position."""
        b = self.balance
        if b is None or not delta:
            return
        margin_asset = "USDT" if symbol.endswith("USDT") else None
        assets = tuple(replace(a, unrealized_pnl=a.unrealized_pnl + delta,
                               margin_balance=a.margin_balance + delta)
                       if a.asset == margin_asset else a for a in b.assets)
        self.balance = replace(b, total_unrealized_pnl=b.total_unrealized_pnl + delta,
                               total_margin_balance=b.total_margin_balance + delta,
                               assets=assets)

    def position_symbols(self) -> set[str]:
        """Symbols with an open position."""
        return set(self.positions or {})

    # ---- payloads --------------------------------------------------------------
    def data(self, kind: str):  # type: ignore[no-untyped-def]
        """The CONTRACT.md ``data`` of ``kind``, or None when not known yet."""
        if kind == "balance":
            return None if self.balance is None else serialize.balance_data(self.balance)
        if kind == "positions":
            return None if self.positions is None else serialize.positions_data(self.positions.values())
        if kind == "orders":
            return None if self.orders is None else self._orders_data()
        if kind == "pnl":
            if self.positions is None or self.realized_pnl is None:
                return None
            return serialize.pnl_data(self.positions.values(), self.realized_pnl)
        raise ValueError(f"unknown type {kind!r}")

    def _orders_data(self) -> list[dict]:
        """CONTRACT.md ``orders`` data: the open orders, oldest update first, each
        order's row built once per update (an account with many open orders sends
        all of them again on every fill)."""
        assert self.orders is not None
        rows = []
        for o in sorted(self.orders.values(), key=lambda o: (o.updated_at, o.order_id)):
            held = self._order_rows.get(o.order_id)
            if held is None or held[0] is not o:
                held = self._order_rows[o.order_id] = (o, serialize.order_data(o))
            rows.append(held[1])
        if len(self._order_rows) > 2 * len(self.orders) + 16:
            self._order_rows = {k: v for k, v in self._order_rows.items() if k in self.orders}
        return rows

    def note_unseen(self, kind: str, source: str, as_of: int) -> None:
        """``kind`` changed but nobody is subscribed: its envelope is built only when
        a subscriber asks for it (``cached``)."""
        with self._lock:
            self._unseen[kind] = (source, as_of)

    def envelope_if_changed(self, kind: str, source: str, as_of: int,
                            stale: bool = False) -> dict | None:
        """A new envelope when ``kind``'s content changed, else None.

        ``source`` is ``stream``, ``rest`` or ``cache``; ``as_of`` the exchange time
        of the data (ms UTC).
        """
        with self._lock:
            self._unseen.pop(kind, None)
        data = self.data(kind)
        if data is None:
            return None
        with self._lock:
            if self._last.get(kind) == (data, stale):
                return None
            self._last[kind] = (data, stale)
            seq = self._seq.get(kind, 0) + 1
            self._seq[kind] = seq
            envelope = {"type": kind, "user_id": self.user_id, "key_id": self.key_id,
                        "exchange": self.exchange, "testnet": self.testnet, "seq": seq,
                        "as_of": as_of, "sent_at": 0, "source": source, "stale": stale,
                        "data": data}
            self._envelopes[kind] = envelope
            return envelope

    def mark_stale(self, kinds: tuple[str, ...] = ACCOUNT_TYPES) -> list[dict]:
        """Envelopes of the last known values flagged ``stale`` (the exchange is
        unreachable); one per type that was not stale already."""
        out = []
        for kind in kinds:
            held = self._envelopes.get(kind)
            if held is not None and not held["stale"]:
                env = self.envelope_if_changed(kind, held["source"], held["as_of"], stale=True)
                if env:
                    out.append(env)
        return out

    def cached(self, kinds: tuple[str, ...] | list[str]) -> list[dict]:
        """Copies of the last envelopes of ``kinds`` with ``source: "cache"`` (for a
        new subscriber); their ``seq`` is the current one. Types that changed while
        nobody was subscribed (``note_unseen``) are built first."""
        with self._lock:
            unseen = [(k, self._unseen[k]) for k in kinds if k in self._unseen]
        for kind, (source, as_of) in unseen:
            self.envelope_if_changed(kind, source, as_of)
        with self._lock:
            return [dict(self._envelopes[k], source="cache") for k in kinds if k in self._envelopes]
