"""positions as last reported, written behind

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import models.base

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('positions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('symbol', sa.String(length=32), nullable=False),
    sa.Column('side', sa.String(length=5), nullable=False),
    sa.Column('size', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('entry_price', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('leverage', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('liquidation_price', models.base.Money(precision=38, scale=18), nullable=False),
    sa.Column('margin_type', sa.String(length=16), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['key_id'], ['exchange_keys.id'], name=op.f('fk_positions_key_id_exchange_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_positions')),
    sa.UniqueConstraint('key_id', 'symbol', name=op.f('uq_positions_key_id_symbol'))
    )


def downgrade() -> None:
    op.drop_table('positions')
