"""The ``alerts`` push type (CONTRACT.md third round, "New type ``alerts``"): durable
events of a user, pushed to room ``alerts_<user_id>`` and replayable with ``since``
like ``fills``.

``AlertService.raise_alert(kind, user_id, key_id, symbol, message, detail)`` is what
every domain calls (``protection_triggered`` from the protection rules,
``margin_call``/``liquidation``/``adl``/``liquidation_near`` from the risk side,
``price_alert`` from ``services.notify.price_alerts``). It writes the ``alerts`` row
and its notification outbox rows in one transaction, then publishes the envelope
through the ``publish`` callable it was given. It reads and writes the database:
call it from a background task, never from a push loop.

Envelope: ``{"type": "alerts", "user_id", "key_id" (the alert's, may be null),
"exchange": null, "testnet": null, "epoch": "durable", "seq", "as_of", "sent_at",
"source", "stale": false, "data": [alert]}`` with alert ``{"id", "kind", "key_id",
"symbol", "message", "time", "detail"}``. ``seq`` grows by one per alert of the user
and is stored with it, so the epoch never changes (not even across restarts): a
client's ``{"epoch", "seq"}`` is always resumable, oldest first, from the table.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from models import Alert, Database, now_ms
from services.notify.outbox import Outbox

logger = logging.getLogger(__name__)

ALERT_KINDS = ("margin_call", "liquidation", "adl", "protection_triggered",
               "liquidation_near", "price_alert")
EPOCH = "durable"  # alerts' seq is stored with them: one epoch forever
REPLAY_LIMIT = 1_000  # alerts sent by one resume at most (the oldest first)
SEQ_RETRIES = 5  # two processes raising an alert of one user at once: one retries


def alert_row(a: Alert) -> dict:
    """A ``models.Alert`` as a CONTRACT.md ``alerts`` item."""
    return {"id": a.id, "kind": a.kind, "key_id": a.key_id, "symbol": a.symbol,
            "message": a.message, "time": a.time, "detail": json.loads(a.detail or "{}")}


def envelope(user_id: int, seq: int, rows: list[dict], source: str,
             key_id: int | None = None) -> dict:
    """An ``alerts`` envelope of ``rows`` at ``seq``."""
    now = now_ms()
    return {"type": "alerts", "user_id": user_id, "key_id": key_id, "exchange": None,
            "testnet": None, "epoch": EPOCH, "seq": seq, "as_of": now, "sent_at": now,
            "source": source, "stale": False, "data": rows}


class AlertService:
    """Raises, stores, publishes and replays alerts.

    Args:
        db: the database.
        outbox: writes the notification rows in the alert's transaction.
        publish: ``publish(envelope)``, the push hub's (never Socket.IO here).
    """

    def __init__(self, db: Database, outbox: Outbox, publish: Callable[[dict], None]) -> None:
        self._db = db
        self._outbox = outbox
        self._publish = publish
        self.raised = 0

    def raise_alert(self, kind: str, user_id: int, key_id: int | None, symbol: str | None,
                    message: str, detail: dict[str, Any] | None = None) -> dict:
        """Store an alert (next ``seq`` of the user) and its notification rows in one
        transaction, then push it to ``alerts_<user_id>``. ``kind`` one of
        ``ALERT_KINDS``; ``detail`` JSON-serialisable (decimals as strings). Returns
        the CONTRACT.md item. Raises ValueError for an unknown kind, SQLAlchemyError
        when the database cannot store it (nothing is pushed then)."""
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r}")
        body = json.dumps(detail or {}, default=str)
        for attempt in range(SEQ_RETRIES):
            try:
                with self._db.transaction() as s:
                    seq = (s.scalar(select(func.max(Alert.seq)).where(Alert.user_id == user_id))
                           or 0) + 1
                    alert = Alert(user_id=user_id, seq=seq, kind=kind, key_id=key_id,
                                  symbol=symbol, message=message[:512], detail=body,
                                  time=now_ms())
                    s.add(alert)
                    s.flush()
                    self._outbox.add_alert(s, alert)
                    row = alert_row(alert)
                break
            except IntegrityError:  # another process took this seq: take the next one
                if attempt == SEQ_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        self.raised += 1
        logger.info("alert raised user_id=%s kind=%s key_id=%s symbol=%s seq=%s", user_id,
                    kind, key_id, symbol, seq)
        self._publish(envelope(user_id, seq, [row], "stream", key_id))
        return row

    def current_seq(self, user_id: int) -> int:
        """The ``seq`` of the user's newest alert (0: none)."""
        with self._db.session() as s:
            return s.scalar(select(func.max(Alert.seq)).where(Alert.user_id == user_id)) or 0

    @staticmethod
    def resumable(since: dict | None) -> bool:
        """Whether ``replay`` continues the client's copy for this ``since``."""
        if not since:
            return False
        return ((since.get("epoch") == EPOCH and since.get("seq") is not None)
                or since.get("time") is not None)

    def replay(self, user_id: int, since: dict | None) -> tuple[bool, list[dict]]:
        """What a subscriber of ``alerts`` is sent first: ``(resumed, envelopes)``.
        ``since`` ``{"epoch", "seq"}``: the alerts after it, one envelope each (their
        own ``seq``), resumed when the epoch is this one; ``{"time": T}``: every alert
        with time >= T, in one envelope at the current ``seq`` (``source: "cache"``);
        nothing: an empty envelope at the current ``seq``. Raises SQLAlchemyError."""
        with self._db.session() as s:
            current = s.scalar(select(func.max(Alert.seq)).where(Alert.user_id == user_id)) or 0
            q = select(Alert).where(Alert.user_id == user_id)
            if since and since.get("epoch") == EPOCH and since.get("seq") is not None:
                rows = s.scalars(q.where(Alert.seq > since["seq"]).order_by(Alert.seq)
                                 .limit(REPLAY_LIMIT)).all()
                return True, [envelope(user_id, a.seq, [alert_row(a)], "cache", a.key_id)
                              for a in rows]
            if since and since.get("time") is not None:
                rows = s.scalars(q.where(Alert.time >= since["time"]).order_by(Alert.seq)
                                 .limit(REPLAY_LIMIT)).all()
                return True, [envelope(user_id, current, [alert_row(a) for a in rows], "cache")]
        return False, [envelope(user_id, current, [], "cache")]

    def recent(self, user_id: int, limit: int = 50) -> list[dict]:
        """The user's newest alerts, newest first."""
        with self._db.session() as s:
            return [alert_row(a) for a in s.scalars(
                select(Alert).where(Alert.user_id == user_id).order_by(Alert.seq.desc())
                .limit(limit))]
