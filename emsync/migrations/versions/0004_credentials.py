"""credentials shared by integrations

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01

Moves every integration's tokens into a ``credentials`` row of its own and
points the integration at it (``integrations.credential_id``), then drops the
token columns from ``integrations``. ``integrations.token_expires_at`` stays
(the dashboard reads it) as a copy of the credential's.

Each integration gets its own credential, one to one, whatever its tokens:
a migration runs without the key, and Fernet ciphertexts of one token differ
(random IV), so comparing ciphertexts would merge nothing and decrypting is
not possible here. Ciphertexts are copied as they are, so a token that the
configured key cannot decrypt is kept too. ``emsync init`` merges credentials
whose tokens decrypt to the same value afterwards, when it has the key
(``store.merge_identical_credentials``).

No data is lost; downgrade is not supported (the issue does not require it).
"""

from typing import Any

from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

TOKEN_COLUMNS = ("access_token_enc", "refresh_token_enc", "cached_access_token_enc", "cached_access_token_expires_at")


def upgrade() -> None:
    op.create_table(
        "credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("platform_user", sa.String(length=320), nullable=True),
        sa.Column("token_type", sa.String(length=32), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=True),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        sa.Column("refresh_token_enc", sa.Text(), nullable=True),
        sa.Column("cached_access_token_enc", sa.Text(), nullable=True),
        sa.Column("cached_access_token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("data_access_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token_checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("platform", "platform_user", name="uq_credentials_platform_user"),
    )
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credential_id", sa.Integer(), nullable=True))

    _move_tokens()

    # On SQLite batch mode copies the table, drops the old one and renames the copy: db.upgrade turns
    # foreign-key enforcement off around migrations and checks every reference before committing.
    with op.batch_alter_table("integrations", schema=None) as batch_op:
        batch_op.alter_column("credential_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index(batch_op.f("ix_integrations_credential_id"), ["credential_id"], unique=False)
        batch_op.create_foreign_key("fk_integrations_credential_id", "credentials", ["credential_id"], ["id"])
        for column in TOKEN_COLUMNS:
            batch_op.drop_column(column)


def _move_tokens() -> None:
    """One credential per integration, carrying its ciphertexts and expiries unchanged."""
    bind: Any = op.get_bind()
    meta = sa.MetaData()
    integrations = sa.Table(
        "integrations",
        meta,
        sa.Column("id", sa.Integer),
        sa.Column("platform", sa.String(16)),
        sa.Column("token_expires_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        sa.Column("credential_id", sa.Integer),
        *(sa.Column(name, sa.Text) for name in TOKEN_COLUMNS[:3]),
        sa.Column("cached_access_token_expires_at", sa.DateTime(timezone=True)),
    )
    credentials = sa.Table(
        "credentials",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("platform", sa.String(16)),
        sa.Column("token_expires_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
        *(sa.Column(name, sa.Text) for name in TOKEN_COLUMNS[:3]),
        sa.Column("cached_access_token_expires_at", sa.DateTime(timezone=True)),
    )
    rows = bind.execute(sa.select(integrations).order_by(integrations.c.id)).all()
    for row in rows:
        values = {
            name: getattr(row, name)
            for name in ("platform", "token_expires_at", "created_at", "updated_at", *TOKEN_COLUMNS)
        }
        credential_id = bind.execute(sa.insert(credentials).values(**values)).inserted_primary_key[0]
        bind.execute(sa.update(integrations).where(integrations.c.id == row.id).values(credential_id=credential_id))


def downgrade() -> None:
    raise NotImplementedError("emsync migrations only go forward: restore the backup taken before 'emsync init'")
