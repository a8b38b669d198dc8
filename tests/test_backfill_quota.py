"""A backfill stops for quotas and rate limits without failing, says when to go on, and goes on (``--wait``)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text

from emsync import ledger
from emsync.backfill.plan import add_months
from emsync.backfill.results import BackfillOptions
from emsync.backfill.runner import Backfiller
from emsync.clock import ManualClock
from emsync.config import load_settings

from .conftest import add_google, add_meta
from .helpers import expected_between, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")


def _since() -> str:
    return add_months(datetime.now(UTC).date(), -24).isoformat()


def _backfill(cli, *args: str) -> dict:
    result = cli("backfill", *args, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _timed(cli, *args: str) -> tuple[dict, datetime, datetime]:
    """``_backfill`` with the clock read before and after: times it computes lie between them plus their delay."""
    before = datetime.now(UTC)
    report = _backfill(cli, *args)
    return report, before, datetime.now(UTC)


def _items(report: dict) -> dict[int, dict]:
    return {item["id"]: item for item in report["integrations"]}


def _ledger(engine) -> tuple[int, int]:
    """(operations recorded, exhaustion markers) in the ledger."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT coalesce(sum(operations), 0), count(exhausted_scope) FROM google_operations")).one()
    return int(row[0]), int(row[1])


def _assert_exact(sb, engine, integration_id: int, platform: str, account: str, item) -> None:
    since, until = (date.fromisoformat(str(item[k])) for k in ("since", "until")) if isinstance(item, dict) else (item.since, item.until)
    assert values(stored(engine, integration_id)) == quantized(expected_between(sb, platform, account, since, until))


class NextDays(ManualClock):
    """A manual clock whose sleeper moves to later Pacific days, where Google's quota starts again."""

    def __init__(self, start: datetime, sandbox):
        super().__init__(start)
        self.sandbox = sandbox
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        day = ledger.google_day(self.now())
        super().sleep(seconds)
        self.slept.append(seconds)
        if ledger.google_day(self.now()) != day:
            self.sandbox.reset_google_operations()


def test_google_quota_exhausted_mid_backfill_pauses_until_the_next_pacific_day_then_resumes(cli, engine, make_sandbox):
    sb = make_sandbox({"google_daily_operations": 7})
    first = add_google(cli, "anna@example.com", "1111111111", "1//refresh-a")
    second = add_google(cli, "bob@example.com", "2222222222", "1//refresh-b")
    report = _backfill(cli, "--since", _since())
    midnight = ledger.next_day_start(datetime.now(UTC))
    assert (report["complete"], report["failed"]) == (False, 0), "stopping for quota is not a failure"
    assert datetime.fromisoformat(report["resume_after"]) == midnight
    assert {i["status"] for i in report["integrations"]} == {"paused"}
    assert sb.google_operations == 7
    spent, markers = _ledger(engine)
    assert spent == sb.count("google.search_stream") and markers >= 1, "the 429 named the developer token: a marker for the day"
    # the next invocation today spends nothing, and says when to run again
    sb.reset_log()
    again = cli("backfill", "--since", _since())
    assert again.code == 0 and f"run it again after {midnight.astimezone(UTC):%Y-%m-%d %H:%M} UTC" in again.out
    assert sb.count("google.search_stream") == 0
    assert [b["status"] for b in json.loads(cli("status", "--json").out)["backfills"]] == ["paused", "paused"]
    assert "Backfills in progress" in cli("status").out
    # cron's runs stop spending too, for the rest of the Pacific day
    synced = json.loads(cli("sync-all", "--json").out)
    assert {i["status"] for i in synced["integrations"]} == {"skipped"} and sb.count("google.search_stream") == 0
    assert all("used up" in i["error"] for i in synced["integrations"])
    # --wait: sleeps (on the clock's sleeper) into the next Pacific days and finishes
    clock = NextDays(datetime.now(UTC), sb)
    result = Backfiller(load_settings(), engine, clock=clock).run(BackfillOptions(since=date.fromisoformat(_since()), wait=True))
    assert result.complete and clock.slept, [(i.status, i.reason) for i in result.integrations]
    assert ledger.google_day(clock.now()) > ledger.google_day(datetime.now(UTC))
    items = {i.integration_id: i for i in result.integrations}
    _assert_exact(sb, engine, first, "google", "1111111111", items[first])
    _assert_exact(sb, engine, second, "google", "2222222222", items[second])
    assert _ledger(engine)[0] == spent + sb.count("google.search_stream"), "the ledger agrees with the API, across days"


def test_one_customers_quota_pauses_that_customer_only(cli, engine, make_sandbox):
    fault = {"kind": "quota_exhausted", "scope": "ACCOUNT", "retry_seconds": 7200, "times": 1}
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [fault]}}})
    limited = add_google(cli, "anna@example.com", "1111111111", "1//refresh-a")
    other = add_google(cli, "bob@example.com", "2222222222", "1//refresh-b")
    report, before, after = _timed(cli, "--since", _since())
    items = _items(report)
    assert (report["complete"], items[limited]["status"], items[other]["status"]) == (False, "paused", "done")
    resume = datetime.fromisoformat(items[limited]["resume_after"])
    assert before + timedelta(hours=2) <= resume <= after + timedelta(hours=2), "the customer's own retry delay"
    assert _ledger(engine)[1] == 0, "one customer's quota is no project-wide marker"
    _assert_exact(sb, engine, other, "google", "2222222222", items[other])
    assert _backfill(cli, "--since", _since())["complete"], "the fault was once: the next run finishes"


def test_the_backfill_spends_only_its_share_of_the_day(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_BACKFILL_GOOGLE_OPS", "3")
    sb = make_sandbox()
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0  # 2 operations for the regular run: not the backfill's share
    sb.reset_log()
    report = _backfill(cli, "--since", _since())
    item = _items(report)[integration_id]
    assert (item["status"], item["chunks_fetched"], sb.count("google.search_stream")) == ("paused", 3, 3)
    assert "EMSYNC_BACKFILL_GOOGLE_OPS" in item["reason"]
    assert datetime.fromisoformat(item["resume_after"]) == ledger.next_day_start(datetime.now(UTC))
    assert _ledger(engine) == (5, 0)


def test_default_share_is_half_of_what_the_schedule_leaves(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("GOOGLE_ADS_DAILY_OPERATIONS", "100")  # 1 customer x 48 runs = 48; (100 - 48) / 2 = 26
    make_sandbox()
    add_google(cli, account="1111111111")
    status = json.loads(cli("status", "--json").out)["google_operations"]
    assert (status["schedule_needs"], status["backfill_share"], status["regular_budget"]) == (48, 26, 74)
    report = _backfill(cli, "--since", add_months(datetime.now(UTC).date(), -120).isoformat())
    assert report["operations"] == 26 and not report["complete"]


def test_meta_usage_above_75_percent_pauses_the_backfill_not_the_regular_sync(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "usage_high", "pct": 80, "times": 1}]}}})
    meta = add_meta(cli, account="act_1")
    report, before, after = _timed(cli, "--since", _since())
    item = _items(report)[meta]
    assert (report["complete"], item["status"], item["chunks_fetched"]) == (False, "paused", 1)
    assert "Meta usage at 80%" in item["reason"]
    assert before + timedelta(minutes=10) <= datetime.fromisoformat(item["resume_after"]) <= after + timedelta(minutes=10)
    finished = _backfill(cli, "--since", _since())
    assert finished["complete"] and _items(finished)[meta]["chunks_fetched"] == item["chunks_total"] - 1
    _assert_exact(sb, engine, meta, "meta", "1", _items(finished)[meta])


def test_a_meta_rate_limit_pauses_with_metas_time_to_regain_access(cli, engine, make_sandbox):
    fault = {"kind": "rate_limit", "code": 80000, "eta_minutes": 30, "times": 1}
    make_sandbox({"meta_accounts": {"1": {"faults": [fault]}}})
    meta = add_meta(cli, account="act_1")
    report, before, after = _timed(cli, "--since", _since())
    item = _items(report)[meta]
    assert (report["failed"], item["status"], item["chunks_fetched"]) == (0, "paused", 0)
    assert before + timedelta(minutes=30) <= datetime.fromisoformat(item["resume_after"]) <= after + timedelta(minutes=30)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM campaign_metrics")).scalar() == 0


def test_an_integration_that_fails_is_exit_1_and_the_others_go_on(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"2": {"faults": [{"kind": "permission"}]}}})
    good = add_meta(cli, account="act_1")
    bad = add_meta(cli, account="act_2", token="EAABtoken-2")
    result = cli("backfill", "--since", _since(), "--json")
    assert result.code == 1
    items = _items(json.loads(result.out))
    assert (items[good]["status"], items[bad]["status"]) == ("done", "failed") and "(#200)" in items[bad]["error"]
    _assert_exact(sb, engine, good, "meta", "1", items[good])
    status = {b["id"]: b for b in json.loads(cli("status", "--json").out)["backfills"]}
    assert status[bad]["status"] == "failed" and "(#200)" in status[bad]["last_error"]
