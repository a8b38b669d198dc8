"""A run's heartbeat: every 30 s, on a connection of its own, renew this process's leases and the run's ``heartbeat_at``.

The run row is written by this timer alone while the run lasts (attempts
never touch it, so concurrent workers never queue on it); ``emsync status``
calls a run whose heartbeat is older than ``runs.STALE_RUN`` dead. The
heartbeat's connection is the "+1" of a process's connection budget
(``EMSYNC_DB_POOL_SIZE`` + 1 on PostgreSQL).
"""

from __future__ import annotations

import logging
import threading

from . import runs
from .clock import Clock
from .db import write_transaction
from .locks import HEARTBEAT_SECONDS, Locker

log = logging.getLogger("emsync")


class Heartbeat:
    """``with Heartbeat(...):`` beats every ``interval`` seconds until the block ends; a failed beat is logged, never fatal."""

    def __init__(self, engine, run_id: int, locker: Locker, clock: Clock, *, interval: float = HEARTBEAT_SECONDS):
        self.engine = engine
        self.run_id = run_id
        self.locker = locker
        self.clock = clock
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            with write_transaction(self.engine) as conn:
                self.locker.renew(conn)
                runs.heartbeat(conn, self.run_id, now=self.clock.now())
        except Exception as exc:  # noqa: BLE001 - a missed beat must not stop the run; the next one tries again
            log.warning("heartbeat failed (leases are renewed again in %ds): %s", self.interval, str(exc).splitlines()[0][:200])
