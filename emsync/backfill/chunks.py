"""The ``backfills`` and ``backfill_chunks`` tables: plans, chunk leases, progress.

A backfill never holds the integration: each chunk is leased on its own row
(token, host, pid, until) in a short transaction, so ``sync-all`` syncs the
integration's recent window meanwhile and two backfills never fetch the same
chunk. A lease expires ``LEASE`` after its last heartbeat, on the database's
clock (PostgreSQL; hosts' clocks may differ), and a lease whose process is
gone from this host is broken at once, so ``kill -9`` delays nothing here.
The transaction that saves a chunk first re-checks that its lease is still
the holder's (fencing) and rolls back otherwise.

Lock order, to stay free of deadlocks: the ``backfills`` row, then chunk rows.
Every function works in a transaction the caller owns (``db.write_transaction``
for writes: on SQLite that is ``BEGIN IMMEDIATE``, one writer across processes).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from ..clock import Clock
from ..models import backfills_t, chunks_t
from ..runs import pid_alive
from .plan import ChunkPlan, ExistingChunk

LEASE = timedelta(minutes=2)
HEARTBEAT = timedelta(seconds=30)
_NOTHING_YET = dict(rows=0, requests=0, operations=0)  # what a new backfill or chunk has fetched
_NO_LEASE = dict(lease_token=None, lease_host=None, lease_pid=None, lease_until=None)


class LeaseLost(Exception):
    """The chunk's lease is no longer this process's (it expired and another took it, or the integration went)."""


@dataclass(frozen=True)
class Lease:
    """A chunk this process may fetch and save: its dates and the token that proves the lease."""

    chunk_id: int
    integration_id: int
    since: date
    until: date
    token: str


def db_now(conn, clock: Clock) -> datetime:
    """Now on the database's clock (PostgreSQL), or this process's (SQLite: one host)."""
    if conn.dialect.name == "postgresql":
        return conn.execute(text("SELECT statement_timestamp()")).scalar()
    return clock.now()


def existing_chunks(conn, integration_id: int) -> list[ExistingChunk]:
    query = select(chunks_t.c.id, chunks_t.c.since, chunks_t.c.until, chunks_t.c.status).where(chunks_t.c.integration_id == integration_id)
    return [ExistingChunk(r.id, r.since, r.until, r.status) for r in conn.execute(query)]


def _lock_progress(conn, integration_id: int) -> dict | None:
    """The integration's ``backfills`` row, locked until the transaction ends (PostgreSQL; SQLite has one writer)."""
    query = select(backfills_t).where(backfills_t.c.integration_id == integration_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return dict(row._mapping) if row else None


def lock_backfill(conn, integration_id: int, since: date, until: date, *, now: datetime) -> None:
    """First statement of a request's transaction: the integration's ``backfills`` row, created when missing,
    widened to [since, until] and locked, so two processes planning at once make one plan (the second sees the
    first's chunks) instead of racing to insert the same ones."""
    values = dict(
        integration_id=integration_id,
        since=since,
        until=until,
        status="running",
        chunks_total=0,
        chunks_done=0,
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=now,
        updated_at=now,
        **_NOTHING_YET,
    )
    insert_or_keep: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert  # ON CONFLICT: both dialects
    conn.execute(insert_or_keep(backfills_t).values(**values).on_conflict_do_nothing(index_elements=["integration_id"]))
    progress = _lock_progress(conn, integration_id)
    assert progress is not None
    conn.execute(
        update(backfills_t)
        .where(backfills_t.c.integration_id == integration_id)
        .values(since=min(since, progress["since"]), until=max(until, progress["until"]))
    )


def apply_plan(conn, integration_id: int, plan: ChunkPlan, *, now: datetime) -> None:
    """Record a request's plan (made under ``lock_backfill``): add the new chunks, make ``reset`` chunks pending
    again, mark ``expired`` ones."""
    if plan.new:
        conn.execute(
            insert(chunks_t),
            [
                dict(integration_id=integration_id, since=lo, until=hi, status="pending", attempts=0, created_at=now, **_NOTHING_YET)
                for lo, hi in plan.new
            ],
        )
    if plan.reset:
        conn.execute(update(chunks_t).where(chunks_t.c.id.in_(plan.reset)).values(status="pending", finished_at=None))
    if plan.expired:
        conn.execute(
            update(chunks_t)
            .where(chunks_t.c.id.in_(plan.expired), chunks_t.c.status == "pending")
            .values(status="expired", finished_at=now)
        )
    update_progress(conn, integration_id, now=now, status="running")


def take_lease(conn, integration_id: int, ranges: tuple[tuple[date, date], ...], *, clock: Clock) -> Lease | None:
    """Lease the newest pending chunk among ``ranges`` that nobody holds; None when none is free.

    Free: never leased, its lease expired on the database clock, or its holder
    was a process on this host that no longer exists.
    """
    if not ranges:
        return None
    now = db_now(conn, clock)
    host, pid = socket.gethostname(), os.getpid()
    wanted = or_(*(and_(chunks_t.c.since == lo, chunks_t.c.until == hi) for lo, hi in ranges))
    query = (
        select(
            chunks_t.c.id,
            chunks_t.c.since,
            chunks_t.c.until,
            chunks_t.c.lease_token,
            chunks_t.c.lease_host,
            chunks_t.c.lease_pid,
            chunks_t.c.lease_until,
        )
        .where(chunks_t.c.integration_id == integration_id, chunks_t.c.status == "pending", wanted)
        .order_by(chunks_t.c.since.desc())
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)  # a chunk another process is leasing right now: skip it, do not wait
    for row in conn.execute(query).all():
        holder_gone = row.lease_host == host and row.lease_pid is not None and row.lease_pid != pid and not pid_alive(row.lease_pid)
        if row.lease_token is not None and row.lease_until is not None and row.lease_until > now and not holder_gone:
            continue
        token = secrets.token_hex(16)
        taken = conn.execute(
            update(chunks_t)
            .where(chunks_t.c.id == row.id, chunks_t.c.status == "pending", _same_token(row.lease_token))
            .values(lease_token=token, lease_host=host, lease_pid=pid, lease_until=now + LEASE, attempts=chunks_t.c.attempts + 1)
        ).rowcount
        if taken == 1:
            return Lease(row.id, integration_id, row.since, row.until, token)
    return None


def _same_token(token: str | None):
    return chunks_t.c.lease_token.is_(None) if token is None else chunks_t.c.lease_token == token


def heartbeat(conn, lease: Lease, *, clock: Clock) -> bool:
    """Extend the lease by ``LEASE``; False when it is no longer ours."""
    until = db_now(conn, clock) + LEASE
    return (
        conn.execute(update(chunks_t).where(chunks_t.c.id == lease.chunk_id, _same_token(lease.token)).values(lease_until=until)).rowcount
        == 1
    )


def release(conn, lease: Lease, *, error: str | None = None) -> None:
    """Give the chunk back, pending, for this or another process to fetch later."""
    values: dict = dict(_NO_LEASE)
    if error is not None:
        values["last_error"] = error[:2000]
    conn.execute(update(chunks_t).where(chunks_t.c.id == lease.chunk_id, _same_token(lease.token)).values(**values))


def fence(conn, lease: Lease) -> None:
    """First statement of a chunk's save transaction: lock the progress row, then check the lease is still ours.

    Raises:
        LeaseLost: the lease is gone; the caller's transaction must roll back.
    """
    _lock_progress(conn, lease.integration_id)
    query = select(chunks_t.c.id).where(chunks_t.c.id == lease.chunk_id, _same_token(lease.token), chunks_t.c.status == "pending")
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    if conn.execute(query).first() is None:
        raise LeaseLost(f"lost the lease on backfill chunk {lease.since}..{lease.until}")


def finish(conn, lease: Lease, *, since: date, until: date, rows: int, requests: int, operations: int, now: datetime) -> None:
    """Mark the leased chunk done, inside its save transaction (after ``fence``).

    ``since``/``until`` are the dates really fetched: a chunk shrinks to the
    request's range (Meta's 37 months, the regular window, a later --since);
    the rest is planned again when asked for.

    Raises:
        LeaseLost: the lease is gone; the caller's transaction must roll back.
    """
    done = conn.execute(
        update(chunks_t)
        .where(chunks_t.c.id == lease.chunk_id, _same_token(lease.token), chunks_t.c.status == "pending")
        .values(
            status="done",
            since=since,
            until=until,
            rows=rows,
            requests=chunks_t.c.requests + requests,
            operations=chunks_t.c.operations + operations,
            last_error=None,
            finished_at=now,
            **_NO_LEASE,
        )
    ).rowcount
    if done != 1:
        raise LeaseLost(f"lost the lease on backfill chunk {lease.since}..{lease.until}")


def spend(conn, lease: Lease, *, requests: int, operations: int) -> None:
    """Count requests and operations a failed or abandoned fetch of the chunk used."""
    conn.execute(
        update(chunks_t)
        .where(chunks_t.c.id == lease.chunk_id)
        .values(requests=chunks_t.c.requests + requests, operations=chunks_t.c.operations + operations)
    )


def update_progress(
    conn,
    integration_id: int,
    *,
    now: datetime,
    status: str | None = None,
    error: str | None = None,
    resume_after: datetime | None = None,
) -> None:
    """Recompute the ``backfills`` row from its chunks and set ``status``.

    ``done`` when no chunk is pending; a ``done`` asked for while pending chunks
    of an earlier, wider request remain is recorded as ``incomplete``.
    """
    totals = conn.execute(
        select(
            func.count(),
            func.sum(case((chunks_t.c.status != "pending", 1), else_=0)),
            func.coalesce(func.sum(chunks_t.c.rows), 0),
            func.coalesce(func.sum(chunks_t.c.requests), 0),
            func.coalesce(func.sum(chunks_t.c.operations), 0),
        ).where(chunks_t.c.integration_id == integration_id)
    ).one()
    following = conn.execute(
        select(chunks_t.c.since, chunks_t.c.until)
        .where(chunks_t.c.integration_id == integration_id, chunks_t.c.status == "pending")
        .order_by(chunks_t.c.since.desc())
        .limit(1)
    ).first()
    values: dict = dict(
        chunks_total=totals[0],
        chunks_done=int(totals[1] or 0),
        rows=int(totals[2]),
        requests=int(totals[3]),
        operations=int(totals[4]),
        next_since=following.since if following else None,
        next_until=following.until if following else None,
        updated_at=now,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    if status is not None:
        finished = following is None
        values.update(
            status="done" if finished else ("incomplete" if status == "done" else status),
            last_error=None if finished else (error[:2000] if error else None),
            resume_after=None if finished else resume_after,
            finished_at=now if finished else None,
        )
    conn.execute(update(backfills_t).where(backfills_t.c.integration_id == integration_id).values(**values))


def has_progress(conn, integration_id: int) -> bool:
    return conn.execute(select(backfills_t.c.integration_id).where(backfills_t.c.integration_id == integration_id)).first() is not None


def pending_in(conn, integration_id: int, since: date, until: date) -> int:
    """Pending chunks overlapping [since, until]."""
    query = (
        select(func.count())
        .select_from(chunks_t)
        .where(
            chunks_t.c.integration_id == integration_id,
            chunks_t.c.status == "pending",
            chunks_t.c.since <= until,
            chunks_t.c.until >= since,
        )
    )
    return int(conn.execute(query).scalar() or 0)


def progress_rows(conn) -> list[dict]:
    """Every integration's backfill progress (for ``status``), oldest first."""
    return [dict(r._mapping) for r in conn.execute(select(backfills_t).order_by(backfills_t.c.integration_id))]
