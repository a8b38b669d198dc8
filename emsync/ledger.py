"""The Google Ads operations ledger: what every process and host spent today, through the database.

Google counts a project's operations per day (Google Ads API, "Rate limits
and quotas": Basic access 15,000 a day) in Pacific time. The ledger is
insert-only — one ``google_operations`` row per batch (an attempt's
searchStreams, a backfill chunk, a discovery) — and summed per day, so no
single row is updated by many hosts at once.

Google does not document exactly when its day resets: the 429 is the truth.
A ``RESOURCE_EXHAUSTED`` whose ``quotaErrorDetails.rateScope`` is
``DEVELOPER`` or ``PROJECT`` is written as a marker row, and every process
stops spending for the rest of that Pacific day; the same error with an
``ACCOUNT`` scope concerns one customer only and is not a marker.

Every function takes a connection in a transaction the caller owns, so an
attempt's operations commit with its attempt record.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select

from . import statements
from .models import google_ops_t

log = logging.getLogger("emsync")

GOOGLE_TZ = ZoneInfo("America/Los_Angeles")
PROJECT_SCOPES = frozenset({"DEVELOPER", "PROJECT"})
SOURCES = ("sync", "backfill", "check", "connect")


def google_day(moment: datetime) -> date:
    """The Pacific-time day Google counts ``moment`` (an aware datetime) in."""
    return moment.astimezone(GOOGLE_TZ).date()


def day_start(day: date) -> datetime:
    """Midnight of a Pacific day, as an aware datetime (23 or 25 hours from the next one across DST)."""
    return datetime.combine(day, time(0), tzinfo=GOOGLE_TZ)


def next_day_start(moment: datetime) -> datetime:
    """When the Pacific day after ``moment``'s begins, in UTC."""
    return day_start(google_day(moment) + timedelta(days=1)).astimezone(UTC)


def record(conn, *, operations: int, source: str, now: datetime, integration_id: int | None = None) -> None:
    """Add ``operations`` spent by ``source`` (one of ``SOURCES``) to ``now``'s Pacific day; nothing when 0."""
    assert source in SOURCES, source
    if operations <= 0:
        return
    conn.execute(
        statements.insert_into(google_ops_t),
        dict(
            day=google_day(now),
            operations=operations,
            source=source,
            integration_id=integration_id,
            host=socket.gethostname(),
            recorded_at=now,
        ),
    )


def record_spent(engine, *, operations: int, source: str, now: datetime) -> None:
    """``record`` in a transaction of its own, for commands whose calls are not part of a write (connect, check).

    Called after the calls, whatever their outcome (operations are spent either way); a database that
    cannot take the row is logged as a warning, never raised over the command's own result.
    """
    if operations <= 0:
        return
    from sqlalchemy.exc import SQLAlchemyError

    from .db import write_transaction

    try:
        with write_transaction(engine) as conn:
            record(conn, operations=operations, source=source, now=now)
    except SQLAlchemyError as exc:
        log.warning("could not record %d Google Ads operations in the ledger: %s", operations, type(exc).__name__)


def mark_exhausted(conn, *, scope: str, source: str, now: datetime, integration_id: int | None = None) -> bool:
    """Record a project-wide ``RESOURCE_EXHAUSTED`` (``scope`` DEVELOPER or PROJECT); other scopes are ignored.

    Returns whether a marker was written.
    """
    if scope not in PROJECT_SCOPES:
        return False
    conn.execute(
        insert(google_ops_t).values(
            day=google_day(now),
            operations=0,
            source=source,
            integration_id=integration_id,
            exhausted_scope=scope,
            host=socket.gethostname(),
            recorded_at=now,
        )
    )
    return True


def exhausted_until(conn, now: datetime) -> datetime | None:
    """When spending may start again (the next Pacific midnight) if today's quota was found exhausted, else None."""
    day = google_day(now)
    marked = conn.execute(
        select(func.count()).select_from(google_ops_t).where(google_ops_t.c.day == day, google_ops_t.c.exhausted_scope.is_not(None))
    ).scalar()
    return next_day_start(now) if marked else None


def used(conn, day: date, *, source: str | None = None) -> int:
    """Operations recorded for a Pacific day, by every process and host (one source, or all)."""
    query = select(func.coalesce(func.sum(google_ops_t.c.operations), 0)).where(google_ops_t.c.day == day)
    if source is not None:
        query = query.where(google_ops_t.c.source == source)
    return int(conn.execute(query).scalar() or 0)


def usage(conn, now: datetime) -> dict:
    """Today's usage for ``status``: ``{"day", "used", "by_source": {source: n}, "exhausted_until"}``."""
    day = google_day(now)
    query = (
        select(google_ops_t.c.source, func.sum(google_ops_t.c.operations))
        .where(google_ops_t.c.day == day)
        .group_by(google_ops_t.c.source)
        .order_by(google_ops_t.c.source)
    )
    by_source = {source: int(n or 0) for source, n in conn.execute(query)}
    return {"day": day, "used": sum(by_source.values()), "by_source": by_source, "exhausted_until": exhausted_until(conn, now)}
