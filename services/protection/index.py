"""The ordered trigger index of server-mode rules of one market (exchange, testnet,
symbol): a mark price tick touches only the rules it crossed.

Every rule is, at any moment, one price level in one of two sorted lists:

- ``below``: fires (or activates) when the price falls to or under its level: a LONG's
  stop-loss, a LONG's activated trailing stop, a SHORT's take-profit, a SHORT's trailing
  stop waiting for its activation price;
- ``above``: fires (or activates) when the price rises to or over its level: the
  mirror images.

A tick at price ``p`` bisects both lists: the crossed rules are a prefix of ``above``
(levels <= p) and a suffix of ``below`` (levels >= p); nothing else is read. Activated
trailing stops also sit in a list ordered by their extreme price (the highest mark
since activation for a LONG, the lowest for a SHORT); a tick that makes a new extreme
touches only the rules whose extreme it passed (their stop level moves with it). A
trailing stop without an activation price is active at once, from the price when it
is armed.

Pure and single-threaded: the caller (``services.protection.guard``) locks. Prices are
Decimals; ``callback_rate`` is in percent (``Decimal("1.5")`` = 1.5 %).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from decimal import Decimal

HUNDRED = Decimal(100)


@dataclass
class Rule:
    """One server-mode leg as the index sees it.

    ``id``: the leg's row id; ``position_side`` LONG or SHORT; ``kind`` stop_loss,
    take_profit or trailing_stop; ``trigger_price`` (stop-loss, take-profit);
    ``callback_rate``, ``activation_price`` and ``extreme`` (trailing: None until it
    is activated); ``owner``: anything the caller wants back when it fires."""

    id: int
    position_side: str
    kind: str
    trigger_price: Decimal | None = None
    callback_rate: Decimal | None = None
    activation_price: Decimal | None = None
    extreme: Decimal | None = None
    owner: object = None

    @property
    def long(self) -> bool:
        return self.position_side == "LONG"

    def trailing_stop_level(self) -> Decimal:
        """The activated trailing stop's level: extreme x (1 -/+ rate/100)."""
        assert self.extreme is not None and self.callback_rate is not None
        factor = self.callback_rate / HUNDRED
        return self.extreme * (1 - factor) if self.long else self.extreme * (1 + factor)


@dataclass
class TickResult:
    """What one tick did: ``fired`` rules (removed from the index), ``moved`` trailing
    rules whose extreme changed or that were activated (their new ``extreme`` is to be
    persisted), ``touched``: how many rules the tick read or changed."""

    fired: list[Rule] = field(default_factory=list)
    moved: list[Rule] = field(default_factory=list)
    touched: int = 0


class TriggerIndex:
    """The rules of one market, ordered by trigger level (see the module doc)."""

    def __init__(self) -> None:
        self._below: list[tuple[Decimal, int]] = []
        self._above: list[tuple[Decimal, int]] = []
        self._long_extremes: list[tuple[Decimal, int]] = []   # ascending; new high passes low ones
        self._short_extremes: list[tuple[Decimal, int]] = []  # ascending; new low passes high ones
        self._rules: dict[int, Rule] = {}
        self._where: dict[int, tuple[list, Decimal]] = {}  # id -> (list, level) of its entry
        self.touched_total = 0  # rules read or changed by ticks since creation

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: int) -> bool:
        return rule_id in self._rules

    def rules(self) -> list[Rule]:
        """Every rule held (any order)."""
        return list(self._rules.values())

    def add(self, rule: Rule, price: Decimal | None = None) -> None:
        """Arm ``rule`` (replacing one of the same id). A trailing stop with neither an
        activation price nor an extreme is activated at ``price`` (the current mark;
        required then). Raises ValueError for a rule missing its prices."""
        self.remove(rule.id)
        if rule.kind == "trailing_stop":
            if rule.callback_rate is None or rule.callback_rate <= 0:
                raise ValueError("a trailing stop needs a positive callback_rate")
            if rule.extreme is None and rule.activation_price is None:
                if price is None:
                    raise ValueError("a trailing stop without an activation price needs the mark")
                rule.extreme = price
            self._rules[rule.id] = rule
            if rule.extreme is None:  # waits for its activation price
                assert rule.activation_price is not None
                self._put(rule.id, self._above if rule.long else self._below, rule.activation_price)
            else:
                self._activate(rule, rule.extreme)
            return
        if rule.trigger_price is None:
            raise ValueError(f"a {rule.kind} needs a trigger_price")
        stop_like = rule.kind == "stop_loss"
        # LONG stop-loss / SHORT take-profit fire on a fall; the others on a rise
        falls = stop_like == rule.long
        self._rules[rule.id] = rule
        self._put(rule.id, self._below if falls else self._above, rule.trigger_price)

    def remove(self, rule_id: int) -> Rule | None:
        """Disarm a rule; returns it, or None when it was not held."""
        rule = self._rules.pop(rule_id, None)
        if rule is None:
            return None
        self._drop(rule_id)
        if rule.kind == "trailing_stop" and rule.extreme is not None:
            self._drop_extreme(rule)
        return rule

    def on_tick(self, price: Decimal) -> TickResult:
        """Apply one mark price: fire the rules it crossed, activate trailing stops whose
        activation price it reached, move the activated trailing stops whose extreme it
        passed. Fired rules leave the index."""
        result = TickResult()
        crossed = self._take_crossed(price)
        result.touched += len(crossed)
        for rule_id in crossed:
            rule = self._rules[rule_id]
            if rule.kind == "trailing_stop" and rule.extreme is None:
                self._activate(rule, price)  # reached its activation price: trails from here
                result.moved.append(rule)
            else:
                del self._rules[rule_id]
                if rule.kind == "trailing_stop":
                    self._drop_extreme(rule)
                result.fired.append(rule)
        for rule in self._passed_extremes(price):
            result.touched += 1
            self._drop(rule.id)
            rule.extreme = price
            self._put(rule.id, self._below if rule.long else self._above, rule.trailing_stop_level())
            self._put_extreme(rule)
            result.moved.append(rule)
        self.touched_total += result.touched
        return result

    # ---- internals -----------------------------------------------------------------
    def _activate(self, rule: Rule, extreme: Decimal) -> None:
        rule.extreme = extreme
        self._drop(rule.id)
        self._put(rule.id, self._below if rule.long else self._above, rule.trailing_stop_level())
        self._put_extreme(rule)

    def _put(self, rule_id: int, side: list, level: Decimal) -> None:
        bisect.insort(side, (level, rule_id))
        self._where[rule_id] = (side, level)

    def _drop(self, rule_id: int) -> None:
        where = self._where.pop(rule_id, None)
        if where is None:
            return
        side, level = where
        i = bisect.bisect_left(side, (level, rule_id))
        if i < len(side) and side[i] == (level, rule_id):
            del side[i]

    def _put_extreme(self, rule: Rule) -> None:
        assert rule.extreme is not None
        bisect.insort(self._long_extremes if rule.long else self._short_extremes,
                      (rule.extreme, rule.id))

    def _drop_extreme(self, rule: Rule) -> None:
        side = self._long_extremes if rule.long else self._short_extremes
        assert rule.extreme is not None
        i = bisect.bisect_left(side, (rule.extreme, rule.id))
        if i < len(side) and side[i] == (rule.extreme, rule.id):
            del side[i]

    def _take_crossed(self, price: Decimal) -> list[int]:
        """Remove and return the ids of every entry the price reached, in the order
        they were crossed (from the previous price's side)."""
        out: list[int] = []
        # above: levels <= price (a prefix)
        n = bisect.bisect_right(self._above, (price, float("inf")))
        if n:
            taken, self._above[:n] = self._above[:n], []
            out.extend(rule_id for _, rule_id in taken)  # a rise crosses the lowest first
        # below: levels >= price (a suffix)
        i = bisect.bisect_left(self._below, (price, -1))
        if i < len(self._below):
            taken, self._below[i:] = self._below[i:], []
            out.extend(rule_id for _, rule_id in reversed(taken))  # a fall: the highest first
        for rule_id in out:
            self._where.pop(rule_id, None)
        return out

    def _passed_extremes(self, price: Decimal) -> list[Rule]:
        """Remove and return the activated trailing rules whose extreme ``price``
        passes (a new high for a LONG, a new low for a SHORT)."""
        n = bisect.bisect_left(self._long_extremes, (price, -1))  # extremes < price
        passed = [self._rules[i] for _, i in self._long_extremes[:n]]
        del self._long_extremes[:n]
        j = bisect.bisect_right(self._short_extremes, (price, float("inf")))  # extremes > price
        passed += [self._rules[i] for _, i in self._short_extremes[j:]]
        del self._short_extremes[j:]
        return passed
