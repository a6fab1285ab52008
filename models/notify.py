"""Notifications to phones: devices, per-user settings, the ``alerts`` events, price
alerts and the notification outbox (CONTRACT.md, third round, "Notifications to
phones" and "New type ``alerts``"). Times are ms UTC; prices are exact decimals.
"""
from __future__ import annotations

from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Money, now_ms


class Device(Base):
    """A phone's FCM registration token. A token belongs to one user: the last one to
    register it (``token`` is unique). ``last_sent_at``: the last notification FCM
    accepted for it."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token: Mapped[str] = mapped_column(String(4096), unique=True)
    platform: Mapped[str] = mapped_column(String(8))
    locale: Mapped[str] = mapped_column(String(16), default="en")
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    last_sent_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class NotificationSettings(Base):
    """What a user wants on the phone; a user without a row has the defaults (all on,
    ``liquidation_warning_pct`` 10)."""

    __tablename__ = "notification_settings"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    fills: Mapped[bool] = mapped_column(Boolean, default=True)
    protection: Mapped[bool] = mapped_column(Boolean, default=True)
    risk: Mapped[bool] = mapped_column(Boolean, default=True)
    price_alerts: Mapped[bool] = mapped_column(Boolean, default=True)
    skip_when_online: Mapped[bool] = mapped_column(Boolean, default=True)
    liquidation_warning_pct: Mapped[Decimal] = mapped_column(Money, default=Decimal("10"))
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class Alert(Base):
    """One ``alerts`` event of a user. ``seq`` grows by one per user (the push's
    ``seq``, durable, so a resume works across restarts); ``detail`` is JSON."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("user_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    symbol: Mapped[str | None] = mapped_column(String(32), nullable=True)
    message: Mapped[str] = mapped_column(String(512))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    time: Mapped[int] = mapped_column(BigInteger, default=now_ms, index=True)


class PriceAlert(Base):
    """A user's price alert on a symbol's mark price: fires when the price reaches
    ``above`` (>=) or ``below`` (<=). ``armed`` is False after it fired; a ``repeat``
    one is armed again once the price is back on the other side."""

    __tablename__ = "price_alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    exchange: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    above: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    below: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    repeat: Mapped[bool] = mapped_column(Boolean, default=False)
    armed: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    fired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Notification(Base):
    """The outbox: one row per (event, device), written in the transaction of the
    event. ``status``: ``pending`` (to send at ``next_attempt_at``), ``sent``,
    ``skipped`` (delivered to a socket meanwhile, ``skip_when_online``),
    ``failed`` (refused for good; ``error``), ``device_removed``, ``not_configured``.
    ``lease_until``/``claimed_by``: the worker that holds it (several processes)."""

    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("device_id", "event_key"),
                      Index("ix_notifications_status_next_attempt_at", "status", "next_attempt_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    device_id: Mapped[int | None] = mapped_column(
        ForeignKey("devices.id", ondelete="SET NULL"), nullable=True)
    event_type: Mapped[str] = mapped_column(String(16))
    event_key: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(String(500))
    data: Mapped[str] = mapped_column(Text, default="{}")
    skip_when_online: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    lease_until: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    sent_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
