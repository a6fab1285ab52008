"""The outbox worker: claims due ``notifications`` rows and sends them through FCM.

Claim: in one short transaction, due rows (``pending``, ``next_attempt_at`` <= now,
no live lease) get a lease (``lease_until`` = now + ``LEASE_MS``, ``claimed_by`` = a
token of this claim). On PostgreSQL the rows are selected ``FOR UPDATE SKIP LOCKED``,
so several processes never claim one row; on SQLite (one writer at a time) the claim
is one conditional ``UPDATE``. A process that dies holding rows leaves them to be
claimed again when the lease ends (the collapse key makes a repeat replace the first
on the phone, never add to it). Every result is written only if the lease is still
this claim's. The sends of a batch run ``concurrency`` at a time; its sent, skipped
and not-configured results are written together when the batch ends (one
transaction, not one per row: under a burst the per-row transactions were most of
the worker's CPU), so a process that dies mid-batch re-sends at most that batch.

Per row: device gone -> ``device_removed``; ``skip_when_online`` and the event
reached a socket -> ``skipped``; no FCM configuration -> ``not_configured``; else
sent. 429 and 5xx (and no answer) are retried with exponential backoff and jitter
(``services.retry``), never sooner than ``Retry-After``, at most
``MAX_ATTEMPTS`` times; ``UNREGISTERED`` / invalid token -> the device is deleted and
its rows end ``device_removed``; any other refusal -> ``failed`` with the error.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from sqlalchemy import case, delete, func, or_, select, update

from models import Database, Device, Notification, now_ms
from services.lifecycle import StopFlag
from services.metrics import percentile
from services.notify.fcm import FcmClient, FcmRejected, FcmRetryable, FcmTokenGone, build_message
from services.retry import FCM, asked_wait_s

logger = logging.getLogger(__name__)

LEASE_MS = 60_000  # longer than a send with its timeout and the token refresh
BATCH = 50  # rows per claim
MAX_ATTEMPTS = 12  # retryable failures before a row is failed (about 1 h of backoff)
# due rows are looked for this often: a retry whose backoff ended, rows of a process
# that died holding them; rows this process writes wake the worker at once
POLL_S = 1.0

Row = dict[str, Any]  # a claimed row (``claim``)
Done = list[tuple[Row, str, int]]  # a batch's results: (row, status, ms UTC of the outcome)


class NotifyWorker:
    """Sends the outbox.

    Args:
        db: the database.
        fcm: the FCM client, or None when not configured (rows end ``not_configured``).
        deliveries: ``services.notify.presence`` store (``delivered``, ``flush``).
        wake: an event set when rows were written by this process (a green event
            under eventlet: the idle worker blocks on it, at most ``POLL_S``).
        sleep: cooperative sleep; ``concurrency``: sends in flight at once per claim
            (``spawn`` starts them; None: one at a time).
    """

    def __init__(self, db: Database, fcm: FcmClient | None, deliveries: Any,
                 wake: threading.Event, sleep: Callable[[float], None],
                 spawn: Callable[..., Any] | None = None, concurrency: int = 8) -> None:
        self._db = db
        self._fcm = fcm
        self._deliveries = deliveries
        self._wake = wake
        self._sleep = sleep
        self._spawn = spawn
        self._concurrency = max(1, concurrency)
        self.stopping = StopFlag(sleep)
        self._claims = itertools.count(1)
        self._me = f"{socket.gethostname()[:24]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.counts: Counter[str] = Counter()  # outcome -> rows
        self.retries = 0
        self.last_error: str | None = None
        self._latency_ms: deque[float] = deque(maxlen=10_000)  # row written -> FCM accepted

    # ---- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        """Claim and send until ``stop()``; between claims flush the delivery record."""
        while not self.stopping.is_set():
            try:
                self._deliveries.flush()
                done = self.run_once()
            except Exception:  # isolation boundary: the loop goes on after a bad pass
                logger.exception("notification worker pass failed")
                self.last_error = "pass failed"
                done = 0
            if done:
                continue
            self._wait(POLL_S)

    def _wait(self, seconds: float) -> None:
        """Until rows are written here (``wake``), ``stop()`` or ``seconds`` pass."""
        if self._wake.wait(seconds):
            self._wake.clear()

    def stop(self) -> None:
        """Ask the loop to end (rows it holds are claimed again after the lease)."""
        self.stopping.set()
        self._wake.set()  # an idle worker notices at once

    def run_once(self) -> int:
        """Claim one batch of due rows, send it and write its results; returns how
        many rows. The common results (sent, skipped, not configured) of the whole
        batch are written in one transaction at its end (``_finish_batch``); a retry,
        a refusal or a removed device is written when it happens."""
        token, rows = self.claim()
        if not rows:
            return 0
        delivered = self._deliveries.delivered(
            [r["event_key"] for r in rows if r["skip_when_online"]])
        work = [(r, r["event_key"] in delivered) for r in rows]
        done: Done = []
        if self._spawn is None or self._concurrency == 1 or len(work) == 1:
            for r, online in work:
                self._process(token, r, online, done)
        else:
            self._in_lanes(token, work, done)
        try:
            self._finish_batch(token, done)
        except Exception:  # isolation boundary: the rows are claimed again after the lease
            logger.exception("notification results not written rows=%s", len(done))
            self.counts["errors"] += len(done)
        return len(rows)

    def _in_lanes(self, token: str, work: list[tuple[Row, bool]],
                  done: Done) -> None:
        """Process ``work`` in ``concurrency`` green threads; returns when all ended."""
        lanes = [work[i::self._concurrency] for i in range(min(self._concurrency, len(work)))]
        left = [len(lanes)]
        lock = threading.Lock()
        finished = threading.Event()

        def lane(items: list[tuple[Row, bool]]) -> None:
            try:
                for r, online in items:
                    self._process(token, r, online, done)
            finally:
                with lock:
                    left[0] -= 1
                    if left[0] == 0:
                        finished.set()
        assert self._spawn is not None
        for items in lanes:
            self._spawn(lane, items)
        finished.wait()

    # ---- claim ------------------------------------------------------------------------
    def claim(self, limit: int = BATCH) -> tuple[str, list[Row]]:
        """Lease up to ``limit`` due rows to a new claim token; returns the token and
        the rows (with the device's token and platform)."""
        token = f"{self._me}:{next(self._claims)}"
        now = now_ms()
        n = Notification
        due = ((n.status == "pending") & (n.next_attempt_at <= now)
               & or_(n.lease_until.is_(None), n.lease_until < now))
        with self._db.transaction() as s:
            if s.get_bind().dialect.name == "postgresql":
                ids = list(s.scalars(select(n.id).where(due).order_by(n.id).limit(limit)
                                     .with_for_update(skip_locked=True)))
                if not ids:
                    return token, []
                s.execute(update(n).where(n.id.in_(ids))
                          .values(lease_until=now + LEASE_MS, claimed_by=token))
            else:
                sub = select(n.id).where(due).order_by(n.id).limit(limit).scalar_subquery()
                s.execute(update(n).where(n.id.in_(sub), due)
                          .values(lease_until=now + LEASE_MS, claimed_by=token))
            rows = s.execute(
                select(n.id, n.user_id, n.device_id, n.event_type, n.event_key, n.title, n.body,
                       n.data, n.skip_when_online, n.attempts, n.created_at,
                       Device.token.label("device_token"))
                .outerjoin(Device, Device.id == n.device_id)
                .where(n.claimed_by == token, n.status == "pending").order_by(n.id)).all()
        return token, [dict(r._mapping) for r in rows]

    # ---- one row ----------------------------------------------------------------------
    def _finish(self, token: str, row_id: int, **values: Any) -> bool:
        """Write one row's result if this claim still holds it."""
        with self._db.transaction() as s:
            res = s.execute(update(Notification).where(
                Notification.id == row_id, Notification.claimed_by == token,
                Notification.status == "pending").values(lease_until=None, **values)
                .returning(Notification.id))
            return res.first() is not None

    def _finish_batch(self, token: str, done: Done) -> None:
        """Write the batch's sent / skipped / not configured rows in one transaction:
        one UPDATE per status (a sent row's ``sent_at`` is its own acceptance time),
        only where this claim still holds the row, and the devices' ``last_sent_at``.
        Counts the rows written; sent rows' latency (row written -> FCM accepted)."""
        if not done:
            return
        n = Notification
        by_status: dict[str, list[tuple[Row, int]]] = {}
        for r, status, at in done:
            by_status.setdefault(status, []).append((r, at))
        with self._db.transaction() as s:
            for status, items in by_status.items():
                ids = [r["id"] for r, _ in items]
                values: dict[str, Any] = {"status": status, "lease_until": None}
                if status == "sent":
                    values.update(attempts=n.attempts + 1,
                                  sent_at=case({r["id"]: at for r, at in items}, value=n.id))
                written = set(s.scalars(
                    update(n).where(n.id.in_(ids), n.claimed_by == token, n.status == "pending")
                    .values(**values).returning(n.id)))
                self.counts[status] += len(written)
                if status != "sent" or not written:
                    continue
                last: dict[int, int] = {}
                for r, at in items:
                    if r["id"] in written:
                        self._latency_ms.append(at - r["created_at"])
                        last[r["device_id"]] = max(at, last.get(r["device_id"], 0))
                s.execute(update(Device).where(Device.id.in_(last))
                          .values(last_sent_at=case(last, value=Device.id)))

    def _process(self, token: str, r: Row, online: bool,
                 done: Done) -> None:
        try:
            self._process_row(token, r, online, done)
        except Exception:  # isolation boundary: the next row is still sent
            logger.exception("notification not processed id=%s", r["id"])
            self.counts["errors"] += 1

    def _process_row(self, token: str, r: Row, online: bool,
                     done: Done) -> None:
        if r["device_token"] is None:
            self._outcome(token, r, "device_removed")
            return
        if online:
            done.append((r, "skipped", now_ms()))
            return
        if self._fcm is None:
            done.append((r, "not_configured", now_ms()))
            return
        message = build_message(r["device_token"], r["event_key"], r["title"], r["body"],
                                json.loads(r["data"] or "{}"))
        try:
            self._fcm.send(message)
        except FcmRetryable as e:
            attempts = r["attempts"] + 1
            self.last_error = e.code
            if attempts >= MAX_ATTEMPTS:
                self._outcome(token, r, "failed", error=f"{e.status} {e.code}", attempts=attempts)
                return
            delay = FCM.delay(attempts, asked_wait_s(e))
            if self._finish(token, r["id"], attempts=attempts, error=f"{e.status} {e.code}"[:255],
                            next_attempt_at=now_ms() + int(delay * 1000)):
                self.retries += 1
                logger.info("notification retry id=%s status=%s code=%s attempt=%s in_s=%.1f",
                            r["id"], e.status, e.code, attempts, delay)
            return
        except FcmTokenGone as e:
            self._remove_device(r, e)
            return
        except FcmRejected as e:
            self.last_error = e.code
            logger.warning("notification refused id=%s status=%s code=%s", r["id"], e.status,
                           e.code)
            self._outcome(token, r, "failed", error=f"{e.status} {e.code}: {e.message}"[:255],
                          attempts=r["attempts"] + 1)
            return
        done.append((r, "sent", now_ms()))

    def _outcome(self, token: str, r: Row, status: str, **values: Any) -> bool:
        ok = self._finish(token, r["id"], status=status, **values)
        if ok:
            self.counts[status] += 1
        return ok

    def _remove_device(self, r: Row, e: Exception) -> None:
        """Delete the device (its rows keep ``device_id`` null) and end its pending rows."""
        with self._db.transaction() as s:
            s.execute(update(Notification).where(Notification.device_id == r["device_id"],
                                                 Notification.status == "pending")
                      .values(status="device_removed", lease_until=None, error=str(e)[:255]))
            s.execute(delete(Device).where(Device.id == r["device_id"]))
        self.counts["device_removed"] += 1
        self.counts["devices_removed"] += 1
        logger.info("device removed device_id=%s user_id=%s reason=%s", r["device_id"],
                    r["user_id"], getattr(e, "code", type(e).__name__))

    # ---- figures ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``{"configured", "sent", "skipped", "failed", "device_removed",
        "not_configured", "devices_removed", "retries", "errors", "pending" (rows
        waiting in the database), "oldest_pending_age_ms", "send_latency_ms": {"p50",
        "p99"} (row written -> FCM accepted), "last_error"}``."""
        now = now_ms()
        try:
            with self._db.session() as s:
                pending, oldest = s.execute(select(func.count(), func.min(Notification.created_at))
                                            .where(Notification.status == "pending")).one()
        except Exception:  # noqa: BLE001 - figures only; the database may be down
            pending, oldest = None, None
        lat = sorted(self._latency_ms)
        return {"configured": self._fcm is not None,
                **{k: self.counts.get(k, 0) for k in ("sent", "skipped", "failed", "device_removed",
                                                      "not_configured", "devices_removed",
                                                      "errors")},
                "retries": self.retries, "pending": pending,
                "oldest_pending_age_ms": (now - oldest) if oldest else 0,
                "send_latency_ms": {"p50": percentile(lat, 0.5, 1), "p99": percentile(lat, 0.99, 1)},
                "last_error": self.last_error}
