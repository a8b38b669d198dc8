"""The Google Ads operations budget: the arithmetic, even turns over a simulated day, the ledger, and the 429 that stops spending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text, update

from emsync import budget, ledger
from emsync.budget import GoogleBudget, default_backfill_share, next_turn
from emsync.config import load_settings

from .conftest import ROOT, TEST_KEY, add_google, add_meta

pytestmark = pytest.mark.usefixtures("any_db")

# ---------------------------------------------------------------- arithmetic and turns (no database)


@pytest.mark.parametrize(
    "daily, customers, share, regular, syncs, minutes",
    [
        (15000, 250, 1500, 13500, 48, 30.0),  # Basic access, the schedule fits: half of what it leaves goes to backfills
        (15000, 400, 0, 15000, 37, 38.9),  # 400 x 48 = 19,200 > 15,000: each customer 37 times a day
        (100, 40, 0, 100, 2, 720.0),  # the simulated day below
        (30, 40, 0, 30, 1, 1440.0),  # not even once a day for all: still once (status says so)
        (2880, 0, 1440, 1440, 48, 30.0),  # no Google integration: nothing to spread
    ],
)
def test_budget_arithmetic(daily, customers, share, regular, syncs, minutes):
    plan = GoogleBudget(daily=daily, customers=customers, backfill_share=default_backfill_share(daily, customers))
    assert (plan.backfill_share, plan.regular, plan.syncs_per_day) == (share, regular, syncs)
    assert plan.as_dict()["effective_interval_minutes"] == minutes
    assert plan.spread == (syncs < budget.RUNS_PER_DAY)


def test_an_explicit_backfill_share_comes_out_of_the_regular_budget():
    settings = load_settings(environ={"EMSYNC_BACKFILL_GOOGLE_OPS": "5000"})
    plan = budget.google_budget(settings, 250)
    assert (plan.backfill_share, plan.regular, plan.syncs_per_day) == (5000, 10000, 40)


@pytest.mark.parametrize("day", [date(2026, 7, 15), date(2026, 11, 1), date(2026, 3, 8)])  # an ordinary day, 25 hours, 23 hours
@pytest.mark.parametrize("per_day", [2, 3, 7])
def test_turns_give_each_integration_its_syncs_evenly_every_pacific_day(day, per_day):
    start = ledger.day_start(day)
    length = ledger.day_start(day + timedelta(days=1)) - start
    last: dict[int, datetime | None] = {i: (start - timedelta(hours=3) if i % 2 else None) for i in range(1, 201)}
    synced: dict[int, list[datetime]] = {i: [] for i in last}
    moment = start
    while moment < start + length:  # cron every 30 minutes
        for i in last:
            if next_turn(i, last[i], per_day, moment) is None:
                last[i] = moment
                synced[i].append(moment)
        moment += budget.RUN_SPACING
    assert {len(times) for times in synced.values()} == {per_day}, "each integration synced exactly per_day times"
    period = length / per_day
    for i, times in synced.items():
        if i % 2:  # attempted before: its turns fall one period apart (give or take a run)
            gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
            assert all(period - budget.RUN_SPACING <= gap <= period + budget.RUN_SPACING for gap in gaps), (i, gaps)
    first_turns = {times[0] for i, times in synced.items() if i % 2}
    runs_in_reach = (period - budget.RUN_SPACING) // budget.RUN_SPACING + 1
    assert len(first_turns) >= 0.8 * runs_in_reach, "turns are spread over the period's runs, not bunched in one"


def test_a_waiting_integration_is_told_its_next_turn():
    start = ledger.day_start(date(2026, 7, 15))
    synced_at = start + timedelta(hours=1)
    turn = next_turn(5, synced_at, 2, synced_at + timedelta(minutes=30))
    assert turn is not None and start + timedelta(hours=12) <= turn < start + timedelta(hours=24)
    assert next_turn(5, synced_at, 2, turn) is None


# ---------------------------------------------------------------- a simulated day, two processes, the ledger


def _google_integrations(db_url: str, count: int, day_start: datetime) -> list[int]:
    """``count`` Google integrations whose account metadata is known (as after their first sync);
    half were last attempted the day before, half never."""
    from emsync import db, store
    from emsync.crypto import TokenBox
    from emsync.models import integrations_t

    engine = db.make_engine(db_url)
    box = TokenBox(TEST_KEY)
    ids = []
    with engine.begin() as conn:
        store.add_user(conn, "agency@example.com")
        for n in range(count):
            row = store.add_integration(
                conn, box, email="agency@example.com", platform="google", account_id=f"{5000000000 + n * 7919}", refresh_token=f"1//r-{n}"
            )
            ids.append(row["id"])
            last = day_start - timedelta(hours=3) if n % 2 else None
            conn.execute(
                update(integrations_t)
                .where(integrations_t.c.id == row["id"])
                .values(currency="USD", time_zone="America/Los_Angeles", last_attempt_at=last)
            )
    engine.dispose()
    return ids


def test_a_simulated_day_syncs_each_of_40_google_integrations_twice_across_two_processes(db_url, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("GOOGLE_ADS_DAILY_OPERATIONS", "100")
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "4")
    sb = make_sandbox()
    day = ledger.google_day(datetime.now(UTC))
    start = ledger.day_start(day).astimezone(UTC)
    ids = _google_integrations(db_url, 40, start)
    workers = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "cadence_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        for _ in range(2)
    ]
    steps: list[list[int]] = []
    by_worker = [0, 0]
    try:
        for k in range(budget.RUNS_PER_DAY):  # cron every 30 minutes, both hosts at once, on the manual clock
            moment = (start + k * budget.RUN_SPACING).isoformat()
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(moment + "\n")
                worker.stdin.flush()
            synced: list[int] = []
            for n, worker in enumerate(workers):
                assert worker.stdout is not None
                report = json.loads(worker.stdout.readline())
                assert report["failed"] == [], report
                synced += report["ok"]
                by_worker[n] += len(report["ok"])
            assert len(synced) == len(set(synced)), "never the same integration twice in one run"
            steps.append(synced)
    finally:
        for worker in workers:
            if worker.stdin:
                worker.stdin.close()
            worker.wait(timeout=60)
    counts = {i: sum(step.count(i) for step in steps) for i in ids}
    assert set(counts.values()) == {2}, "floor(100 / 40) = 2 syncs each, none starved"
    assert all(by_worker), "both processes did part of the work"
    for i in ids[1::2]:  # attempted the day before: the two syncs are half a day apart, give or take a run
        first, second = (k for k, step in enumerate(steps) if i in step)
        assert 23 <= second - first <= 25, (i, first, second)
    assert max(sum(1 for i in ids[1::2] if i in step) for step in steps) <= 8, "turns spread over the day"
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT sum(operations) FROM google_operations WHERE day = :d"), {"d": day}).scalar()
        attempts = conn.execute(text("SELECT count(*) FROM sync_attempts WHERE status = 'ok'")).scalar()
    assert recorded == sb.count("google.search_stream") == attempts == 80 <= 100, "the ledger agrees with the API's request log"


# ---------------------------------------------------------------- the budget in sync-all and status


def test_sync_all_skips_a_google_integration_until_its_turn_and_says_when(cli, make_sandbox, monkeypatch):
    # 3 x 48 = 144 operations needed, 3 a day available: each Google integration once a Pacific day
    monkeypatch.setenv("GOOGLE_ADS_DAILY_OPERATIONS", "3")
    sb = make_sandbox()
    google = [add_google(cli, account=f"{n}" * 10, token=f"1//r-{n}") for n in (1, 2, 3)]
    meta = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0  # never synced: each takes its turn at once
    sb.reset_log()
    second = json.loads(cli("sync-all", "--json").out)
    results = {i["id"]: i for i in second["integrations"]}
    assert results[meta]["status"] == "ok", "Meta is not on the Google budget"
    tomorrow = ledger.next_day_start(datetime.now(UTC))
    for integration_id in google:
        item = results[integration_id]
        assert item["status"] == "skipped" and "Google Ads operations budget: synced once a day; next turn" in item["error"]
        assert tomorrow <= datetime.fromisoformat(item["retry_at"]) < tomorrow + timedelta(days=1), "its turn in the next Pacific day"
    assert sb.count("google.search_stream") == 0
    report = json.loads(cli("status", "--json").out)
    google_ops = report["google_operations"]
    assert (google_ops["syncs_per_day"], google_ops["spread"], google_ops["today"]["used"]) == (1, True, 6)
    assert google_ops["today"]["by_source"] == {"sync": 6}, "3 customer queries and 3 metric queries"
    assert any("each is synced once a day (every 1440 minutes)" in w for w in report["warnings"])
    assert "Google Ads operations today" in cli("status").out
    check = cli("status", "--check")
    assert check.code == 1 and check.out.startswith("EMSYNC WARNING -") and "every 1440 minutes" in check.out
    monkeypatch.setenv("EMSYNC_STALE_AFTER_MINUTES", "1500")
    assert cli("status", "--check").out.startswith("EMSYNC OK -")


def test_sync_user_is_not_held_to_turns(cli, make_sandbox, monkeypatch):
    monkeypatch.setenv("GOOGLE_ADS_DAILY_OPERATIONS", "100")
    make_sandbox()
    for n in (1, 2, 3):
        add_google(cli, account=f"{n}" * 10, token=f"1//r-{n}")
    assert cli("sync-all").code == 0
    again = json.loads(cli("sync-user", "anna@example.com", "--json").out)
    assert {i["status"] for i in again["integrations"]} == {"ok"}, "a person pressing Sync Data gets a sync"


def test_a_project_quota_429_stops_the_run_and_the_day_from_spending_on_google(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "1")  # in id order: the first customer meets the 429
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": "quota_exhausted", "times": 1}]}}})
    first = add_google(cli, account="1111111111", token="1//r-1")
    others = [add_google(cli, account=f"{n}" * 10, token=f"1//r-{n}") for n in (2, 3)]
    meta = add_meta(cli, account="act_1")
    result = cli("sync-all", "--json")
    assert result.code == 1
    items = {i["id"]: i for i in json.loads(result.out)["integrations"]}
    assert items[first]["status"] == "rate_limited" and items[first]["retry_at"]
    assert [items[i]["status"] for i in others] == ["skipped", "skipped"] and all("used up" in items[i]["error"] for i in others)
    assert items[meta]["status"] == "ok"
    assert sb.count("google.search_stream") == 1, "no call spent after the 429"
    with engine.connect() as conn:
        spent, markers = conn.execute(text("SELECT sum(operations), count(exhausted_scope) FROM google_operations")).one()
    assert (spent, markers) == (1, 1)
    again = json.loads(cli("sync-all", "--json").out)
    assert sb.count("google.search_stream") == 1, "later runs that Pacific day do not spend either"
    assert {i["status"] for i in again["integrations"] if i["platform"] == "google"} == {"skipped"}
    assert any("used up" in w for w in json.loads(cli("status", "--json").out)["warnings"])


def test_one_customers_quota_429_stops_only_that_customer(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "1")
    fault = {"kind": "quota_exhausted", "scope": "ACCOUNT", "times": 1}
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [fault]}}})
    first = add_google(cli, account="1111111111", token="1//r-1")
    others = [add_google(cli, account=f"{n}" * 10, token=f"1//r-{n}") for n in (2, 3)]
    items = {i["id"]: i for i in json.loads(cli("sync-all", "--json").out)["integrations"]}
    assert items[first]["status"] == "rate_limited" and [items[i]["status"] for i in others] == ["ok", "ok"]
    with engine.connect() as conn:
        spent, markers = conn.execute(text("SELECT sum(operations), count(exhausted_scope) FROM google_operations")).one()
    assert (spent, markers) == (sb.count("google.search_stream"), 0)
