"""In-memory state of one account (one API key), its push sequence and change detection.

An envelope (CONTRACT.md) carries ``epoch`` and ``seq``: ``seq`` grows by exactly one
per built envelope of a (user, key, type) within one ``epoch``. The state object is
what carries the sequence, so it outlives its stream: ``services.stream_manager`` keeps it
while the stream restarts (exchange reconnect, key update, the user's sockets
leaving and coming back within the retention time) and makes a new one, with a new
epoch, only when it cannot vouch for continuity (process start, the stream having
run in another process).

Change detection: a mark price move changes positions, pnl and balance by numbers
the state computes itself (``apply_mark``), so those envelopes are built without
comparing payloads; a REST snapshot may or may not differ from what was held, so
its payload is compared with the last one (``envelope_if_changed``).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

from clock import now_ms as now_ms  # re-exported: the account modules import it from here
from exchanges.types import AccountEvent, Balance, Order, Position
from exchanges.venues import venue
from services import balance_moves, serialize
from services.account_kinds import ACCOUNT_TYPES, STATE_TYPES  # noqa: F401 (both re-exported)
from services.fill_log import FillLog
from services.push_sequence import PushSequence, StreamPosition


class AccountState:
    """Last known balance, positions, open orders and realized PnL of one key, and the
    key's push sequence (``epoch``, ``seq`` per type).

    Values are exactly what the exchange (or the ledger, for realized PnL) said; a
    type never seen is ``None`` and is not pushed. A position field an account event
    did not carry (Binance ACCOUNT_UPDATE: leverage, liquidation price) is listed in
    ``unknown[symbol]`` and pushed as ``null`` until a REST snapshot gives it.

    The sequence is a ``PushSequence`` (``sequence``) shared with the key's ``fills``
    (``fills``, a ``FillLog``). It is a ``services.push.PushSource``.
    """

    def __init__(self, user_id: int, key_id: int, exchange: str, testnet: bool,
                 epoch: str | None = None) -> None:
        self.user_id = user_id
        self.key_id = key_id
        self.exchange = exchange
        self.testnet = testnet
        self.sequence = PushSequence(user_id, key_id, exchange, testnet, epoch)
        self.epoch = self.sequence.epoch
        self.fills = FillLog(self.sequence)
        self._unrealized_moves: dict[str | None, Decimal] = {}  # margin asset -> delta
        self._balance: Balance | None = None
        self.positions: dict[str, Position] | None = None
        self.orders: dict[str, Order] | None = None
        self.unknown: dict[str, frozenset[str]] = {}  # symbol -> fields not known yet
        self.realized_pnl = None  # services.ledger.Realized once read from the ledger
        self.resume_from_ms: int | None = None  # exchange time up to which events were seen
        self._lock = threading.Lock()  # taken before the sequence's, never after
        self._last: dict[str, tuple[Any, bool]] = {}  # kind -> (data, stale) compared
        self._unseen: dict[str, tuple[str, int]] = {}  # kind -> (source, as_of) not built
        self._order_rows = serialize.RowCache(serialize.order_data, lambda n: 2 * n + 16)
        self._position_rows = serialize.RowCache(self._position_row)  # by symbol
        self._margin_assets: dict[str, str | None] = {}  # symbol -> its settle asset
        # protection (services.protection): a position row's stop_loss / take_profit /
        # trailing_stop, and the exchange-held legs as orders rows; None: rows as before
        self.protection_of: Callable[[int, str], dict[str, Any]] | None = None
        self.legs_of: Callable[[int], list[dict[str, Any]]] | None = None

    @property
    def balance(self) -> Balance | None:
        """The balance, with the unrealized PnL moves of the mark ticks since it was last
        read applied (a tick only adds its delta: ``apply_mark`` runs per holder per
        tick, and the balance is read far less often, when its push is built)."""
        if self._unrealized_moves:
            moves, self._unrealized_moves = self._unrealized_moves, {}
            for asset, delta in moves.items():
                self._move_asset_unrealized(asset, delta)
        return self._balance

    @balance.setter
    def balance(self, value: Balance | None) -> None:
        """Replace the balance; moves not applied yet belonged to the one replaced."""
        self._unrealized_moves = {}
        self._balance = value

    # ---- updates ---------------------------------------------------------------
    def set_balance(self, balance: Balance) -> None:
        """Replace the balance snapshot."""
        self.balance = balance

    def set_positions(self, positions: list[Position]) -> None:
        """Replace the open positions snapshot (complete: every field known)."""
        self.positions = {p.symbol: p for p in positions if p.size != 0}
        self.unknown = {}

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

    def apply_mark(self, symbol: str, mark_price: Decimal) -> tuple[str, ...]:
        """Revalue the ``symbol`` position at a new mark price; returns the types this
        changed (``()`` when nothing moved): positions and pnl, and balance when the
        unrealized PnL moved and a balance is known. No payload is built or compared:
        the mark price is the only input that moved.

        unrealized PnL = (mark - entry) * size, negated for SHORT (Binance USD-M
        "Unrealized PnL" definition); the balance's total and the margin asset's
        unrealized PnL and margin balance move by the same delta
        (marginBalance = walletBalance + unrealizedProfit). ``available_balance``
        is left as the exchange last reported it.
        """
        held = (self.positions or {}).get(symbol)
        if held is None or held.mark_price == mark_price:
            return ()
        sign = 1 if held.side == "LONG" else -1
        upnl = (mark_price - held.entry_price) * held.size * sign
        delta = upnl - held.unrealized_pnl
        assert self.positions is not None
        # the constructor, not dataclasses.replace: this runs per holder per tick
        self.positions[symbol] = Position(held.symbol, held.side, held.size, held.entry_price,
                                          mark_price, upnl, held.leverage,
                                          held.liquidation_price, held.margin_type,
                                          held.updated_at)
        if delta and self._balance is not None:
            asset = self._margin_asset(symbol)
            self._unrealized_moves[asset] = self._unrealized_moves.get(asset, 0) + delta
            return ("positions", "pnl", "balance")
        return ("positions", "pnl")

    def apply_account_event(self, event: AccountEvent) -> tuple[set[str], set[str]]:
        """Apply an account update from the stream (Binance ACCOUNT_UPDATE, Bybit
        ``position``/``wallet``): positions take the event's size, side, entry price and
        unrealized PnL (recomputed at the mark price held, like ``apply_mark``, when
        there is one), wallets their balance, and the balance totals move by the same
        deltas. A position in a symbol not held yet is added at once with what the
        event carries; its mark price, leverage and liquidation price are unknown
        (``null`` in pushes) until REST completes them. Returns ``(changed,
        incomplete)``: the types changed now, and those a REST refresh must complete
        (the event carries no available balance, and a position that is new or
        changed size has no leverage or liquidation price in it)."""
        changed: set[str] = set()
        incomplete: set[str] = set()
        if event.positions:
            if self.positions is None:
                incomplete.add("positions")
            else:
                for u in event.positions:
                    changed |= self._apply_position_update(u, incomplete)
        if event.wallets:
            incomplete.add("balance")  # available balance is not in the event
            b = self.balance
            moved = None if b is None else balance_moves.apply_wallets(
                b, event.wallets, venue(self.exchange).settle_assets)
            if moved is not None:
                self.balance = moved
                changed.add("balance")
        if "positions" in changed and self.balance is not None:
            changed.add("balance")
        return changed, incomplete

    def _apply_position_update(self, u, incomplete: set[str]) -> set[str]:  # type: ignore[no-untyped-def]
        assert self.positions is not None
        held = self.positions.get(u.symbol)
        if u.amount == 0:
            if held is None:
                return set()
            self._move_unrealized(u.symbol, -held.unrealized_pnl)
            del self.positions[u.symbol]
            self.unknown.pop(u.symbol, None)
            return {"positions", "pnl"}
        side, size = ("LONG" if u.amount > 0 else "SHORT"), abs(u.amount)
        if held is None:
            # the event's own figures; what it does not carry is unknown, never guessed
            incomplete.add("positions")
            self.positions[u.symbol] = Position(
                u.symbol, side, size, u.entry_price, Decimal(0), u.unrealized_pnl,
                Decimal(0), Decimal(0), u.margin_type)
            self.unknown[u.symbol] = frozenset({"mark_price", "leverage", "liquidation_price"})
            self._move_unrealized(u.symbol, u.unrealized_pnl)
            return {"positions", "pnl"}
        if size != held.size or side != held.side:
            incomplete.add("positions")
            if u.symbol in self.unknown or held.liquidation_price:
                self.unknown[u.symbol] = self.unknown.get(u.symbol, frozenset()) | {
                    "liquidation_price"}
        upnl = u.unrealized_pnl  # the exchange's, at its mark; ours when we have one
        if held.mark_price and "mark_price" not in self.unknown.get(u.symbol, ()):
            upnl = (held.mark_price - u.entry_price) * size * (1 if side == "LONG" else -1)
        moved = replace(held, side=side, size=size, entry_price=u.entry_price,
                        unrealized_pnl=upnl, margin_type=u.margin_type)
        if moved == held:
            return set()
        self._move_unrealized(u.symbol, upnl - held.unrealized_pnl)
        self.positions[u.symbol] = moved
        return {"positions", "pnl"}

    def mark_known(self, symbol: str) -> None:
        """A mark price tick of ``symbol`` arrived: its mark price is known now."""
        fields = self.unknown.get(symbol)
        if fields and "mark_price" in fields:
            rest = fields - {"mark_price"}
            if rest:
                self.unknown[symbol] = rest
            else:
                del self.unknown[symbol]

    def _move_unrealized(self, symbol: str, delta: Decimal) -> None:
        """Move the balance's unrealized PnL and margin balance (total and the margin
        asset's) by ``delta`` of ``symbol``'s position."""
        if delta:
            self._move_asset_unrealized(self._margin_asset(symbol), delta)

    def _margin_asset(self, symbol: str) -> str | None:
        """``symbol``'s settle asset, looked up once per symbol (this runs per tick)."""
        asset = self._margin_assets.get(symbol, "")
        if asset == "":
            asset = self._margin_assets[symbol] = venue(self.exchange).margin_asset(symbol)
        return asset

    def _move_asset_unrealized(self, margin_asset: str | None, delta: Decimal) -> None:
        b = self.balance
        if b is not None and delta:
            self.balance = balance_moves.move_unrealized(b, margin_asset, delta)

    def position_symbols(self) -> set[str]:
        """Symbols with an open position."""
        return set(self.positions or {})

    # ---- payloads --------------------------------------------------------------
    def data(self, kind: str):  # type: ignore[no-untyped-def]
        """The CONTRACT.md ``data`` of ``kind``, or None when not known yet."""
        if kind == "balance":
            return None if self.balance is None else serialize.balance_data(self.balance)
        if kind == "positions":
            return None if self.positions is None else self._positions_data()
        if kind == "orders":
            return None if self.orders is None else self._orders_data()
        if kind == "pnl":
            if self.positions is None or self.realized_pnl is None:
                return None
            return serialize.pnl_data(self.positions.values(), self.realized_pnl,
                                      self.unknown)
        if kind == "fills":
            return []
        raise ValueError(f"unknown type {kind!r}")

    def _positions_data(self) -> list[dict[str, Any]]:
        """``positions`` data with each position's row built once per change of it."""
        assert self.positions is not None
        rows = []
        for p in sorted(self.positions.values(), key=lambda p: (p.symbol, p.side)):
            row = self._position_rows.row(p.symbol, p)
            rows.append(row if self.protection_of is None
                        else {**row, **self.protection_of(self.key_id, p.symbol)})
        self._position_rows.trim(self.positions)
        return rows

    def _position_row(self, p: Position) -> dict[str, Any]:
        """A ``positions`` row; the fields not known yet are null."""
        row = serialize.position_row(p)
        for name in self.unknown.get(p.symbol, ()):
            row[name] = None
        return row

    def _orders_data(self) -> list[dict[str, Any]]:
        """CONTRACT.md ``orders`` data: the open orders, oldest update first, each
        order's row built once per update (an account with many open orders sends
        all of them again on every fill)."""
        assert self.orders is not None
        rows = [self._order_rows.row(o.order_id, o) for o in
                sorted(self.orders.values(), key=lambda o: (o.updated_at, o.order_id))]
        self._order_rows.trim(self.orders)
        if self.legs_of is not None:  # plain orders have no trigger price; then the legs
            rows = [{**r, "trigger_price": None} for r in rows] + self.legs_of(self.key_id)
        return rows

    def note_unseen(self, kind: str, source: str, as_of: int) -> None:
        """``kind`` changed but no push of it is due: its envelope is built when one
        is (``pending``) or a subscriber asks for it (``cached``)."""
        with self._lock:
            self._unseen[kind] = (source, as_of)

    def pending(self, kind: str) -> bool:
        """True when ``kind`` changed since its last envelope was built."""
        return kind in self._unseen

    def build_pending(self, kind: str) -> dict[str, Any] | None:
        """Build the envelope of a change noted by ``note_unseen`` (the mark price
        moved: known changed, not compared); None when nothing is pending."""
        with self._lock:
            noted = self._unseen.pop(kind, None)
        if noted is None:
            return None
        return self.envelope(kind, noted[0], noted[1])

    def envelope(self, kind: str, source: str, as_of: int) -> dict[str, Any] | None:
        """A new envelope of ``kind`` without comparing it with the last one (the
        caller knows it changed: a mark price move); None when not known yet."""
        with self._lock:
            self._unseen.pop(kind, None)
            data = self.data(kind)
            if data is None:
                return None
            self._last.pop(kind, None)  # compared lazily, only if a REST result comes
            return self.sequence.next(kind, source, as_of, False, data)

    def envelope_if_changed(self, kind: str, source: str, as_of: int,
                            stale: bool = False) -> dict[str, Any] | None:
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
            last = self._last.get(kind)
            held = self.sequence.last(kind)
            if last is None and held is not None:
                last = (held["data"], held["stale"])
            if last == (data, stale):
                return None
            self._last[kind] = (data, stale)
            return self.sequence.next(kind, source, as_of, stale, data)

    def envelope_of_change(self, kind: str, source: str, as_of: int,
                           mark: bool) -> dict[str, Any] | None:
        """The envelope of a change of ``kind`` (``services.push.PushSource``): a mark
        price move (``mark``) is a change by construction (``envelope``); an account
        event or a REST result only when the content differs (``envelope_if_changed``)."""
        if mark:
            return self.envelope(kind, source, as_of)
        return self.envelope_if_changed(kind, source, as_of)

    def seq(self, kind: str) -> int:
        """The ``seq`` of the last envelope of ``kind`` (0: none yet in this epoch)."""
        return self.sequence.seq(kind)

    def position(self, kind: str) -> StreamPosition:
        """``(epoch, seq)`` of the last envelope of ``kind``."""
        return self.sequence.position(kind)

    def last(self, kind: str) -> dict[str, Any] | None:
        """The last envelope built of ``kind`` (not a copy: do not change it)."""
        return self.sequence.last(kind)

    def mark_stale(self, kinds: tuple[str, ...] = STATE_TYPES) -> list[dict[str, Any]]:
        """Envelopes of the last known values flagged ``stale`` (the exchange is
        unreachable); one per type that was not stale already."""
        out = []
        for kind in kinds:
            held = self.sequence.last(kind)
            if held is not None and not held["stale"]:
                env = self.envelope_if_changed(kind, held["source"], held["as_of"], stale=True)
                if env:
                    out.append(env)
        return out

    def cached(self, kinds: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
        """Copies of the last envelopes of ``kinds`` with ``source: "cache"`` (for a
        new subscriber); their ``seq`` is the current one. Types that changed while
        no push of them was due (``note_unseen``) are built first. ``fills``: an
        empty list at the current ``seq`` (a subscription sends no old fills)."""
        with self._lock:
            unseen = [(k, self._unseen[k]) for k in kinds if k in self._unseen]
        for kind, (source, as_of) in unseen:
            self.envelope(kind, source, as_of)
        with self._lock:
            out = self.sequence.cached([k for k in kinds if k != "fills"])
            if "fills" in kinds:
                out.append(self.fills.snapshot([]))
            return out
