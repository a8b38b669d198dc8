"""leases, freshness, 64-bit run and attempt ids

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Integrations gain the lease columns (PostgreSQL claims become leases taken in
short transactions, so a process's connections no longer grow with its
concurrency) and ``last_sync_started_at`` (freshness). On PostgreSQL the run
and attempt ids become BIGINT (SQLite's rowid is 64-bit already).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("integrations") as batch:
        batch.add_column(sa.Column("last_sync_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("lease_host", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("lease_pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("lease_token", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("sync_attempts", "run_id", type_=sa.BigInteger())
        op.alter_column("sync_attempts", "id", type_=sa.BigInteger())
        op.alter_column("sync_runs", "id", type_=sa.BigInteger())
        op.execute("ALTER SEQUENCE IF EXISTS sync_attempts_id_seq AS BIGINT")
        op.execute("ALTER SEQUENCE IF EXISTS sync_runs_id_seq AS BIGINT")


def downgrade() -> None:
    raise NotImplementedError("emsync never downgrades a schema: restore the backup taken before the upgrade")
