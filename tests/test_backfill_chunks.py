"""Chunk plans (pure) and chunk leases (both databases): exclusive, expiring, broken when the holder died, fenced on save;
and migration 0006 on a database holding rows made by the schema before it."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text, update

from emsync import db
from emsync.backfill import chunks
from emsync.backfill.plan import ExistingChunk, add_months, first_available, plan_chunks, split, uncovered
from emsync.clock import ManualClock
from emsync.models import chunks_t

from .conftest import add_meta

D = date.fromisoformat

# ---------------------------------------------------------------- plans


def test_add_months_stays_in_the_target_month():
    assert add_months(D("2026-03-31"), -1) == D("2026-02-28")
    assert add_months(D("2024-03-30"), -1) == D("2024-02-29")
    assert add_months(D("2026-01-15"), -13) == D("2024-12-15")
    assert add_months(D("2026-12-01"), -37) == D("2023-11-01")


def test_meta_serves_37_months_and_google_has_no_limit():
    assert first_available("meta", D("2026-12-01")) == D("2023-11-02")  # a day of margin for Meta's own "today"
    assert first_available("google", D("2026-12-01")) is None


def test_chunks_follow_the_calendar_months_and_quarters():
    assert split("meta", D("2026-01-15"), D("2026-03-10")) == [
        (D("2026-01-15"), D("2026-01-31")),
        (D("2026-02-01"), D("2026-02-28")),
        (D("2026-03-01"), D("2026-03-10")),
    ]
    assert split("google", D("2025-11-20"), D("2026-05-02")) == [
        (D("2025-11-20"), D("2025-12-31")),
        (D("2026-01-01"), D("2026-03-31")),
        (D("2026-04-01"), D("2026-05-02")),
    ]


def test_uncovered_days():
    covered = [(D("2026-02-01"), D("2026-02-28")), (D("2026-04-01"), D("2026-04-30"))]
    assert uncovered(D("2026-01-10"), D("2026-05-05"), covered) == [
        (D("2026-01-10"), D("2026-01-31")),
        (D("2026-03-01"), D("2026-03-31")),
        (D("2026-05-01"), D("2026-05-05")),
    ]
    assert uncovered(D("2026-02-03"), D("2026-02-20"), covered) == []


def test_a_plan_adds_only_missing_chunks_resets_on_refetch_and_expires_what_meta_no_longer_serves():
    existing = [
        ExistingChunk(1, D("2026-03-01"), D("2026-03-31"), "done"),
        ExistingChunk(2, D("2026-02-01"), D("2026-02-28"), "pending"),
        ExistingChunk(3, D("2023-01-01"), D("2023-01-31"), "pending"),
    ]
    plan = plan_chunks("meta", D("2026-01-20"), D("2026-04-10"), existing, refetch=False, oldest=D("2023-11-02"))
    assert plan.new == ((D("2026-01-20"), D("2026-01-31")), (D("2026-04-01"), D("2026-04-10")))
    assert plan.work == ((D("2026-04-01"), D("2026-04-10")), (D("2026-02-01"), D("2026-02-28")), (D("2026-01-20"), D("2026-01-31")))
    assert (plan.reset, plan.expired, plan.done) == ((), (3,), ((D("2026-03-01"), D("2026-03-31")),))
    again = plan_chunks("meta", D("2026-01-20"), D("2026-04-10"), existing, refetch=True)
    assert again.reset == (1,) and (D("2026-03-01"), D("2026-03-31")) in again.work and again.done == ()


# ---------------------------------------------------------------- leases


@pytest.fixture
def planned(cli, engine):
    """An integration with three pending monthly chunks; returns (integration id, the chunks' ranges newest first)."""
    integration_id = add_meta(cli, account="act_1")
    plan = plan_chunks("meta", D("2026-01-01"), D("2026-03-31"), [], refetch=False)
    with db.write_transaction(engine) as conn:
        chunks.lock_backfill(conn, integration_id, D("2026-01-01"), D("2026-03-31"), now=datetime.now(UTC))
        chunks.apply_plan(conn, integration_id, plan, now=datetime.now(UTC))
    return integration_id, plan.work


def _take(engine, integration_id, ranges, clock=None):
    with db.write_transaction(engine) as conn:
        return chunks.take_lease(conn, integration_id, ranges, clock=clock or ManualClock(datetime.now(UTC)))


def _set(engine, lease, **values):
    with engine.begin() as conn:
        conn.execute(update(chunks_t).where(chunks_t.c.id == lease.chunk_id).values(**values))


def test_a_lease_is_exclusive_newest_first(engine, planned):
    integration_id, work = planned
    first = _take(engine, integration_id, work)
    second = _take(engine, integration_id, work)
    third = _take(engine, integration_id, work)
    assert [(lease.since, lease.until) for lease in (first, second, third)] == list(work)
    assert _take(engine, integration_id, work) is None, "all three are held"


def test_an_expired_lease_is_taken_over_and_the_old_holder_cannot_save(engine, planned):
    integration_id, work = planned
    old = _take(engine, integration_id, work[:1])
    with db.write_transaction(engine) as conn:
        now = chunks.db_now(conn, ManualClock(datetime.now(UTC)))
    _set(engine, old, lease_until=now - timedelta(seconds=1))  # its heartbeats stopped (another host died)
    new = _take(engine, integration_id, work[:1])
    assert new is not None and new.chunk_id == old.chunk_id and new.token != old.token
    with pytest.raises(chunks.LeaseLost):
        with db.write_transaction(engine) as conn:
            chunks.fence(conn, old)
    with db.write_transaction(engine) as conn:
        assert not chunks.heartbeat(conn, old, clock=ManualClock(datetime.now(UTC))), "a heartbeat does not revive a lost lease"
        chunks.fence(conn, new)
        chunks.finish(conn, new, since=new.since, until=new.until, rows=3, requests=1, operations=0, now=datetime.now(UTC))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status, rows FROM backfill_chunks WHERE id = :i"), {"i": new.chunk_id}).one() == ("done", 3)


def test_a_lease_of_a_dead_process_on_this_host_is_broken_at_once(engine, planned):
    integration_id, work = planned
    lease = _take(engine, integration_id, work[:1])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    _set(engine, lease, lease_pid=int(dead))  # held, not expired, by a process that no longer exists
    assert _take(engine, integration_id, work[:1]) is not None
    alive = _take(engine, integration_id, work[1:2])
    assert _take(engine, integration_id, work[1:2]) is None and alive is not None, "a live holder keeps its lease"


def test_a_heartbeat_extends_the_lease(engine, planned):
    integration_id, work = planned
    lease = _take(engine, integration_id, work[:1])
    with db.write_transaction(engine) as conn:
        now = chunks.db_now(conn, ManualClock(datetime.now(UTC)))
    _set(engine, lease, lease_until=now + timedelta(seconds=5))
    with db.write_transaction(engine) as conn:
        assert chunks.heartbeat(conn, lease, clock=ManualClock(datetime.now(UTC)))
    with engine.connect() as conn:
        until = conn.execute(text("SELECT lease_until FROM backfill_chunks WHERE id = :i"), {"i": lease.chunk_id}).scalar()
    until = until if isinstance(until, datetime) else datetime.fromisoformat(until)
    assert until.replace(tzinfo=until.tzinfo or UTC) > now + timedelta(seconds=60)


# ---------------------------------------------------------------- migration 0006


def test_migration_0006_keeps_every_row_of_the_schema_before_it(empty_db_url, monkeypatch):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    engine = db.make_engine(empty_db_url, create=True)
    cfg = Config()
    cfg.set_main_option("script_location", "emsync:migrations")
    with db.write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    stamp = "2026-11-01 10:00:00+00:00"
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO users (id, email, created_at) VALUES (1, 'a@example.com', '{stamp}')"))
        conn.execute(
            text(
                "INSERT INTO integrations (id, user_id, platform, account_id, is_active, status, created_at, updated_at) "
                f"VALUES (1, 1, 'meta', '123', true, 'ok', '{stamp}', '{stamp}')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO campaign_metrics (integration_id, campaign_id, date, spend, impressions, clicks, conversions, revenue, synced_at) "
                f"VALUES (1, 'c1', '2026-10-01', 12.5, 100, 3, 1, 20, '{stamp}')"
            )
        )
    before, after = db.upgrade(engine, empty_db_url)
    assert (before, after) == ("0001", db.HEAD)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM campaign_metrics")).scalar() == 1
        assert conn.execute(text("SELECT account_id, status FROM integrations")).one() == ("123", "ok")
        tables = set(inspect(conn).get_table_names())
    assert {"backfills", "backfill_chunks", "google_operations"} <= tables
    engine.dispose()


def test_two_processes_planning_at_once_make_one_plan(cli, engine):
    import threading

    integration_id = add_meta(cli, account="act_1")
    since, until = D("2026-01-01"), D("2026-06-30")
    first_locked, plans, errors = threading.Event(), {}, []

    def plan(name: str, hold: threading.Event | None) -> None:
        try:
            with db.write_transaction(engine) as conn:
                chunks.lock_backfill(conn, integration_id, since, until, now=datetime.now(UTC))
                if hold is not None:
                    first_locked.set()
                    hold.wait(30)  # the other planner arrives while this one holds the row
                existing = chunks.existing_chunks(conn, integration_id)
                plans[name] = plan_chunks("meta", since, until, existing, refetch=False)
                chunks.apply_plan(conn, integration_id, plans[name], now=datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    release = threading.Event()
    first = threading.Thread(target=plan, args=("first", release))
    first.start()
    assert first_locked.wait(30)
    second = threading.Thread(target=plan, args=("second", None))
    second.start()
    release.set()
    first.join(60)
    second.join(60)
    assert errors == []
    assert len(plans["first"].new) == 6 and plans["second"].new == (), "the second planner saw the first one's chunks"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM backfill_chunks")).scalar() == 6
