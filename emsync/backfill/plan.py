"""Which chunks a backfill fetches: calendar-aligned date ranges, clamped to what the platform serves. Pure functions.

* Meta: one calendar month per insights query. The Insights API refuses a
  ``time_range`` whose start is more than 37 months before today (error
  3018, "The start date of the time range cannot be beyond 37 months from the
  current date"), so the range is clamped to the first day it serves, with a
  day of margin for the API's own notion of "today".
* Google: one calendar quarter per ``searchStream`` — one operation each.

Progress is keyed by integration and chunk, never by command line: a new
request adds chunks only for the days no chunk covers yet, on the same
calendar grid, so a different ``--since`` fetches only what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

META_RETENTION_MONTHS = 37
MONTHS_PER_CHUNK = {"meta": 1, "google": 3}
ONE_DAY = timedelta(days=1)


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole calendar months, kept within the target month (Mar 31 − 1 month = Feb 28/29)."""
    year, month0 = divmod(day.year * 12 + day.month - 1 + months, 12)
    first_of_next = date(year + (month0 == 11), (month0 + 1) % 12 + 1, 1)
    return date(year, month0 + 1, min(day.day, (first_of_next - ONE_DAY).day))


def first_available(platform: str, today: date) -> date | None:
    """The earliest day the platform still serves (None: no documented limit)."""
    if platform == "meta":
        return add_months(today, -META_RETENTION_MONTHS) + ONE_DAY
    return None


def grid_start(platform: str, day: date) -> date:
    """The first day of the chunk ``day`` falls in: its month (Meta) or quarter (Google)."""
    months = MONTHS_PER_CHUNK[platform]
    return date(day.year, (day.month - 1) // months * months + 1, 1)


def split(platform: str, since: date, until: date) -> list[tuple[date, date]]:
    """[since, until] cut on the calendar grid, oldest first; the ends are clipped to the range."""
    out = []
    start = since
    while start <= until:
        end = min(add_months(grid_start(platform, start), MONTHS_PER_CHUNK[platform]) - ONE_DAY, until)
        out.append((start, end))
        start = end + ONE_DAY
    return out


def uncovered(since: date, until: date, covered: Iterable[tuple[date, date]]) -> list[tuple[date, date]]:
    """The parts of [since, until] no range in ``covered`` includes, oldest first."""
    gaps = []
    start = since
    for lo, hi in sorted(covered):
        if hi < start or lo > until:
            continue
        if lo > start:
            gaps.append((start, lo - ONE_DAY))
        start = max(start, hi + ONE_DAY)
        if start > until:
            return gaps
    if start <= until:
        gaps.append((start, until))
    return gaps


@dataclass(frozen=True)
class ExistingChunk:
    id: int
    since: date
    until: date
    status: str  # pending | done | expired


@dataclass(frozen=True)
class ChunkPlan:
    """What a request means for one integration's chunks.

    ``new``: ranges no chunk covers yet; ``reset``: finished chunks to fetch
    again (``--refetch``); ``expired``: pending chunks wholly older than the
    platform serves any more; ``work``: ranges this request fetches, newest
    first (existing pending chunks it overlaps, the reset ones and the new
    ones); ``done``: finished chunks it keeps.
    """

    new: tuple[tuple[date, date], ...]
    reset: tuple[int, ...]
    expired: tuple[int, ...]
    work: tuple[tuple[date, date], ...]
    done: tuple[tuple[date, date], ...]


def plan_chunks(
    platform: str, since: date, until: date, existing: Sequence[ExistingChunk], *, refetch: bool, oldest: date | None = None
) -> ChunkPlan:
    """The chunks a request for [since, until] needs, given the integration's chunk rows (``oldest``: see ``first_available``)."""
    expired = tuple(c.id for c in existing if c.status == "pending" and oldest is not None and c.until < oldest)
    overlapping = [c for c in existing if c.since <= until and c.until >= since]
    reset = tuple(c.id for c in overlapping if refetch and c.status == "done")
    new = tuple(r for gap in uncovered(since, until, ((c.since, c.until) for c in existing)) for r in split(platform, *gap))
    pending = [(c.since, c.until) for c in overlapping if c.status == "pending" or c.id in reset]
    done = tuple(sorted(((c.since, c.until) for c in overlapping if c.status == "done" and c.id not in reset), reverse=True))
    work = tuple(sorted([*pending, *new], reverse=True))
    return ChunkPlan(new=new, reset=reset, expired=expired, work=work, done=done)
