"""Run and attempt records (``sync_runs``, ``sync_attempts``), and which integrations a run takes.

Like ``store``, every function works inside a transaction the caller owns;
timestamps come from the caller's clock.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, insert, or_, select, update

from . import statements
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


def record_attempt(conn, **fields) -> None:
    """One attempt's record, from ``attempt_row``'s keyword arguments (the run's own row is not touched: see
    ``heartbeat``)."""
    conn.execute(statements.insert_into(attempts_t), attempt_row(**fields))


def attempt_row(
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
) -> dict:
    """A ``sync_attempts`` row's columns (``record_attempt`` writes one; ``store.record_success`` writes it with the
    integration's new status). ``duration_s`` in seconds."""
    return dict(
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


def heartbeat(conn, run_id: int, *, now: datetime) -> None:
    conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(heartbeat_at=now))


def _active(email: str | None, platform: str | None, *columns):
    """Active integrations (of one user, one platform when given), in id order: id, platform, account id, email, ``columns``."""
    query = (
        select(integrations_t.c.id, integrations_t.c.platform, integrations_t.c.account_id, users_t.c.email, *columns)
        .join(users_t, users_t.c.id == integrations_t.c.user_id)
        .where(integrations_t.c.is_active.is_(True))
        .order_by(integrations_t.c.id)
    )
    if email is not None:
        query = query.where(users_t.c.email == email)
    if platform is not None:
        query = query.where(integrations_t.c.platform == platform)
    return query


def due_integrations(conn, *, email: str | None, platform: str | None, include_reauth: bool, now: datetime) -> list[DueIntegration]:
    """Active integrations a run should take, in id order (see CONTRACT.md, "Which integrations a run takes").

    Freshness (``EMSYNC_MIN_INTERVAL_MINUTES``) is the engine's to judge, from ``last_sync_started_at``,
    so that it can report those it skips. ``include_reauth`` (a person asked: sync-user) also takes those that
    need re-authorisation and accounts closed upstream whose daily attempt has not come yet.
    """
    query = _active(email, platform, integrations_t.c.last_sync_started_at, integrations_t.c.last_attempt_at).where(
        or_(
            integrations_t.c.status != "rate_limited",
            integrations_t.c.rate_limited_until.is_(None),
            integrations_t.c.rate_limited_until <= now,
        )
    )
    if not include_reauth:
        query = query.where(integrations_t.c.status != "needs_reauth")
        query = query.where(or_(integrations_t.c.next_attempt_at.is_(None), integrations_t.c.next_attempt_at <= now))
    return [DueIntegration(r.id, r.platform, r.account_id, r.email, r.last_sync_started_at, r.last_attempt_at) for r in conn.execute(query)]


def held_back(
    conn, *, email: str | None, platform: str | None, include_reauth: bool, now: datetime
) -> list[tuple[DueIntegration, str, str, datetime | None]]:
    """Active integrations ``due_integrations`` leaves out, each as (integration, kind, reason, retry time), in id order.

    ``kind`` is ``rate_limited`` (its retry time has not come), ``needs_reauth`` (not for ``include_reauth``) or
    ``closed_upstream`` (an account closed or disabled upstream before its daily attempt; not for ``include_reauth``).
    A run reports them as skipped, with the reason, instead of leaving them out silently.
    """
    limited = and_(
        integrations_t.c.status == "rate_limited",
        integrations_t.c.rate_limited_until.is_not(None),
        integrations_t.c.rate_limited_until > now,
    )
    conditions = [limited]
    if not include_reauth:
        conditions += [integrations_t.c.status == "needs_reauth", integrations_t.c.next_attempt_at > now]
    columns = (integrations_t.c.status, integrations_t.c.rate_limited_until, integrations_t.c.next_attempt_at)
    query = _active(email, platform, *columns).where(or_(*conditions))
    held = []
    for r in conn.execute(query):
        item = DueIntegration(r.id, r.platform, r.account_id, r.email)
        if r.status == "rate_limited":
            held.append((item, "rate_limited", f"rate_limited until {r.rate_limited_until:%Y-%m-%d %H:%M} UTC", r.rate_limited_until))
        elif r.status == "needs_reauth":
            reason = f"needs_reauth: reconnect the login or run 'emsync integrations update {r.id}' (sync-user still tries it)"
            held.append((item, "needs_reauth", reason, None))
        else:
            reason = f"account closed or disabled upstream; next attempt {r.next_attempt_at:%Y-%m-%d %H:%M} UTC"
            held.append((item, "closed_upstream", reason, r.next_attempt_at))
    return held


def prune_batch(conn, *, before: datetime, runs_per_batch: int, attempts_per_batch: int) -> tuple[int, int]:
    """Delete the oldest finished runs that started before ``before``, with their attempts: at most ``runs_per_batch``
    runs, and no more than ``attempts_per_batch`` attempts by the runs' own counts (but always one run).

    Returns (runs, attempts) deleted; (0, 0) when nothing is left to prune. Reads ``sync_runs`` through its
    ``started_at`` index and ``sync_attempts`` through its ``run_id`` index, so a batch stays small whatever the
    history holds (bench/history_bench.py checks both plans).
    """
    ids: list[int] = []
    attempts_seen = 0
    for run_id, total in conn.execute(prune_candidates(before, runs_per_batch)):
        if ids and attempts_seen + total > attempts_per_batch:
            break
        ids.append(run_id)
        attempts_seen += total
    if not ids:
        return 0, 0
    attempts = conn.execute(delete(attempts_t).where(attempts_t.c.run_id.in_(ids))).rowcount
    deleted = conn.execute(delete(runs_t).where(runs_t.c.id.in_(ids))).rowcount
    return deleted, attempts


def prune_candidates(before: datetime, limit: int):
    """The query choosing the next runs to prune, oldest first, with their attempt counts (also what the bench EXPLAINs)."""
    return (
        select(runs_t.c.id, runs_t.c.integrations_total)
        .where(runs_t.c.started_at < before, runs_t.c.status != "running")
        .order_by(runs_t.c.started_at)
        .limit(limit)
    )


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
