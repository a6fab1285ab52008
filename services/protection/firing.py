"""What fired server-mode rules do, on a task (``RuleFiring.fire_many``: the rules one
tick crossed, together): the position is closed by the exit of ``POST
/api/positions/close`` (FOK with the bounded chase, one exit per position), and the
path to each exit's first order is kept short:

1. one read of the legs and their keys (still active? the key not deleted?);
2. each key's positions (what to close): those its account stream running in this
   process holds when it is live and current (``live_positions``: the venue's own
   push, no request), else asked from the venue; a rule whose position the stream
   does not hold (gone, or turned to the other side) has its key asked too, so that a
   stream that has not yet handled a new position's frame cancels nothing. The venue
   calls (those positions and each symbol's best bid/ask once) run concurrently, at
   most ``REST_CONCURRENCY`` at once;
3. one transaction: the legs locked and compare-and-set ``active`` -> ``triggered``
   with their exit's id, their siblings ``canceled`` (one-cancels-the-others), and each
   exit row written ``working`` with its first attempt's client order id (pending-first:
   the row is committed before the order is sent; one exit per position: a position
   with a working exit, or a lost race on the exits' unique index, takes the per-rule
   path ``fire``, which joins that exit);
4. each exit's chase starts and sends its first FOK at once (concurrently); what is
   not on that path (the push view, the alert once the exit ended, the fills' stored
   ``reason``) comes after.

A stream that lags the venue cannot make an exit open or flip a position: the exit's
orders are reduce-only FOKs (a venue clamps a reduce-only quantity to the position and
refuses it on a flat one), there is one exit per position (the exits' unique index),
and a position the stream says is gone is not closed on its word (the venue is asked).
A position that grew by a fill the stream had not handled yet is closed for the size
the stream knew: the rest stays open, its rule spent (the same race as a fill landing
between a REST read and the order).

A crash after the transaction leaves the legs ``triggered`` and the exits ``working``:
the exits are recovered at start-up. A rule whose batch step fails (the venue could not
be asked) takes ``fire``: retried closes, each leg settled on its own.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import partial

from sqlalchemy import and_, case, null, or_, select, update
from sqlalchemy.exc import IntegrityError

from exchanges.base import ExchangeClient
from exchanges.errors import ExchangeError, ExchangeRejected
from exchanges.types import Position, Ticker
from models import (
    LIVE_LEG_STATUSES,
    Database,
    ExchangeKey,
    Exit,
    ExitStatus,
    LegStatus,
    ProtectionLeg,
)
from services.errors import Conflict
from services.exits import ExitStart
from services.lifecycle import StopFlag
from services.protection.fill_tags import FillTags
from services.protection.guard import Market, ServerGuard
from services.protection.reasons import mark_fill_reasons

logger = logging.getLogger(__name__)

FIRE_RETRIES = 5  # close attempts when the exchange cannot be reached at a trigger
REST_CONCURRENCY = 32  # venue calls at once while a batch of fired rules is prepared
BATCH_WAIT_S = 60.0  # a batch's venue calls that take longer take the per-rule path
OnAlert = Callable[[str, int, int, str, str, dict], None]


def _held(positions: list[Position], symbol: str, side: str) -> Position | None:
    """The open ``symbol`` position of ``positions`` on ``side`` (``LONG``/``SHORT``: the
    rule's), or None (none, flat, or turned to the other side: not this rule's)."""
    return next((p for p in positions if p.symbol == symbol and p.size != 0
                 and p.side == side), None)


@dataclass(frozen=True)
class LegRef:
    """What a fired rule needs to close its position."""

    leg_id: int
    user_id: int
    key_id: int
    symbol: str
    kind: str


# a rule whose exit was written: (ref, trigger price, fired_at, key row, exit row)
Begun = tuple[LegRef, Decimal, float, ExchangeKey, Exit]


class RuleFiring:
    """Acts on fired rules.

    Args:
        db: the database; exits: the ExitService (``close_position``, ``get``,
        ``settings.deadline_s``); guard: the ServerGuard (siblings disarmed);
        on_alert: the alert callable; stopping: the service's stop flag;
        set_status: ``set_status(leg_id, status, code, message)``;
        changed: ``changed(key_id)`` after a key's legs changed (the pushes);
        tags: the FillTags; client_for: the cached exchange client of a key row;
        spawn: starts a background task (``fire_many``'s venue calls and follow-ups);
        live_positions: ``live_positions(key_id)`` -> the key's open positions as its
        live account stream here holds them, None when there is none (the venue is
        asked).
    """

    def __init__(self, db: Database, exits, guard: ServerGuard, on_alert: OnAlert,  # type: ignore[no-untyped-def]
                 stopping: StopFlag, set_status: Callable[[int, str, str | None, str | None], None],
                 changed: Callable[[int], None], tags=None,
                 client_for: Callable[[ExchangeKey], ExchangeClient] | None = None,
                 spawn: Callable[..., object] | None = None,
                 live_positions: Callable[[int], list[Position] | None] | None = None) -> None:
        self._db = db
        self._live_positions = live_positions or (lambda key_id: None)
        # keys whose positions a batch took from a live stream / asked from the venue
        self.keys_streamed = 0
        self.keys_asked = 0
        self._client_for = client_for
        self._spawn = spawn or (lambda fn, *args: fn(*args))
        self._tags = tags or FillTags()  # the exit's fills carry the kind when pushed
        self._exits = exits
        self.guard = guard
        self._on_alert = on_alert
        self.stopping = stopping
        self._set_status = set_status
        self._changed = changed

    # ---- the rules one tick crossed, together ----------------------------------------
    def fire_many(self, fired: list[tuple[LegRef, Decimal, float]]) -> None:
        """Act on fired rules ``(ref, price, fired_at)`` (``fired_at``: perf_counter at
        the tick) as one batch: see the module's steps. Each rule ends like ``fire``
        (triggered, failed, canceled or skipped), the alert raised once its exit ended.
        Never raises."""
        try:
            self._fire_many(fired)
        except Exception:  # isolation boundary: each rule still gets the per-rule path
            logger.exception("protection batch fire crashed legs=%s", len(fired))
            for ref, price, at in fired:
                self._spawn(self.fire, ref, price, at)

    def _fire_many(self, fired: list[tuple[LegRef, Decimal, float]]) -> None:
        ids = [ref.leg_id for ref, _, _ in fired]
        t0 = time.perf_counter()
        with self._db.session() as s:  # the legs and their keys in one read
            pairs = {leg.id: (leg, key) for leg, key in s.execute(
                select(ProtectionLeg, ExchangeKey).join(ExchangeKey, ExchangeKey.id == ProtectionLeg.key_id)
                .where(ProtectionLeg.id.in_(ids)))}
        todo: list[tuple[LegRef, Decimal, float, ExchangeKey, str]] = []
        per_rule: list[tuple[LegRef, Decimal, float]] = []
        for ref, price, at in fired:
            leg, key = pairs.get(ref.leg_id, (None, None))
            if leg is None or leg.status != LegStatus.ACTIVE.value:
                continue  # removed, or fired by another process
            if key is None or key.status == "deleted":
                self.settle(ref, price, LegStatus.CANCELED.value, "key_deleted", "the key is gone")
                continue
            if self._client_for is None:
                per_rule.append((ref, price, at))
                continue
            todo.append((ref, price, at, key, leg.side))
        t1 = time.perf_counter()
        positions, books, (streamed, asked, tickers) = self._ask_venue(todo)
        t2 = time.perf_counter()
        starts: list[tuple[LegRef, Decimal, float, ExchangeKey, ExitStart]] = []
        for ref, price, at, key, side in todo:
            held = positions.get(key.id)
            book = books.get((key.exchange, key.testnet, ref.symbol))
            if held is None:  # the venue could not be asked: the per-rule path retries
                per_rule.append((ref, price, at))
                continue
            position = _held(held, ref.symbol, side)
            if position is None:  # the venue's answer (a stream's "gone" was checked)
                self.settle(ref, price, LegStatus.CANCELED.value, "no_position",
                            "the position was already closed")
                continue
            best = None if book is None else (book.bid if position.side == "LONG" else book.ask)
            if best is None:
                per_rule.append((ref, price, at))
                continue
            starts.append((ref, price, at, key, ExitStart(ref.user_id, key.id, ref.symbol,
                                                          position, best)))
        begun = self._begin(starts, per_rule)
        t3 = time.perf_counter()
        for ref, _, _, key, exit_ in begun:  # the first orders: nothing before them
            self._tags.exit_started(exit_.id, ref.kind)
            self._exits.start_begun(exit_, key)
        if todo:
            logger.info("protection batch rules=%s begun=%s keys_streamed=%s keys_asked=%s "
                        "tickers=%s read_ms=%.1f venue_ms=%.1f write_ms=%.1f", len(todo),
                        len(begun), streamed, asked, tickers, (t1 - t0) * 1000,
                        (t2 - t1) * 1000, (t3 - t2) * 1000)
        for ref, price, at in per_rule:
            self._spawn(self.fire, ref, price, at)
        keys = set()
        for ref, price, at, _key, exit_ in begun:
            logger.info("protection fired leg_id=%s key_id=%s symbol=%s kind=%s price=%s "
                        "status=triggered exit_id=%s", ref.leg_id, ref.key_id, ref.symbol,
                        ref.kind, price, exit_.id)
            logger.info("protection exit started leg_id=%s exit_id=%s after_ms=%.1f",
                        ref.leg_id, exit_.id, (time.perf_counter() - at) * 1000)
            self.guard.disarm(ref.leg_id)
            keys.add(ref.key_id)
            self._spawn(self._after_exit, ref, price, exit_.id)
        for key_id in sorted(keys):
            self._changed(key_id)

    def _ask_venue(self, todo: list[tuple[LegRef, Decimal, float, ExchangeKey, str]]
                   ) -> tuple[dict[int, list[Position]], dict[Market, Ticker], tuple[int, int, int]]:
        """Each key's positions (from its live account stream, else from the venue),
        each market's ticker, and ``(keys streamed, keys asked, tickers asked)``; the
        venue calls run concurrently. A key whose stream does
        not hold one of its rules' positions is asked too (its answer counts). A failed
        call is left out (logged)."""
        client_for = self._client_for
        assert client_for is not None
        keys = {key.id: key for *_, key, _ in todo}
        streamed: dict[int, list[Position]] = {}
        for key_id in keys:
            live = self._live_positions(key_id)
            if live is not None:
                streamed[key_id] = live
        for ref, _, _, key, side in todo:  # gone or turned, says the stream: ask the venue
            if key.id in streamed and _held(streamed[key.id], ref.symbol, side) is None:
                del streamed[key.id]
        markets: dict[Market, ExchangeKey] = {(key.exchange, key.testnet, ref.symbol): key
                                              for ref, _, _, key, _ in todo}
        key_ids = [k for k in keys if k not in streamed]
        market_ids = list(markets)
        self.keys_streamed += len(streamed)
        self.keys_asked += len(key_ids)
        jobs: list[Callable[[], object]] = [
            *[partial(lambda k: client_for(k).get_positions(), keys[i]) for i in key_ids],
            *[partial(lambda k, sym: client_for(k).get_ticker(sym), markets[m], m[2])
              for m in market_ids]]
        results = self._gather(jobs)
        positions: dict[int, list[Position]] = dict(streamed)
        books: dict[Market, Ticker] = {}
        for name, result in zip([*key_ids, *market_ids], results, strict=True):
            if isinstance(result, list):
                positions[name] = result  # type: ignore[index]
            elif isinstance(result, Ticker):
                books[name] = result  # type: ignore[index]
            else:  # the rules of this key or market take the per-rule path
                logger.warning("protection fire could not ask the venue for=%s kind=%s",
                               name, type(result).__name__)
        return positions, books, (len(streamed), len(key_ids), len(market_ids))

    def _gather(self, jobs: list[Callable[[], object]]) -> list[object]:
        """Run ``jobs`` on tasks, at most ``REST_CONCURRENCY`` at once; their results
        (an exception raised, None when unfinished after ``BATCH_WAIT_S``), in order."""
        results: list[object] = [None] * len(jobs)
        if not jobs:
            return results
        slots = threading.BoundedSemaphore(REST_CONCURRENCY)
        lock, done, left = threading.Lock(), threading.Event(), [len(jobs)]

        def run(i: int) -> None:
            try:
                results[i] = jobs[i]()
            except Exception as e:  # handed back: the rule takes the per-rule path
                results[i] = e
            finally:
                slots.release()
                with lock:
                    left[0] -= 1
                    if not left[0]:
                        done.set()
        for i in range(len(jobs)):
            slots.acquire()
            self._spawn(run, i)
        done.wait(BATCH_WAIT_S)
        return list(results)

    def _begin(self, starts: list[tuple[LegRef, Decimal, float, ExchangeKey, ExitStart]],
               per_rule: list[tuple[LegRef, Decimal, float]]) -> list[Begun]:
        """One transaction: the legs' compare-and-set, their siblings canceled and the
        exits written. Returns ``(ref, price, fired_at, key, exit)`` of the exits begun;
        the rules that must take the per-rule path are appended to ``per_rule``.

        Five statements whatever the count (each a round trip that, on a loaded
        process, waits for its turn): the legs locked with whether their position has
        a working exit (one read); the exits inserted and their first client order ids
        (``ExitService.begin_in``: an insert, an update and the trades' update); the
        legs set ``triggered`` and their siblings ``canceled`` (one update)."""
        if not starts:
            return []
        ids = [ref.leg_id for ref, *_ in starts]
        begun: list[Begun] = []
        canceled: list[int] = []
        joins: list[tuple[LegRef, Decimal, float]] = []
        working = (select(Exit.id).where(Exit.key_id == ProtectionLeg.key_id,
                                         Exit.symbol == ProtectionLeg.symbol,
                                         Exit.status == ExitStatus.WORKING.value)
                   .correlate(ProtectionLeg).exists())
        try:
            with self._db.transaction() as s:
                # the legs still active, locked, each with whether its position has a
                # working exit (a manual close, another process's fire): that one is joined
                lock = {leg_id: bool(busy) for leg_id, busy in s.execute(
                    select(ProtectionLeg.id, working).where(
                        ProtectionLeg.id.in_(ids), ProtectionLeg.status == LegStatus.ACTIVE.value)
                    .with_for_update(of=ProtectionLeg))}
                go = []
                for item in starts:
                    ref, price, at = item[:3]
                    if ref.leg_id not in lock:
                        continue  # another process's fire got there first
                    if lock[ref.leg_id]:
                        joins.append((ref, price, at))  # joins the working exit
                        continue
                    go.append(item)
                exits = self._exits.begin_in(s, [item[4] for item in go])
                if go:
                    canceled = self._settle_legs(s, ids, [(item[0], item[1], exit_.id)
                                                          for item, exit_ in zip(go, exits, strict=True)])
                begun = [(item[0], item[1], item[2], item[3], exit_)
                         for item, exit_ in zip(go, exits, strict=True)]
        except IntegrityError:  # a working exit appeared meanwhile: each rule on its own
            logger.info("protection batch fire met a working exit, per rule legs=%s", len(starts))
            per_rule.extend(item[:3] for item in starts)
            return []
        per_rule.extend(joins)
        for leg_id in canceled:
            self.guard.disarm(leg_id)  # already done by the guard when the tick fired it
        return begun

    @staticmethod
    def _settle_legs(s, batch: list[int], fired: list[tuple[LegRef, Decimal, int]]) -> list[int]:  # type: ignore[no-untyped-def]
        """In the caller's transaction ``s``, one update: each ``fired`` leg ``(ref,
        trigger price, exit id)`` set ``triggered`` with its price and exit, and the live
        legs of the same positions (same key and symbol, not one of ``batch``, the
        batch's leg ids) ``canceled`` (one-cancels-the-others, the message naming the
        kind that fired). Returns the ids canceled."""
        fired_ids = [ref.leg_id for ref, _, _ in fired]
        groups: dict[tuple[str, str], set[int]] = {}  # (symbol, kind) -> keys
        for ref, _, _ in fired:
            groups.setdefault((ref.symbol, ref.kind), set()).add(ref.key_id)
        # a position whose legs of two kinds fired on one tick: its siblings name the first
        sibling_of = [(and_(ProtectionLeg.symbol == symbol, ProtectionLeg.key_id.in_(keys)),
                       f"one-cancels-the-others: {kind} fired")
                      for (symbol, kind), keys in groups.items()]
        is_fired = ProtectionLeg.id.in_(fired_ids)
        rows = s.execute(
            update(ProtectionLeg)
            .where(or_(is_fired, and_(ProtectionLeg.id.notin_(batch),
                                      ProtectionLeg.status.in_(LIVE_LEG_STATUSES),
                                      or_(*[cond for cond, _ in sibling_of]))))
            .values(status=case((is_fired, LegStatus.TRIGGERED.value),
                                else_=LegStatus.CANCELED.value),
                    fired_price=case({ref.leg_id: price for ref, price, _ in fired},
                                     value=ProtectionLeg.id, else_=ProtectionLeg.fired_price),
                    exit_id=case({ref.leg_id: exit_id for ref, _, exit_id in fired},
                                 value=ProtectionLeg.id, else_=ProtectionLeg.exit_id),
                    error_code=case((is_fired, null()), else_=ProtectionLeg.error_code),
                    error_message=case((is_fired, null()), *sibling_of,
                                       else_=ProtectionLeg.error_message))
            .returning(ProtectionLeg.id, ProtectionLeg.status)
            .execution_options(synchronize_session=False)).all()
        return [leg_id for leg_id, status in rows if status == LegStatus.CANCELED.value]

    def _after_exit(self, ref: LegRef, price: Decimal, exit_id: int) -> None:
        """Wait for the exit's end; then the fills' stored reason and the alert."""
        try:
            self._exit_ended(ref, price, exit_id)
        except Exception:  # isolation boundary: a task's failure is logged
            logger.exception("protection after-exit crashed leg_id=%s exit_id=%s", ref.leg_id, exit_id)

    def fire(self, ref: LegRef, price: Decimal, fired_at: float | None = None) -> str:
        """Act on a fired rule: mark it ``triggered`` (once, whichever process gets
        there first), cancel its siblings, close the position by the exit, wait for the
        exit's end and alert. Returns ``triggered``, ``failed``, ``canceled`` (no
        position any more) or ``skipped`` (not active any more). Never raises."""
        try:
            return self._fire(ref, price, fired_at)
        except Exception:  # isolation boundary: a task's failure is logged, never lost
            logger.exception("protection fire crashed leg_id=%s", ref.leg_id)
            self._set_status(ref.leg_id, LegStatus.FAILED.value, "internal_error", "internal error")
            return "failed"

    def _fire(self, ref: LegRef, price: Decimal, fired_at: float | None) -> str:
        # The exit first (the trigger crossed: every ms counts), after a read that the
        # leg is still active (another process may have removed it); then the leg's
        # compare-and-set. A crash in between leaves the leg active and the exit
        # working: the exit is recovered at start-up, the re-armed rule finds it.
        with self._db.session() as s:  # the leg and its key in one read
            row = s.get(ProtectionLeg, ref.leg_id)
            if row is None or row.status != LegStatus.ACTIVE.value:
                return "skipped"
            key = s.get(ExchangeKey, ref.key_id)
        if key is None or key.status == "deleted":
            self.settle(ref, price, LegStatus.CANCELED.value, "key_deleted", "the key is gone")
            return "canceled"
        self._tags.firing(ref.key_id, ref.symbol, ref.kind)
        try:
            return self._fire_exit(ref, price, fired_at, key)
        finally:
            self._tags.fired_done(ref.key_id, ref.symbol)

    def _fire_exit(self, ref: LegRef, price: Decimal, fired_at: float | None,
                   key: ExchangeKey) -> str:
        exit_ = None
        for attempt in range(FIRE_RETRIES):
            try:
                exit_, _ = self._exits.close_position(ref.user_id, ref.key_id, ref.symbol, key)
                break
            except Conflict:
                self.settle(ref, price, LegStatus.CANCELED.value, "no_position",
                                   "the position was already closed")
                return "canceled"
            except ExchangeRejected as e:
                self.settle(ref, price, LegStatus.FAILED.value,
                                   str(e.code or type(e).__name__), str(e.message))
                return "failed"
            except ExchangeError as e:  # unreachable: the trigger crossed, try again shortly
                logger.warning("protection close retry leg_id=%s attempt=%s kind=%s",
                               ref.leg_id, attempt + 1, type(e).__name__)
                if self.stopping.wait(0.5 * 2 ** attempt):
                    break
        if exit_ is None:
            self.settle(ref, price, LegStatus.FAILED.value, "exchange_unavailable",
                               "the exit could not be started")
            return "failed"
        self._tags.exit_started(exit_.id, ref.kind)
        if not self.settle(ref, price, LegStatus.TRIGGERED.value, None, None, exit_.id):
            return "skipped"  # another process's fire of this leg got there first
        if fired_at is not None:
            logger.info("protection exit started leg_id=%s exit_id=%s after_ms=%.1f", ref.leg_id,
                        exit_.id, (time.perf_counter() - fired_at) * 1000)
        return self._exit_ended(ref, price, exit_.id)

    def _exit_ended(self, ref: LegRef, price: Decimal, exit_id: int) -> str:
        """Wait for the exit's end; mark its fills' reason; alert. ``triggered`` or
        ``failed``."""
        done = self._wait_exit(ref.user_id, exit_id)
        if done is not None and done.status == ExitStatus.FILLED.value:
            with self._db.transaction() as s:  # the exit's fills carry the leg's kind
                mark_fill_reasons(s, ref.key_id, ref.kind, client_order_ids=[
                    c for c in (done.client_order_ids or "").split(",") if c])
        if done is not None and done.status == ExitStatus.FAILED.value:
            self._set_status(ref.leg_id, LegStatus.FAILED.value, "exit_failed", done.reason)
        fill_price = done.exit_price if done is not None else None
        self._on_alert("protection_triggered", ref.user_id, ref.key_id, ref.symbol,
                       f"{ref.kind.replace('_', '-')} triggered on {ref.symbol} at {price}",
                       {"leg": ref.kind, "fill_price": None if fill_price is None else f"{fill_price:f}",
                        "trigger_price": f"{price:f}", "exit_id": exit_id, "mode": "server",
                        "exit_status": done.status if done is not None else "working"})
        return "failed" if done is not None and done.status == ExitStatus.FAILED.value else "triggered"

    def settle(self, ref: LegRef, price: Decimal, status: str, code: str | None,
                      message: str | None, exit_id: int | None = None) -> bool:
        """Compare-and-set a fired leg from ``active`` to ``status`` and cancel its live
        siblings (one-cancels-the-others), in one transaction. False when the leg was
        not active any more (nothing changed)."""
        with self._db.transaction() as s:
            row = s.get(ProtectionLeg, ref.leg_id, with_for_update=True)
            if row is None or row.status != LegStatus.ACTIVE.value:
                return False
            row.status, row.fired_price, row.exit_id = status, price, exit_id
            row.error_code, row.error_message = code, (message or "")[:255] or None
            siblings = list(s.scalars(select(ProtectionLeg).where(
                ProtectionLeg.key_id == ref.key_id, ProtectionLeg.symbol == ref.symbol,
                ProtectionLeg.id != ref.leg_id,
                ProtectionLeg.status.in_(LIVE_LEG_STATUSES)).with_for_update()))
            for other in siblings:
                other.status = LegStatus.CANCELED.value
                other.error_message = f"one-cancels-the-others: {ref.kind} fired"
        for other in siblings:
            self.guard.disarm(other.id)  # already done by the guard when the tick fired it
        self.guard.disarm(ref.leg_id)
        self._changed(ref.key_id)
        logger.info("protection fired leg_id=%s key_id=%s symbol=%s kind=%s price=%s status=%s "
                    "exit_id=%s", ref.leg_id, ref.key_id, ref.symbol, ref.kind, price, status, exit_id)
        return True

    def _wait_exit(self, user_id: int, exit_id: int):  # type: ignore[no-untyped-def]
        """The exit once it left ``working`` (None if still working at our shutdown or
        after its deadline and a margin)."""
        deadline = time.monotonic() + self._exits.settings.deadline_s + 10
        self._exits.wait_chase(exit_id, deadline - time.monotonic())  # this process's chase
        while time.monotonic() < deadline:
            e = self._exits.get(user_id, exit_id)
            if e is None or e.status != ExitStatus.WORKING.value:
                return e
            if self.stopping.wait(0.1):
                return None
        return None

