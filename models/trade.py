"""The trade ledger: trades (intent + outcome), exchange orders and fills.

Orders and fills are unique by exchange ids so that replayed events write nothing
twice; trades are unique by ``client_order_id`` so an order is registered before it
is sent. Money columns are exact decimals, times ms UTC.
"""
from __future__ import annotations

from decimal import Decimal
from enum import Enum

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Money, now_ms


class TradeStatus(str, Enum):
    """Ledger states of CONTRACT.md: pending -> open -> closing -> closed, or
    pending -> canceled / failed; closing -> exit_failed."""

    PENDING = "pending"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    CANCELED = "canceled"
    FAILED = "failed"
    EXIT_FAILED = "exit_failed"


# status values (the strings stored in ``trades.status``) of a trade whose entry filled
# and whose lots are not all closed yet: an exit takes these over, the reconciler watches them
HOLDING_STATUSES = (TradeStatus.OPEN.value, TradeStatus.CLOSING.value, TradeStatus.EXIT_FAILED.value)
# a trade the exchange may still change: its entry may fill (pending) or it holds lots
UNFINISHED_STATUSES = (TradeStatus.PENDING.value,) + HOLDING_STATUSES


class Trade(Base):
    """One entry order and what became of it."""

    __tablename__ = "trades"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"), index=True)
    exchange: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    order_type: Mapped[str] = mapped_column(String(16))
    time_in_force: Mapped[str | None] = mapped_column(String(8))
    reduce_only: Mapped[bool] = mapped_column(Boolean, default=False)
    quantity: Mapped[Decimal] = mapped_column(Money)
    price: Mapped[Decimal | None] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), index=True, default=TradeStatus.PENDING.value)
    client_order_id: Mapped[str] = mapped_column(String(36), unique=True)
    entry_order_id: Mapped[str | None] = mapped_column(String(64))
    filled_quantity: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    # what of ``filled_quantity`` is still held (base units; 0 once closed), written by
    # the book (``services.book.settle_symbol``) whenever it recomputes the symbol
    open_quantity: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    entry_price: Mapped[Decimal | None] = mapped_column(Money)
    exit_price: Mapped[Decimal | None] = mapped_column(Money)
    realized_pnl: Mapped[Decimal | None] = mapped_column(Money)
    fees: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[int | None] = mapped_column(BigInteger)
    # LIMIT ``timeout_s``: when the rest of the entry is to be cancelled (ms UTC);
    # NULL when there is none or once it was carried out (durable: re-armed at start-up)
    cancel_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    opened_at: Mapped[int | None] = mapped_column(BigInteger)
    closed_at: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_ms, onupdate=now_ms)


class Order(Base):
    """An exchange order as last reported, unique by (key, symbol, exchange order id)."""

    __tablename__ = "orders"
    __table_args__ = (UniqueConstraint("key_id", "symbol", "exchange_order_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"), index=True)
    trade_id: Mapped[int | None] = mapped_column(ForeignKey("trades.id", ondelete="SET NULL"), index=True)
    exchange_order_id: Mapped[str] = mapped_column(String(64))
    client_order_id: Mapped[str] = mapped_column(String(64), index=True)
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(20))
    price: Mapped[Decimal] = mapped_column(Money)
    quantity: Mapped[Decimal] = mapped_column(Money)
    filled_quantity: Mapped[Decimal] = mapped_column(Money)
    avg_price: Mapped[Decimal] = mapped_column(Money)
    time_in_force: Mapped[str] = mapped_column(String(8))
    reduce_only: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class Fill(Base):
    """One execution, unique by (key, symbol, exchange trade id)."""

    __tablename__ = "fills"
    __table_args__ = (UniqueConstraint("key_id", "symbol", "exchange_trade_id"),
                      Index("ix_fills_key_id_symbol_exchange_order_id",
                            "key_id", "symbol", "exchange_order_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"), index=True)
    trade_id: Mapped[int | None] = mapped_column(ForeignKey("trades.id", ondelete="SET NULL"), index=True)
    exchange_trade_id: Mapped[str] = mapped_column(String(64))
    exchange_order_id: Mapped[str] = mapped_column(String(64))
    client_order_id: Mapped[str | None] = mapped_column(String(64))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    price: Mapped[Decimal] = mapped_column(Money)
    quantity: Mapped[Decimal] = mapped_column(Money)
    fee: Mapped[Decimal] = mapped_column(Money)
    fee_asset: Mapped[str] = mapped_column(String(16))
    realized_pnl: Mapped[Decimal] = mapped_column(Money)
    is_maker: Mapped[bool] = mapped_column(Boolean, default=False)
    time: Mapped[int] = mapped_column(BigInteger)
    # why the venue made it when not an order of ours: NULL, ``liquidation`` or ``adl``;
    # a protection leg's fill: ``stop_loss``, ``take_profit`` or ``trailing_stop``
    reason: Mapped[str | None] = mapped_column(String(16))


class ExitStatus(str, Enum):
    """An exit's life: ``working`` (the FOK chase runs), ``filled``, ``failed``."""

    WORKING = "working"
    FILLED = "filled"
    FAILED = "failed"


class Exit(Base):
    """One attempt to close a position: at most one ``working`` per (key, symbol),
    enforced by a partial unique index (the duplicate-exit guard). The row is the
    chase's durable intent: ``client_order_ids`` holds every attempt's id before it is
    sent and ``deadline_at`` its end, so a restart resumes or settles it."""

    __tablename__ = "exits"
    __table_args__ = (
        Index("ix_exits_status", "status"),
        Index("uq_exits_working_key_symbol", "key_id", "symbol", unique=True,
              sqlite_where=text("status = 'working'"),
              postgresql_where=text("status = 'working'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(4))
    quantity: Mapped[Decimal] = mapped_column(Money)
    status: Mapped[str] = mapped_column(String(16), default=ExitStatus.WORKING.value)
    attempts: Mapped[int] = mapped_column(default=0)
    first_price: Mapped[Decimal | None] = mapped_column(Money)
    last_price: Mapped[Decimal | None] = mapped_column(Money)
    exit_price: Mapped[Decimal | None] = mapped_column(Money)
    realized_pnl: Mapped[Decimal | None] = mapped_column(Money)
    reason: Mapped[str | None] = mapped_column(String(255))
    client_order_ids: Mapped[str] = mapped_column(String(1024), default="")
    deadline_at: Mapped[int | None] = mapped_column(BigInteger)  # end of the chase, ms UTC
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_ms, onupdate=now_ms)


class Position(Base):
    """The exchange's position of one key in one symbol (one-way mode) as last
    reported, written behind by the account stream: keyed by (key, symbol), ``size``
    positive with ``side`` LONG/SHORT, 0 once closed; ``updated_at`` (ms UTC) is the
    report's time and a row never goes back to an older report. Mark price and
    unrealized PnL are not kept (they move with every tick)."""

    __tablename__ = "positions"
    __table_args__ = (UniqueConstraint("key_id", "symbol"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"))
    symbol: Mapped[str] = mapped_column(String(32))
    side: Mapped[str] = mapped_column(String(5))
    size: Mapped[Decimal] = mapped_column(Money)
    entry_price: Mapped[Decimal] = mapped_column(Money)
    leverage: Mapped[Decimal] = mapped_column(Money)
    liquidation_price: Mapped[Decimal] = mapped_column(Money)
    margin_type: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[int] = mapped_column(BigInteger)


class DeadLetter(Base):
    """A write-behind event that could not be stored on its own (a bad statement, not
    an unreachable database): kept with its error and retried by the reconciler until
    it is stored, then deleted. ``payload`` is the event as JSON (decimal strings)."""

    __tablename__ = "ledger_dead_letters"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # fill | order | positions | funding
    key_id: Mapped[int] = mapped_column()
    payload: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    retried_at: Mapped[int | None] = mapped_column(BigInteger)


class FundingFee(Base):
    """One funding payment of a key's position, as the venue reported it: ``amount``
    signed as the wallet sees it (negative paid, positive received), in ``asset``;
    ``time`` ms UTC; unique by (key, ``exchange_id``) (Binance income ``tranId`` or
    the stream's ``FUNDING_FEE-<asset>-<T>``, Bybit ``execId``) so a replay writes
    nothing twice. ``symbol`` is ``""`` when the venue did not name it."""

    __tablename__ = "funding_fees"
    __table_args__ = (UniqueConstraint("key_id", "exchange_id"),
                      Index("ix_funding_fees_key_id_time", "key_id", "time"))

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"))
    exchange_id: Mapped[str] = mapped_column(String(96))
    symbol: Mapped[str] = mapped_column(String(32))
    amount: Mapped[Decimal] = mapped_column(Money)
    asset: Mapped[str] = mapped_column(String(16))
    time: Mapped[int] = mapped_column(BigInteger)


class RealizedDay(Base):
    """The ledger's realized PnL of one key booked on one UTC day: ``trades_pnl`` (the
    change of the sum of its trades' ``realized_pnl`` that day) and ``funding`` (the
    funding fees recorded that day). Written in the transaction that changed a trade's
    realized PnL or stored a funding fee (``services.realized``), so the sum over a
    key's rows is always the sum of its trades' ``realized_pnl`` plus its funding
    fees, read without walking the trades. ``day`` is 00:00 UTC in ms; ``updated_at``
    ms UTC (indexed: other processes find the keys that changed by it)."""

    __tablename__ = "realized_days"
    __table_args__ = (UniqueConstraint("key_id", "day"),
                      Index("ix_realized_days_updated_at", "updated_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("exchange_keys.id", ondelete="CASCADE"))
    day: Mapped[int] = mapped_column(BigInteger)
    trades_pnl: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    funding: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    updated_at: Mapped[int] = mapped_column(BigInteger, default=now_ms)
