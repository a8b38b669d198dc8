"""Claims: at most one process in the world syncs a given integration at a time.

Both kinds of lock are released by the operating system or the database
server when the holder dies, so ``kill -9`` never leaves anything to clean up:

* PostgreSQL: a session-level advisory lock held on its own connection; the
  server drops it when the connection closes (process death included). Works
  across hosts sharing the database.
* SQLite: ``flock`` on one small file per integration beside the database
  file; the kernel drops it when the process exits. (SQLite is one host.)
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from .db import sqlite_path

# First key of the two-int advisory lock: "emsy" — keeps clear of other applications' locks.
ADVISORY_NAMESPACE = 0x656D7379


class Claim:
    def __init__(self, release):
        self._release = release

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._release()


class FileLocker:
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def try_claim(self, integration_id: int) -> Claim | None:
        fd = os.open(self.directory / f"{integration_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None

        def release():
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return Claim(release)


class AdvisoryLocker:
    def __init__(self, engine):
        self.engine = engine

    def try_claim(self, integration_id: int) -> Claim | None:
        from sqlalchemy import func, select

        conn = self.engine.connect()
        try:
            got = conn.execute(select(func.pg_try_advisory_lock(ADVISORY_NAMESPACE, integration_id))).scalar()
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return None

        def release():
            try:
                conn.execute(select(func.pg_advisory_unlock(ADVISORY_NAMESPACE, integration_id)))
                conn.commit()
            except Exception:  # noqa: BLE001 - any failure: drop the connection, which releases the lock
                conn.invalidate()  # closing the connection releases the lock on the server
            finally:
                conn.close()

        return Claim(release)


class ThreadLocker:
    """For an in-memory database: one process is all there is."""

    def __init__(self):
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def try_claim(self, integration_id: int) -> Claim | None:
        with self._lock:
            if integration_id in self._held:
                return None
            self._held.add(integration_id)

        def release():
            with self._lock:
                self._held.discard(integration_id)

        return Claim(release)


def locker_for(engine, url: str):
    if engine.dialect.name == "postgresql":
        return AdvisoryLocker(engine)
    path = sqlite_path(url)
    if path is None:
        return ThreadLocker()
    return FileLocker(path.with_name(path.name + ".locks"))
