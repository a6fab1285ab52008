"""Exits: close a position with a FOK limit order chased one tick at a time.

Rules (DESIGN.md "Orders and the ledger"): one active exit per position (the
``exits`` table's partial unique index is the duplicate-exit guard; a second
request gets the working exit back); FOK limit reduce-only at the best bid (long)
or ask (short); when it expires unfilled (or is rejected), one tick worse, at most
``max_retries`` retries, at most ``max_slippage_ticks`` from the first price, within
``deadline_s``; then a clear final state. Exit fills are matched to the entry
trades FIFO by the symbol's book (``services.book``): each entry trade it consumes is
``closed`` with its exit price and realized PnL (fees included), what it did not
consume stays ``open``; ``exit_failed`` (position still open) when the chase gives up.
An exit is a row first: a crash leaves it ``working``, and ``recover`` settles it from
the exchange's orders (by client order id) or resumes the chase.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from exchanges import types as ex
from exchanges.base import ExchangeClient
from exchanges.errors import ExchangeError, ExchangeRejected, ExchangeUnavailable, OrderNotFound
from models import (
    HOLDING_STATUSES,
    Database,
    ExchangeKey,
    Exit,
    ExitStatus,
    Fill,
    Trade,
    TradeStatus,
    now_ms,
)
from services import book, ledger
from services.accounts import get_owned_key
from services.errors import Conflict
from services.lifecycle import StopFlag
from services.orders import NOT_FOUND_GRACE_MS

logger = logging.getLogger(__name__)

# an attempt the exchange does not know may still be in flight this long after it was
# noted (a request executed late within its recvWindow): recovery waits that long
IN_FLIGHT_GRACE_MS = NOT_FOUND_GRACE_MS


@dataclass(frozen=True)
class ExitSettings:
    """Chase bounds: retries after the first attempt, ticks of slippage, seconds."""

    max_retries: int = 5
    max_slippage_ticks: int = 10
    deadline_s: float = 30.0


@dataclass(frozen=True)
class ExitStart:
    """An exit to write in the caller's transaction (``ExitService.begin_in``): the
    open ``position`` of key ``key_id`` and the best price its first FOK is sent at
    (bid for a LONG, ask for a SHORT)."""

    user_id: int
    key_id: int
    symbol: str
    position: ex.Position
    best: Decimal


class ExitService:
    """Starts, runs, resumes and settles exits.

    The ``exits`` row is the chase's durable intent: every attempt's client order id
    is stored before it is sent and ``deadline_at`` bounds the chase, so an exit left
    ``working`` by a crash is picked up (``recover``) at start-up and by the
    reconciler: settled from the exchange's truth (its orders, by client order id) or
    its chase resumed.

    Args:
        db: the database; client_for: the cached exchange client of a key row;
        spawn: starts a background task; publish: emits ``error`` events to the user;
        orphan_after_ms: a ``working`` exit that no chase of this process runs is
            taken over once its row is this old (0 with one process; with several,
            another process's chase touches its row at every attempt).
    """

    def __init__(self, db: Database, client_for: Callable[[ExchangeKey], ExchangeClient],
                 spawn: Callable, publish: Callable[[dict], None],
                 settings: ExitSettings = ExitSettings(), orphan_after_ms: int = 0) -> None:
        self._db = db
        self._client_for = client_for
        self._spawn = spawn
        self._publish = publish
        self.settings = settings
        self.orphan_after_ms = orphan_after_ms
        self._live: set[int] = set()
        self._live_lock = threading.Lock()
        self._done: dict[int, threading.Event] = {}  # exit id -> set when its chase ends
        self.stopping = StopFlag()  # set by stop(): chases end before their next attempt

    def stop(self) -> None:
        """Start no chase any more and end the running ones before their next attempt.
        Their exits stay ``working`` (every attempt's client order id is stored before
        it is sent): the next start-up's ``recover`` settles or resumes them."""
        self.stopping.set()

    def close_position(self, user_id: int, key_id: int, symbol: str,
                       key: ExchangeKey | None = None) -> tuple[Exit, bool]:
        """``(exit, started)``: a new working exit (started=True), or the one already
        working for this position (started=False; an orphaned one is resumed or settled
        first). ``key``: the user's key row when the caller already read it (a fired
        protection rule: one database read less before the first order). Raises
        NotFound (key), Conflict (no open position), ExchangeError (the position lookup
        failed)."""
        if key is None or key.id != key_id or key.user_id != user_id:
            key = get_owned_key(self._db, user_id, key_id)
        working = self._working(key_id, symbol)
        if working is not None and self._orphaned(working):
            self.recover(working.id)
            working = self._working(key_id, symbol)
        if working is not None:
            return working, False
        client = self._client_for(key)
        position = next((p for p in client.get_positions() if p.symbol == symbol), None)
        if position is None or position.size == 0:
            raise Conflict("no_position", f"no open {symbol} position", "symbol")
        exit_ = Exit(user_id=user_id, key_id=key_id, symbol=symbol, quantity=position.size,
                     side="SELL" if position.side == "LONG" else "BUY",
                     status=ExitStatus.WORKING.value,
                     deadline_at=now_ms() + int(self.settings.deadline_s * 1000))
        try:
            with self._db.transaction() as s:
                s.add(exit_)
                for t in s.scalars(self._holding(key_id, symbol)):
                    t.status = TradeStatus.CLOSING.value
        except IntegrityError:  # a concurrent request won the race: return its exit
            working = self._working(key_id, symbol)
            if working is None:
                raise
            return working, False
        logger.info("exit started exit_id=%s key_id=%s symbol=%s side=%s qty=%s",
                    exit_.id, key_id, symbol, exit_.side, exit_.quantity)
        self._start(exit_.id, key)
        return exit_, True

    # ---- an exit started inside the caller's transaction (a fired protection rule) ----
    def working_positions(self, s: Session, key_ids: set[int]) -> set[tuple[int, str]]:
        """``(key_id, symbol)`` of the positions of ``key_ids`` that have a ``working``
        exit, read in the caller's session ``s`` (such a position gets no second exit:
        the caller goes through ``close_position``, which returns or recovers it)."""
        if not key_ids:
            return set()
        return {(k, sym) for k, sym in s.execute(select(Exit.key_id, Exit.symbol).where(
            Exit.key_id.in_(key_ids), Exit.status == ExitStatus.WORKING.value))}

    def begin_in(self, s: Session, starts: list[ExitStart]) -> list[Exit]:
        """Inside the caller's transaction ``s``: one ``working`` exit row per start (its
        position open, ``position.size`` > 0) with its first attempt noted (a FOK at
        ``best``; its client order id stored before it is sent), and the positions'
        holding trades marked ``closing``, in a few statements whatever the count (one
        insert, one update of the client order ids, one update of the trades).
        Returns the rows (detached copies, ``starts``' order); the caller commits, then
        calls ``start_begun`` for each. A working exit of one of the positions makes
        the insert raise IntegrityError (the duplicate-exit guard: check
        ``working_positions`` first)."""
        if not starts:
            return []
        now = now_ms()
        values = [{"user_id": st.user_id, "key_id": st.key_id, "symbol": st.symbol,
                   "quantity": st.position.size,
                   "side": "SELL" if st.position.side == "LONG" else "BUY",
                   "status": ExitStatus.WORKING.value, "attempts": 1, "first_price": st.best,
                   "last_price": st.best, "client_order_ids": "", "created_at": now,
                   "updated_at": now,
                   "deadline_at": now + int(self.settings.deadline_s * 1000)} for st in starts]
        ids = list(s.scalars(insert(Exit).returning(Exit.id, sort_by_parameter_order=True),
                             values))
        for v, exit_id in zip(values, ids, strict=True):
            v["id"], v["client_order_ids"] = exit_id, f"exit-{exit_id}-0-{uuid.uuid4().hex[:8]}"
        s.execute(update(Exit), [{"id": v["id"], "client_order_ids": v["client_order_ids"]}
                                 for v in values])
        by_symbol: dict[str, set[int]] = {}
        for st in starts:
            by_symbol.setdefault(st.symbol, set()).add(st.key_id)
        s.execute(update(Trade).where(
            or_(*[and_(Trade.key_id.in_(key_ids), Trade.symbol == symbol)
                  for symbol, key_ids in by_symbol.items()]),
            Trade.status.in_(HOLDING_STATUSES))
            .values(status=TradeStatus.CLOSING.value)
            .execution_options(synchronize_session=False))
        return [Exit(**v) for v in values]

    def start_begun(self, exit_: Exit, key: ExchangeKey) -> None:
        """Run the chase of an exit written by ``begin_in`` (committed): its noted first
        attempt is sent at once, without reading the row again."""
        logger.info("exit started exit_id=%s key_id=%s symbol=%s side=%s qty=%s",
                    exit_.id, exit_.key_id, exit_.symbol, exit_.side, exit_.quantity)
        self._start(exit_.id, key, exit_)

    def wait_chase(self, exit_id: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for this process's chase of ``exit_id`` to end;
        True when no chase of this process runs it (any more)."""
        with self._live_lock:
            if exit_id not in self._live:
                return True
            done = self._done.setdefault(exit_id, threading.Event())
        return done.wait(timeout_s)

    def get(self, user_id: int, exit_id: int) -> Exit | None:
        """The user's exit or None."""
        with self._db.session() as s:
            e = s.get(Exit, exit_id)
        return e if e is not None and e.user_id == user_id else None

    def _working(self, key_id: int, symbol: str) -> Exit | None:
        with self._db.session() as s:
            return s.scalars(select(Exit).where(Exit.key_id == key_id, Exit.symbol == symbol,
                                                Exit.status == ExitStatus.WORKING.value)).first()

    @staticmethod
    def _holding(key_id: int, symbol: str):  # type: ignore[no-untyped-def]
        return (select(Trade).where(Trade.key_id == key_id, Trade.symbol == symbol,
                                    Trade.status.in_(HOLDING_STATUSES))
                .order_by(Trade.opened_at, Trade.id))

    def chasing(self, exit_id: int) -> bool:
        """True while a chase of this process runs the exit."""
        with self._live_lock:
            return exit_id in self._live

    def _orphaned(self, e: Exit) -> bool:
        return not self.chasing(e.id) and now_ms() - e.updated_at >= self.orphan_after_ms

    def _start(self, exit_id: int, key: ExchangeKey, begun: Exit | None = None) -> None:
        with self._live_lock:
            if exit_id in self._live or self.stopping.is_set():
                return
            self._live.add(exit_id)
        if begun is None:
            self._spawn(self.run, exit_id, key)
        else:
            self._spawn(self.run, exit_id, key, begun)

    # ---- recovery (start-up, reconciler) ------------------------------------------
    def working_orphans(self, key_id: int | None = None) -> list[int]:
        """Ids of ``working`` exits no chase runs (see ``orphan_after_ms``)."""
        stmt = select(Exit).where(Exit.status == ExitStatus.WORKING.value)
        if key_id is not None:
            stmt = stmt.where(Exit.key_id == key_id)
        with self._db.session() as s:
            rows = list(s.scalars(stmt.order_by(Exit.id)))
        return [e.id for e in rows if self._orphaned(e)]

    def recover(self, exit_id: int) -> str:
        """Settle or resume an orphaned ``working`` exit from the exchange's truth; returns
        what was done: ``filled`` (an attempt filled: the ledger is matched to it),
        ``resumed`` (no attempt filled, the deadline is ahead: the chase goes on from
        where it stopped), ``failed`` (deadline passed, bounds reached or nothing left
        to close), ``unknown`` (the exchange could not be asked, or an attempt may still
        be in flight: the next reconcile tries again), ``live`` (a chase runs it)."""
        with self._db.session() as s:
            e = s.get(Exit, exit_id)
            key = s.get(ExchangeKey, e.key_id) if e is not None else None
        if e is None or key is None or e.status != ExitStatus.WORKING.value:
            return e.status if e is not None else "gone"
        if self.chasing(exit_id):
            return "live"
        client = self._client_for(key)
        unsure = False
        try:
            for coid in [c for c in e.client_order_ids.split(",") if c]:
                try:
                    order = client.get_order(e.symbol, client_order_id=coid)
                except OrderNotFound:
                    # never arrived, or still in flight: only trusted after a grace
                    unsure = unsure or now_ms() - e.updated_at < IN_FLIGHT_GRACE_MS
                    continue
                if order.filled_quantity > 0:
                    self._record_order(key.id, client, order)
                    self._finish(exit_id, key, order, None)
                    return "filled"
                if not order.status.is_final:
                    unsure = True  # a resting attempt: never for a FOK, but be safe
            if unsure:
                return "unknown"
            position = next((p for p in client.get_positions() if p.symbol == e.symbol), None)
        except ExchangeError as err:
            logger.warning("exit recovery could not ask the exchange exit_id=%s kind=%s",
                           exit_id, type(err).__name__)
            return "unknown"
        if position is None or position.size == 0:
            self._finish(exit_id, key, None, "position already flat on the exchange")
            return "failed"
        if (e.deadline_at or 0) <= now_ms() or e.attempts > self.settings.max_retries:
            self._finish(exit_id, key, None, "interrupted; its deadline passed")
            return "failed"
        with self._db.transaction() as s:
            row = s.get(Exit, exit_id, with_for_update=True)
            assert row is not None
            row.quantity = position.size  # what is to close now (entry fills since)
            row.side = "SELL" if position.side == "LONG" else "BUY"
        logger.info("exit resumed exit_id=%s attempts=%s", exit_id, e.attempts)
        self._start(exit_id, key)
        return "resumed"

    # ---- the chase (background task) -------------------------------------------
    def run(self, exit_id: int, key: ExchangeKey, begun: Exit | None = None) -> None:
        """Chase until filled or a bound is hit; never raises. ``begun``: the row as
        ``begin_in`` wrote it (its first attempt is sent at once)."""
        try:
            self._chase(exit_id, key, begun)
        except Exception as e:  # isolation boundary: the exit must end in a final state
            logger.exception("exit crashed exit_id=%s", exit_id)
            self._finish(exit_id, key, None, f"internal error: {type(e).__name__}")
        finally:
            with self._live_lock:
                self._live.discard(exit_id)
                done = self._done.pop(exit_id, None)
            if done is not None:
                done.set()

    def _chase(self, exit_id: int, key: ExchangeKey, begun: Exit | None = None) -> None:
        client = self._client_for(key)
        if begun is not None:  # the first attempt is noted: send it before anything else
            exit_, coids = begun, [begun.client_order_ids]
            assert begun.first_price is not None
            best = price = begun.first_price
            if self.stopping.is_set():
                logger.info("exit left working at shutdown exit_id=%s attempts=0", exit_id)
                return  # no _finish: the next start-up recovers it
            order = self._send(client, exit_, price, coids[0])
            if order is not None and order.filled_quantity > 0:
                self._record_order(key.id, client, order)
            if order is not None and order.status == ex.OrderStatus.FILLED:
                self._finish(exit_id, key, order, None)
                return
            if order is not None and order.filled_quantity > 0:
                self._finish(exit_id, key, None, "partially filled; position changed")
                return
            tick = client.get_symbol_rules(exit_.symbol).tick_size
            step = -tick if exit_.side == "SELL" else tick
            self._chase_from(exit_id, key, client, exit_, 1, best, price + step, tick, coids)
            return
        with self._db.session() as s:
            row = s.get(Exit, exit_id)
        assert row is not None
        tick = client.get_symbol_rules(row.symbol).tick_size
        step = -tick if row.side == "SELL" else tick   # one tick worse for us each time
        coids = [c for c in row.client_order_ids.split(",") if c]
        if row.first_price is not None and row.last_price is not None:  # resumed
            first, price = row.first_price, row.last_price + step
        else:
            ticker = client.get_ticker(row.symbol)
            quoted = ticker.bid if row.side == "SELL" else ticker.ask
            if quoted is None:
                self._finish(exit_id, key, None, "no best bid/ask from the exchange")
                return
            first = price = quoted
        self._chase_from(exit_id, key, client, row, row.attempts, first, price, tick, coids)

    def _chase_from(self, exit_id: int, key: ExchangeKey, client: ExchangeClient, exit_: Exit,
                    first_attempt: int, best: Decimal, price: Decimal, tick: Decimal,
                    coids: list[str]) -> None:
        """The chase from attempt ``first_attempt`` (0-based) at ``price``."""
        step = -tick if exit_.side == "SELL" else tick   # one tick worse for us each time
        deadline_ms = exit_.deadline_at or now_ms() + int(self.settings.deadline_s * 1000)
        reason = "retries exhausted"
        for attempt in range(first_attempt, self.settings.max_retries + 1):
            if self.stopping.is_set():
                logger.info("exit left working at shutdown exit_id=%s attempts=%s", exit_id, attempt)
                return  # no _finish: the next start-up recovers it
            if now_ms() > deadline_ms:
                reason = f"deadline of {self.settings.deadline_s:g} s passed"
                break
            if abs(price - best) > tick * self.settings.max_slippage_ticks:
                reason = f"slippage bound of {self.settings.max_slippage_ticks} ticks reached"
                break
            coid = f"exit-{exit_id}-{attempt}-{uuid.uuid4().hex[:8]}"
            coids.append(coid)
            self._note_attempt(exit_id, attempt + 1, price, coids, best)  # intent first
            order = self._send(client, exit_, price, coid)
            if order is not None and order.filled_quantity > 0:
                self._record_order(key.id, client, order)
            if order is not None and order.status == ex.OrderStatus.FILLED:
                self._finish(exit_id, key, order, None)
                return
            if order is not None and order.filled_quantity > 0:
                reason = "partially filled; position changed"  # FOK never does this
                break
            price += step
        self._finish(exit_id, key, None, reason)

    def _send(self, client: ExchangeClient, exit_: Exit, price: Decimal, coid: str) -> ex.Order | None:
        req = ex.OrderRequest(symbol=exit_.symbol, side=exit_.side, type="LIMIT",
                              quantity=exit_.quantity, client_order_id=coid, price=price,
                              time_in_force="FOK", reduce_only=True)
        try:
            return client.create_order(req)
        except ExchangeRejected as e:
            logger.info("exit attempt rejected exit_id=%s code=%s", exit_.id, e.code)
            return None
        except ExchangeUnavailable:
            try:  # fate unknown: ask by client order id before going on
                return client.get_order(exit_.symbol, client_order_id=coid)
            except (OrderNotFound, ExchangeError):
                return None

    def _record_order(self, key_id: int, client: ExchangeClient, order: ex.Order) -> None:
        fills = client.get_fills(order.symbol, order_id=order.order_id)
        with self._db.transaction() as s:
            book.lock_keys(s, [key_id])
            ledger.upsert_order(s, key_id, order, None)
            for fill in fills:
                ledger.upsert_fill(s, key_id, fill, None)
            s.flush()
            book.settle_symbol(s, key_id, order.symbol)

    def _note_attempt(self, exit_id: int, attempts: int, price: Decimal, coids: list[str],
                      first: Decimal) -> None:
        with self._db.transaction() as s:
            e = s.get(Exit, exit_id)
            assert e is not None
            e.attempts, e.last_price, e.first_price = attempts, price, first
            e.client_order_ids = ",".join(coids)[-1024:]

    def _finish(self, exit_id: int, key: ExchangeKey, order: ex.Order | None,
                reason: str | None) -> None:
        """Final state. Filled: the exit's fills are in the ledger; the symbol's book
        (``services.book``) matches them FIFO to the lots open now, closing what they
        consumed; what is left open (entry fills the exit did not cover) is ``open``
        again. Failed: the position's trades are ``exit_failed``."""
        with self._db.transaction() as s:
            book.lock_keys(s, [key.id])
            e = s.get(Exit, exit_id, with_for_update=True)
            assert e is not None
            if e.status != ExitStatus.WORKING.value:
                return  # settled by another path (a recovery racing the chase)
            trades = list(s.scalars(self._holding(e.key_id, e.symbol).with_for_update()))
            if order is None:
                e.status, e.reason = ExitStatus.FAILED.value, reason
                for t in trades:
                    t.status = TradeStatus.EXIT_FAILED.value
                    t.error_message = f"exit failed: {reason}"[:255]
                s.flush()
                book.settle_symbol(s, e.key_id, e.symbol)  # what another fill closed is closed
            else:
                e.status, e.exit_price = ExitStatus.FILLED.value, order.avg_price
                exit_fee = sum((f.fee for f in s.scalars(select(Fill).where(
                    Fill.key_id == e.key_id, Fill.symbol == e.symbol,
                    Fill.exchange_order_id == order.order_id))), Decimal(0))
                result = book.settle_symbol(s, e.key_id, e.symbol)
                e.realized_pnl = result.order_gross.get(order.order_id, Decimal(0)) - exit_fee
                for t in trades:
                    if t.status == TradeStatus.CLOSING.value:
                        t.status = TradeStatus.OPEN.value  # lots the exit did not consume
        if order is None:
            logger.warning("exit failed exit_id=%s reason=%s", exit_id, reason)
            self._publish({"type": "error", "user_id": key.user_id, "key_id": key.id,
                           "code": "exit_failed", "message": f"exit {exit_id} failed: {reason}"})
        else:
            logger.info("exit filled exit_id=%s price=%s", exit_id, order.avg_price)
