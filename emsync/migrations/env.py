"""Alembic environment: emsync runs migrations programmatically (``emsync init``).

The caller hands over an open connection in ``config.attributes["connection"]``.
"""

from alembic import context
from sqlmodel import SQLModel

from emsync import models  # noqa: F401  (registers the tables on the metadata)

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
