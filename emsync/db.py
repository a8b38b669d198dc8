"""Database engines and the schema version: connect, migrate, refuse an old schema."""

from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from pathlib import Path

from .errors import DatabaseError

# Every migration this code knows, oldest first; the last is what the code needs.
REVISIONS = ("0001", "0006")
HEAD = REVISIONS[-1]
_WRITE_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # SQLite engine -> this process's writer queue


def describe_url(url: str) -> str:
    """The URL with any password hidden, shortened for one-line messages."""
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)
    return shown if len(shown) <= 160 else shown[:80] + "…" + shown[-60:]


def sqlite_path(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def make_engine(url: str, *, pool_size: int = 8, create: bool = False):
    """An engine tuned for emsync's access pattern.

    SQLite: WAL (readers never wait for the writer), a 30 s busy timeout and
    ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing with
    "database is locked". PostgreSQL: a pool large enough for the workers.

    Raises:
        DatabaseError: SQLite file missing (unless ``create``).
    """
    from sqlalchemy import create_engine, event

    path = sqlite_path(url)
    if path is not None:
        try:
            if not path.exists():
                if not create:
                    raise DatabaseError(f"no database at {describe_url(url)}: run 'emsync init' first")
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"EMSYNC_DATABASE_URL names a SQLite file emsync cannot use ({describe_url(url)}): {exc.strerror}"
            ) from None
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=pool_size + 2,
            max_overflow=pool_size,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Writers take the write lock up front (no deadlock on upgrade); readers never wait in WAL mode.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("emsync_write") else "BEGIN")

        _WRITE_LOCKS[engine] = threading.Lock()
        return engine
    # No pool_pre_ping: a run lasts seconds to minutes, and the ping was a round trip on every checkout (a fifth
    # of a steady run's time). A connection lost mid-run fails that one statement; SQLAlchemy then invalidates
    # the pool, the integration's attempt is recorded as failed and the next run retries it.
    return create_engine(
        url,
        pool_size=pool_size + 2,
        max_overflow=pool_size,
        connect_args={"connect_timeout": 10},
    )


@contextmanager
def write_transaction(engine):
    """A transaction that writes. On SQLite, this process's writers queue on a lock (instant hand-off)
    instead of polling SQLite's busy handler, which sleeps in growing steps; other processes still
    wait through the busy timeout."""
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:
        with engine.begin() as conn:
            yield conn
        return
    with lock, engine.execution_options(emsync_write=True).begin() as conn:
        yield conn


def explain(exc: Exception, url: str) -> DatabaseError:
    """Turn a driver error into one line that names the database, never its password."""
    first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseError(f"database error ({describe_url(url)}): {first}")


def current_revision(conn) -> str | None:
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def check_schema(engine, url: str) -> None:
    """Refuse to work on a database whose schema is missing, older or newer than the code.

    Raises:
        DatabaseError: with what to do about it.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
    except SQLAlchemyError as exc:
        raise explain(exc, url) from None
    where = describe_url(url)
    if revision is None:
        raise DatabaseError(f"the database {where} has no emsync schema: run 'emsync init'")
    if revision == HEAD:
        return
    if revision in REVISIONS:
        raise DatabaseError(f"the database schema is older than this emsync ({revision} < {HEAD}): run 'emsync init' to upgrade it")
    raise DatabaseError(f"the database schema ({revision}) is newer than this emsync: upgrade emsync")


def upgrade(engine, url: str) -> tuple[str | None, str]:
    """Apply every pending migration (idempotent). Returns (before, after)."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy.exc import SQLAlchemyError

    cfg = Config()
    cfg.set_main_option("script_location", "emsync:migrations")
    try:
        with write_transaction(engine) as conn:
            before = current_revision(conn)
            if before != HEAD:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise explain(exc, url) from None
    return before, HEAD
