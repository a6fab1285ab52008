"""Write-behind: stream events reach the database without any event handler waiting.

Handlers update in-memory state, then ``submit_fill``/``submit_order``/
``submit_positions`` here; one
background worker writes in batches through the ledger's idempotent upserts (a
replayed event writes nothing twice), retrying with exponential backoff and jitter
for as long as the database is unavailable. Nothing is dropped: when the bounded
queue is full, ``submit`` waits (backpressure on that one stream) and counts it.
What a crash loses from the queue, the reconciler restores from the exchange.

An event that cannot be stored even on its own (a bad statement or value, not an
unreachable database) is never dropped: it goes to the dead-letter table
(``ledger_dead_letters``) with its error, is counted (``dead_letters`` in
``/admin/stats``, ``pushsrv_write_behind_dead_letters`` in ``/metrics``) and is
retried by the reconciler (``retry_dead_letters``) until it is stored. If even the
dead letter cannot be written, the event stays in memory and is tried again with the
next batch.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from typing import Any, Literal, NamedTuple, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception

from clock import now_ms
from exchanges import types as ex
from exchanges.types import FundingFee
from models import Database, DeadLetter
from services import ledger, realized
from services.metrics import percentile
from services.retry import DATABASE, policy_for

logger = logging.getLogger(__name__)

STOP_GRACE_S = 0.5  # stop(): how long past its time it waits for the worker's last attempt
# how often the worker looks for realized PnL changes written by others (one query)
WATCH_INTERVAL_S = 0.25
WATCH_RETRY_S = 5.0  # after a failed look (the database is away)
IDLE_WAKE_S = 0.05  # an idle worker notices stop() within this (the watch keeps its interval)
# Once woken by an event, the worker lets the burst it belongs to go on first: it naps
# GATHER_S at a time while more events arrive, at most GATHER_MAX_S, then writes them
# all. Without it the write's CPU (SQLAlchemy, tens of ms under load) ran between an
# account stream queueing its ``fills`` push and the socket writer sending it: a price
# move that fills 50 accounts at once had its pushes wait for the ledger (bench
# protection_exchange).
GATHER_S = 0.002
GATHER_MAX_S = 0.05


def database_unavailable(e: BaseException) -> bool:
    """True for errors that mean "the database cannot be reached right now" (retry
    forever), as opposed to a bad statement: connection refused or reset, a pooled
    connection found dead, a server shutting down, a deadlock or serialisation loss."""
    return isinstance(e, (OperationalError, InterfaceError)) or (
        isinstance(e, DBAPIError) and e.connection_invalidated)


class PositionsReport(NamedTuple):
    """A stream's positions report of one key, as queued: ``as_of`` ms UTC, the
    positions (a closed one has ``size`` 0), ``complete`` when they are all the key's
    open positions (``ledger.upsert_positions``)."""

    as_of: int
    positions: list[ex.Position]
    complete: bool


Event = ex.Fill | ex.Order | FundingFee | PositionsReport
Kind = Literal["fill", "order", "funding", "positions"]


@dataclass(frozen=True, slots=True)
class Queued:
    """One event in the write-behind queue.

    ``at`` is when it was queued (``time.monotonic()`` seconds: the write latency and
    the oldest unwritten age are measured from it), ``key_id`` the exchange key it
    belongs to, ``event`` the event itself. ``kind`` names the event's type (the
    dead-letter row's ``kind``): derived from ``event``, so the two cannot disagree."""

    at: float
    key_id: int
    event: Event

    @property
    def kind(self) -> Kind:
        """``"fill"``, ``"order"``, ``"funding"`` or ``"positions"``."""
        if isinstance(self.event, ex.Fill):
            return "fill"
        if isinstance(self.event, ex.Order):
            return "order"
        if isinstance(self.event, FundingFee):
            return "funding"
        return "positions"


class LedgerWriter:
    """The write-behind queue and its worker.

    Args:
        db: the database.
        on_recorded: called with a key id after new fills or funding fees of it were
            committed or its realized PnL changed (by this writer, or by any other
            writer in any process: found within ``WATCH_INTERVAL_S``); or set later
            with ``set_on_recorded``, once its consumer exists.
        max_depth: queue bound; beyond it ``submit`` blocks (backpressure).
        batch_size: events per transaction at most.
    """

    def __init__(self, db: Database, on_recorded: Callable[[int], None] | None = None,
                 max_depth: int = 100_000, batch_size: int = 200) -> None:
        self._db = db
        self._on_recorded: Callable[[int], None] = on_recorded or (lambda key_id: None)
        self._queue: queue.Queue[Queued] = queue.Queue(maxsize=max_depth)
        self._batch_size = batch_size
        self._stopping = False
        self._worker_done = threading.Event()  # set while no worker loop runs
        self._worker_done.set()
        self._give_up_at: float | None = None  # stop(): retries end at this monotonic time
        self._unflushed: list[Queued] = []  # events stop() could not write (database down)
        self._inflight: list[Queued] = []  # the batch being written now
        self._inflight_since: float | None = None
        self._latency_ms: deque[float] = deque(maxlen=10_000)
        self.written = 0
        self.retries = 0
        self.failures = 0
        self.backpressure_waits = 0
        self.dead_lettered = 0  # events sent to the dead-letter table since start
        self.dead_letters = 0   # rows in it now (as of the last write or retry)
        # dead letters not written yet (database down): (kind, key id, payload, error)
        self._unstored: list[tuple[str, int, str, str]] = []
        self.last_error: str | None = None
        self._watch = realized.ChangeWatch()
        self._watch_at = 0.0
        self._watch_failing = False

    def set_on_recorded(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(key_id)`` after new fills of a key were committed (the
        StreamManager's ``fills_recorded``: it is built after the writer, which it
        writes through)."""
        self._on_recorded = callback

    # ---- producers (exchange event handlers) ------------------------------------
    def submit_fill(self, key_id: int, fill: ex.Fill) -> None:
        """Queue one fill of ``key_id``. A ``FundingFee`` given here is queued as one
        (the account stream hands its funding fees to its fill sink until the stream
        manager wires ``submit_funding`` itself)."""
        if isinstance(fill, FundingFee):
            self.submit_funding(key_id, fill)
            return
        self._put(key_id, fill)

    def submit_order(self, key_id: int, order: ex.Order) -> None:
        """Queue one order update of ``key_id``."""
        self._put(key_id, order)

    def submit_funding(self, key_id: int, fee: FundingFee) -> None:
        """Queue one funding fee of ``key_id`` (``services.ledger.apply_funding``)."""
        self._put(key_id, fee)

    def submit_positions(self, key_id: int, positions: list[ex.Position], as_of: int,
                         complete: bool = False) -> None:
        """Queue positions of ``key_id`` as reported at ``as_of`` (ms UTC); with
        ``complete`` they are all its open positions (see ``ledger.upsert_positions``)."""
        self._put(key_id, PositionsReport(as_of, list(positions), complete))

    def _put(self, key_id: int, event: Event) -> None:
        entry = Queued(time.monotonic(), key_id, event)
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self.backpressure_waits += 1
            logger.warning("write-behind queue full depth=%s; waiting", self._queue.qsize())
            self._queue.put(entry)

    # ---- the worker ----------------------------------------------------------------
    def run(self) -> None:
        """The worker loop (a background task) until ``stop()``."""
        if self._stopping:
            return
        self._worker_done.clear()
        try:
            while not self._stopping:
                self._watch_realized()
                try:
                    batch = [self._queue.get(timeout=IDLE_WAKE_S)]
                except queue.Empty:
                    continue
                self._gather()
                while len(batch) < self._batch_size:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._write_keeping(batch)
        finally:
            self._worker_done.set()

    def _gather(self) -> None:
        """Nap ``GATHER_S`` while events keep arriving, ``GATHER_MAX_S`` at most: the
        burst's pushes go before this write, and its events join one transaction."""
        until = time.monotonic() + GATHER_MAX_S
        seen = -1
        while not self._stopping and time.monotonic() < until:
            depth = self._queue.qsize()
            if depth == seen or depth + 1 >= self._batch_size:  # quiet, or a full batch
                return
            seen = depth
            time.sleep(GATHER_S)

    def _watch_realized(self) -> None:
        """At most every ``WATCH_INTERVAL_S``: tell ``on_recorded`` of the keys whose
        realized figure changed by another writer (another process; order placement,
        exits or the reconciler here), found by one query (``realized.ChangeWatch``)."""
        now = time.monotonic()
        if now < self._watch_at:
            return
        self._watch_at = now + WATCH_INTERVAL_S
        try:
            with self._db.session() as s:
                keys = self._watch.poll(s)
        except Exception as e:  # isolation boundary: the writes go on; tried again later
            self._watch_at = now + WATCH_RETRY_S
            if not self._watch_failing:  # once per outage, not every few seconds
                logger.warning("realized pnl watch failed kind=%s; retried every %.0f s",
                               type(e).__name__, WATCH_RETRY_S)
            self._watch_failing = True
            return
        if self._watch_failing:
            logger.info("realized pnl watch works again")
            self._watch_failing = False
        for key_id in keys:
            self._on_recorded(key_id)

    def stop(self, drain: bool = True, timeout_s: float = 10.0) -> int:
        """Stop the worker and, with ``drain``, write what is still queued (shutdown),
        all within ``timeout_s``: while the database is unreachable the writes retry
        until then, no longer. Returns how many events were NOT stored; they are logged
        as a count and are lost from memory only: the reconciler records what the
        exchange has and the ledger lacks at the next start (docs/ledger.md). An event
        that fails on its own is dead-lettered as always."""
        self._give_up_at = time.monotonic() + timeout_s
        self._stopping = True
        # the worker's last attempt may have begun just before the deadline: a grace
        self._worker_done.wait(max(0.0, self._give_up_at - time.monotonic()) + STOP_GRACE_S)
        while drain and not self._unflushed and not self._past_deadline():
            batch: list[Queued] = []
            while len(batch) < self._batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                break
            self._write_keeping(batch)
        self._store_dead_letters()
        left = self._queue.qsize() + len(self._unflushed) + len(self._unstored)
        if not self._worker_done.is_set():
            left += len(self._inflight)  # still held by a worker stuck in a connect
        if left:
            logger.warning("write-behind stopped with events not stored count=%s "
                           "(database unavailable within %.1f s); the reconciler restores "
                           "them from the exchange at the next start", left, timeout_s)
        else:
            logger.info("write-behind stopped, queue flushed written=%s dead_lettered=%s",
                        self.written, self.dead_lettered)
        return left

    def _past_deadline(self, _retry_state: object = None) -> bool:
        """True once ``stop()``'s time is up (a tenacity stop condition too)."""
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _wait(self, retry_state: RetryCallState) -> float:
        """tenacity's wait: ``services.retry``'s policy of the failure (a database
        unreachable: 0.1 s doubling to 5 s), cut to ``stop()``'s time."""
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        policy = (policy_for(failure) if failure is not None else None) or DATABASE
        wait = policy.delay(retry_state.attempt_number)
        if self._give_up_at is not None:
            wait = max(0.0, min(wait, self._give_up_at - time.monotonic()))
        return wait

    def _nap(self, seconds: float) -> None:
        """tenacity's sleep between retries, cut short when ``stop()``'s time is up."""
        end = time.monotonic() + seconds
        while not self._past_deadline():
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.1, left))

    def _write_keeping(self, batch: list[Queued]) -> None:
        self._inflight_since = min(item.at for item in batch)
        self._inflight = batch
        try:
            if self._unstored:
                self._store_dead_letters()
            self._write(batch)
        except RetryError:  # only after stop(): the database stayed unreachable till the end
            self._unflushed.extend(batch)
        except Exception as e:  # isolation boundary: a bad batch is kept, not lost
            self.failures += 1
            self.last_error = type(e).__name__
            logger.exception("write-behind batch failed size=%s; written one by one", len(batch))
            for item in batch:  # isolate the poison event; the rest still lands
                try:
                    self._write([item])
                except Exception as err:  # kept as a dead letter, retried by the reconciler
                    logger.exception("write-behind event not writable kind=%s key_id=%s; "
                                     "dead-lettered", item.kind, item.key_id)
                    self._unstored.append((item.kind, item.key_id,
                                           encode_event(item.kind, item.event),
                                           f"{type(err).__name__}: {err}"[:255]))
            self._store_dead_letters()
        finally:
            self._inflight_since = None
            self._inflight = []

    def _store_dead_letters(self) -> None:
        """Write the dead letters held in memory; on failure they stay there."""
        pending = list(self._unstored)
        if not pending:
            return
        try:
            with self._db.transaction() as s:
                s.add_all([DeadLetter(kind=kind, key_id=key_id, payload=payload, error=error)
                           for kind, key_id, payload, error in pending])
                count = s.scalar(select(func.count()).select_from(DeadLetter))
        except Exception:  # isolation boundary: kept in memory, tried with the next batch
            logger.exception("dead letters not stored count=%s; kept in memory", len(pending))
            return
        # stats() sums dead_letters and len(_unstored) from another thread: drop the
        # stored ones first, then the row count, then the total a reader waits on
        del self._unstored[:len(pending)]
        self.dead_letters = count or 0
        self.dead_lettered += len(pending)

    def retry_dead_letters(self, limit: int = 500) -> dict[str, int]:
        """Try each stored dead letter again on its own (the reconciler calls this):
        stored ones are deleted, the others keep their row with the new error and one
        more attempt. Returns ``{"retried", "stored", "left"}``."""
        self._store_dead_letters()
        with self._db.session() as s:
            rows = list(s.scalars(select(DeadLetter).order_by(DeadLetter.id).limit(limit)))
        stored = 0
        for row in rows:
            item = Queued(time.monotonic(), row.key_id, decode_event(row.kind, row.payload))
            error = None
            try:
                self._write([item])
            except Exception as e:  # isolation boundary: it stays a dead letter
                error = f"{type(e).__name__}: {e}"[:255]
            with self._db.transaction() as s:
                dl = s.get(DeadLetter, row.id)
                if dl is None:
                    continue
                if error is None:
                    s.delete(dl)
                    stored += 1
                else:
                    dl.attempts, dl.error, dl.retried_at = dl.attempts + 1, error, now_ms()
        with self._db.session() as s:
            self.dead_letters = s.scalar(select(func.count()).select_from(DeadLetter)) or 0
        if rows:
            logger.info("dead letters retried count=%s stored=%s left=%s",
                        len(rows), stored, self.dead_letters)
        return {"retried": len(rows), "stored": stored, "left": self.dead_letters}

    def _write(self, batch: list[Queued]) -> None:
        orders: list[tuple[int, ex.Order]] = []
        fills: list[tuple[int, ex.Fill]] = []
        positions: list[tuple[int, int, list[ex.Position], bool]] = []
        funding: list[tuple[int, FundingFee]] = []
        for item in batch:
            e = item.event
            if isinstance(e, ex.Order):
                orders.append((item.key_id, e))
            elif isinstance(e, ex.Fill):
                fills.append((item.key_id, e))
            elif isinstance(e, FundingFee):
                funding.append((item.key_id, e))
            else:
                positions.append((item.key_id, e.as_of, e.positions, e.complete))
        for attempt in Retrying(retry=retry_if_exception(database_unavailable),
                                wait=self._wait, stop=self._past_deadline, sleep=self._nap):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.retries += 1
                    self.last_error = "database unavailable"
                with self._db.transaction() as s:
                    keys = ledger.apply_batch(s, orders, fills, positions, funding)
                    keys = keys | s.info.pop(realized.CHANGED_KEYS, set())
        done = time.monotonic()
        self._latency_ms.extend((done - item.at) * 1000 for item in batch)
        self.written += len(batch)
        self.last_error = None
        for key_id in keys:
            self._on_recorded(key_id)

    def stats(self) -> dict[str, Any]:
        """``{"healthy", "depth", "written", "retries", "failures", "backpressure_waits",
        "dead_letters" (waiting for a retry now), "dead_lettered" (since start),
        "oldest_unwritten_age_ms", "write_latency_ms": {"p50", "p99"}, "last_error"}``;
        latency is enqueue -> commit."""
        now = time.monotonic()
        oldest = self._inflight_since
        try:
            head = self._queue.queue[0].at
            oldest = head if oldest is None else min(oldest, head)
        except IndexError:
            pass
        lat = sorted(self._latency_ms)
        return {"healthy": self.last_error is None, "depth": self._queue.qsize(),
                "written": self.written, "retries": self.retries, "failures": self.failures,
                "backpressure_waits": self.backpressure_waits,
                "dead_letters": self.dead_letters + len(self._unstored),
                "dead_lettered": self.dead_lettered,
                "oldest_unwritten_age_ms": int((now - oldest) * 1000) if oldest else 0,
                "write_latency_ms": {"p50": percentile(lat, 0.5, 3),
                                     "p99": percentile(lat, 0.99, 3)},
                "last_error": self.last_error}


def _jsonable(value: object) -> object:
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, ex.OrderStatus):
        return value.value
    return value


def encode_event(kind: str, event: Event) -> str:
    """A queued event as JSON (decimal strings), the ``payload`` of its dead-letter row
    (whose ``kind`` column holds ``kind``, ``Queued.kind``): a Fill, an Order, a
    FundingFee (their fields), or a ``PositionsReport`` (a plain ``(as_of, [Position],
    complete)`` tuple too) as ``{"as_of", "complete", "positions": [...]}``."""
    if isinstance(event, tuple):
        as_of, held, complete = event
        body = {"as_of": as_of, "complete": complete,
                "positions": [{k: _jsonable(v) for k, v in asdict(p).items()} for p in held]}
    else:
        body = {k: _jsonable(v) for k, v in asdict(event).items()}
    return json.dumps(body)


_T = TypeVar("_T", ex.Fill, ex.Order, FundingFee, ex.Position)


def _build(cls: type[_T], data: dict[str, Any]) -> _T:
    out = {}
    for f in fields(cls):
        if f.name not in data:  # a field added since the row was written: its default
            continue
        v = data[f.name]
        if v is not None and "Decimal" in str(f.type):
            v = Decimal(v)
        elif f.name == "status" and cls is ex.Order:
            v = ex.OrderStatus(v)
        out[f.name] = v
    return cls(**out)


def decode_event(kind: str, payload: str) -> Event:
    """The event ``encode_event`` wrote (``kind`` from the dead-letter row): a
    ``PositionsReport`` for ``"positions"``. Raises ValueError (json.JSONDecodeError
    included), KeyError or TypeError on a payload it did not write."""
    data = json.loads(payload)
    if kind == "positions":
        return PositionsReport(data["as_of"], [_build(ex.Position, p) for p in data["positions"]],
                               data["complete"])
    if kind == "fill":
        return _build(ex.Fill, data)
    if kind == "funding":
        return _build(FundingFee, data)
    return _build(ex.Order, data)
