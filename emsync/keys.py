"""The token-encryption key: made once by `emsync init`, checked before anything is written, rotated.

``EMSYNC_SECRET_KEY`` holds one Fernet key, or ``new,old`` during a rotation
(``crypto.TokenBox``: the first key encrypts, any decrypts). Which columns hold
ciphertexts is ``store.ENCRYPTED_COLUMNS`` (and, for a database not yet
migrated to schema 0004, ``LEGACY_ENCRYPTED_COLUMNS``).

* ``require_box``: the configured key, or an error that says what to do — restore
  the original key when tokens are stored (a new key could never read them).
* ``verify_box``: refuse a key that decrypts none of the stored tokens, before a
  command or a run writes anything. One token that does not decrypt is that
  credential's problem (its integrations fail with ``unreadable_token``'s message),
  not the whole run's.
* ``key_report`` (``emsync keys check``) and ``rotate`` (``emsync keys rotate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import envfile
from .config import Settings
from .crypto import TokenBox, new_key
from .errors import ConfigError

# Where tokens were stored before migration 0004 moved them to ``credentials``; `init` reads these too, before it migrates.
LEGACY_ENCRYPTED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("integrations", "id", "access_token_enc"),
    ("integrations", "id", "refresh_token_enc"),
    ("integrations", "id", "cached_access_token_enc"),
)

_WHAT = {
    "access_token_enc": ("access token", "--access-token"),
    "refresh_token_enc": ("refresh token", "--refresh-token"),
    "cached_access_token_enc": ("cached access token", None),
}
_PLATFORM = {"meta": "Meta", "google": "Google"}


def missing_key_message(count: int) -> str:
    """What to say when no key is configured but ``count`` (> 0) tokens are stored."""
    return (
        f"EMSYNC_SECRET_KEY is not set and the database holds {_tokens(count)}: restore the key they were stored "
        "with (from the env file or its backup); a new key could never decrypt them"
    )


def _tokens(count: int) -> str:
    return f"{count} encrypted token" + ("" if count == 1 else "s")


def wrong_key_message(count: int) -> str:
    return (
        f"EMSYNC_SECRET_KEY cannot decrypt any of the {count} stored tokens: it is not the key they were stored with; "
        "restore the key they were stored with (from the env file or its backup)"
    )


def unreadable_token(platform: str, column: str, credential_id: int, integration_id: int | None) -> str:
    """One line naming a token no configured key decrypts, and how to fix it."""
    what, option = _WHAT.get(column, (column, None))
    text = f"the stored {_PLATFORM.get(platform, platform)} {what} of credential {credential_id} does not decrypt with EMSYNC_SECRET_KEY"
    if option is None:
        return f"{text}: harmless, the next sync gets a new one"
    if integration_id is None:
        return f"{text}: no integration uses it; remove it with 'emsync credentials remove {credential_id}'"
    return (
        f"{text} (it was stored under another key): restore that key, or give the token again with "
        f"'emsync integrations update {integration_id} {option} -'"
    )


# ---------------------------------------------------------------- generating the key (init)


def ensure_secret_key(settings: Settings, env_file: Path) -> Path | None:
    """Write a new EMSYNC_SECRET_KEY into ``env_file`` (created 0600 if missing) unless one is configured.

    Callers make sure no token is stored first (``check_key_before_upgrade``): a new key beside stored tokens loses them.
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


def stored_ciphertexts(engine, settings: Settings) -> list[str]:
    """Every stored ciphertext, whatever the schema (before or after migration 0004; none without a schema).

    Raises:
        DatabaseError: the database cannot be read.
    """
    from sqlalchemy import column, inspect, select, table
    from sqlalchemy.exc import SQLAlchemyError

    from .db import explain
    from .store import ENCRYPTED_COLUMNS

    blobs: list[str] = []
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            for name, _key, col in (*LEGACY_ENCRYPTED_COLUMNS, *ENCRYPTED_COLUMNS):
                if not inspector.has_table(name) or col not in {c["name"] for c in inspector.get_columns(name)}:
                    continue
                found = conn.execute(select(column(col)).select_from(table(name)).where(column(col).is_not(None)))
                blobs += [b for (b,) in found]
    except SQLAlchemyError as exc:
        raise explain(exc, settings.database_url) from None
    return blobs


def check_key_before_upgrade(engine, settings: Settings) -> None:
    """Refuse to migrate, or to make a key, when the database holds tokens the configured key cannot decrypt.

    Migrations copy ciphertexts as they are, so a wrong key loses nothing; but `init` would then
    merge nothing and, without any key, write a new one beside tokens nobody can read. A key that
    decrypts at least one stored token is taken as the right one (tokens it cannot decrypt are
    kept as they are, each in a credential of its own).

    Raises:
        ConfigError: tokens are stored and no key is set, or the key decrypts none of them.
    """
    blobs = stored_ciphertexts(engine, settings)
    if not blobs:
        return
    if not settings.secret_key:
        raise ConfigError(missing_key_message(len(blobs)) + "; then run 'emsync init' again")
    box = TokenBox(settings.secret_key)
    if not any(box.readable(blob) for blob in blobs):
        raise ConfigError(wrong_key_message(len(blobs)) + "; then run 'emsync init' again")


# ---------------------------------------------------------------- before writing or running


def require_box(settings: Settings, engine) -> TokenBox:
    """The configured key as a ``TokenBox``.

    Raises:
        ConfigError: no key is set: "restore it" when tokens are stored, else "run 'emsync init'".
    """
    if settings.secret_key:
        return TokenBox(settings.secret_key)
    count = len(stored_ciphertexts(engine, settings))
    if count:
        raise ConfigError(missing_key_message(count))
    raise ConfigError("EMSYNC_SECRET_KEY is not set: run 'emsync init' to generate one, or set it in the environment or the env file")


def verify_box(conn, box: TokenBox) -> None:
    """Refuse a key that decrypts none of the stored tokens (with none stored, any key will do).

    Looks at tokens until one decrypts, so a single token stored under a lost key never blocks the
    others: that token fails only its integrations (``unreadable_token``).

    Raises:
        ConfigError: tokens are stored and no configured key decrypts any of them.
    """
    from .store import encrypted_tokens

    count = 0
    for *_, blob in encrypted_tokens(conn):
        if box.readable(blob):
            return
        count += 1
    if count:
        raise ConfigError(wrong_key_message(count))


# ---------------------------------------------------------------- keys check


@dataclass(frozen=True)
class UnreadableToken:
    credential_id: int
    platform: str
    column: str
    integrations: tuple[int, ...]
    message: str


@dataclass
class KeyReport:
    """What ``emsync keys check`` found: ``tokens`` stored, those no key decrypts, those only an older key decrypts."""

    keys: int
    tokens: int = 0
    credentials: int = 0
    unreadable: list[UnreadableToken] = field(default_factory=list)
    under_older_key: int = 0

    @property
    def ok(self) -> bool:
        return not self.unreadable

    @property
    def older_keys_removable(self) -> bool:
        """Several keys are configured and the first alone decrypts every readable token."""
        return self.keys > 1 and self.under_older_key == 0 and not self.unreadable

    def as_dict(self) -> dict:
        return {
            "keys": self.keys,
            "tokens": self.tokens,
            "credentials": self.credentials,
            "readable": self.tokens - len(self.unreadable),
            "under_older_key": self.under_older_key,
            "older_keys_removable": self.older_keys_removable,
            "unreadable": [
                {
                    "credential_id": u.credential_id,
                    "platform": u.platform,
                    "token": _WHAT[u.column][0],
                    "integrations": list(u.integrations),
                    "fix": u.message,
                }
                for u in self.unreadable
            ],
        }


def key_report(conn, box: TokenBox) -> KeyReport:
    """Try every stored token with the configured keys (read only)."""
    from sqlalchemy import select

    from .models import credentials_t, integrations_t
    from .store import encrypted_tokens

    platforms = dict(conn.execute(select(credentials_t.c.id, credentials_t.c.platform)).all())
    using: dict[int, list[int]] = {}
    for credential_id, integration_id in conn.execute(
        select(integrations_t.c.credential_id, integrations_t.c.id).order_by(integrations_t.c.id)
    ):
        using.setdefault(credential_id, []).append(integration_id)
    report = KeyReport(keys=box.key_count, credentials=len(platforms))
    for _table, column, credential_id, blob in encrypted_tokens(conn):
        report.tokens += 1
        if box.readable_with_first(blob):
            continue
        if box.readable(blob):
            report.under_older_key += 1
            continue
        ids = tuple(using.get(credential_id, ()))
        platform = platforms.get(credential_id, "")
        message = unreadable_token(platform, column, credential_id, ids[0] if ids else None)
        report.unreadable.append(UnreadableToken(credential_id, platform, column, ids, message))
    return report


# ---------------------------------------------------------------- keys rotate


@dataclass
class Rotation:
    rotated: int = 0  # re-encrypted with the first key
    current: int = 0  # already under the first key
    cleared: int = 0  # cached access tokens no key decrypts, dropped (the next sync gets new ones)
    unreadable: list[str] = field(default_factory=list)  # left as they were, each with its fix


def rotate(engine, box: TokenBox) -> Rotation:
    """Re-encrypt every stored token with the first configured key, in one transaction (all or nothing).

    Rows are locked while they change (PostgreSQL: ``FOR UPDATE``; SQLite: the write lock), so a sync
    saving a renewed token meanwhile waits. A token no configured key decrypts is left as it was
    (a cached access token is dropped instead).

    Raises:
        ConfigError: tokens are stored and no configured key decrypts any of them (nothing changed).
    """
    from sqlalchemy import select, update
    from sqlmodel import SQLModel

    from .db import write_transaction
    from .store import ENCRYPTED_COLUMNS, integrations_using

    done = Rotation()
    with write_transaction(engine) as conn:
        verify_box(conn, box)
        for table_name, key_name, column_name in ENCRYPTED_COLUMNS:
            table = SQLModel.metadata.tables[table_name]
            key, col = table.c[key_name], table.c[column_name]
            rows = conn.execute(select(key, col, table.c.platform).where(col.is_not(None)).order_by(key).with_for_update()).all()
            for row_key, blob, platform in rows:
                if box.readable_with_first(blob):
                    done.current += 1
                    continue
                if box.readable(blob):
                    new_blob = box.rotate(blob)
                    done.rotated += 1
                elif column_name == "cached_access_token_enc":
                    new_blob = None
                    done.cleared += 1
                else:
                    users = integrations_using(conn, row_key)
                    done.unreadable.append(unreadable_token(platform, column_name, row_key, users[0] if users else None))
                    continue
                conn.execute(update(table).where(key == row_key).values({column_name: new_blob}))
    return done


def key_file(settings: Settings) -> Path | None:
    """The env file ``EMSYNC_SECRET_KEY`` was read from (``Settings.origin``), or None when it came from the process
    environment (systemd ``Environment=``, a secrets manager): emsync changes the key only in a file it read it from."""
    origin = settings.origin("EMSYNC_SECRET_KEY")
    if not settings.secret_key or " line " not in origin:
        return None
    path = Path(origin.rsplit(" line ", 1)[0])
    return path if path.is_file() else None


_KEY_LINE = re.compile(r"^(\s*(?:export\s+)?)EMSYNC_SECRET_KEY\s*=.*$")


def write_key(path: Path, value: str) -> None:
    """Replace the EMSYNC_SECRET_KEY line(s) of the env file ``path`` with ``value``, atomically (``files.atomic_write``:
    mode 0600, its owner kept), so a crash leaves the old file or the new one, never half of it.

    Raises:
        ConfigError: the file cannot be written (nothing changed).
    """
    from .files import atomic_write

    try:
        lines = path.read_text().splitlines()
        out = [_KEY_LINE.sub(lambda m: f"{m.group(1)}EMSYNC_SECRET_KEY={value}", line) for line in lines]
        atomic_write(path, "\n".join(out) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write the new key to {path}: {exc.strerror}: nothing was changed") from None
