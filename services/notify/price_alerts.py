"""Price alerts (``POST /api/alerts/price``): evaluated on every tick of the shared
market stream of their symbol (``services.tickers.TickerHub``, subscriber
``price_alerts``), against the mark price.

The cost of a tick does not grow with alerts far from the price: per (exchange,
symbol) the armed thresholds are kept sorted, ``above`` ones ascending and ``below``
ones descending, so a tick is two binary searches (``bisect``) plus the alerts it
actually crosses. An ``above`` alert fires when the price is >= its threshold, a
``below`` one when it is <= it. A one-shot alert fires once; a repeating one is
re-armed once the price is back on the other side (strictly), and fires again at the
next crossing.

A tick only moves alerts between the in-memory lists and queues the firings; a
background task writes them (``UPDATE ... WHERE armed`` so that two server processes
following the same symbol fire an alert once) and raises the ``price_alert`` alert
(``AlertService.raise_alert``: an ``alerts`` push and a notification). Alerts made or
deleted by another process are picked up by a reload every ``RELOAD_S``.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from exchanges.types import Ticker
from models import Database, PriceAlert, now_ms
from services.errors import NotFound
from services.lifecycle import StopFlag
from services.serialize import dec

logger = logging.getLogger(__name__)

SUBSCRIBER = "price_alerts"  # the TickerHub subscriber name
RELOAD_S = 10.0
MAX_PER_USER = 200


@dataclass
class _Book:
    """The alerts of one (exchange, symbol). Lists of ``(threshold, id)``; ``below``
    lists hold the negated threshold so that every list is ascending."""

    armed_above: list[tuple[Decimal, int]] = field(default_factory=list)
    armed_below: list[tuple[Decimal, int]] = field(default_factory=list)  # (-threshold, id)
    fired_above: list[tuple[Decimal, int]] = field(default_factory=list)  # repeating, waiting
    fired_below: list[tuple[Decimal, int]] = field(default_factory=list)  # (-threshold, id)

    def size(self) -> int:
        return (len(self.armed_above) + len(self.armed_below) + len(self.fired_above)
                + len(self.fired_below))


@dataclass(frozen=True)
class _Info:
    user_id: int
    exchange: str
    symbol: str
    side: str  # "above" or "below"
    threshold: Decimal
    repeat: bool


class PriceAlertService:
    """Stores price alerts and evaluates them on ticks.

    Args:
        db: the database.
        raise_alert: ``AlertService.raise_alert``.
        tickers: the TickerHub (``subscribe(exchange, testnet, symbol, subscriber,
            on_tick)``, ``unsubscribe(...)``).
        check_symbol: ``check_symbol(user_id, exchange, symbol)`` raises a
            ValidationFailed naming ``symbol`` (or ``exchange``) when it is unknown.
        sleep: cooperative sleep.
        reload_s: seconds between reloads of the alerts (``RELOAD_S``; the
            ``PRICE_ALERTS_RELOAD_S`` setting).
    """

    def __init__(self, db: Database, raise_alert: Callable[..., dict], tickers: Any,
                 check_symbol: Callable[[int, str, str], None],
                 sleep: Callable[[float], None], reload_s: float = RELOAD_S) -> None:
        self._db = db
        self._reload_s = reload_s
        self._raise = raise_alert
        self._tickers = tickers
        self._check_symbol = check_symbol
        self._sleep = sleep
        self._lock = threading.Lock()
        self._books: dict[tuple[str, str], _Book] = {}
        self._info: dict[int, _Info] = {}
        self._followed: set[tuple[str, str]] = set()
        self._queue: deque[tuple[str, int, Decimal]] = deque()  # ("fire"|"rearm", id, price)
        self._wake = threading.Event()
        self.stopping = StopFlag(sleep)
        self.ticks = 0
        self.fired = 0

    # ---- REST -------------------------------------------------------------------------
    def create(self, user_id: int, exchange: str, symbol: str, above: Decimal | None,
               below: Decimal | None, repeat: bool) -> PriceAlert:
        """Store and arm a price alert. Raises ValidationFailed (unknown symbol, too
        many alerts) naming the field."""
        from services.errors import ValidationFailed
        self._check_symbol(user_id, exchange, symbol)
        with self._db.transaction() as s:
            count = len(s.scalars(select(PriceAlert.id).where(PriceAlert.user_id == user_id)).all())
            if count >= MAX_PER_USER:
                raise ValidationFailed("too_many_price_alerts",
                                       f"at most {MAX_PER_USER} price alerts per user", "symbol")
            row = PriceAlert(user_id=user_id, exchange=exchange, symbol=symbol, above=above,
                             below=below, repeat=repeat, armed=True)
            s.add(row)
            s.flush()
        self._add(row)
        logger.info("price alert created id=%s user_id=%s exchange=%s symbol=%s", row.id,
                    user_id, exchange, symbol)
        return row

    def list(self, user_id: int) -> list[PriceAlert]:
        """The user's price alerts, oldest first."""
        with self._db.session() as s:
            return list(s.scalars(select(PriceAlert).where(PriceAlert.user_id == user_id)
                                  .order_by(PriceAlert.id)))

    def delete(self, user_id: int, alert_id: int) -> None:
        """Remove one of the user's alerts. Raises NotFound (also for another user's)."""
        with self._db.transaction() as s:
            row = s.get(PriceAlert, alert_id)
            if row is None or row.user_id != user_id:
                raise NotFound("price_alert_not_found", "no such price alert", "id")
            s.delete(row)
        self._remove(alert_id)

    # ---- the in-memory index ------------------------------------------------------------
    def _add(self, row: PriceAlert) -> None:
        side = "above" if row.above is not None else "below"
        threshold = row.above if row.above is not None else row.below
        assert threshold is not None
        info = _Info(row.user_id, row.exchange, row.symbol, side, threshold, row.repeat)
        key = (row.exchange, row.symbol)
        with self._lock:
            if row.id in self._info:
                return
            if not row.armed and not row.repeat:
                return  # a one-shot alert that fired: nothing to watch
            self._info[row.id] = info
            book = self._books.setdefault(key, _Book())
            entry = (threshold if side == "above" else -threshold, row.id)
            target = {("above", True): book.armed_above, ("below", True): book.armed_below,
                      ("above", False): book.fired_above, ("below", False): book.fired_below}
            bisect.insort(target[(side, row.armed)], entry)
            follow = key not in self._followed
            self._followed.add(key)
        if follow:
            self._tickers.subscribe(row.exchange, False, row.symbol, SUBSCRIBER,
                                    on_tick=lambda t, ex=row.exchange: self.on_tick(ex, t))

    def _remove(self, alert_id: int) -> None:
        with self._lock:
            info = self._info.pop(alert_id, None)
            if info is None:
                return
            key = (info.exchange, info.symbol)
            book = self._books[key]
            for lst in (book.armed_above, book.armed_below, book.fired_above, book.fired_below):
                for i, (_, aid) in enumerate(lst):
                    if aid == alert_id:
                        del lst[i]
                        break
            unfollow = book.size() == 0
            if unfollow:
                del self._books[key]
                self._followed.discard(key)
        if unfollow:
            self._tickers.unsubscribe(info.exchange, False, info.symbol, SUBSCRIBER)

    def on_tick(self, exchange: str, tick: Ticker) -> None:
        """A mark price tick (TickerHub's callback, in the push path: memory only)."""
        price = tick.mark_price
        if price is None:
            return
        self.ticks += 1
        with self._lock:
            book = self._books.get((exchange, tick.symbol))
            if book is None:
                return
            # above: every armed threshold <= price fires
            n = bisect.bisect_right(book.armed_above, (price, float("inf")))
            fired = book.armed_above[:n]
            if n:
                del book.armed_above[:n]
            # below: every armed threshold >= price fires (-threshold <= -price)
            m = bisect.bisect_right(book.armed_below, (-price, float("inf")))
            fired_b = book.armed_below[:m]
            if m:
                del book.armed_below[:m]
            # repeating ones re-arm once the price is back on the other side
            k = bisect.bisect_right(book.fired_above, (price, float("inf")))
            rearm = book.fired_above[k:]
            del book.fired_above[k:]
            j = bisect.bisect_right(book.fired_below, (-price, float("inf")))
            rearm_b = book.fired_below[j:]
            del book.fired_below[j:]
            for entry in rearm:
                bisect.insort(book.armed_above, entry)
            for entry in rearm_b:
                bisect.insort(book.armed_below, entry)
            for entry in fired:
                if self._info[entry[1]].repeat:
                    bisect.insort(book.fired_above, entry)
                else:
                    self._info.pop(entry[1], None)
            for entry in fired_b:
                if self._info[entry[1]].repeat:
                    bisect.insort(book.fired_below, entry)
                else:
                    self._info.pop(entry[1], None)
            work = ([("fire", aid, price) for _, aid in fired + fired_b]
                    + [("rearm", aid, price) for _, aid in rearm + rearm_b])
        if work:
            self._queue.extend(work)
            self._wake.set()

    # ---- background -------------------------------------------------------------------
    def load(self) -> int:
        """(Re)build the index from the database: alerts made or deleted by another
        process appear or go. Returns how many are watched."""
        watched = (PriceAlert.armed.is_(True)) | (PriceAlert.repeat.is_(True))
        with self._db.session() as s:  # ids only: a reload of 10,000 known alerts is cheap
            ids = set(s.scalars(select(PriceAlert.id).where(watched)))
        with self._lock:
            gone = [aid for aid in self._info if aid not in ids]
            new = sorted(ids - self._info.keys())
        for aid in gone:
            self._remove(aid)
        for i in range(0, len(new), 1000):
            with self._db.session() as s:
                for r in s.scalars(select(PriceAlert).where(PriceAlert.id.in_(new[i:i + 1000]),
                                                            watched)):
                    self._add(r)
        return len(ids)

    def run(self) -> None:
        """Write the firings the ticks queued and reload every ``reload_s``, until
        ``stop()``."""
        next_load = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_load:
                    self.load()
                    next_load = time.monotonic() + self._reload_s
                while self._queue:
                    self._apply(*self._queue.popleft())
            except Exception:  # isolation boundary: the loop goes on
                logger.exception("price alert pass failed")
                self.stopping.wait(1.0)
            while not self._queue and not self.stopping.is_set() \
                    and time.monotonic() < next_load:
                if self._wake.is_set():
                    self._wake.clear()
                    break
                self._sleep(0.02)

    def _apply(self, what: str, alert_id: int, price: Decimal) -> None:
        now = now_ms()
        with self._db.transaction() as s:
            if what == "rearm":
                s.execute(update(PriceAlert).where(PriceAlert.id == alert_id,
                                                   PriceAlert.armed.is_(False))
                          .values(armed=True))
                return
            res = s.execute(update(PriceAlert).where(PriceAlert.id == alert_id,
                                                     PriceAlert.armed.is_(True))
                            .values(armed=False, fired_at=now))
            if res.rowcount != 1:
                return  # deleted, or fired by another process
            row = s.get(PriceAlert, alert_id)
        if row is None:
            return
        side = "above" if row.above is not None else "below"
        threshold = row.above if row.above is not None else row.below
        self.fired += 1
        self._raise("price_alert", row.user_id, None, row.symbol,
                    f"{row.symbol} mark price {dec(price)} is {side} {dec(threshold)}",
                    {"price_alert_id": row.id, "exchange": row.exchange, "side": side,
                     "threshold": dec(threshold), "price": dec(price), "repeat": row.repeat})

    def stop(self) -> None:
        """End the background loop."""
        self.stopping.set()

    def stats(self) -> dict:
        """``{"watched", "symbols", "ticks", "fired", "queued"}``."""
        with self._lock:
            return {"watched": len(self._info), "symbols": len(self._books), "ticks": self.ticks,
                    "fired": self.fired, "queued": len(self._queue)}
