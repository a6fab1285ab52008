"""Protection legs: one row per stop-loss, take-profit or trailing stop of a position.

A leg is a ledger row written before anything is sent (pending-first, keyed by its
``client_order_id``, like an entry order): ``pending`` (written, not yet held),
``active`` (held by the exchange, or armed by the server in ``server`` mode),
``triggered`` (it fired: ``exit_id`` names the server's exit, or the exchange closed
the position), ``canceled`` (removed, replaced, or one-cancels-the-others after the
position ended), ``failed`` (the exchange refused it or the server's exit failed:
``error_code`` says why). At most one live (``pending``/``active``) leg per key,
symbol and kind (a partial unique index). Prices are exact decimals, times ms UTC.
"""
from __future__ import annotations

from decimal import Decimal
from enum import Enum

from sqlalchemy import BigInteger, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Money, now_ms


class LegStatus(str, Enum):
    """A leg's life: pending -> active -> triggered | canceled | failed."""

    PENDING = "pending"
    ACTIVE = "active"
    TRIGGERED = "triggered"
    CANCELED = "canceled"
    FAILED = "failed"


class LegKind(str, Enum):
    """What a leg does (CONTRACT.md names)."""

    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"
    TRAILING_STOP = "trailing_stop"


# status values of a leg that may still fire
LIVE_LEG_STATUSES = (LegStatus.PENDING.value, LegStatus.ACTIVE.value)


class ProtectionLeg(Base):
    """One leg. ``side`` is the position it protects (LONG/SHORT); ``mode`` ``exchange``
    (held by the venue) or ``server`` (a rule of this server); ``working_type``
    MARK_PRICE or CONTRACT_PRICE. ``trigger_price`` for stop-loss and take-profit;
    ``callback_rate`` (percent) and ``activation_price`` for a trailing stop, whose
    ``extreme_price`` (server mode) is the highest (LONG) or lowest (SHORT) mark seen
    since its activation, null before it: kept across restarts."""

    __tablename__ = "protection_legs"
    __table_args__ = (
        Index("ix_protection_legs_key_id_symbol", "key_id", "symbol"),
        Index("ix_protection_legs_status", "status"),
        Index("uq_protection_legs_live_key_symbol_kind", "key_id", "symbol", "kind", unique=True,
              sqlite_where=text("status IN ('pending', 'active')"),
              postgresql_where=text("status IN ('pending', 'active')")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"))
    exchange: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(5))
    kind: Mapped[str] = mapped_column(String(16))
    mode: Mapped[str] = mapped_column(String(8))
    working_type: Mapped[str] = mapped_column(String(16))
    trigger_price: Mapped[Decimal | None] = mapped_column(Money)
    callback_rate: Mapped[Decimal | None] = mapped_column(Money)
    activation_price: Mapped[Decimal | None] = mapped_column(Money)
    extreme_price: Mapped[Decimal | None] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default=LegStatus.PENDING.value)
    client_order_id: Mapped[str] = mapped_column(String(36), unique=True)
    order_id: Mapped[str | None] = mapped_column(String(64))
    # the id the venue knows the leg by: Binance clientAlgoId (our client_order_id);
    # Bybit, whose legs are position attributes, "<symbol>-<kind>"; null until placed
    venue_leg_id: Mapped[str | None] = mapped_column(String(64))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(255))
    exit_id: Mapped[int | None] = mapped_column(ForeignKey("exits.id", ondelete="SET NULL"))
    fired_price: Mapped[Decimal | None] = mapped_column(Money)  # the mark that fired it
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_ms, onupdate=now_ms)
