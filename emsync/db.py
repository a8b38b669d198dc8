"""Database engines and the schema version: connect, migrate, refuse an old schema."""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, DatabaseError

log = logging.getLogger("emsync")

# Every migration this code knows, oldest first; the last is what the code needs.
REVISIONS = ("0001", "0002", "0004", "0005", "0006")
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


def engine_for(settings, *, create: bool = False):
    """The engine for these settings: EMSYNC_DB_POOL_SIZE connections on PostgreSQL; one per worker thread on SQLite
    (its connections are file handles, and writers queue on the write lock anyway)."""
    postgres = sqlite_path(settings.database_url) is None and settings.database_url.startswith("postgresql")
    return make_engine(settings.database_url, pool_size=settings.db_pool_size if postgres else settings.concurrency, create=create)


def make_engine(url: str, *, pool_size: int = 4, create: bool = False):
    """An engine tuned for emsync's access pattern.

    SQLite: WAL (readers never wait for the writer), a 30 s busy timeout and
    ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing with
    "database is locked". PostgreSQL: exactly ``pool_size`` connections
    (``EMSYNC_DB_POOL_SIZE``) whatever the concurrency; workers queue for them,
    and a refused connection is retried for up to ``REFUSAL_RETRY_S``.

    Raises:
        DatabaseError: SQLite file missing (unless ``create``).
        ConfigError: a PostgreSQL URL without its driver installed (the ``postgres`` extra).
    """
    from sqlalchemy import create_engine, event

    path = sqlite_path(url)
    if path is not None:
        try:
            if not path.exists():
                if not create:
                    raise DatabaseError(f"no database at {describe_url(url)}: run 'emsync init' first")
                from .files import create_private

                create_private(path)  # 0600 before SQLite opens it: its -wal and -shm files take the same mode
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
    # The pool is the whole budget: pool_size connections, no overflow; workers beyond it queue for a
    # connection (their transactions are short: claims, state reads, one write per integration).
    try:
        return create_engine(
            url,
            poolclass=refusal_tolerant_pool(),
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=POOL_WAIT_S,
            # application_name: an operator (and the tests) can count emsync's connections in pg_stat_activity.
            connect_args={"connect_timeout": 10, "application_name": "emsync"},
        )
    except ModuleNotFoundError as exc:  # the driver is the optional extra emsync[postgres]
        raise ConfigError(
            f"EMSYNC_DATABASE_URL is a PostgreSQL URL but its driver ({exc.name}) is not installed: pip install 'emsync[postgres]'"
        ) from None


# How long a worker waits for one of the pool's connections, and how long emsync keeps retrying when
# PostgreSQL refuses new connections ("too many clients", a failover) before giving up on that transaction.
POOL_WAIT_S = 600
REFUSAL_RETRY_S = 60.0
_REFUSALS = (
    "too many clients",
    "remaining connection slots",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
    "in recovery mode",
)
# Nothing listening: a failover or restart when this process had reached the server before, a wrong host or port
# (or a server that is down) when it never had: only the first is worth waiting for.
_AWAY = ("connection refused",)


def connection_refused(exc: BaseException, *, reached_before: bool = True) -> bool:
    """True for PostgreSQL refusing a new connection (SQLSTATE 53300 too_many_connections, 57P03 cannot_connect_now,
    or, when this process had ``reached_before``, the server being away during a failover) — worth waiting for,
    unlike a wrong password, database name, host or port."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in ("53300", "57P03"):
        return True
    text = str(orig).lower()
    return any(marker in text for marker in (*_REFUSALS, *(_AWAY if reached_before else ())))


def _refusal_tolerant_pool():
    from sqlalchemy.pool import QueuePool

    class Pool(QueuePool):
        """A QueuePool that, when PostgreSQL refuses a new connection, backs off and tries again for up to
        ``REFUSAL_RETRY_S`` — taking a connection another worker returned meanwhile, if one is free."""

        reached = False  # this engine has connected once (kept across ``recreate``, e.g. after a lost connection)

        def recreate(self) -> Pool:
            new = super().recreate()
            assert isinstance(new, Pool)
            new.reached = self.reached
            return new

        def _do_get(self):
            deadline = time.monotonic() + REFUSAL_RETRY_S
            delay = 0.25
            while True:
                try:
                    connection = super()._do_get()
                    self.reached = True
                    return connection
                except Exception as exc:  # the driver's own error: the pool raises it unwrapped
                    if not connection_refused(exc, reached_before=self.reached) or time.monotonic() + delay > deadline:
                        raise
                    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
                    reason = (lines[0] if lines else type(exc).__name__)[:160]  # the reason; later lines are hints
                    log.warning("PostgreSQL refused a connection (%s); retrying in %.1fs", reason, delay)
                    time.sleep(delay + random.uniform(0, delay / 2))
                    delay = min(delay * 2, 8.0)

    # SQLAlchemy logs a pool's life under the class's module: here, under "emsync". Its INFO lines ("Pool
    # disposed", "Pool recreating") are internals; the user's log keeps what emsync itself says.
    logging.getLogger(f"{Pool.__module__}.{Pool.__name__}").setLevel(logging.WARNING)
    return Pool


@functools.cache
def refusal_tolerant_pool() -> type:
    """The pool class (built on first use, so importing db.py does not import SQLAlchemy: `emsync --help` stays fast)."""
    return _refusal_tolerant_pool()


@contextmanager
def one_statement(engine):
    """A connection for one statement that needs no transaction around it (a read, or an ``UPDATE … RETURNING``
    that is atomic by itself). On PostgreSQL it runs in autocommit: no ``BEGIN`` and ``COMMIT`` round trips
    around it (two of the three a lease's claim cost). SQLite: an ordinary transaction."""
    if engine.dialect.name != "postgresql":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


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
    return DatabaseError(f"database error ({describe_url(url)}): {describe_error(exc)}")


# What the drivers say, in the words an operator needs: (SQLSTATEs, texts, words). PostgreSQL names a condition by
# its SQLSTATE (psycopg's ``sqlstate``); SQLite and a connection that died mid-statement only by their text.
_IN_WORDS: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("53100",), ("database or disk is full", "no space left on device", "could not extend file"), "disk full"),
    (
        ("57P01", "57P02", "08006", "08003"),
        (
            "server closed the connection",
            "terminating connection",
            "connection already closed",
            "the connection is closed",
            "consuming input failed",
            "ssl connection has been closed",
            "connection reset",
            "broken pipe",
            "connection is lost",
        ),
        "database connection lost",
    ),
    (("53300", "57P03"), ("connection refused", "too many clients", "remaining connection slots"), "the database refused the connection"),
    ((), ("database is locked",), "the database stayed locked by another process"),
    ((), ("readonly database", "read-only"), "the database is read-only"),
    ((), ("disk i/o error",), "disk I/O error on the database"),
    ((), ("unable to open database file",), "cannot open the database file"),
)


def describe_error(exc: BaseException) -> str:
    """One line about a database error in words ("disk full", "database connection lost"), then the driver's own
    first line in parentheses; never the driver's class name nor the SQL."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    detail = lines[0].strip() if lines else ""
    if detail.startswith("(") and ") " in detail:  # SQLAlchemy's "(sqlite3.OperationalError) ..." prefix
        detail = detail.split(") ", 1)[1]
    text = detail.lower()
    sqlstate = getattr(orig, "sqlstate", None)
    words = next((w for states, markers, w in _IN_WORDS if sqlstate in states or any(m in text for m in markers)), None)
    if words is None and getattr(exc, "connection_invalidated", False):
        words = "database connection lost"
    if words is None:
        return detail or type(orig).__name__
    return f"{words} ({detail})" if detail and detail.lower() != words.lower() else words


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
        with _migration_transaction(engine) as conn:
            before = current_revision(conn)
            if before != HEAD:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                _check_foreign_keys(conn)
    except SQLAlchemyError as exc:
        raise explain(exc, url) from None
    return before, HEAD


@contextmanager
def _migration_transaction(engine):
    """A write transaction for migrations. On SQLite, with foreign-key enforcement off for its duration.

    SQLite changes a table's shape by copying it, dropping the original and renaming the copy
    (Alembic's batch mode); with enforcement on, the DROP fails while other tables' rows point at
    it. SQLite's documented procedure ("Making Other Kinds Of Table Schema Changes") is to turn
    enforcement off, which only works outside a transaction, and check the references before commit.
    """
    lock = _WRITE_LOCKS.get(engine)
    if lock is None:  # PostgreSQL checks references per statement, and alters tables in place
        with write_transaction(engine) as conn:
            yield conn
        return
    with lock, engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        dbapi.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.execution_options(emsync_write=True).begin():
                yield conn
        finally:
            dbapi.execute("PRAGMA foreign_keys = ON")


def _check_foreign_keys(conn) -> None:
    """Raise (rolling the migration back) when a migration left a row pointing at nothing (SQLite only)."""
    if conn.dialect.name != "sqlite":
        return  # PostgreSQL checks every reference itself
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
    if broken is not None:
        raise DatabaseError(f"a migration left {broken[0]} rows pointing at missing {broken[2]} rows: nothing was changed")


# ---------------------------------------------------------------- a copy before a migration


def pending_upgrade(engine, url: str) -> str | None:
    """The schema revision a database with data is at when migrations are pending; None when there is nothing
    to protect (no schema yet, already at ``HEAD``, or only empty tables)."""
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
            if revision is None or revision == HEAD:
                return None
            names = [n for n in inspect(conn).get_table_names() if n != "alembic_version"]
            quote = conn.dialect.identifier_preparer.quote
            if any(conn.execute(text(f"SELECT 1 FROM {quote(n)} LIMIT 1")).first() for n in names):
                return revision
    except SQLAlchemyError as exc:
        raise explain(exc, url) from None
    return None


def backup_sqlite(url: str, revision: str) -> Path:
    """Copy the SQLite database beside itself as ``<file>.bak-<revision>`` (``-2``, ``-3``… when taken), mode 0600,
    with SQLite's online backup (consistent, whatever the WAL holds). Returns the copy's path.

    Raises:
        DatabaseError: the copy cannot be written (the database is left as it was).
    """
    import os
    import sqlite3

    path = sqlite_path(url)
    assert path is not None
    target = path.with_name(f"{path.name}.bak-{revision}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bak-{revision}-{n}")
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        source, copy = sqlite3.connect(path), sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()
    except (OSError, sqlite3.Error) as exc:
        target.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise DatabaseError(f"cannot copy the database to {target} before upgrading it ({reason}): nothing was changed") from None
    return target


def pg_dump_command(url: str, revision: str) -> str:
    """The ``pg_dump`` line that backs up this PostgreSQL database (no password: pg_dump reads PGPASSWORD or ~/.pgpass)."""
    import shlex

    from sqlalchemy.engine import URL, make_url

    parsed = make_url(url)
    plain = URL.create(
        "postgresql", username=parsed.username, host=parsed.host, port=parsed.port, database=parsed.database, query=parsed.query
    ).render_as_string(hide_password=False)
    dump = f"{parsed.database or 'emsync'}.bak-{revision}.dump"
    return f"pg_dump --format=custom --file={shlex.quote(dump)} {shlex.quote(plain)}"
