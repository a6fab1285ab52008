"""Server-mode rules on the shared market stream: one ``TriggerIndex`` per market and
working type, fed by the ``TickerHub``'s ticks (the guard is a subscriber of a
symbol's stream while it holds a rule of it; no socket needed).

A tick is handled on the hub's delivery task: the index is bisected (only the rules
the price crossed are touched, ``services.protection.index``), a fired rule is handed
to ``on_fire`` (which must not block: it spawns the exit) and its position's other
rules are disarmed at once (one-cancels-the-others, before the next tick). The
trailing stops' extremes that moved are kept in ``dirty`` and written by
``flush_extremes`` (the service calls it about once a second and at shutdown), so a
restart keeps them.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from decimal import Decimal

from exchanges.types import Ticker
from services.protection.index import Rule, TriggerIndex

logger = logging.getLogger(__name__)

SUBSCRIBER = "protection"  # the guard's subscriber name on the TickerHub
Market = tuple[str, bool, str]  # (exchange, testnet, SYMBOL)


class ServerGuard:
    """Arms, disarms and evaluates server-mode rules.

    Args:
        tickers: the ``TickerHub`` (``subscribe(exchange, testnet, symbol, subscriber,
            on_tick)`` / ``unsubscribe(...)``).
        on_fire: ``on_fire(rule, price)``, called on the tick's task for each fired
            rule (one per position: its siblings are disarmed first); must not block.
    """

    def __init__(self, tickers, on_fire: Callable[[Rule, Decimal], None]) -> None:  # type: ignore[no-untyped-def]
        self._tickers = tickers
        self._on_fire = on_fire
        self._lock = threading.Lock()
        # (market, working_type) -> index
        self._indexes: dict[tuple[Market, str], TriggerIndex] = {}
        self._where: dict[int, tuple[Market, str]] = {}  # rule id -> its index
        self._siblings: dict[tuple[int, str], set[int]] = {}  # (key_id, symbol) -> rule ids
        self._owner: dict[int, tuple[int, str]] = {}  # rule id -> (key_id, symbol)
        self._dirty: dict[int, Decimal] = {}  # rule id -> trailing extreme to persist
        self.ticks = 0
        self.tick_seconds = 0.0  # time spent handling ticks (perf_counter)

    # ---- arming -------------------------------------------------------------------
    def arm(self, market: Market, working_type: str, key_id: int, rule: Rule,
            mark: Decimal | None = None) -> None:
        """Hold ``rule`` for ``market``, subscribing to its stream on the first rule.
        ``mark``: the current price (a trailing stop without activation price starts
        from it). Raises ValueError for an incomplete rule."""
        with self._lock:
            self._disarm_locked(rule.id)
            subscribe = not self._market_held(market)
            slot = (market, working_type)
            index = self._indexes.get(slot)
            if index is None:
                index = self._indexes[slot] = TriggerIndex()
            index.add(rule, mark)
            self._where[rule.id] = slot
            self._owner[rule.id] = (key_id, market[2])
            self._siblings.setdefault((key_id, market[2]), set()).add(rule.id)
        if subscribe:
            self._tickers.subscribe(*market, SUBSCRIBER, self._tick_handler(market))

    def disarm(self, rule_id: int) -> Rule | None:
        """Drop a rule (unsubscribing from a stream no rule needs any more); returns it."""
        with self._lock:
            rule, market = self._disarm_locked(rule_id)
            unsubscribe = market is not None and not self._market_held(market)
        if unsubscribe and market is not None:
            self._tickers.unsubscribe(*market, SUBSCRIBER)
        return rule

    def armed(self, rule_id: int) -> bool:
        """True while the rule is held."""
        with self._lock:
            return rule_id in self._where

    def armed_ids(self) -> set[int]:
        """The ids of the rules held."""
        with self._lock:
            return set(self._where)

    def count(self) -> int:
        """How many rules are armed."""
        with self._lock:
            return len(self._where)

    def touched_total(self) -> int:
        """Rules read or changed by ticks so far (every index)."""
        with self._lock:
            return sum(i.touched_total for i in self._indexes.values())

    def take_dirty(self) -> dict[int, Decimal]:
        """The trailing extremes moved since the last call (rule id -> extreme)."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        return dirty

    def markets(self) -> list[Market]:
        """Markets with at least one rule."""
        with self._lock:
            return sorted({slot[0] for slot in self._indexes})

    def _market_held(self, market: Market) -> bool:
        return any(s[0] == market and len(i) for s, i in self._indexes.items())

    def _disarm_locked(self, rule_id: int) -> tuple[Rule | None, Market | None]:
        slot = self._where.pop(rule_id, None)
        if slot is None:
            return None, None
        index = self._indexes[slot]
        rule = index.remove(rule_id)
        if not len(index):
            del self._indexes[slot]
        self._forget(rule_id)
        return rule, slot[0]

    def _forget(self, rule_id: int) -> None:
        self._where.pop(rule_id, None)
        self._dirty.pop(rule_id, None)
        owner = self._owner.pop(rule_id, None)
        if owner is not None:
            ids = self._siblings.get(owner)
            if ids is not None:
                ids.discard(rule_id)
                if not ids:
                    del self._siblings[owner]

    # ---- ticks --------------------------------------------------------------------
    def _tick_handler(self, market: Market) -> Callable[[Ticker], None]:
        def on_tick(tick: Ticker) -> None:
            self.handle_tick(market, tick)
        return on_tick

    def handle_tick(self, market: Market, tick: Ticker) -> list[Rule]:
        """Evaluate one tick of ``market``: the MARK_PRICE rules on its mark price, the
        CONTRACT_PRICE rules on its last price. Returns the rules that fired."""
        began = time.perf_counter()
        fired: list[tuple[Rule, Decimal]] = []
        unsubscribe = False
        with self._lock:
            for working_type, price in (("MARK_PRICE", tick.mark_price),
                                        ("CONTRACT_PRICE", tick.last_price)):
                index = self._indexes.get((market, working_type))
                if index is None or price is None or not len(index):
                    continue
                result = index.on_tick(price)
                for rule in result.moved:
                    if rule.id in self._where:
                        self._dirty[rule.id] = rule.extreme  # type: ignore[assignment]
                for rule in result.fired:
                    if rule.id not in self._where:
                        continue  # a sibling fired first in this tick
                    owner = self._owner.get(rule.id)
                    self._forget(rule.id)
                    fired.append((rule, price))
                    for other in list(self._siblings.get(owner, ())) if owner else ():
                        self._disarm_locked(other)  # OCO: disarmed before the next tick
                if not len(index):
                    self._indexes.pop((market, working_type), None)
            unsubscribe = not self._market_held(market)
            self.ticks += 1
            self.tick_seconds += time.perf_counter() - began
        for rule, price in fired:
            try:
                self._on_fire(rule, price)
            except Exception:  # isolation boundary: the other positions' rules still fire
                logger.exception("protection fire failed leg_id=%s", rule.id)
        if unsubscribe:
            self._tickers.unsubscribe(*market, SUBSCRIBER)
        return [r for r, _ in fired]
