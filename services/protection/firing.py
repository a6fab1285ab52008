"""What a fired server-mode rule does, on its own task (``RuleFiring.fire``): the
position is closed by the exit of ``POST /api/positions/close`` (FOK with the bounded
chase, one exit per position), then the leg is compare-and-set ``active`` ->
``triggered`` with the exit's id and its siblings ``canceled`` (one transaction), then,
once the exit ended, the exit's fills get the leg's ``fills.reason`` and
``on_alert("protection_triggered", ...)`` is called.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import select

from exchanges.errors import ExchangeError, ExchangeRejected
from models import (
    LIVE_LEG_STATUSES,
    Database,
    ExchangeKey,
    ExitStatus,
    LegStatus,
    ProtectionLeg,
)
from services.errors import Conflict
from services.lifecycle import StopFlag
from services.protection.fill_tags import FillTags
from services.protection.guard import ServerGuard
from services.protection.reasons import mark_fill_reasons

logger = logging.getLogger(__name__)

FIRE_RETRIES = 5  # close attempts when the exchange cannot be reached at a trigger
OnAlert = Callable[[str, int, int, str, str, dict], None]


@dataclass(frozen=True)
class LegRef:
    """What a fired rule needs to close its position."""

    leg_id: int
    user_id: int
    key_id: int
    symbol: str
    kind: str


class RuleFiring:
    """Acts on fired rules.

    Args:
        db: the database; exits: the ExitService (``close_position``, ``get``,
        ``settings.deadline_s``); guard: the ServerGuard (siblings disarmed);
        on_alert: the alert callable; stopping: the service's stop flag;
        set_status: ``set_status(leg_id, status, code, message)``;
        changed: ``changed(key_id)`` after a key's legs changed (the pushes).
    """

    def __init__(self, db: Database, exits, guard: ServerGuard, on_alert: OnAlert,  # type: ignore[no-untyped-def]
                 stopping: StopFlag, set_status: Callable[[int, str, str | None, str | None], None],
                 changed: Callable[[int], None], tags=None) -> None:  # type: ignore[no-untyped-def]
        self._db = db
        self._tags = tags or FillTags()  # the exit's fills carry the kind when pushed
        self._exits = exits
        self.guard = guard
        self._on_alert = on_alert
        self.stopping = stopping
        self._set_status = set_status
        self._changed = changed

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
        done = self._wait_exit(ref.user_id, exit_.id)
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
                        "trigger_price": f"{price:f}", "exit_id": exit_.id, "mode": "server",
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
        while time.monotonic() < deadline:
            e = self._exits.get(user_id, exit_id)
            if e is None or e.status != ExitStatus.WORKING.value:
                return e
            if self.stopping.wait(0.1):
                return None
        return None

