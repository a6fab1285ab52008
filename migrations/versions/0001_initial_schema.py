"""initial schema: users, exchange keys, trade ledger

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('exchange_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('exchange', sa.String(length=16), nullable=False),
    sa.Column('testnet', sa.Boolean(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('api_key', sa.String(length=128), nullable=False),
    sa.Column('api_secret_encrypted', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_exchange_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exchange_keys'))
    )
    with op.batch_alter_table('exchange_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exchange_keys_user_id'), ['user_id'], unique=False)

    op.create_table('trades',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('exchange', sa.String(length=16), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('order_type', sa.String(length=16), nullable=False),
    sa.Column('time_in_force', sa.String(length=8), nullable=True),
    sa.Column('reduce_only', sa.Boolean(), nullable=False),
    sa.Column('quantity', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('price', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('client_order_id', sa.String(length=36), nullable=False),
    sa.Column('entry_order_id', sa.String(length=64), nullable=True),
    sa.Column('filled_quantity', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('entry_price', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('exit_price', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('realized_pnl', models.base.Money(precision=38, scale=18), nullable=True),
    sa.Column('fees', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.String(length=255), nullable=True),
    sa.Column('sent_at', sa.BigInteger(), nullable=True),
    sa.Column('opened_at', sa.BigInteger(), nullable=True),
    sa.Column('closed_at', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_trades_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_trades_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_trades')),
    sa.UniqueConstraint('client_order_id', name=op.f('uq_trades_client_order_id'))
    )
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_trades_key_id'), ['key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_trades_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_trades_user_id'), ['user_id'], unique=False)

    op.create_table('fills',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('trade_id', sa.Integer(), nullable=True),
    sa.Column('exchange_trade_id', sa.String(length=64), nullable=False),
    sa.Column('exchange_order_id', sa.String(length=64), nullable=False),
    sa.Column('client_order_id', sa.String(length=64), nullable=True),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('price', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('quantity', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('fee', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('fee_asset', sa.String(length=16), nullable=False),
    sa.Column('realized_pnl', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('is_maker', sa.Boolean(), nullable=False),
    sa.Column('time', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_fills_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_fills_trade_id_trades'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fills')),
    sa.UniqueConstraint('key_id', 'symbol', 'exchange_trade_id', name=op.f('uq_fills_key_id_symbol_exchange_trade_id'))
    )
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_fills_key_id'), ['key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_fills_trade_id'), ['trade_id'], unique=False)

    op.create_table('orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('trade_id', sa.Integer(), nullable=True),
    sa.Column('exchange_order_id', sa.String(length=64), nullable=False),
    sa.Column('client_order_id', sa.String(length=64), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=4), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('price', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('quantity', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('filled_quantity', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('avg_price', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('time_in_force', sa.String(length=8), nullable=False),
    sa.Column('reduce_only', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_orders_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_orders_trade_id_trades'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('key_id', 'symbol', 'exchange_order_id', name=op.f('uq_orders_key_id_symbol_exchange_order_id'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_orders_client_order_id'), ['client_order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_key_id'), ['key_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_trade_id'), ['trade_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_orders_trade_id'))
        batch_op.drop_index(batch_op.f('ix_orders_key_id'))
        batch_op.drop_index(batch_op.f('ix_orders_client_order_id'))

    op.drop_table('orders')
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fills_trade_id'))
        batch_op.drop_index(batch_op.f('ix_fills_key_id'))

    op.drop_table('fills')
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trades_user_id'))
        batch_op.drop_index(batch_op.f('ix_trades_status'))
        batch_op.drop_index(batch_op.f('ix_trades_key_id'))

    op.drop_table('trades')
    with op.batch_alter_table('exchange_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exchange_keys_user_id'))

    op.drop_table('exchange_keys')
    op.drop_table('users')
