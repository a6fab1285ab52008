"""Reconciliation: the exchange is the source of truth, the ledger is made to agree.

Per account (one API key; keys are never mixed), at start-up, after every stream
reconnect, every ``interval_s`` and on ``POST /admin/reconcile``:

0. retry the write-behind's dead letters (events it could not store on their own);
1. carry out LIMIT timeouts that are due (``trades.cancel_at``: cancel, query again);
2. settle recent ``pending`` trades by ``client_order_id`` (an order the exchange
   reports filled gets its fills fetched by order id and linked);
3. record fills the exchange has and the ledger lacks (symbols the ledger or the
   exchange show activity in, over ``fill_lookback_ms``); each is linked to its trade
   and the symbol's book (``services.book``) is recomputed;
   Funding fees the venue's history has and the ledger lacks are recorded too
   (``services.funding.record_missing``);
4. settle or resume exits left ``working`` with no chase (``ExitService.recover``);
5. compare positions both ways: the ledger's net per symbol (the signed sum of its
   fills, plus earlier adjustments) against the exchange's. Two kinds of difference
   are reported (answer, log, counters), each seen twice ``confirm_delay_s`` apart:
   ``fills_missing`` (the exchange's position is not the sum of the fills the ledger
   could get: fills older than the lookback, or not served) and activity the ledger
   cannot attribute to a trade of its own (fills of orders placed outside the app).
   With ``repair`` (``RECONCILE_REPAIR``) both are adopted into a ``RECONCILED`` trade
   (the unattributed fills are linked to it; missing fills are stood in for at the
   exchange's entry price) so that the ledger's trades again add up to the exchange's
   position; without it they are reported with their reason and left alone.

Steps 0-4 always run: they only record what the exchange says happened. The
exchange is the source of truth; ``repair`` decides only whether the ledger invents
trades for what it did not place.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection
from decimal import Decimal

from sqlalchemy import select, update

from exchanges import types as ex
from exchanges.base import ExchangeClient
from exchanges.errors import ExchangeError
from models import (
    UNFINISHED_STATUSES,
    Database,
    ExchangeKey,
    Exit,
    ExitStatus,
    Fill,
    Trade,
    TradeStatus,
    now_ms,
)
from services import book, funding, ledger
from services.errors import ServiceError
from services.lifecycle import StopFlag
from services.orders import OrderService
from services.serialize import dec

logger = logging.getLogger(__name__)


class Reconciler:
    """Settles the ledger against the exchange.

    Args:
        db: the database; orders: the OrderService (settles pending trades);
        client_for: the cached exchange client of an ExchangeKey row;
        repair: write adjusting trades for position differences (``RECONCILE_REPAIR``);
        pending_max_age_ms / fill_lookback_ms: how far back to look.
        confirm_delay_s: a position difference must still be there this much later.
    """

    def __init__(self, db: Database, orders: OrderService,
                 client_for: Callable[[ExchangeKey], ExchangeClient], repair: bool = False,
                 pending_max_age_ms: int = 7 * 86_400_000,
                 fill_lookback_ms: int = 86_400_000, confirm_delay_s: float = 1.0,
                 exits=None, dead_letters=None) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._orders = orders
        self._exits = exits  # ExitService (recover orphaned exits) or None
        self._dead_letters = dead_letters  # LedgerWriter (retry_dead_letters) or None
        self._client_for = client_for
        self.repair = repair
        self._pending_max_age_ms = pending_max_age_ms
        self._fill_lookback_ms = fill_lookback_ms
        self.confirm_delay_s = confirm_delay_s
        self._cursor = 0  # last key id of the previous periodic batch
        self.stopping = StopFlag()  # set by stop(): run_periodic ends, a run stops between keys
        self._lock = threading.Lock()
        self.runs = 0
        self.differences = 0
        self.repaired = 0
        self.last_run_ms = 0

    # ---- entry points ---------------------------------------------------------
    def reconcile(self, user_id: int | None = None, batch: int | None = None) -> dict:
        """Every account with ledger activity (or all of ``user_id``'s keys).
        ``{"checked", "fixed", "details": [...]}`` as ``POST /admin/reconcile`` answers.

        With ``batch`` (the periodic run), every account with a ``pending`` trade plus
        the next ``batch`` other active accounts in key order (round robin): the REST
        load stays bounded however many accounts there are (Binance counts request
        weight per IP: 1,000 accounts every minute would spend the whole budget)."""
        if self._dead_letters is not None:
            self._dead_letters.retry_dead_letters()
        stmt = select(ExchangeKey).where(ExchangeKey.status != "deleted")
        if user_id is not None:
            keys = self._keys(stmt.where(ExchangeKey.user_id == user_id))
        else:
            recent = now_ms() - self._fill_lookback_ms
            active = select(Trade.key_id).where(
                Trade.status.in_(UNFINISHED_STATUSES)
                | (Trade.updated_at >= recent) | Trade.cancel_at.is_not(None))
            exiting = select(Exit.key_id).where(Exit.status == ExitStatus.WORKING.value)
            keys = self._keys(stmt.where(ExchangeKey.id.in_(active) | ExchangeKey.id.in_(exiting)))
            if batch is not None:
                keys = self._next_batch(keys, batch)
        total = {"checked": 0, "fixed": 0, "details": []}
        for key in keys:
            if self.stopping.is_set():
                break  # shutting down: the next process's start-up run covers the rest
            result = self.reconcile_key(key)
            for k in ("checked", "fixed"):
                total[k] += result[k]
            total["details"] += result["details"]
        return total

    def _keys(self, stmt) -> list[ExchangeKey]:  # type: ignore[no-untyped-def]
        with self._db.session() as s:
            return list(s.scalars(stmt.order_by(ExchangeKey.id)))

    def _next_batch(self, keys: list[ExchangeKey], batch: int) -> list[ExchangeKey]:
        with self._db.session() as s:
            pending = set(s.scalars(select(Trade.key_id).where(
                Trade.status == TradeStatus.PENDING.value).distinct()))
        rest = [k for k in keys if k.id not in pending]
        after = [k for k in rest if k.id > self._cursor] + [k for k in rest if k.id <= self._cursor]
        chosen = after[:batch]
        if chosen:
            self._cursor = chosen[-1].id
        return [k for k in keys if k.id in pending] + chosen

    def reconcile_key(self, key: ExchangeKey, positions: list[ex.Position] | None = None,
                      fills_checked: Collection[str] = ()) -> dict:
        """One account. Exchange errors are reported in ``details``, never raised.

        ``positions``: the exchange's positions when the caller just fetched them
        (None: asked here); ``fills_checked``: symbols whose recent fills the caller
        just fetched and handed to the ledger (a reconnected stream's gap fill), not
        asked again (every fill before the gap went through the stream and the
        write-behind, which never drops one: what it cannot store on its own is a dead
        letter, retried by step 0 of every run; what a crash lost from its queue, the
        start-up run finds on the exchange)."""
        details: list[dict] = []
        checked = fixed = 0
        try:
            client = self._client_for(key)
            fixed += self._timeouts(key, details)
            checked, settled = self._settle_pending(key, client, details)
            fixed += settled
            if positions is None:
                positions = client.get_positions()  # one call serves steps 3 and 5
            fixed += self._missing_fills(key, client, {p.symbol for p in positions}, details,
                                         skip=fills_checked)
            fixed += funding.record_missing(self._db, key.id, client,
                                            {p.symbol for p in positions}, self._fill_lookback_ms)
            if self._recover_exits(key, details):
                fixed += 1
                positions = client.get_positions()  # an exit settled or moved on
            checked += 1
            fixed += self._positions(key, client, positions, details)
        except (ExchangeError, ServiceError, ValueError) as e:
            details.append({"key_id": key.id, "error": f"{type(e).__name__}: {e}"})
        with self._lock:
            self.runs += 1
            self.last_run_ms = now_ms()
        return {"checked": checked, "fixed": fixed, "details": details}

    def start_up(self) -> None:
        """At start-up (a background task): re-arm the LIMIT timeouts still outstanding,
        settle or resume the exits a crash left ``working``, retry dead letters. Never
        raises (what fails here, the periodic run and ``POST /admin/reconcile`` redo)."""
        try:
            if self._orders is not None:
                self._orders.arm_timeouts()
            if self._exits is not None:
                for exit_id in self._exits.working_orphans():
                    logger.info("exit left working at start-up exit_id=%s outcome=%s",
                                exit_id, self._exits.recover(exit_id))
            if self._dead_letters is not None:
                self._dead_letters.retry_dead_letters()
        except Exception:  # isolation boundary: the server starts whatever happens here
            if not self.stopping.is_set():  # stopped meanwhile: the next start redoes it
                logger.exception("start-up recovery failed")

    def run_periodic(self, interval_s: float, sleep: Callable[[float], None],
                     first_delay_s: float = 2.0, leases=None,  # type: ignore[no-untyped-def]
                     batch: int = 50) -> None:
        """Reconcile every account with ledger activity now (start-up) and then every
        ``interval_s`` seconds until ``stop()`` (a background task; it ends within
        ``StopFlag.STEP_S`` of the stop, or after the account being reconciled). With
        several processes only the one holding the ``reconciler`` lease runs a period.
        Each period covers the accounts with pending trades and ``batch`` others, round
        robin."""
        if self.stopping.wait(first_delay_s, sleep):
            return
        while not self.stopping.is_set():
            if leases is not None and not leases.acquire("reconciler"):
                self.stopping.wait(interval_s, sleep)
                continue
            try:
                result = self.reconcile(batch=batch)
                if result["fixed"]:
                    logger.info("reconcile run checked=%s fixed=%s", result["checked"], result["fixed"])
            except Exception:  # isolation boundary: the next period tries again
                if self.stopping.is_set():
                    break  # the database went away with the stop: nothing to report
                logger.exception("reconcile run failed")
            self.stopping.wait(interval_s, sleep)

    def stop(self) -> None:
        """End ``run_periodic`` (and a run in progress, after its current account)."""
        self.stopping.set()

    def reconcile_key_id(self, key_id: int, positions: list[ex.Position] | None = None,
                         fills_checked: Collection[str] = ()) -> None:
        """Reconcile one account by key id (after a stream reconnect: with the
        positions of its snapshot and the symbols its gap fill covered, see
        ``reconcile_key``)."""
        with self._db.session() as s:
            key = s.get(ExchangeKey, key_id)
        if key is not None and key.status != "deleted":
            self.reconcile_key(key, positions, fills_checked)

    def stats(self) -> dict:
        """``{"runs", "differences", "repaired", "last_run_ms", "repair"}``."""
        with self._lock:
            return {"runs": self.runs, "differences": self.differences,
                    "repaired": self.repaired, "last_run_ms": self.last_run_ms,
                    "repair": self.repair}

    # ---- the steps ----------------------------------------------------------
    def _settle_pending(self, key: ExchangeKey, client: ExchangeClient,
                        details: list[dict]) -> tuple[int, int]:
        since = now_ms() - self._pending_max_age_ms
        with self._db.session() as s:
            pending = list(s.scalars(select(Trade).where(
                Trade.key_id == key.id, Trade.status == TradeStatus.PENDING.value,
                Trade.created_at >= since).order_by(Trade.id).limit(500)))
        fixed = 0
        for trade in pending:
            status = self._orders.settle_pending(trade, client)
            if status != trade.status:
                fixed += 1
                details.append({"client_order_id": trade.client_order_id, "key_id": key.id,
                                "from": trade.status, "to": status})
        return len(pending), fixed

    def _missing_fills(self, key: ExchangeKey, client: ExchangeClient, held: set[str],
                       details: list[dict], skip: Collection[str] = ()) -> int:
        since = now_ms() - self._fill_lookback_ms
        with self._db.session() as s:
            symbols = set(s.scalars(select(Trade.symbol).where(
                Trade.key_id == key.id, Trade.created_at >= since).distinct()))
        symbols = (symbols | held) - set(skip)
        new = 0
        for symbol in sorted(symbols):
            fills = client.get_fills(symbol, start_time=since)
            if not fills:
                continue
            with self._db.transaction() as s:
                known = set(s.scalars(select(Fill.exchange_trade_id).where(
                    Fill.key_id == key.id, Fill.symbol == symbol,
                    Fill.exchange_trade_id.in_([f.trade_id for f in fills]))))
                ledger.apply_batch(s, [], [(key.id, f) for f in fills])  # links, re-books
            for fill in fills:
                if fill.trade_id not in known:
                    known.add(fill.trade_id)
                    new += 1
                    details.append({"key_id": key.id, "symbol": symbol,
                                    "fill_recorded": fill.trade_id})
        return new

    def _timeouts(self, key: ExchangeKey, details: list[dict]) -> int:
        with self._db.session() as s:
            due = list(s.scalars(select(Trade.id).where(
                Trade.key_id == key.id, Trade.cancel_at.is_not(None),
                Trade.cancel_at <= now_ms()).order_by(Trade.cancel_at).limit(500)))
        done = 0
        for trade_id in due:
            status = self._orders.run_timeout(trade_id)
            if status is not None:
                done += 1
                details.append({"key_id": key.id, "trade_id": trade_id, "timeout": status})
        return done

    def _recover_exits(self, key: ExchangeKey, details: list[dict]) -> bool:
        if self._exits is None:
            return False
        moved = False
        for exit_id in self._exits.working_orphans(key.id):
            outcome = self._exits.recover(exit_id)
            details.append({"key_id": key.id, "exit_id": exit_id, "recovered": outcome})
            moved = moved or outcome in ("filled", "failed")
        return moved

    def _symbols(self, key: ExchangeKey, positions: list[ex.Position]) -> set[str]:
        with self._db.session() as s:
            traded = set(s.scalars(select(Fill.symbol).where(Fill.key_id == key.id).distinct()))
            traded |= set(s.scalars(select(Trade.symbol).where(
                Trade.key_id == key.id, Trade.order_type == "RECONCILED").distinct()))
        return traded | {p.symbol for p in positions}

    def _differences(self, key: ExchangeKey, positions: list[ex.Position]) -> dict[str, tuple]:
        """Per symbol with a difference: ``(kind, exchange net, ledger net, entry price,
        reason)``; kind ``fills_missing`` compares the exchange with all the ledger's
        fills, the others (``exchange_only``/``ledger_only``/``size_mismatch``) with
        what the ledger's own trades hold."""
        exchange_net = {p.symbol: (p.size if p.side == "LONG" else -p.size) for p in positions}
        entry = {p.symbol: p.entry_price for p in positions}
        out: dict[str, tuple] = {}
        with self._db.session() as s:
            for symbol in sorted(self._symbols(key, positions)):
                derived, _ = book.load(s, key.id, symbol, lock=False)
                venue = exchange_net.get(symbol, Decimal(0))
                if venue != derived.net:
                    out[symbol] = ("fills_missing", venue, derived.net, entry.get(symbol),
                                   "the exchange's position is not the sum of the fills it "
                                   "served (older than the lookback, or not served)")
                elif derived.owned_net != venue:
                    led = derived.owned_net
                    kind = ("exchange_only" if led == 0 else "ledger_only" if venue == 0
                            else "size_mismatch")
                    out[symbol] = (kind, venue, led, entry.get(symbol),
                                   "fills of orders the ledger did not place")
        return out

    def _positions(self, key: ExchangeKey, client: ExchangeClient, positions: list[ex.Position],
                   details: list[dict]) -> int:
        """Differences seen twice, ``confirm_delay_s`` apart with the same figures, are
        real: a fill in flight (sent by the exchange, not yet through the write-behind
        queue) shows once and is gone on the second look."""
        first = self._differences(key, positions)
        if not first:
            return 0
        time.sleep(self.confirm_delay_s)
        second = self._differences(key, client.get_positions())
        repaired = 0
        for symbol in sorted(s for s in second if first.get(s, (None,) * 3)[:3] == second[s][:3]):
            kind, venue, led, price, reason = second[symbol]
            diff = {"key_id": key.id, "symbol": symbol, "difference": kind,
                    "exchange": dec(venue), "ledger": dec(led), "repaired": False}
            with self._lock:
                self.differences += 1
            if self.repair:
                self._adjust(key, symbol, venue - led, price, adopt=kind != "fills_missing")
                diff["repaired"] = True
                repaired += 1
                with self._lock:
                    self.repaired += 1
            else:
                diff["reason"] = reason + " (RECONCILE_REPAIR off)"
            logger.warning("reconcile position difference key_id=%s symbol=%s kind=%s "
                           "exchange=%s ledger=%s repaired=%s", key.id, symbol, kind,
                           diff["exchange"], diff["ledger"], diff["repaired"])
            details.append(diff)
        return repaired

    def _adjust(self, key: ExchangeKey, symbol: str, delta: Decimal, price: Decimal | None,
                adopt: bool) -> None:
        """A ``RECONCILED`` trade for ``delta``: with ``adopt`` it takes the fills behind
        the unattributed lots (its figures then come from them); otherwise it stands in
        for fills the ledger cannot get, at the exchange's entry price."""
        with self._db.transaction() as s:
            book.lock_keys(s, [key.id])
            derived, _ = book.load(s, key.id, symbol)
            trade = Trade(user_id=key.user_id, key_id=key.id, exchange=key.exchange,
                          symbol=symbol, side="BUY" if delta > 0 else "SELL",
                          order_type="RECONCILED", quantity=abs(delta),
                          filled_quantity=Decimal(0) if adopt else abs(delta),
                          entry_price=None if adopt else price,
                          status=TradeStatus.OPEN.value, opened_at=now_ms(),
                          client_order_id="recon-" + uuid.uuid4().hex[:26],
                          error_message="adjustment recorded by reconciliation")
            s.add(trade)
            s.flush()
            if adopt and derived.unowned_fills:
                s.execute(update(Fill).where(
                    Fill.key_id == key.id, Fill.symbol == symbol, Fill.trade_id.is_(None),
                    Fill.exchange_trade_id.in_(derived.unowned_fills)).values(trade_id=trade.id)
                    .execution_options(synchronize_session=False))
                s.flush()
                ledger.settle_trade_from_fills(s, trade)
            s.flush()
            book.settle_symbol(s, key.id, symbol)
