"""Claims: at most one process in the world syncs a given integration at a time.

* PostgreSQL: a **lease** on the integration's row (host, pid, a random
  token, and an expiry on the database clock), taken and released in short
  transactions, so a process holds no connection while it fetches and its
  connections do not grow with ``EMSYNC_CONCURRENCY``. The heartbeat renews
  the process's leases every 30 s; a lease expires 2 minutes after its last
  renewal, so a dead host delays its integrations by at most that. On the same
  host a lease whose pid is gone is broken at once (``kill -9`` delays
  nothing). The window-replace transaction releases the lease only if it is
  still this claim's (**fencing**): a process that lost its lease (paused past
  the expiry) rolls back instead of overwriting a newer window.
* SQLite: ``flock`` on one small file per integration beside the database
  file; the kernel drops it when the process exits. (SQLite is one host.)
"""

from __future__ import annotations

import fcntl
import functools
import os
import secrets
import threading
from pathlib import Path

from .db import one_statement, sqlite_path
from .domain import IntegrationState
from .errors import EmsyncError
from .store import state_from_row

LEASE_SECONDS = 120
HEARTBEAT_SECONDS = 30


class LeaseLost(EmsyncError):
    """Another process took over this integration's lease (this one paused past its expiry)."""


class Claim:
    """A held claim. ``fence(conn)`` inside the saving transaction; leaving the ``with`` block releases whatever is left.

    ``state``: the integration as read when the claim was taken, when the claim read it (a lease does, in the
    same statement); else None and the caller reads it.
    """

    token: str | None = None
    state: IntegrationState | None = None

    def __init__(self, integration_id: int, release):
        self.integration_id = integration_id
        self._release = release
        self._released = False

    def fence(self, conn) -> None:
        """Inside the caller's write transaction: make sure the claim is still ours (a flock always is)."""

    def released_by_write(self) -> None:
        """After the caller's write transaction wrote ``token``'s release (``store.record_success``): a lease is
        then released; a flock is not (it has no token and is released when the ``with`` block ends)."""

    def lost(self) -> LeaseLost:
        """The error for a write that found the integration no longer this claim's (``record_success`` said so)."""
        return LeaseLost(
            f"lost the lease on integration {self.integration_id} (removed, or another process took over after the lease "
            "expired); nothing written"
        )

    def mark_released(self) -> None:
        self._released = True

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FileLocker:
    def __init__(self, directory: Path):
        self.directory = directory
        from .files import private_dir

        private_dir(directory)

    def prepare(self) -> None:
        """Nothing to do: the kernel releases a dead process's flocks."""

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

        return Claim(integration_id, release)

    def renew(self, conn) -> None:
        """flocks need no renewal."""


class ThreadLocker:
    """For an in-memory database: one process is all there is."""

    def __init__(self):
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def prepare(self) -> None:
        pass

    def try_claim(self, integration_id: int) -> Claim | None:
        with self._lock:
            if integration_id in self._held:
                return None
            self._held.add(integration_id)

        def release():
            with self._lock:
                self._held.discard(integration_id)

        return Claim(integration_id, release)

    def renew(self, conn) -> None:
        pass


_CLAIM = """
UPDATE integrations
   SET lease_host = :host, lease_pid = :pid, lease_token = :token, lease_until = now() + make_interval(secs => :ttl)
 WHERE id = :id
   AND (lease_token IS NULL OR lease_until < now() OR (lease_host = :host AND lease_pid = ANY(:dead)))
RETURNING integrations.*
"""
_RELEASE = "UPDATE integrations SET lease_host = NULL, lease_pid = NULL, lease_token = NULL, lease_until = NULL WHERE id = :id AND lease_token = :token"


@functools.cache
def _statement(sql: str):
    """A ``text()`` built once per SQL string (its cache key is kept with it: see ``statements``)."""
    from sqlalchemy import text

    return text(sql)


class _Lease(Claim):
    def __init__(self, locker: LeaseLocker, integration_id: int, token: str, state: IntegrationState):
        super().__init__(integration_id, self._release_now)
        self.locker = locker
        self.token = token
        self.state = state

    def fence(self, conn) -> None:
        """Release the lease inside the caller's transaction, or raise ``LeaseLost`` (rolling that transaction back)."""

        released = conn.execute(_statement(_RELEASE), {"id": self.integration_id, "token": self.token}).rowcount
        if released != 1:
            raise self.lost()
        # Forgotten now, not after the commit: if this transaction rolls back, the restored lease expires
        # within LEASE_SECONDS (no longer renewed) — a short delay, never a second writer.
        self.mark_released()
        self.locker._held.pop(self.token or "", None)

    def released_by_write(self) -> None:
        # As in ``fence``: forgotten before the commit; a rollback restores a lease that expires unrenewed.
        self.mark_released()
        self.locker._held.pop(self.token or "", None)

    def _release_now(self) -> None:

        self.locker._held.pop(self.token or "", None)
        with one_statement(self.locker.engine) as conn:
            conn.execute(_statement(_RELEASE), {"id": self.integration_id, "token": self.token})


class LeaseLocker:
    """PostgreSQL leases (see the module docstring). ``renew`` is the heartbeat's part."""

    def __init__(self, engine, *, host: str, pid: int | None = None):
        self.engine = engine
        self.host = host
        self.pid = os.getpid() if pid is None else pid
        self._dead: list[int] = []
        self._held: dict[str, int] = {}

    def prepare(self) -> None:
        """Find this host's leases whose process is gone, so claims break them at once instead of waiting for the expiry."""
        from sqlalchemy import text

        from .runs import pid_alive

        with self.engine.begin() as conn:
            pids = conn.execute(
                text(
                    "SELECT DISTINCT lease_pid FROM integrations WHERE lease_host = :host AND lease_token IS NOT NULL AND lease_pid <> :pid"
                ),
                {"host": self.host, "pid": self.pid},
            ).scalars()
            self._dead = [p for p in pids if p is not None and not pid_alive(p)]

    def try_claim(self, integration_id: int) -> Claim | None:

        token = secrets.token_hex(16)
        values = {"host": self.host, "pid": self.pid, "token": token, "ttl": LEASE_SECONDS, "id": integration_id, "dead": self._dead}
        with one_statement(self.engine) as conn:
            got = conn.execute(_statement(_CLAIM), values).first()
        if got is None:
            return None
        self._held[token] = integration_id
        return _Lease(self, integration_id, token, state_from_row(got._mapping))  # claim and read in one round trip

    def renew(self, conn) -> None:
        """Extend every lease this process holds (inside the heartbeat's transaction)."""
        from sqlalchemy import text

        tokens = list(self._held)
        if tokens:
            conn.execute(
                text("UPDATE integrations SET lease_until = now() + make_interval(secs => :ttl) WHERE lease_token = ANY(:tokens)"),
                {"ttl": LEASE_SECONDS, "tokens": tokens},
            )


Locker = FileLocker | ThreadLocker | LeaseLocker


def locker_for(engine, url: str, *, host: str) -> Locker:
    if engine.dialect.name == "postgresql":
        return LeaseLocker(engine, host=host)
    path = sqlite_path(url)
    if path is None:
        return ThreadLocker()
    return FileLocker(path.with_name(path.name + ".locks"))
