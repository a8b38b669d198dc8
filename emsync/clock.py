"""The one clock. Every "now" in emsync comes from a ``Clock``.

The engine, run records, the Google operations ledger and backfills take a
clock as an argument, so tests can simulate a day (``ManualClock``) without
sleeping. Code without a clock of its own uses ``utcnow()``, the system clock.
All values are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """The system clock: an aware UTC datetime."""
    return datetime.now(UTC)


class Clock:
    """The system clock; subclass it (or pass ``ManualClock``) to move time in tests."""

    def now(self) -> datetime:
        return utcnow()

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (what ``backfill --wait`` does until it may resume)."""
        if seconds > 0:
            time.sleep(seconds)


class ManualClock(Clock):
    """A clock that only moves when told to (tests and simulations).

    ``start`` must be timezone-aware.
    """

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds); returns the new time."""
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        return self._now

    def sleep(self, seconds: float) -> None:
        """Sleeping on a manual clock moves it forward at once: simulations never wait."""
        if seconds > 0:
            self.advance(seconds)

    def set(self, moment: datetime) -> None:
        self._now = moment.astimezone(UTC)


SYSTEM_CLOCK = Clock()
