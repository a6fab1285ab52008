"""exits with a duplicate-exit guard

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('exits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('quantity', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('first_price', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('last_price', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('exit_price', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('realized_pnl', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('reason', sa.String(length=255), nullable=True),
    sa.Column('client_order_ids', sa.String(length=1024), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_exits_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_exits_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exits'))
    )
    with op.batch_alter_table('exits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exits_user_id'), ['user_id'], unique=False)
        batch_op.create_index('uq_exits_working_key_symbol', ['key_id', 'symbol'], unique=True, sqlite_where=sa.text("status = 'working'"), postgresql_where=sa.text("status = 'working'"))



def downgrade() -> None:
    with op.batch_alter_table('exits', schema=None) as batch_op:
        batch_op.drop_index('uq_exits_working_key_symbol', sqlite_where=sa.text("status = 'working'"), postgresql_where=sa.text("status = 'working'"))
        batch_op.drop_index(batch_op.f('ix_exits_user_id'))

    op.drop_table('exits')
