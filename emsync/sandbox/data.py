"""Deterministic ad data for the sandbox: the same seed, account, campaign and day always give the same numbers.

``version`` models restatement: each later version changes past days' numbers
a little and drops one row, as the platforms do when late conversions and
invalid-click credits arrive.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache


@dataclass(frozen=True)
class DayStats:
    campaign_id: str
    campaign_name: str
    day: date
    impressions: int
    clicks: int
    spend_cents: int  # Meta spend has two decimals
    extra_micros: int  # Google cost has micro precision: spend_cents * 10_000 + extra_micros
    purchases: int
    purchase_value_cents: int
    fractional_conversions: float  # Google's data-driven attribution gives fractions


def months_before(day: date, months: int) -> date:
    """The same day of the month ``months`` earlier (the month's last day when it is shorter)."""
    index = day.year * 12 + day.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    following = date(year + (month == 12), month % 12 + 1, 1)
    return date(year, month, min(day.day, (following - timedelta(days=1)).day))


def campaign_ids(platform: str, account_id: str, count: int) -> list[tuple[str, str]]:
    rng = random.Random(f"campaigns:{platform}:{account_id}")
    base = 23850000000000000 if platform == "meta" else 17000000000
    return [(str(base + rng.randrange(10**9) * 100 + i), f"{platform.title()} campaign {i + 1} · {account_id[-4:]}") for i in range(count)]


@lru_cache(maxsize=4096)
def day_stats(
    seed: int, platform: str, account_id: str, campaigns: int, since: date, until: date, *, today: date, version: int = 0
) -> list[DayStats]:
    """Rows for every campaign and day in [since, until] that had delivery, ordered by day then campaign.

    Cached: later pages of the same query must not regenerate it (the sandbox shares the machine with emsync).
    Callers must not mutate the list.
    """
    out = []
    ids = campaign_ids(platform, account_id, campaigns)
    day = since
    while day <= until:
        if day <= today:
            for index, (cid, name) in enumerate(ids):
                stats = _one(seed, platform, account_id, cid, name, day)
                if stats is None:
                    continue
                if version and day < today:
                    if index == 0 and day == today - timedelta(days=2):
                        continue  # restated away
                    stats = _restated(stats, version)
                out.append(stats)
        day += timedelta(days=1)
    return out


def _one(seed: int, platform: str, account_id: str, cid: str, name: str, day: date) -> DayStats | None:
    rng = random.Random(f"{seed}:{platform}:{account_id}:{cid}:{day.isoformat()}")
    if rng.random() < 0.12:
        return None  # no delivery that day: the platforms return no row
    impressions = rng.randint(1, 25000)
    clicks = int(impressions * rng.uniform(0.0, 0.045))
    spend_cents = int(impressions * rng.uniform(0.2, 1.8))
    purchases = rng.randint(0, max(clicks // 25, 0)) if clicks else 0
    value = purchases * rng.randint(1500, 25000)
    fraction = rng.choice((0.0, 0.0, 0.5, 0.333333, 0.25)) if purchases else 0.0
    return DayStats(cid, name, day, impressions, clicks, spend_cents, rng.randint(0, 9999), purchases, value, fraction)


def _restated(stats: DayStats, version: int) -> DayStats:
    return DayStats(
        stats.campaign_id,
        stats.campaign_name,
        stats.day,
        stats.impressions + 7 * version,
        stats.clicks + version,
        stats.spend_cents + 13 * version,
        stats.extra_micros,
        stats.purchases + version,
        stats.purchase_value_cents + 1999 * version,
        stats.fractional_conversions,
    )
