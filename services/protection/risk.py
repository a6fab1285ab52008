"""Risk alerts (CONTRACT.md third round, "New type ``alerts``"): ``margin_call``,
``liquidation``, ``adl`` and ``liquidation_near``, each raised through
``services.notify.alerts.AlertService.raise_alert`` (an ``alerts`` item: pushed,
durable, replayable; and its notification).

- ``margin_call``: Binance ``MARGIN_CALL`` on the user data stream
  (``exchanges.types.MarginCall``, one per position; Binance "Event: Margin Call").
- ``liquidation`` / ``adl``: a fill whose ``reason`` the adapter set from the venue's
  markers (Binance ``autoclose-`` / ``adl_autoclose`` client order ids, Bybit
  ``execType`` ``BustTrade`` / ``AdlTrade``). One alert per venue order (a liquidation
  filled in several parts is one alert); a fill seen again (the gap fill, a replay) is
  not alerted twice (memory, then the stored alerts).
- ``liquidation_near``: the mark price within ``liquidation_warning_pct`` percent (the
  user's notification setting, default 10) of the position's liquidation price:
  ``|mark - liquidation| / mark * 100 <= pct``. Once per position until the mark moves
  back out. Evaluated on the shared market stream's mark ticks per position (a dict
  lookup and one comparison per open position of the symbol: no rule walk). A
  position's liquidation price and the user's threshold are read on a task when the
  account stream reports the position's shape changed: the threshold of every key
  reported at the same moment in one query (a reconnect storm reports thousands), the
  liquidation price from the report itself when it is the stream's first (its REST
  snapshot carries the venue's figure; none, Binance's "0", means the position is not
  watched), else, after a shape change the user data stream reported (its frame does
  not carry it), from the positions the stream's own REST completion of that event
  reads (``positions_read``: no request of ours); only when no such read comes within
  ``WATCH_FALLBACK_S`` are they asked from the venue (``get_positions``).

The handlers called from the account stream do no I/O: the work goes to a task.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from exchanges.errors import ExchangeError
from exchanges.types import FILL_REASON_ADL, FILL_REASON_LIQUIDATION, MarginCall, Position
from models import Alert, Database, ExchangeKey
from models.notify import NotificationSettings
from services.coalesce import Coalescer

logger = logging.getLogger(__name__)

SUBSCRIBER = "risk:liquidation_near"
DEFAULT_WARNING_PCT = Decimal("10")
MAX_SEEN = 20_000  # venue orders remembered as alerted (bounded)
# a shape change's positions are taken from the stream's REST completion of the event
# (0.1 s after it; at most every ``event_refresh_s``, 5 s, per endpoint); without one
# this long after the change, the venue is asked
WATCH_FALLBACK_S = 6.0


@dataclass
class Watched:
    """One open position watched for ``liquidation_near``."""

    user_id: int
    key_id: int
    symbol: str
    side: str
    liquidation_price: Decimal
    pct: Decimal
    near: bool = False


RaiseAlert = Callable[..., object]  # raise_alert(kind, user_id, key_id, symbol, message, detail)


class RiskAlerts:
    """Raises the risk alerts of every key streamed in this process.

    Args:
        db: the database; client_for: the cached exchange client of a key row;
        tickers: the TickerHub (mark ticks); spawn: starts a background task;
        raise_alert: ``AlertService.raise_alert`` (or a stand-in); sleep: cooperative
        sleep (the wait before a shape change's positions are asked from the venue).
    """

    def __init__(self, db: Database, client_for: Callable, tickers, spawn: Callable,  # type: ignore[no-untyped-def]
                 raise_alert: RaiseAlert, sleep: Callable[[float], None] = time.sleep) -> None:
        self._db = db
        self._sleep = sleep
        # key_id -> symbols whose shape changed, waiting for the stream's REST positions
        self._pending: dict[int, set[str]] = {}
        self.asked = 0  # venue position reads of the watcher (the fallback)
        self._stopped = False
        self._client_for = client_for
        self._tickers = tickers
        self._spawn = spawn
        self.raise_alert = raise_alert
        self._lock = threading.Lock()
        self._seen: dict[tuple, None] = {}  # alerted venue orders / margin calls
        # market -> (key_id, symbol) -> Watched
        self._watched: dict[tuple, dict[tuple[int, str], Watched]] = {}
        self._market_of: dict[tuple[int, str], tuple] = {}
        # key_id -> (user_id, exchange, testnet, warning pct): read together for the keys
        # whose positions were reported at the same moment
        self._owners: Coalescer[int, tuple[int, str, bool, Decimal]] = Coalescer(self._read_owners)
        self.raised = 0

    # ---- margin call, liquidation, ADL ---------------------------------------------
    def on_margin_call(self, key_id: int, event: MarginCall) -> None:
        """A ``MarginCall`` of key ``key_id`` (no I/O here)."""
        if self._first(("margin_call", key_id, event.symbol, event.event_time)):
            self._spawn(self._margin_call, key_id, event)

    def on_fill(self, user_id: int, key_id: int, fill) -> None:  # type: ignore[no-untyped-def]
        """A fill of key ``key_id`` seen by its stream (no I/O here): a liquidation or
        ADL fill raises its alert once per venue order."""
        reason = getattr(fill, "reason", None)
        if reason not in (FILL_REASON_LIQUIDATION, FILL_REASON_ADL):
            return
        if self._first((reason, key_id, fill.symbol, fill.order_id)):
            self._spawn(self._venue_close, user_id, key_id, fill)

    def _first(self, ident: tuple) -> bool:
        with self._lock:
            if ident in self._seen:
                return False
            if len(self._seen) >= MAX_SEEN:
                self._seen.clear()
            self._seen[ident] = None
            return True

    def _margin_call(self, key_id: int, event: MarginCall) -> None:
        try:
            with self._db.session() as s:
                key = s.get(ExchangeKey, key_id)
            if key is None:
                return
            side = "LONG" if event.position_amount > 0 else "SHORT"
            self.raise_alert(
                "margin_call", key.user_id, key_id, event.symbol,
                f"Margin call on {event.symbol} {side}: mark {event.mark_price:f}, "
                f"maintenance margin {event.maintenance_margin:f}",
                {"side": side, "position_amount": f"{event.position_amount:f}",
                 "mark_price": f"{event.mark_price:f}", "margin_type": event.margin_type,
                 "unrealized_pnl": f"{event.unrealized_pnl:f}",
                 "maintenance_margin": f"{event.maintenance_margin:f}",
                 "cross_wallet_balance": None if event.cross_wallet_balance is None
                 else f"{event.cross_wallet_balance:f}", "event_time": event.event_time})
            self.raised += 1
        except Exception:  # isolation boundary: a task's failure is logged
            logger.exception("margin call alert failed key_id=%s symbol=%s", key_id, event.symbol)

    def _venue_close(self, user_id: int, key_id: int, fill) -> None:  # type: ignore[no-untyped-def]
        kind = fill.reason
        try:
            if self._stored(user_id, kind, key_id, fill.order_id):
                return  # alerted before (another process, or before a restart)
            what = "Liquidation" if kind == FILL_REASON_LIQUIDATION else "Auto-deleveraging"
            self.raise_alert(
                kind, user_id, key_id, fill.symbol,
                f"{what} on {fill.symbol}: {fill.side} {fill.quantity:f} at {fill.price:f}",
                {"order_id": fill.order_id, "side": fill.side, "price": f"{fill.price:f}",
                 "quantity": f"{fill.quantity:f}", "trade_id": fill.trade_id,
                 "time": fill.time})
            self.raised += 1
        except Exception:  # isolation boundary: a task's failure is logged
            logger.exception("%s alert failed key_id=%s symbol=%s", kind, key_id, fill.symbol)

    def _stored(self, user_id: int, kind: str, key_id: int, order_id: str) -> bool:
        needle = json.dumps({"order_id": order_id})[1:-1]  # '"order_id": "..."'
        with self._db.session() as s:
            return s.scalar(select(Alert.id).where(
                Alert.user_id == user_id, Alert.kind == kind, Alert.key_id == key_id,
                Alert.detail.contains(needle)).limit(1)) is not None

    # ---- liquidation near ------------------------------------------------------------
    def positions_seen(self, key_id: int, positions: list, complete: bool = False) -> None:
        """The account stream reported a shape change of key ``key_id``'s positions
        (closed ones with size 0; no I/O here): closed ones stop being watched, open
        ones are (re)read on a task. ``complete``: the stream's first report, built from
        its REST snapshot, whose liquidation prices are the venue's own."""
        opened = []
        for p in positions:
            if p.size == 0:
                self._unwatch(key_id, p.symbol)
            else:
                opened.append(p.symbol)
        if not opened:
            return
        if complete:
            given = {p.symbol: p for p in positions if p.size != 0}
            if not any(given[symbol].liquidation_price for symbol in opened):
                # none of the snapshot's positions can be liquidated (the venue's "0"):
                # none is watched, so no task and no read of the key's owner (in a storm
                # of such keys that was one task and a share of a batched read per key)
                for symbol in opened:
                    self._unwatch(key_id, symbol)
                return
            self._spawn(self._watch, key_id, opened, given)
            return
        with self._lock:  # the stream's completion reads them (``positions_read``)
            first = key_id not in self._pending
            self._pending.setdefault(key_id, set()).update(opened)
        if first:
            self._spawn(self._watch_unless_read, key_id)

    def positions_read(self, key_id: int, positions: list[Position]) -> None:
        """Key ``key_id``'s account stream read its positions from the venue (its REST
        completion of an event, a poll; no I/O here): the symbols waiting since a shape
        change are watched with these figures, without asking again."""
        with self._lock:
            waiting = self._pending.pop(key_id, None)
        if waiting:
            self._spawn(self._watch, key_id, sorted(waiting),
                        {p.symbol: p for p in positions if p.size != 0})

    def _watch_unless_read(self, key_id: int) -> None:
        """The fallback: ``WATCH_FALLBACK_S`` after a shape change no read of the stream
        came (held back by the rate governor, the stream gone): ask the venue."""
        self._sleep(WATCH_FALLBACK_S)
        if self._stopped:  # shutting down: no venue call
            return
        with self._lock:
            waiting = self._pending.pop(key_id, None)
        if waiting:
            self._watch(key_id, sorted(waiting))

    def _read_owners(self, key_ids: list[int]) -> dict[int, tuple[int, str, bool, Decimal]]:
        """``{key_id: (user_id, exchange, testnet, liquidation warning pct)}`` in one query."""
        with self._db.session() as s:
            rows = s.execute(
                select(ExchangeKey.id, ExchangeKey.user_id, ExchangeKey.exchange,
                       ExchangeKey.testnet, NotificationSettings.liquidation_warning_pct)
                .outerjoin(NotificationSettings, NotificationSettings.user_id == ExchangeKey.user_id)
                .where(ExchangeKey.id.in_(key_ids))).all()
        return {r[0]: (r[1], r[2], bool(r[3]),
                       Decimal(r[4]) if r[4] is not None else DEFAULT_WARNING_PCT) for r in rows}

    def _unwatch(self, key_id: int, symbol: str) -> None:
        with self._lock:
            market = self._market_of.pop((key_id, symbol), None)
            if market is None:
                return
            held = self._watched.get(market, {})
            held.pop((key_id, symbol), None)
            last = not held
            if last:
                self._watched.pop(market, None)
        if last:
            self._tickers.unsubscribe(*market, SUBSCRIBER)

    def _watch(self, key_id: int, symbols: list[str], given: dict[str, Position] | None = None) -> None:
        try:
            owner = self._owners.get(key_id)
            if owner is None:
                return
            user_id, exchange, testnet, pct = owner
            if given is not None:
                # the stream's REST snapshot: the venue's own figures. A position it gives
                # no liquidation price (Binance "0": a well-collateralised long that
                # cannot be liquidated) is not watched; asking again returned the same
                # "0" and cost a key read and a positionRisk (weight 5) per key, about
                # 15 % of a 4,000-user storm's server CPU
                held = given
            else:
                with self._db.session() as s:
                    key = s.get(ExchangeKey, key_id)
                if key is None:
                    return
                self.asked += 1
                held = {p.symbol: p for p in self._client_for(key).get_positions() if p.size != 0}
        except ExchangeError as e:  # the next shape change reads them again
            logger.warning("liquidation watch could not read positions key_id=%s kind=%s",
                           key_id, type(e).__name__)
            return
        except Exception:  # isolation boundary: a task's failure is logged
            logger.exception("liquidation watch failed key_id=%s", key_id)
            return
        for symbol in symbols:
            p = held.get(symbol)
            if p is None or not p.liquidation_price:
                self._unwatch(key_id, symbol)
                continue
            market = (exchange, testnet, symbol)
            with self._lock:
                peers = self._watched.setdefault(market, {})
                old = peers.get((key_id, symbol))
                subscribe = not any(m == market for m in self._market_of.values())
                near = bool(old and old.near and old.side == p.side)
                peers[(key_id, symbol)] = Watched(user_id, key_id, symbol, p.side,
                                                  p.liquidation_price, pct, near)
                self._market_of[(key_id, symbol)] = market
            if subscribe:
                tick = self._tickers.subscribe(*market, SUBSCRIBER, self._tick_handler(market))
            else:
                tick = None
            if tick is not None:
                self.handle_tick(market, tick)
            elif p.mark_price:
                self.check(market, p.mark_price)

    def _tick_handler(self, market: tuple) -> Callable:
        def on_tick(tick) -> None:  # type: ignore[no-untyped-def]
            self.handle_tick(market, tick)
        return on_tick

    def handle_tick(self, market: tuple, tick) -> None:  # type: ignore[no-untyped-def]
        """A mark tick of ``market`` ``(exchange, testnet, symbol)``."""
        if tick.mark_price:
            self.check(market, tick.mark_price)

    def check(self, market: tuple, mark: Decimal) -> list[Watched]:
        """Compare ``mark`` with each watched position of ``market``; raise
        ``liquidation_near`` (on a task) for those that just came within their
        threshold. Returns them."""
        entering = []
        with self._lock:
            for w in self._watched.get(market, {}).values():
                near = abs(mark - w.liquidation_price) * 100 <= w.pct * mark
                if near and not w.near:
                    entering.append(w)
                w.near = near
        for w in entering:
            self._spawn(self._near, w, mark)
        return entering

    def _near(self, w: Watched, mark: Decimal) -> None:
        try:
            distance = abs(mark - w.liquidation_price) * 100 / mark
            self.raise_alert(
                "liquidation_near", w.user_id, w.key_id, w.symbol,
                f"{w.symbol} {w.side} is {distance:.2f} % from liquidation at "
                f"{w.liquidation_price:f} (mark {mark:f})",
                {"side": w.side, "mark_price": f"{mark:f}",
                 "liquidation_price": f"{w.liquidation_price:f}",
                 "distance_pct": f"{distance:.2f}", "warning_pct": f"{w.pct:f}"})
            self.raised += 1
        except Exception:  # isolation boundary: a task's failure is logged
            logger.exception("liquidation_near alert failed key_id=%s symbol=%s", w.key_id, w.symbol)

    def stop(self) -> None:
        """Leave every market stream; a pending fallback read is not made."""
        self._stopped = True
        self._tickers.unsubscribe_all(SUBSCRIBER)
