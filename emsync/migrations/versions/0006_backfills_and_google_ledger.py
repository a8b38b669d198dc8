"""backfills, backfill chunks and the Google operations ledger

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

Only new tables: nothing existing changes, so no row can be lost.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')  # 64-bit; INTEGER PRIMARY KEY (rowid) on SQLite


def upgrade() -> None:
    op.create_table('google_operations',
    sa.Column('id', ID, nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('operations', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=True),
    sa.Column('exhausted_scope', sa.String(length=16), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('google_operations', schema=None) as batch_op:
        batch_op.create_index('ix_google_operations_day', ['day'], unique=False)

    op.create_table('backfills',
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('since', sa.Date(), nullable=False),
    sa.Column('until', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('chunks_total', sa.Integer(), nullable=False),
    sa.Column('chunks_done', sa.Integer(), nullable=False),
    sa.Column('next_since', sa.Date(), nullable=True),
    sa.Column('next_until', sa.Date(), nullable=True),
    sa.Column('rows', sa.BigInteger(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('operations', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('resume_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('host', sa.String(length=255), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('integration_id')
    )
    op.create_table('backfill_chunks',
    sa.Column('id', ID, nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('since', sa.Date(), nullable=False),
    sa.Column('until', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('rows', sa.Integer(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('operations', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('lease_token', sa.String(length=64), nullable=True),
    sa.Column('lease_host', sa.String(length=255), nullable=True),
    sa.Column('lease_pid', sa.Integer(), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['integrations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('integration_id', 'since', name='uq_backfill_chunks_integration_since')
    )


def downgrade() -> None:
    op.drop_table('backfill_chunks')
    op.drop_table('backfills')
    with op.batch_alter_table('google_operations', schema=None) as batch_op:
        batch_op.drop_index('ix_google_operations_day')

    op.drop_table('google_operations')
