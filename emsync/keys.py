"""Generating the token-encryption key on first `emsync init`."""

from __future__ import annotations

from pathlib import Path

from . import envfile
from .config import Settings
from .crypto import new_key
from .errors import ConfigError


def ensure_secret_key(settings: Settings, env_file: Path) -> Path | None:
    """Write a new EMSYNC_SECRET_KEY into ``env_file`` (created 0600 if missing) unless one is configured.

    Returns the file written, or None when a key was already there.

    Raises:
        ConfigError: the env file cannot be read or written (``envfile.set_value``).
    """
    if settings.secret_key:
        return None
    env_file = Path(env_file)
    # Fills an empty EMSYNC_SECRET_KEY= line (a copy of .env.example) in place instead of adding a second one.
    if not envfile.set_value(
        env_file, "EMSYNC_SECRET_KEY", new_key(), comment="Encrypts tokens at rest. Losing it means re-adding every token."
    ):
        return None
    return env_file


# Where tokens were stored before migration 0004 moved them to ``credentials`` (store.ENCRYPTED_COLUMNS
# lists today's columns). `init` reads whichever the database has, before it migrates.
_TOKEN_COLUMNS_BY_TABLE = {
    "integrations": ("access_token_enc", "refresh_token_enc"),
    "credentials": ("access_token_enc", "refresh_token_enc"),
}


def check_key_before_upgrade(engine, settings: Settings) -> None:
    """Refuse to migrate a database holding tokens that the configured key cannot decrypt.

    Migrations copy ciphertexts as they are, so a wrong key loses nothing; but `init` would then
    merge nothing and, without any key, write a new one beside tokens nobody can read. A key that
    decrypts at least one stored token is taken as the right one (tokens it cannot decrypt are
    kept as they are, each in a credential of its own).

    Raises:
        ConfigError: tokens are stored and no key is set, or the key decrypts none of them.
    """
    from sqlalchemy import column, inspect, select, table
    from sqlalchemy.exc import SQLAlchemyError

    from .crypto import TokenBox
    from .db import explain

    blobs: list[str] = []
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            for name, columns in _TOKEN_COLUMNS_BY_TABLE.items():
                if not inspector.has_table(name):
                    continue
                present = {c["name"] for c in inspector.get_columns(name)}
                for col in (c for c in columns if c in present):
                    found = conn.execute(select(column(col)).select_from(table(name)).where(column(col).is_not(None)))
                    blobs += [b for (b,) in found]
    except SQLAlchemyError as exc:
        raise explain(exc, settings.database_url) from None
    if not blobs:
        return
    if not settings.secret_key:
        raise ConfigError(
            f"the database holds {len(blobs)} encrypted tokens and EMSYNC_SECRET_KEY is not set: restore the key "
            "they were stored with (from the env file or its backup) before running 'emsync init'"
        )
    box = TokenBox(settings.secret_key)
    for blob in blobs:
        try:
            box.decrypt(blob)
            return
        except ConfigError:
            continue
    raise ConfigError(
        f"EMSYNC_SECRET_KEY cannot decrypt any of the {len(blobs)} stored tokens: restore the key they were stored "
        "with before running 'emsync init'"
    )
