"""The Google Ads operations budget: how often each Google integration may be synced, and the backfill's share.

The arithmetic (all per Pacific day, as Google counts):

* the schedule needs ``customers × RUNS_PER_DAY`` operations (one searchStream
  per active Google integration per cron run, every 30 minutes);
* backfills may spend ``EMSYNC_BACKFILL_GOOGLE_OPS``, by default half of what
  the schedule leaves: ``max(0, (GOOGLE_ADS_DAILY_OPERATIONS − needs) / 2)``;
* regular runs get the rest. When it cannot cover every run, each Google
  integration is synced at most ``floor(budget / customers)`` times a day,
  evenly: the day is cut into that many periods and every integration has
  one turn in each, at an offset spread by a hash of its id. A run takes an
  integration whose turn has come and which was not attempted yet in the
  period; the others wait, with their next turn. So every customer stays
  fresh within the same bound, instead of the first few hundred fresh and
  the rest starved once the quota runs out at noon.

``take_turns`` is what the sync engine's due selection calls; nothing here
touches the network, and "now" always comes from the caller's clock.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from .config import Settings
from .ledger import day_start, google_day
from .models import integrations_t
from .runs import DueIntegration

RUNS_PER_DAY = 48  # the documented schedule: */30 * * * *
RUN_SPACING = timedelta(days=1) / RUNS_PER_DAY  # a turn leaves this much of its period for a run to come


@dataclass(frozen=True)
class GoogleBudget:
    """One day's Google Ads operations, split between the schedule and backfills."""

    daily: int  # GOOGLE_ADS_DAILY_OPERATIONS
    customers: int  # active Google integrations
    backfill_share: int  # EMSYNC_BACKFILL_GOOGLE_OPS, or its default

    @property
    def needs(self) -> int:
        """Operations the schedule needs when every integration is synced on every run."""
        return self.customers * RUNS_PER_DAY

    @property
    def regular(self) -> int:
        """Operations left for regular runs."""
        return max(self.daily - self.backfill_share, 0)

    @property
    def syncs_per_day(self) -> int:
        """How many times a day each Google integration is synced (``RUNS_PER_DAY`` when the schedule fits).

        At least once: a budget below the number of customers is reported by ``status``, not enforced by starving them.
        """
        if not self.customers or self.needs <= self.regular:
            return RUNS_PER_DAY
        return max(1, self.regular // self.customers)

    @property
    def cadence(self) -> str:
        """ "synced N times a day" in words."""
        n = self.syncs_per_day
        return "synced once a day" if n == 1 else f"synced {n} times a day"

    @property
    def spread(self) -> bool:
        """Whether the schedule does not fit, so integrations take turns."""
        return self.syncs_per_day < RUNS_PER_DAY

    @property
    def interval(self) -> timedelta:
        """The effective interval between two syncs of one Google integration."""
        return timedelta(days=1) / self.syncs_per_day

    def as_dict(self) -> dict:
        return {
            "daily_operations": self.daily,
            "google_integrations": self.customers,
            "schedule_needs": self.needs,
            "backfill_share": self.backfill_share,
            "regular_budget": self.regular,
            "syncs_per_day": self.syncs_per_day,
            "effective_interval_minutes": round(self.interval.total_seconds() / 60, 1),
            "spread": self.spread,
        }


def default_backfill_share(daily: int, customers: int) -> int:
    """Half of what the schedule leaves of the daily quota (never below 0)."""
    return max(0, (daily - customers * RUNS_PER_DAY) // 2)


def google_budget(settings: Settings, customers: int) -> GoogleBudget:
    share = settings.backfill_google_ops
    if share is None:
        share = default_backfill_share(settings.google_ads_daily_operations, customers)
    return GoogleBudget(daily=settings.google_ads_daily_operations, customers=customers, backfill_share=share)


def active_google(conn) -> int:
    """How many Google integrations are active (each costs one operation per sync)."""
    query = (
        select(func.count()).select_from(integrations_t).where(integrations_t.c.platform == "google", integrations_t.c.is_active.is_(True))
    )
    return int(conn.execute(query).scalar() or 0)


# ---------------------------------------------------------------- turns


def _phase(integration_id: int) -> float:
    """Where in each period this integration's turn falls, in [0, 1): the same in every process."""
    return zlib.crc32(f"emsync-turn:{integration_id}".encode()) / 2**32


def _period(moment: datetime, syncs_per_day: int) -> tuple[datetime, timedelta]:
    """(start, length) of the period ``moment`` falls in: its Pacific day cut into ``syncs_per_day`` equal parts."""
    start = day_start(google_day(moment))
    length = (day_start(google_day(moment) + timedelta(days=1)) - start) / syncs_per_day
    return start + length * ((moment - start) // length), length


def _turn(integration_id: int, period_start: datetime, length: timedelta) -> datetime:
    return period_start + max(length - RUN_SPACING, timedelta(0)) * _phase(integration_id)


def next_turn(integration_id: int, last_attempt_at: datetime | None, syncs_per_day: int, now: datetime) -> datetime | None:
    """When the integration may next be synced; None when it may be synced now.

    Due when it was never attempted, or when its turn in the current period has
    come and it was not attempted since the period began.
    """
    if last_attempt_at is None:
        return None
    start, length = _period(now, syncs_per_day)
    turn = _turn(integration_id, start, length)
    if last_attempt_at < start:
        return None if now >= turn else turn
    following, following_length = _period(start + length, syncs_per_day)
    return _turn(integration_id, following, following_length)


def take_turns(
    due: list[DueIntegration], budget: GoogleBudget, now: datetime
) -> tuple[list[DueIntegration], list[tuple[DueIntegration, datetime]]]:
    """Split a run's due integrations into those to sync now and the Google ones waiting for their next turn."""
    if not budget.spread:
        return due, []
    now_due, waiting = [], []
    for item in due:
        turn = next_turn(item.id, item.last_attempt_at, budget.syncs_per_day, now) if item.platform == "google" else None
        if turn is None:
            now_due.append(item)
        else:
            waiting.append((item, turn))
    return now_due, waiting
