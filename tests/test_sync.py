"""The sync engine on SQLite and PostgreSQL: windows, exact replacement, rollback, isolation, overlapping runs, kill -9."""

from __future__ import annotations

import json
import os
from datetime import date, timedelta

import pytest
from sqlalchemy import text

from .conftest import add_google, add_meta
from .helpers import expected, integration, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")


def _json(result):
    assert result.code in (0, 1), result.err
    return json.loads(result.out)


def test_first_sync_is_full_then_recent_window_then_full_again_when_due(cli, engine, make_sandbox, monkeypatch):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    first = _json(cli("sync-all", "--json"))
    today = sb.today(sb.account("meta", "1")["timezone"])
    windows = {i["id"]: i["window"] for i in first["integrations"]}
    assert windows[meta] == {"since": str(today - timedelta(days=29)), "until": str(today), "full": True}
    assert windows[google]["full"] is True
    second = _json(cli("sync-all", "--json"))
    assert {i["id"]: (i["window"]["full"], i["window"]["since"]) for i in second["integrations"]}[meta] == (
        False,
        str(today - timedelta(days=2)),
    )
    assert _json(cli("sync-all", "--json", "--full"))["integrations"][0]["window"]["full"] is True
    monkeypatch.setenv("EMSYNC_FULL_SYNC_HOURS", "0")
    assert all(i["window"]["full"] for i in _json(cli("sync-all", "--json"))["integrations"])
    monkeypatch.setenv("EMSYNC_LOOKBACK_DAYS", "7")
    monkeypatch.setenv("EMSYNC_RECENT_DAYS", "2")
    monkeypatch.setenv("EMSYNC_FULL_SYNC_HOURS", "24")
    assert _json(cli("sync-all", "--json"))["integrations"][0]["window"]["since"] == str(today - timedelta(days=1))
    with engine.connect() as conn:
        attempts = conn.execute(
            text("SELECT integration_id, full_window, window_start, window_end, rows, api_requests, status FROM sync_attempts ORDER BY id")
        ).all()
    # a first sync: Meta account + insights + the daily debug_token; Google token + customer + metrics
    assert len(attempts) == 10 and attempts[0].status == "ok" and attempts[0].rows > 0 and attempts[0].api_requests == 3


def test_window_replace_updates_changed_and_deletes_vanished_rows(cli, engine, make_sandbox):
    sb = make_sandbox({"restate": True})
    meta = add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    assert values(stored(engine, meta)) == quantized(expected(sb, "meta", "1", version=0))
    assert values(stored(engine, google)) == quantized(expected(sb, "google", "1111111111", version=0))
    assert cli("sync-all", "--full").code == 0
    for integration_id, platform, account in ((meta, "meta", "1"), (google, "google", "1111111111")):
        now = values(stored(engine, integration_id))
        want = quantized(expected(sb, platform, account, version=1))
        assert now == want
        assert len(now) == len(quantized(expected(sb, platform, account, version=0))) - 1


def test_rows_older_than_the_window_are_kept(cli, engine, make_sandbox):
    make_sandbox()
    meta = add_meta(cli, account="act_1")
    old = date.today() - timedelta(days=90)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO campaign_metrics (integration_id, campaign_id, date, spend, impressions, clicks, conversions, revenue, synced_at) "
                "VALUES (:i, 'history', :d, 5, 50, 5, 0, 0, '2026-08-01 00:00:00+00:00')"
            ),
            {"i": meta, "d": old},
        )
    assert cli("sync-all", "--full").code == 0
    assert ("history", old) in stored(engine, meta)


def test_failure_mid_fetch_leaves_previous_rows_untouched(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "2")
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 20}}})
    meta = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    before = {k: tuple(r) for k, r in stored(engine, meta).items()}
    sb.set_account("meta", "1", restate=True, faults=[{"kind": "page_error", "page": 2}])
    result = cli("sync-all", "--full")
    assert result.code == 1
    assert sb.count("meta.insights", "1") >= 3, "page 1 was read, page 2 failed"
    assert {k: tuple(r) for k, r in stored(engine, meta).items()} == before
    item = integration(cli, meta)
    assert item["status"] == "error" and item["last_synced_at"] is not None


def test_one_failing_integration_never_stops_the_others(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "2")
    sb = make_sandbox(
        {
            "meta_accounts": {"2": {"faults": [{"kind": "server_error"}]}},
            "google_customers": {"4444444444": {"faults": [{"kind": "not_enabled"}]}},
        }
    )
    ok_meta = add_meta(cli, account="act_1")
    bad_meta = add_meta(cli, account="act_2", token="EAABtoken-2")
    ok_google = add_google(cli, account="3333333333")
    bad_google = add_google(cli, account="4444444444", token="1//r4")
    result = cli("sync-all", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    assert (report["succeeded"], report["failed"]) == (2, 2)
    assert values(stored(engine, ok_meta)) == quantized(expected(sb, "meta", "1"))
    assert values(stored(engine, ok_google)) == quantized(expected(sb, "google", "3333333333"))
    assert stored(engine, bad_meta) == {} and stored(engine, bad_google) == {}
    with engine.connect() as conn:
        run = conn.execute(text("SELECT trigger, pid, status, integrations_total, succeeded, failed, skipped, rows FROM sync_runs")).one()
    assert (run.trigger, run.pid, run.status, run.integrations_total, run.succeeded, run.failed) == ("cron", os.getpid(), "failed", 4, 2, 2)
    assert run.rows == report["rows"] > 0


def test_platform_filter_and_sync_user(cli, make_sandbox):
    sb = make_sandbox()
    add_meta(cli, "anna@example.com", "act_1")
    add_google(cli, "anna@example.com", "1111111111")
    add_meta(cli, "bob@example.com", "act_2", "EAABbob-token")
    assert _json(cli("sync-all", "--platform", "google", "--json"))["due"] == 1
    assert sb.count("meta.insights") == 0
    report = _json(cli("sync-user", "BOB@example.com", "--json"))
    assert [i["account_id"] for i in report["integrations"]] == ["2"]
    with_trigger = _json(cli("status", "--json"))["last_run"]
    assert (with_trigger["trigger"], with_trigger["scope"]) == ("user", "user bob@example.com")


def test_nothing_to_do_is_exit_0(cli, any_db):
    result = cli("sync-all")
    assert result.code == 0 and "Found 0 active integrations" in result.err


def test_disabled_integrations_are_not_synced(cli, make_sandbox):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    cli("integrations", "disable", str(meta))
    assert _json(cli("sync-all", "--json"))["due"] == 0
    assert sb.count() == 0


def test_concurrent_workers_write_exact_rows(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "6")
    sb = make_sandbox(latency_ms=20)
    ids = {}
    for n in range(1, 7):
        ids[("meta", str(n))] = add_meta(cli, account=f"act_{n}", token=f"EAABtoken-{n}")
        ids[("google", f"{n}" * 10)] = add_google(cli, account=f"{n}" * 10, token=f"1//refresh-{n}")
    assert cli("sync-all").code == 0
    for (platform, account), integration_id in ids.items():
        assert values(stored(engine, integration_id)) == quantized(expected(sb, platform, account)), (platform, account)
