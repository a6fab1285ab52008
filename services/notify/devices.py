"""Devices (FCM registration tokens), notification settings and the user's recent
notifications (CONTRACT.md third round, "Notifications to phones").

A token belongs to one user: the last one to register it. Tokens are never logged
whole (``token_hint``: the last 6 characters) and never returned.
"""
from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import Database, Device, Notification, NotificationSettings, now_ms
from services.errors import NotFound
from services.notify.outbox import DEFAULTS

logger = logging.getLogger(__name__)


def token_hint(token: str) -> str:
    """What a log line may show of a token."""
    return "..." + token[-6:]


class DeviceService:
    """Registers, lists and deletes a user's devices; reads and writes settings.

    ``on_change(user_id)``: called after a device of the user was registered or deleted
    or their settings changed (``services.notify.standby``: whose streams run while the
    app sleeps); None: nobody is told."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.on_change: Callable[[int], None] | None = None

    def _changed(self, user_id: int) -> None:
        if self.on_change is not None:
            self.on_change(user_id)

    def register(self, user_id: int, token: str, platform: str, locale: str) -> tuple[Device, bool]:
        """Register ``token`` for ``user_id``: ``(device, created)``. A token known
        already (this user's or another's) moves to this user with the new platform
        and locale: ``created`` False."""
        for _ in range(2):
            try:
                with self._db.transaction() as s:
                    dev = s.scalars(select(Device).where(Device.token == token)
                                    .with_for_update()).first()
                    created = dev is None
                    if dev is None:
                        dev = Device(user_id=user_id, token=token, platform=platform, locale=locale)
                        s.add(dev)
                    else:
                        moved = dev.user_id != user_id
                        dev.user_id, dev.platform, dev.locale = user_id, platform, locale
                        dev.updated_at = now_ms()
                        if moved:
                            logger.info("device token moved device_id=%s to user_id=%s token=%s",
                                        dev.id, user_id, token_hint(token))
                    s.flush()
                if created:
                    logger.info("device registered device_id=%s user_id=%s platform=%s token=%s",
                                dev.id, user_id, platform, token_hint(token))
                self._changed(user_id)
                return dev, created
            except IntegrityError:  # registered at the same moment elsewhere: update it
                continue
        raise RuntimeError("device registration raced twice")

    def list(self, user_id: int) -> list[Device]:
        """The user's devices, oldest first."""
        with self._db.session() as s:
            return list(s.scalars(select(Device).where(Device.user_id == user_id)
                                  .order_by(Device.id)))

    def delete(self, user_id: int, device_id: int) -> None:
        """Delete one of the user's devices. Raises NotFound (also for another user's)."""
        with self._db.transaction() as s:
            dev = s.get(Device, device_id)
            if dev is None or dev.user_id != user_id:
                raise NotFound("device_not_found", "no such device", "id")
            s.delete(dev)
        self._changed(user_id)

    def settings(self, user_id: int) -> dict:
        """The user's settings (the defaults when never set)."""
        with self._db.session() as s:
            row = s.get(NotificationSettings, user_id)
            return {k: getattr(row, k) for k in DEFAULTS} if row else dict(DEFAULTS)

    def update_settings(self, user_id: int, changes: dict) -> dict:
        """Apply ``changes`` (any subset of the settings) and return them all."""
        for _ in range(2):
            try:
                with self._db.transaction() as s:
                    row = s.get(NotificationSettings, user_id, with_for_update=True)
                    if row is None:
                        row = NotificationSettings(user_id=user_id, **DEFAULTS)
                        s.add(row)
                    for k, v in changes.items():
                        setattr(row, k, Decimal(v) if k == "liquidation_warning_pct" else v)
                    row.updated_at = now_ms()
                    s.flush()
                    out = {k: getattr(row, k) for k in DEFAULTS}
            except IntegrityError:  # the first write of this user's row raced another
                continue
            self._changed(user_id)
            return out
        raise RuntimeError("settings update raced twice")

    def notifications(self, user_id: int, limit: int = 50) -> builtins.list[Notification]:
        """The user's newest notifications, newest first."""
        with self._db.session() as s:
            return list(s.scalars(select(Notification).where(Notification.user_id == user_id)
                                  .order_by(Notification.id.desc()).limit(limit)))
