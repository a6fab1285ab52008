"""risk figures: trades.open_quantity, fills.reason, funding fees, realized PnL per day

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

- ``trades.open_quantity``: what of a trade's filled quantity is still held (0 once
  closed), written by the book. Backfilled by walking every (key, symbol)'s fills first
  in first out (the book's own ``services.book.compute``, as of this revision).
- ``fills.reason``: NULL, ``liquidation``, ``adl`` (and a protection leg's
  ``stop_loss``, ``take_profit``, ``trailing_stop``); NULL for existing rows.
- ``funding_fees``: funding payments, unique by (key, exchange id).
- ``realized_days``: each key's realized PnL booked per UTC day (the running sum
  behind ``pnl.realized_pnl``). Backfilled with each key's trades' ``realized_pnl``,
  on the day each trade closed (or was last updated).
"""
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DAY_MS = 86_400_000
MONEY = models.base.Money(precision=38, scale=18)


def upgrade() -> None:
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.add_column(sa.Column('open_quantity', MONEY, nullable=False,
                                      server_default='0'))
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reason', sa.String(length=16), nullable=True))
    op.create_table('funding_fees',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('exchange_id', sa.String(length=96), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('amount', MONEY, nullable=False),
    sa.Column('asset', sa.String(length=16), nullable=False),
    sa.Column('time', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_funding_fees_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_funding_fees')),
    sa.UniqueConstraint('key_id', 'exchange_id', name=op.f('uq_funding_fees_key_id_exchange_id'))
    )
    with op.batch_alter_table('funding_fees', schema=None) as batch_op:
        batch_op.create_index('ix_funding_fees_key_id_time', ['key_id', 'time'], unique=False)
    op.create_table('realized_days',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.BigInteger(), nullable=False),
    sa.Column('trades_pnl', MONEY, nullable=False),
    sa.Column('funding', MONEY, nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_realized_days_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_realized_days')),
    sa.UniqueConstraint('key_id', 'day', name=op.f('uq_realized_days_key_id_day'))
    )
    with op.batch_alter_table('realized_days', schema=None) as batch_op:
        batch_op.create_index('ix_realized_days_updated_at', ['updated_at'], unique=False)
    _backfill()


def _backfill() -> None:
    """open_quantity from the book; realized_days from the trades' realized PnL."""
    from services.book import compute

    bind = op.get_bind()
    meta = sa.MetaData()
    trades = sa.Table('trades', meta, sa.Column('id', sa.Integer), sa.Column('key_id', sa.Integer),
                      sa.Column('symbol', sa.String), sa.Column('side', sa.String),
                      sa.Column('order_type', sa.String), sa.Column('filled_quantity', MONEY),
                      sa.Column('entry_price', MONEY), sa.Column('realized_pnl', MONEY),
                      sa.Column('opened_at', sa.BigInteger), sa.Column('created_at', sa.BigInteger),
                      sa.Column('closed_at', sa.BigInteger), sa.Column('updated_at', sa.BigInteger),
                      sa.Column('open_quantity', MONEY))
    fills = sa.Table('fills', meta, sa.Column('id', sa.Integer), sa.Column('key_id', sa.Integer),
                     sa.Column('trade_id', sa.Integer), sa.Column('exchange_trade_id', sa.String),
                     sa.Column('exchange_order_id', sa.String), sa.Column('symbol', sa.String),
                     sa.Column('side', sa.String), sa.Column('price', MONEY),
                     sa.Column('quantity', MONEY), sa.Column('fee', MONEY),
                     sa.Column('time', sa.BigInteger))
    days = sa.Table('realized_days', meta, sa.Column('key_id', sa.Integer),
                    sa.Column('day', sa.BigInteger), sa.Column('trades_pnl', MONEY),
                    sa.Column('funding', MONEY), sa.Column('updated_at', sa.BigInteger))
    all_trades = bind.execute(sa.select(trades)).all()
    by_pair: dict[tuple[int, str], list[Any]] = {}
    for t in all_trades:
        by_pair.setdefault((t.key_id, t.symbol), []).append(t)
    for (key_id, symbol), held in by_pair.items():
        rows = bind.execute(sa.select(fills).where(fills.c.key_id == key_id,
                                                   fills.c.symbol == symbol)).all()
        with_fills = {f.trade_id for f in rows if f.trade_id is not None}
        adjustments = [t for t in held if t.order_type == 'RECONCILED'
                       and t.id not in with_fills and t.filled_quantity > 0]
        book = compute(list(rows), adjustments)
        for t in held:
            tb = book.trades.get(t.id)
            open_qty = tb.open_quantity if tb is not None and t.filled_quantity > 0 else Decimal(0)
            if open_qty:
                bind.execute(trades.update().where(trades.c.id == t.id)
                             .values(open_quantity=open_qty))
    per_day: dict[tuple[int, int], Decimal] = {}
    for t in all_trades:
        if t.realized_pnl:
            day = (t.closed_at or t.updated_at or t.created_at) // DAY_MS * DAY_MS
            per_day[(t.key_id, day)] = per_day.get((t.key_id, day), Decimal(0)) + t.realized_pnl
    if per_day:
        bind.execute(days.insert(), [
            {'key_id': k, 'day': d, 'trades_pnl': v, 'funding': Decimal(0), 'updated_at': d}
            for (k, d), v in per_day.items()])


def downgrade() -> None:
    with op.batch_alter_table('realized_days', schema=None) as batch_op:
        batch_op.drop_index('ix_realized_days_updated_at')
    op.drop_table('realized_days')
    with op.batch_alter_table('funding_fees', schema=None) as batch_op:
        batch_op.drop_index('ix_funding_fees_key_id_time')
    op.drop_table('funding_fees')
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.drop_column('reason')
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_column('open_quantity')
