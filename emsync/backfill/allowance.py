"""The backfill's share of today's Google Ads operations, for this process's workers and every other process.

Before each Google call a worker reserves one operation: refused when the
ledger already holds a project-wide ``RESOURCE_EXHAUSTED`` for today, or when
what backfills recorded today (every process and host) plus what this
process's workers have in flight reaches ``EMSYNC_BACKFILL_GOOGLE_OPS`` (see
``budget``). The reservation is settled once the call's operations are in
the ledger. Processes do not reserve in each other's name, so several
backfills started together may overshoot the share by what they have in
flight at once (at most ``EMSYNC_CONCURRENCY`` each).
"""

from __future__ import annotations

import threading
from datetime import datetime

from .. import budget, ledger
from ..clock import Clock
from ..config import Settings


class GoogleAllowance:
    def __init__(self, engine, settings: Settings, clock: Clock):
        self.engine, self.settings, self.clock = engine, settings, clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._stopped_until: datetime | None = None

    def take(self) -> tuple[datetime | None, str]:
        """Reserve one operation: ``(None, "")``, or ``(when spending may resume, why not now)``."""
        with self._lock:
            now = self.clock.now()
            if self._stopped_until is not None and now < self._stopped_until:
                return self._stopped_until, "Google Ads operations for today are used up"
            with self.engine.begin() as conn:
                exhausted = ledger.exhausted_until(conn, now)
                spent = ledger.used(conn, ledger.google_day(now), source="backfill")
                share = budget.google_budget(self.settings, budget.active_google(conn)).backfill_share
            if exhausted is not None:
                self._stopped_until = exhausted
                return exhausted, "Google Ads operations for today are used up (a 429 named the developer token's or project's quota)"
            if spent + self._in_flight >= share:
                return ledger.next_day_start(now), (
                    f"the backfill's share of today's Google Ads operations is spent ({spent} of {share}; EMSYNC_BACKFILL_GOOGLE_OPS)"
                )
            self._in_flight += 1
            return None, ""

    def settle(self, platform: str) -> None:
        """The reserved operation is in the ledger now (or was never spent)."""
        if platform != "google":
            return
        with self._lock:
            self._in_flight = max(self._in_flight - 1, 0)

    def exhausted(self, until: datetime) -> None:
        """A 429 said the project's operations are gone: no worker of this process spends more before ``until``."""
        with self._lock:
            self._stopped_until = until
