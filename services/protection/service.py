"""ProtectionService: set, list and remove a position's stop-loss, take-profit and
trailing stop (CONTRACT.md "Protection"), and run the server-mode rules.

Every leg is a ``protection_legs`` row (``models.protection``) written before anything
is sent or armed. A request is checked whole (position, mark price, tick size, venue
range: ``services.protection.rules``) before the first write, and its writes are one
transaction, so a refused request changes nothing.

Server mode (``mode: "server"``): the legs are written ``active`` and armed in the
``ServerGuard`` (evaluated on the shared market stream's ticks); a fired rule is acted
on by ``firing.RuleFiring`` on its own task (the exit first, then the leg's
compare-and-set and one-cancels-the-others, then the alert). Exchange mode:
``exchange_mode.ExchangeLegs``. What the pushes show: ``pushes.LegViews``. Rules are re-armed at
start-up (``start_up``); the trailing extremes are written about once a second
(``run_periodic``); a periodic sweep cancels the legs of positions that ended by
another path (a manual close, a liquidation).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select

from exchanges.errors import ExchangeError
from exchanges.types import MarginCall, Position
from exchanges.venues import venue
from models import (
    LIVE_LEG_STATUSES,
    Database,
    ExchangeKey,
    LegStatus,
    ProtectionLeg,
    now_ms,
)
from services.accounts import get_owned_key
from services.errors import Conflict, NotFound, ValidationFailed
from services.lifecycle import StopFlag
from services.protection.exchange_mode import ExchangeLegs, new_client_order_id
from services.protection.fill_tags import FillTags
from services.protection.firing import LegRef, OnAlert, RuleFiring
from services.protection.guard import ServerGuard
from services.protection.index import Rule
from services.protection.pushes import LegViews
from services.protection.risk import RiskAlerts
from services.protection.rules import LegSpec, check_leg
from services.protection.view import (
    protection_view,
)

logger = logging.getLogger(__name__)

KINDS = ("stop_loss", "take_profit", "trailing_stop")
# a leg or position event of an account stream is reconciled this long after it, not at
# once: when many legs fire together (one price move), every stream's fills are pushed
# before the reconcile rounds' venue calls and writes compete with them for the process;
# the updates of a key within the delay make one round
EVENT_RECONCILE_DELAY_S = 0.5


def _no_alert(kind: str, user_id: int, key_id: int, symbol: str, message: str, detail: dict) -> None:
    """The default ``on_alert``: nothing."""


class ProtectionService:
    """The protection domain.

    Args:
        db: the database; client_for: the cached exchange client of a key row;
        exits: the ExitService (``close_position``, ``get``); tickers: the TickerHub;
        spawn: starts a background task; sleep: cooperative sleep;
        on_alert: ``on_alert(kind, user_id, key_id, symbol, message, detail)`` (also the
            public attribute, settable after construction);
        sweep_s: seconds between sweeps for positions that ended by another path.
    """

    def __init__(self, db: Database, client_for: Callable, exits, tickers,  # type: ignore[no-untyped-def]
                 spawn: Callable, sleep: Callable[[float], None],
                 on_alert: OnAlert | None = None, sweep_s: float = 10.0) -> None:
        self._db = db
        self._client_for = client_for
        self._exits = exits
        self._spawn = spawn
        self._sleep = sleep
        # set again by the container once the alerts service exists (built after this one)
        self.on_alert: OnAlert = on_alert or _no_alert
        self.sweep_s = sweep_s
        # set by the container: ``live_positions(key_id)`` -> the key's open positions
        # (list[Position]) as its account stream running here holds them, None when none
        # is live and current here (``StreamManager.live_positions``): the sweep and the
        # batch fire take them instead of asking the venue
        self.live_positions: Callable[[int], list[Position] | None] | None = None
        self.guard = ServerGuard(tickers, self._fired)
        self._exchange = ExchangeLegs(db, client_for, self._venue_fired)
        self._reconciling: dict[int, bool] = {}  # key_id -> another round wanted
        self._reconciling_lock = threading.Lock()
        self.stopping = StopFlag(sleep)
        # which fills are a leg's, before they are pushed (a rule another process fired:
        # its leg read by exit id)
        self.tags = FillTags(lookup=self._exit_kind)
        self.views = LegViews(db, self.tags)  # what the pushes show
        self.firing = RuleFiring(db, exits, self.guard, lambda *alert: self.on_alert(*alert),
                                 self.stopping,
                                 self._set_status, self._refresh_key, self.tags,
                                 client_for=client_for, spawn=spawn,
                                 live_positions=self._live_positions)
        # the rules one tick fired, acted on together by one task (``RuleFiring.fire_many``)
        self._batch: list[tuple[LegRef, Decimal, float]] = []
        self._batch_lock = threading.Lock()
        self.fired = 0  # rules fired by this process
        # margin call, liquidation, ADL and liquidation-near alerts
        self.risk = RiskAlerts(db, client_for, tickers, spawn,
                               lambda *alert: self.on_alert(*alert), sleep)

    def _live_positions(self, key_id: int) -> list[Position] | None:
        return self.live_positions(key_id) if self.live_positions is not None else None

    # ---- REST -----------------------------------------------------------------------
    def put(self, user_id: int, key_id: int, symbol: str, named: dict,
            mode: str | None, working_type: str | None) -> dict:
        """Set legs of the ``symbol`` position of key ``key_id``: ``named`` maps a kind to
        its new values (an object with ``trigger_price`` or ``callback_rate`` /
        ``activation_price``) or None (remove it); kinds not named are kept (re-created
        when ``mode`` or ``working_type`` changes). Returns the protection (CONTRACT.md).

        Raises NotFound (key), Conflict ``no_position``, ValidationFailed (400 naming
        the field), ExchangeError (the position or the symbol's rules could not be read).
        """
        key = get_owned_key(self._db, user_id, key_id)
        live = self._live_rows(key_id, symbol)
        mode = mode or (live[0].mode if live else "exchange")
        working_type = working_type or (live[0].working_type if live else "MARK_PRICE")
        if mode == "exchange" and venue(key.exchange).protection is None:
            raise ValidationFailed("validation_error", f"mode: {key.exchange} holds no protection "
                                   "legs; use \"server\"", "mode")
        client = self._client_for(key)
        position = next((p for p in client.get_positions()
                         if p.symbol == symbol and p.size != 0), None)
        if position is None:
            raise Conflict("no_position", f"no open {symbol} position", "symbol")
        mark = position.mark_price or client.get_ticker(symbol).mark_price
        tick = client.get_symbol_rules(symbol).tick_size
        wanted, cancel = self._plan(named, live, position.side, mode, working_type)
        for spec in wanted:
            check_leg(spec, position.side, mark, tick, key.exchange)
        if mode == "exchange":
            try:
                self._exchange.apply(key, symbol, position.side, working_type, wanted, cancel)
            finally:
                for row in cancel:
                    if row.mode == "server":
                        self.guard.disarm(row.id)
                self._refresh_key(key_id)
            logger.info("protection set key_id=%s symbol=%s mode=exchange legs=%s canceled=%s",
                        key_id, symbol, ",".join(w.kind for w in wanted) or "-", len(cancel))
            return self._view(key_id, symbol)
        now = now_ms()
        rows = [ProtectionLeg(user_id=user_id, key_id=key_id, exchange=key.exchange,
                              symbol=symbol, side=position.side, kind=spec.kind, mode="server",
                              working_type=working_type, trigger_price=spec.trigger_price,
                              callback_rate=spec.callback_rate,
                              activation_price=spec.activation_price,
                              extreme_price=(mark if spec.kind == "trailing_stop"
                                             and spec.activation_price is None else None),
                              status=LegStatus.ACTIVE.value,
                              client_order_id=new_client_order_id(spec.kind),
                              created_at=now, updated_at=now) for spec in wanted]
        held_on_venue = [r for r in cancel if r.mode == "exchange"]
        if held_on_venue:  # switching to server mode: the venue's legs go first
            self._exchange.remove(key, held_on_venue)
        with self._db.transaction() as s:
            for row in cancel:
                held = s.get(ProtectionLeg, row.id, with_for_update=True)
                if held is not None and held.status in LIVE_LEG_STATUSES:
                    held.status = LegStatus.CANCELED.value
                    held.error_message = "replaced or removed"
            s.flush()
            s.add_all(rows)
        for row in cancel:
            self.guard.disarm(row.id)
        for row in rows:
            self._arm(row, key.testnet, mark)
        logger.info("protection set key_id=%s symbol=%s mode=server legs=%s canceled=%s",
                    key_id, symbol, ",".join(r.kind for r in rows) or "-", len(cancel))
        self._refresh_key(key_id)
        return self._view(key_id, symbol)

    def _plan(self, named: dict, live: list[ProtectionLeg], side: str, mode: str,
              working_type: str) -> tuple[list[LegSpec], list[ProtectionLeg]]:
        """``(legs to create, live rows to cancel)`` for a request."""
        by_kind = {r.kind: r for r in live}
        wanted: list[LegSpec] = []
        cancel: list[ProtectionLeg] = []
        for kind in KINDS:
            row = by_kind.get(kind)
            if kind in named:
                if row is not None:
                    cancel.append(row)
                value = named[kind]
                if value is not None:
                    wanted.append(LegSpec(kind, getattr(value, "trigger_price", None),
                                          getattr(value, "callback_rate", None),
                                          getattr(value, "activation_price", None)))
            elif row is not None and (row.side != side or row.mode != mode
                                      or row.working_type != working_type):
                cancel.append(row)  # a leg of another position, mode or price: re-created
                if row.side == side:
                    wanted.append(LegSpec(kind, row.trigger_price, row.callback_rate,
                                          row.activation_price))
        return wanted, cancel

    def protections(self, user_id: int, key_id: int) -> list[dict]:
        """The key's protections: one per symbol with a leg that is not ``canceled``."""
        get_owned_key(self._db, user_id, key_id)
        with self._db.session() as s:
            rows = list(s.scalars(select(ProtectionLeg).where(ProtectionLeg.key_id == key_id)
                                  .order_by(ProtectionLeg.symbol, ProtectionLeg.id)))
        out = []
        for symbol in sorted({r.symbol for r in rows}):
            view = protection_view(key_id, symbol, [r for r in rows if r.symbol == symbol])
            if view is not None and any(leg is not None for leg in view["legs"].values()):
                out.append(view)
        return out

    def delete(self, user_id: int, key_id: int, symbol: str) -> dict:
        """Cancel every live leg of the symbol; returns the protection with those legs
        ``canceled``. Raises NotFound (key; ``no_protection`` when the symbol never had a
        leg)."""
        key = get_owned_key(self._db, user_id, key_id)
        held_on_venue = [r for r in self._live_rows(key_id, symbol) if r.mode == "exchange"]
        try:
            if held_on_venue:
                self._exchange.remove(key, held_on_venue)
            canceled = self._cancel_live(key_id, symbol, "removed", None)
        finally:
            self._refresh_key(key_id)
        with self._db.session() as s:
            rows = list(s.scalars(select(ProtectionLeg).where(
                ProtectionLeg.key_id == key_id, ProtectionLeg.symbol == symbol)
                .order_by(ProtectionLeg.id)))
        view = protection_view(key_id, symbol, rows, show_canceled=True)
        if view is None:
            raise NotFound("no_protection", f"no protection for {symbol}", "symbol")
        logger.info("protection removed key_id=%s symbol=%s canceled=%s", key_id, symbol, len(canceled))
        return view

    def _view(self, key_id: int, symbol: str) -> dict:
        with self._db.session() as s:
            rows = list(s.scalars(select(ProtectionLeg).where(
                ProtectionLeg.key_id == key_id, ProtectionLeg.symbol == symbol)
                .order_by(ProtectionLeg.id)))
        view = protection_view(key_id, symbol, rows)
        assert view is not None
        return view

    def _live_rows(self, key_id: int, symbol: str) -> list[ProtectionLeg]:
        with self._db.session() as s:
            return list(s.scalars(select(ProtectionLeg).where(
                ProtectionLeg.key_id == key_id, ProtectionLeg.symbol == symbol,
                ProtectionLeg.status.in_(LIVE_LEG_STATUSES)).order_by(ProtectionLeg.id)))

    def _cancel_live(self, key_id: int, symbol: str, reason: str, code: str | None,
                     except_id: int | None = None) -> list[int]:
        """Cancel the live legs of a position (one transaction) and disarm them."""
        with self._db.transaction() as s:
            rows = list(s.scalars(select(ProtectionLeg).where(
                ProtectionLeg.key_id == key_id, ProtectionLeg.symbol == symbol,
                ProtectionLeg.status.in_(LIVE_LEG_STATUSES)).with_for_update()))
            ids = []
            for row in rows:
                if row.id == except_id:
                    continue
                row.status, row.error_message, row.error_code = LegStatus.CANCELED.value, reason, code
                ids.append(row.id)
        for leg_id in ids:
            self.guard.disarm(leg_id)
        return ids

    # ---- server mode: arming and firing ------------------------------------------------
    def _arm(self, row: ProtectionLeg, testnet: bool, mark: Decimal | None) -> None:
        rule = Rule(id=row.id, position_side=row.side, kind=row.kind,
                    trigger_price=row.trigger_price, callback_rate=row.callback_rate,
                    activation_price=row.activation_price, extreme=row.extreme_price,
                    owner=LegRef(row.id, row.user_id, row.key_id, row.symbol, row.kind))
        self.guard.arm((row.exchange, testnet, row.symbol), row.working_type, row.key_id, rule, mark)

    def start_up(self, retry_s: float = 2.0) -> int:
        """Arm every ``active`` server-mode leg and reconcile the exchange-held ones
        (start-up). A database that does not answer yet is waited for (logged once,
        retried every ``retry_s`` until ``stop()``): the rules must be armed. Returns how
        many rules were armed (0 when stopped first)."""
        logged = False
        while True:
            try:
                armed = self.resync()
                break
            except Exception as e:  # the database is down at start-up: wait for it
                if not logged:
                    logger.warning("protection rules not armed yet, retrying error=%s",
                                   type(e).__name__)
                    logged = True
                if self.stopping.wait(retry_s):
                    return 0
        logger.info("protection rules armed count=%s", armed)
        try:
            self.reconcile()  # exchange-held legs: what fired or changed while we were down
        except Exception:  # the periodic round reconciles again within sweep_s
            logger.exception("protection start-up reconcile failed")
        return armed

    def _fired(self, rule: Rule, price: Decimal) -> None:
        """ServerGuard callback on the tick's task: the work goes to a task, one for the
        rules a tick fired (the guard calls this for each before the task runs)."""
        self.fired += 1
        with self._batch_lock:
            self._batch.append((rule.owner, price, time.perf_counter()))  # type: ignore[arg-type]
            if len(self._batch) > 1:
                return  # the task spawned for the first one takes it
        self._spawn(self._fire_batch)

    def _fire_batch(self) -> None:
        with self._batch_lock:
            batch, self._batch = self._batch, []
        if batch:
            self.firing.fire_many(batch)

    # ---- what the pushes show (``pushes.LegViews``) ---------------------------------------
    def fill_reason(self, key_id: int, fill) -> str | None:  # type: ignore[no-untyped-def]
        """``stop_loss`` / ``take_profit`` / ``trailing_stop`` when ``fill`` (an
        ``exchanges.types.Fill`` of key ``key_id``) is a triggered leg's, else None
        (memory only: asked on the push path; see ``fill_tags``)."""
        return self.tags.reason(key_id, fill)

    def on_fill(self, user_id: int, key_id: int, fill):  # type: ignore[no-untyped-def]
        """A fill seen by key ``key_id``'s account stream, before it is stored and
        pushed (no I/O): returns it with ``reason`` set when it is a triggered leg's
        (``fill_reason``); a liquidation or ADL fill raises its alert on a task."""
        if getattr(fill, "reason", None) is None:
            reason = self.tags.reason(key_id, fill)
            if reason is not None:
                fill = replace(fill, reason=reason)
        self.risk.on_fill(user_id, key_id, fill)
        return fill

    def _exit_kind(self, key_id: int, symbol: str, exit_id: int) -> str | None:
        """The kind of the server-mode leg of ``key_id`` / ``symbol`` whose exit is
        ``exit_id`` (None: a manual close). One read on the (key_id, symbol) index."""
        with self._db.session() as s:
            return s.scalars(select(ProtectionLeg.kind).where(
                ProtectionLeg.key_id == key_id, ProtectionLeg.symbol == symbol,
                ProtectionLeg.exit_id == exit_id, ProtectionLeg.mode == "server")).first()

    def position_fields(self, key_id: int, symbol: str) -> dict:
        """``{"stop_loss", "take_profit", "trailing_stop"}`` of a position (no I/O)."""
        return self.views.position_fields(key_id, symbol)

    def leg_orders(self, key_id: int) -> list[dict]:
        """The key's exchange-held active legs as ``orders`` rows (no I/O)."""
        return self.views.leg_orders(key_id)

    @property
    def on_change(self) -> Callable[[int], None] | None:
        """``on_change(key_id)``: a key's push view changed (its stream re-pushes)."""
        return self.views.on_change

    @on_change.setter
    def on_change(self, value: Callable[[int], None] | None) -> None:
        self.views.on_change = value

    def _refresh_key(self, key_id: int) -> None:
        self.views.refresh_key(key_id)

    def _set_status(self, leg_id: int, status: str, code: str | None, message: str | None) -> None:
        with self._db.transaction() as s:
            row = s.get(ProtectionLeg, leg_id, with_for_update=True)
            if row is None:
                return
            row.status, row.error_code = status, code
            row.error_message = (message or "")[:255] or None
            key_id = row.key_id
        self.guard.disarm(leg_id)
        self._refresh_key(key_id)

    # ---- exchange mode: reconcile and leg events ----------------------------------------
    def _venue_fired(self, row: ProtectionLeg, leg) -> None:  # type: ignore[no-untyped-def]
        """ExchangeLegs callback: a venue-held leg fired."""
        self.fired += 1
        fill = leg.avg_price if leg.avg_price else None
        self.on_alert("protection_triggered", row.user_id, row.key_id, row.symbol,
                       f"{row.kind.replace('_', '-')} triggered on {row.symbol}",
                       {"leg": row.kind, "fill_price": None if fill is None else f"{fill:f}",
                        "trigger_price": None if leg.trigger_price is None else f"{leg.trigger_price:f}",
                        "order_id": leg.triggered_order_id or leg.order_id or None,
                        "mode": "exchange"})

    def reconcile(self, key_id: int | None = None, symbol: str | None = None) -> dict:
        """Reconcile the live exchange-held legs (of one key, or of every key that has
        some) with the venues (``ExchangeLegs.reconcile_key``). A key whose venue cannot
        be asked is left for the next round. Returns summed counts and ``errors``."""
        stmt = select(ProtectionLeg.key_id).where(ProtectionLeg.mode == "exchange",
                                                  ProtectionLeg.status.in_(LIVE_LEG_STATUSES))
        if key_id is not None:
            stmt = stmt.where(ProtectionLeg.key_id == key_id)
        with self._db.session() as s:
            key_ids = sorted(set(s.scalars(stmt)))
            keys = [k for k in (s.get(ExchangeKey, i) for i in key_ids) if k is not None]
        total = {"activated": 0, "fired": 0, "placed": 0, "canceled": 0, "errors": 0}
        for key in keys:
            try:
                for name, n in self._exchange.reconcile_key(key, symbol).items():
                    total[name] += n
                self._refresh_key(key.id)
            except ExchangeError as e:
                total["errors"] += 1
                logger.warning("protection reconcile could not ask the venue key_id=%s kind=%s",
                               key.id, type(e).__name__)
        return total

    def on_leg_update(self, key_id: int, update) -> None:  # type: ignore[no-untyped-def]
        """A ``ProtectionLegUpdate`` from a key's account stream (its handler: no I/O
        here): the key's legs are reconciled on a task of their own,
        ``EVENT_RECONCILE_DELAY_S`` later, one round at a time per key (updates arriving
        meanwhile make one more round)."""
        if isinstance(update, MarginCall):  # the same stream hook: a risk alert
            self.risk.on_margin_call(key_id, update)
            return
        if update is not None and getattr(update, "leg", None) is not None:
            self._exchange.note_update(key_id, update.leg)
            self.tags.note_leg(key_id, update.leg)
        with self._reconciling_lock:
            if key_id in self._reconciling:
                self._reconciling[key_id] = True  # run again when the current round ends
                return
            self._reconciling[key_id] = False
        self._spawn(self._reconcile_rounds, key_id, EVENT_RECONCILE_DELAY_S)

    def on_stream_reconnected(self, key_id: int, *_: object) -> None:
        """After an account stream (re)connected: its legs may have changed meanwhile."""
        self.on_leg_update(key_id, None)

    def _reconcile_rounds(self, key_id: int, delay_s: float = 0.0) -> None:
        if delay_s > 0 and self.stopping.wait(delay_s):
            with self._reconciling_lock:
                self._reconciling.pop(key_id, None)
            return
        with self._reconciling_lock:  # the updates of the delay are this round's
            self._reconciling[key_id] = False
        while True:
            try:
                self.reconcile(key_id)
            except Exception:  # isolation boundary: a round's failure must not end the rounds
                logger.exception("protection reconcile round failed key_id=%s", key_id)
            with self._reconciling_lock:
                if not self._reconciling.get(key_id):
                    self._reconciling.pop(key_id, None)
                    return
                self._reconciling[key_id] = False

    def positions_seen(self, key_id: int, positions: list, complete: bool = False) -> None:
        """An account stream reported position changes (closed ones with size 0): the
        legs of a position that ended are canceled (one-cancels-the-others) on a task of
        their own ``EVENT_RECONCILE_DELAY_S`` later, after the venue confirms the position
        is gone. No I/O here. ``complete``: the stream's first report (its REST snapshot)."""
        self.risk.positions_seen(key_id, positions, complete)
        symbols = self.views.symbols(key_id)
        if not symbols:
            return
        for p in positions:
            if p.size == 0 and p.symbol in symbols:
                self._spawn(self._position_ended, key_id, p.symbol)

    def positions_read(self, key_id: int, positions: list[Position]) -> None:
        """An account stream read the key's positions from the venue (no I/O here):
        the risk watcher takes them instead of asking again."""
        self.risk.positions_read(key_id, positions)

    def _position_ended(self, key_id: int, symbol: str) -> None:
        if self.stopping.wait(EVENT_RECONCILE_DELAY_S):  # after the fills' pushes
            return
        try:
            with self._db.session() as s:
                key = s.get(ExchangeKey, key_id)
            if key is None:
                return
            held = {(p.symbol, p.side) for p in self._client_for(key).get_positions() if p.size != 0}
            for row in self._live_rows(key_id, symbol):
                if row.mode == "server" and (row.symbol, row.side) not in held and \
                        self.guard.armed(row.id):
                    self._cancel_one(row.id, "position_closed")
            self.reconcile(key_id, symbol)  # exchange-held legs: taken off, or found fired
        except ExchangeError as e:  # the sweep and the periodic reconcile try again
            logger.warning("protection position-end check failed key_id=%s kind=%s", key_id,
                           type(e).__name__)
        except Exception:  # isolation boundary: a task's failure is logged
            logger.exception("protection position-end check crashed key_id=%s", key_id)

    def resync(self) -> int:
        """Every live leg from the database: what the pushes show, and the server-mode
        rules armed here (rules set or removed through another process are picked up;
        start-up arms them all). Returns how many rules were newly armed.

        One light read of every live leg's id, key, status and update time; full rows
        are read only for the keys whose legs differ from what this process's view was
        built from, and for rules not armed here (none in a quiet round: 2,000 rows
        loaded as objects every 10 s made the garbage collector stall the process for
        0.2-0.7 s in bench.fanout --protect)."""
        with self._db.session() as s:
            light = list(s.execute(select(ProtectionLeg.id, ProtectionLeg.key_id,
                                          ProtectionLeg.status, ProtectionLeg.mode,
                                          ProtectionLeg.updated_at)
                                   .where(ProtectionLeg.status.in_(LIVE_LEG_STATUSES))))
        live: dict[int, set[tuple[int, str, int]]] = {}
        live_server: set[int] = set()
        for leg_id, key_id, status, mode, updated_at in light:
            live.setdefault(key_id, set()).add((leg_id, status, updated_at))
            if mode == "server" and status == LegStatus.ACTIVE.value:
                live_server.add(leg_id)
        stale = self.views.stale_keys({k: frozenset(v) for k, v in live.items()})
        unarmed = live_server - self.guard.armed_ids()
        pairs: list[Any] = []
        if stale or unarmed:
            with self._db.session() as s:
                pairs = list(s.execute(
                    select(ProtectionLeg, ExchangeKey.testnet)
                    .join(ExchangeKey, ExchangeKey.id == ProtectionLeg.key_id)
                    .where(ProtectionLeg.status.in_(LIVE_LEG_STATUSES),
                           or_(ProtectionLeg.key_id.in_(stale), ProtectionLeg.id.in_(unarmed)))))
        armed = 0
        for row, testnet in pairs:
            if row.id in live_server and not self.guard.armed(row.id):
                try:
                    self._arm(row, testnet, None)
                    armed += 1
                except ValueError as e:  # an incomplete row: never armed, say so on the row
                    self._set_status(row.id, LegStatus.FAILED.value, "invalid_rule", str(e))
        for rule_id in self.guard.armed_ids() - live_server:
            self.guard.disarm(rule_id)
        if stale:
            self.views.store(stale, [r for r, _ in pairs if r.key_id in stale])
        return armed

    # ---- periodic work -----------------------------------------------------------------
    def flush_extremes(self) -> int:
        """Write the trailing extremes that moved (server mode); returns how many."""
        dirty = self.guard.take_dirty()
        if not dirty:
            return 0
        with self._db.transaction() as s:
            for leg_id, extreme in dirty.items():
                row = s.get(ProtectionLeg, leg_id)
                if row is not None and row.status == LegStatus.ACTIVE.value:
                    row.extreme_price = extreme
        return len(dirty)

    def sweep(self) -> int:
        """Cancel the live server-mode legs whose position ended (or turned to the other
        side) by another path; returns how many. A key's positions are those its account
        stream running in this process holds (``live_positions``: the venue's own push,
        no request), else read from the venue; a key whose positions cannot be read is
        left for the next sweep. The legs are read as plain columns (no ORM objects)."""
        with self._db.session() as s:
            rows = list(s.execute(select(ProtectionLeg.id, ProtectionLeg.key_id,
                                         ProtectionLeg.symbol, ProtectionLeg.side,
                                         ProtectionLeg.created_at).where(
                ProtectionLeg.mode == "server", ProtectionLeg.status.in_(LIVE_LEG_STATUSES))))
        by_key: dict[int, list[Any]] = {}
        for row in rows:
            by_key.setdefault(row.key_id, []).append(row)
        live: dict[int, set[tuple[str, str]] | None] = {}
        for k in by_key:
            streamed = self._live_positions(k)
            live[k] = None if streamed is None else {(p.symbol, p.side) for p in streamed}
        asked = [k for k, held in live.items() if held is None]  # from the venue
        keys = {}
        if asked:
            with self._db.session() as s:
                keys = {k.id: k for k in s.scalars(select(ExchangeKey)
                                                   .where(ExchangeKey.id.in_(asked)))}
        done = 0
        for key_id in sorted(by_key):
            held = live[key_id]
            if held is None:
                key = keys.get(key_id)
                if key is None:
                    continue
                try:
                    held = {(p.symbol, p.side) for p in self._client_for(key).get_positions()
                            if p.size != 0}
                except ExchangeError as e:
                    logger.warning("protection sweep could not read positions key_id=%s kind=%s",
                                   key_id, type(e).__name__)
                    continue
            for row in by_key[key_id]:
                # a PUT's own position is there; a rule that fired (disarmed) is settled
                # by its fire task
                if (row.symbol, row.side) not in held and \
                        now_ms() - row.created_at > 2000 and self.guard.armed(row.id):
                    self._cancel_one(row.id, "position_closed")
                    done += 1
        return done

    def _cancel_one(self, leg_id: int, code: str) -> None:
        with self._db.transaction() as s:
            row = s.get(ProtectionLeg, leg_id, with_for_update=True)
            if row is None or row.status not in LIVE_LEG_STATUSES:
                return
            row.status, row.error_code = LegStatus.CANCELED.value, code
            row.error_message = "one-cancels-the-others: the position ended"
            key_id = row.key_id
        self.guard.disarm(leg_id)
        self._refresh_key(key_id)
        logger.info("protection leg canceled leg_id=%s reason=%s", leg_id, code)

    def run_periodic(self, flush_s: float = 1.0) -> None:
        """Flush the trailing extremes every ``flush_s`` and sweep every ``sweep_s``
        until ``stop()``; a failed round is logged and the loop goes on."""
        next_sweep = time.monotonic() + self.sweep_s
        while not self.stopping.wait(flush_s):
            try:
                self.flush_extremes()
                if self.sweep_s > 0 and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_s
                    self.sweep()
                    self.reconcile()
                    self.resync()
            except Exception:  # isolation boundary: the loop must survive a bad round
                logger.exception("protection periodic round failed")
        try:
            self.flush_extremes()
        except Exception:  # shutdown: the database may be gone; the extremes are a hint
            logger.exception("protection extremes not flushed at shutdown")

    def stop(self) -> None:
        """End the periodic loop and the fire tasks' waits (a fired leg's exit goes on
        in the ExitService, which the next start-up recovers)."""
        self.stopping.set()
        self.risk.stop()

    def stats(self) -> dict:
        """``{"armed", "fired", "ticks", "touched"}`` of this process."""
        return {"armed": self.guard.count(), "fired": self.fired, "ticks": self.guard.ticks,
                "touched": self.guard.touched_total()}
