"""Run and attempt records (``sync_runs``, ``sync_attempts``), and which integrations a run takes.

Like ``store``, every function works inside a transaction the caller owns;
timestamps come from the caller's clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, or_, select, update

from .domain import SyncWindow
from .models import attempts_t, integrations_t, runs_t, users_t

# A run whose heartbeat (every 30 s, heartbeat.py) is this old is taken as dead.
STALE_RUN = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class DueIntegration:
    """An integration a run will try, with what its log lines name, when its last successful sync started (freshness)
    and when it was last attempted (the Google budget's turns)."""

    id: int
    platform: str
    account_id: str
    email: str
    last_sync_started_at: datetime | None = None
    last_attempt_at: datetime | None = None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def looks_dead(run: dict, host: str, now: datetime) -> bool:
    """A "running" run whose process is gone (same host) or that stopped writing (any host)."""
    same_host_gone = run["host"] == host and run["pid"] != os.getpid() and not pid_alive(run["pid"])
    return same_host_gone or now - run["heartbeat_at"] > STALE_RUN


def start_run(conn, *, trigger: str, host: str, scope: str | None, full: bool, now: datetime) -> int:
    values = dict(
        trigger=trigger, host=host, pid=os.getpid(), scope=scope, full_window=full, started_at=now, heartbeat_at=now, status="running"
    )
    return conn.execute(insert(runs_t).values(**values)).inserted_primary_key[0]


def bury_dead_runs(conn, host: str, now: datetime) -> int:
    """Mark runs that died (killed, crashed, machine rebooted) so they never show as running forever."""
    running = conn.execute(select(runs_t.c.id, runs_t.c.host, runs_t.c.pid, runs_t.c.heartbeat_at).where(runs_t.c.status == "running"))
    dead = [r.id for r in running if looks_dead(dict(r._mapping), host, now)]
    if dead:
        conn.execute(update(runs_t).where(runs_t.c.id.in_(dead)).values(status="died", finished_at=now))
    return len(dead)


def finish_run(
    conn, run_id: int, *, now: datetime, total: int, succeeded: int, failed: int, skipped: int, rows: int, status: str | None = None
) -> None:
    """The run's end and counts. ``status``: ``ok``, ``failed`` or ``interrupted``; by default ``failed`` when any
    integration failed, else ``ok``. ``total`` minus the other counts is what an interrupt left unfinished."""
    conn.execute(
        update(runs_t)
        .where(runs_t.c.id == run_id)
        .values(
            status=status or ("failed" if failed else "ok"),
            finished_at=now,
            heartbeat_at=now,
            integrations_total=total,
            succeeded=succeeded,
            failed=failed,
            skipped=skipped,
            rows=rows,
        )
    )


def record_attempt(
    conn,
    *,
    run_id: int,
    integration_id: int,
    window: SyncWindow | None,
    started_at: datetime,
    finished_at: datetime,
    status: str,
    rows: int,
    api_requests: int,
    error: str | None,
) -> None:
    """One attempt's record (the run's own row is not touched: see ``heartbeat``)."""
    conn.execute(
        insert(attempts_t).values(
            run_id=run_id,
            integration_id=integration_id,
            window_start=window.since if window else None,
            window_end=window.until if window else None,
            full_window=bool(window and window.full),
            started_at=started_at,
            finished_at=finished_at,
            status=status,
            rows=rows,
            api_requests=api_requests,
            duration_s=(finished_at - started_at).total_seconds(),
            error=error,
        )
    )


def heartbeat(conn, run_id: int, *, now: datetime) -> None:
    conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(heartbeat_at=now))


def due_integrations(conn, *, email: str | None, platform: str | None, include_reauth: bool, now: datetime) -> list[DueIntegration]:
    """Active integrations a run should take, in id order (see CONTRACT.md, "Which integrations a run takes").

    Freshness (``EMSYNC_MIN_INTERVAL_MINUTES``) is the engine's to judge, from ``last_sync_started_at``,
    so that it can report those it skips. ``include_reauth`` (a person asked: sync-user) also takes those that
    need re-authorisation and accounts closed upstream whose daily attempt has not come yet.
    """
    query = (
        select(
            integrations_t.c.id,
            integrations_t.c.platform,
            integrations_t.c.account_id,
            users_t.c.email,
            integrations_t.c.last_sync_started_at,
            integrations_t.c.last_attempt_at,
        )
        .join(users_t, users_t.c.id == integrations_t.c.user_id)
        .where(integrations_t.c.is_active.is_(True))
        .where(
            or_(
                integrations_t.c.status != "rate_limited",
                integrations_t.c.rate_limited_until.is_(None),
                integrations_t.c.rate_limited_until <= now,
            )
        )
        .order_by(integrations_t.c.id)
    )
    if not include_reauth:
        query = query.where(integrations_t.c.status != "needs_reauth")
        query = query.where(or_(integrations_t.c.next_attempt_at.is_(None), integrations_t.c.next_attempt_at <= now))
    if email is not None:
        query = query.where(users_t.c.email == email)
    if platform is not None:
        query = query.where(integrations_t.c.platform == platform)
    return [DueIntegration(r.id, r.platform, r.account_id, r.email, r.last_sync_started_at, r.last_attempt_at) for r in conn.execute(query)]


def recent_runs(conn, limit: int = 10) -> list[dict]:
    query = select(runs_t).order_by(runs_t.c.id.desc()).limit(limit)
    return [dict(r._mapping) for r in conn.execute(query)]


def run_detail(conn, run_id: int) -> dict | None:
    """One run with its attempts (what GET /api/runs/{id} returns)."""
    run = conn.execute(select(runs_t).where(runs_t.c.id == run_id)).first()
    if run is None:
        return None
    attempts = conn.execute(select(attempts_t).where(attempts_t.c.run_id == run_id).order_by(attempts_t.c.id))
    detail = dict(run._mapping)
    detail["attempts"] = [dict(a._mapping) for a in attempts]
    return detail
