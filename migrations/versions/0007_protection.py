"""protection legs: stop-loss, take-profit and trailing stop rows (pending-first)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = "status IN ('pending', 'active')"


def upgrade() -> None:
    money = models.base.Money(precision=38, scale=18)
    op.create_table('protection_legs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('exchange', sa.String(length=16), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=5), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('mode', sa.String(length=8), nullable=False),
    sa.Column('working_type', sa.String(length=16), nullable=False),
    sa.Column('trigger_price', money, nullable=True),
    sa.Column('callback_rate', money, nullable=True),
    sa.Column('activation_price', money, nullable=True),
    sa.Column('extreme_price', money, nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('client_order_id', sa.String(length=36), nullable=False),
    sa.Column('order_id', sa.String(length=64), nullable=True),
    sa.Column('venue_leg_id', sa.String(length=64), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.String(length=255), nullable=True),
    sa.Column('exit_id', sa.Integer(), nullable=True),
    sa.Column('fired_price', money, nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['exit_id'], ['exits.id'], name=op.f('fk_protection_legs_exit_id_exits'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_protection_legs_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_protection_legs_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_protection_legs')),
    sa.UniqueConstraint('client_order_id', name=op.f('uq_protection_legs_client_order_id'))
    )
    with op.batch_alter_table('protection_legs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_protection_legs_user_id'), ['user_id'], unique=False)
        batch_op.create_index('ix_protection_legs_key_id_symbol', ['key_id', 'symbol'], unique=False)
        batch_op.create_index('ix_protection_legs_status', ['status'], unique=False)
        batch_op.create_index('uq_protection_legs_live_key_symbol_kind', ['key_id', 'symbol', 'kind'],
                              unique=True, sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))


def downgrade() -> None:
    with op.batch_alter_table('protection_legs', schema=None) as batch_op:
        batch_op.drop_index('uq_protection_legs_live_key_symbol_kind',
                            sqlite_where=sa.text(LIVE), postgresql_where=sa.text(LIVE))
        batch_op.drop_index('ix_protection_legs_status')
        batch_op.drop_index('ix_protection_legs_key_id_symbol')
        batch_op.drop_index(batch_op.f('ix_protection_legs_user_id'))
    op.drop_table('protection_legs')
