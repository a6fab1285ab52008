"""The notification outbox: one ``notifications`` row per (event, device), written in
the transaction that records the event, so that nothing is lost when the process
dies between the event and the send (the worker, ``services.notify.worker``, sends
them).

- ``add_fills(session, fills)``: the ledger's hook (``services.ledger`` calls it with
  the fills it just inserted, inside its transaction).
- ``add_alert(session, alert)``: ``AlertService.raise_alert`` calls it with the new
  ``alerts`` row.

The user's settings decide which events become notifications (``fills``;
``protection`` for ``protection_triggered``; ``risk`` for ``margin_call``,
``liquidation``, ``adl`` and ``liquidation_near``; ``price_alerts``). With
``skip_when_online`` the row waits ``grace_ms`` before it may be sent, so that the
socket delivery of the same event (recorded by ``services.notify.presence``) is
known by then.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from exchanges import types as ex
from models import Alert, Device, ExchangeKey, Notification, NotificationSettings, now_ms
from services.notify.keys import alert_key, fill_key
from services.serialize import dec

DEFAULTS = {"fills": True, "protection": True, "risk": True, "price_alerts": True,
            "skip_when_online": True, "liquidation_warning_pct": Decimal("10")}
SETTING_OF_KIND = {"protection_triggered": "protection", "margin_call": "risk",
                   "liquidation": "risk", "adl": "risk", "liquidation_near": "risk",
                   "price_alert": "price_alerts"}
TITLE_OF_KIND = {"protection_triggered": "Protection triggered", "margin_call": "Margin call",
                 "liquidation": "Position liquidated", "adl": "Position auto-deleveraged",
                 "liquidation_near": "Liquidation near", "price_alert": "Price alert"}


def settings_of(session: Session, user_ids: Iterable[int]) -> dict[int, dict]:
    """Each user's settings as a dict (the defaults for a user without a row)."""
    ids = set(user_ids)
    out = {uid: dict(DEFAULTS) for uid in ids}
    if ids:
        for row in session.scalars(select(NotificationSettings)
                                   .where(NotificationSettings.user_id.in_(ids))):
            out[row.user_id] = {k: getattr(row, k) for k in DEFAULTS}
    return out


def _insert(session: Session):  # type: ignore[no-untyped-def]
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return ins(Notification.__table__).on_conflict_do_nothing(
        index_elements=["device_id", "event_key"])


class Outbox:
    """Writes outbox rows inside the caller's transaction.

    Args:
        grace_ms: how long a row of a user with ``skip_when_online`` waits before it
            may be sent (the socket delivery of its event is recorded by then).
    """

    def __init__(self, grace_ms: int = 200) -> None:
        self.grace_ms = grace_ms
        self.written = 0
        self._wake = threading.Event()  # set when rows were written (the worker waits on it)

    @property
    def wake(self) -> threading.Event:
        """Set after rows were written by this process (the worker clears it)."""
        return self._wake

    def _write(self, session: Session, rows: list[dict]) -> int:
        if not rows:
            return 0
        session.execute(_insert(session), rows)
        self.written += len(rows)
        self._wake.set()
        return len(rows)

    def _devices(self, session: Session, user_ids: set[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        if user_ids:
            for dev_id, uid in session.execute(select(Device.id, Device.user_id)
                                               .where(Device.user_id.in_(user_ids))):
                out.setdefault(uid, []).append(dev_id)
        return out

    def _rows(self, user_id: int, devices: list[int], settings: dict, event_type: str,
              key: str, title: str, body: str, data: dict, now: int) -> list[dict]:
        skip = bool(settings["skip_when_online"])
        return [dict(user_id=user_id, device_id=d, event_type=event_type, event_key=key,
                     title=title[:200], body=body[:500], data=json.dumps(data),
                     skip_when_online=skip, status="pending", attempts=0,
                     next_attempt_at=now + (self.grace_ms if skip else 0), created_at=now)
                for d in devices]

    def add_fills(self, session: Session, fills: list[tuple[int, ex.Fill]]) -> int:
        """Rows for newly recorded fills (``(key_id, Fill)``), one per device of the
        key's user whose settings allow ``fills``. Returns the rows written."""
        if not fills:
            return 0
        key_ids = {k for k, _ in fills}
        owner = dict(session.execute(select(ExchangeKey.id, ExchangeKey.user_id)
                                     .where(ExchangeKey.id.in_(key_ids))).all())
        devices = self._devices(session, set(owner.values()))
        if not devices:
            return 0
        settings = settings_of(session, devices)
        now = now_ms()
        rows: list[dict] = []
        for key_id, f in fills:
            uid = owner.get(key_id)
            if uid is None or uid not in devices or not settings[uid]["fills"]:
                continue
            body = f"{dec(f.quantity)} @ {dec(f.price)}"
            if f.realized_pnl:
                body += f", realized PnL {dec(f.realized_pnl)}"
            data = {"type": "fills", "key_id": str(key_id), "symbol": f.symbol,
                    "trade_id": str(f.trade_id), "side": f.side, "price": dec(f.price),
                    "quantity": dec(f.quantity), "time": str(f.time)}
            rows += self._rows(uid, devices[uid], settings[uid], "fills",
                               fill_key(key_id, f.symbol, f.trade_id),
                               f"{f.symbol} {f.side} filled", body, data, now)
        return self._write(session, rows)

    def add_alert(self, session: Session, alert: Alert) -> int:
        """Rows for one new ``alerts`` row, one per device of its user when the
        setting of its kind allows it. Returns the rows written."""
        devices = self._devices(session, {alert.user_id})
        if not devices:
            return 0
        settings = settings_of(session, [alert.user_id])[alert.user_id]
        setting = SETTING_OF_KIND.get(alert.kind)
        if setting is not None and not settings[setting]:
            return 0
        data = {"type": "alerts", "alert_id": str(alert.id), "kind": alert.kind,
                "key_id": "" if alert.key_id is None else str(alert.key_id),
                "symbol": alert.symbol or "", "time": str(alert.time)}
        title = TITLE_OF_KIND.get(alert.kind, "Alert")
        if alert.symbol:
            title = f"{title}: {alert.symbol}"
        return self._write(session, self._rows(alert.user_id, devices[alert.user_id], settings,
                                               "alerts", alert_key(alert.id), title,
                                               alert.message, data, now_ms()))
