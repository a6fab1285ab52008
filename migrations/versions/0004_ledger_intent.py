"""ledger intent: LIMIT timeout deadlines, exit deadlines, write-behind dead letters

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

- ``trades.cancel_at``: the ms-UTC moment a LIMIT entry with ``timeout_s`` is to be
  cancelled; NULL when it has none or once the timeout was carried out (a row, so
  that a restart re-arms it).
- ``exits.deadline_at``: the ms-UTC end of an exit's chase (a resumed chase keeps it).
- ``ledger_dead_letters``: write-behind events that could not be stored on their own,
  with the error, retried by the reconciler until they are.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancel_at', sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f('ix_trades_cancel_at'), ['cancel_at'], unique=False)
    with op.batch_alter_table('exits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deadline_at', sa.BigInteger(), nullable=True))
        batch_op.create_index('ix_exits_status', ['status'], unique=False)
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.create_index('ix_fills_key_id_symbol_exchange_order_id',
                              ['key_id', 'symbol', 'exchange_order_id'], unique=False)
    op.create_table('ledger_dead_letters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('key_id', sa.Integer(), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('error', sa.String(length=255), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('retried_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_dead_letters'))
    )


def downgrade() -> None:
    op.drop_table('ledger_dead_letters')
    with op.batch_alter_table('fills', schema=None) as batch_op:
        batch_op.drop_index('ix_fills_key_id_symbol_exchange_order_id')
    with op.batch_alter_table('exits', schema=None) as batch_op:
        batch_op.drop_index('ix_exits_status')
        batch_op.drop_column('deadline_at')
    with op.batch_alter_table('trades', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_trades_cancel_at'))
        batch_op.drop_column('cancel_at')
