"""Operating it for a year: skipped integrations and why, the Prometheus metrics file, bounded run history."""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from .conftest import add_google, add_meta
from .test_server import serve  # noqa: F401  (the fixture: `emsync serve` on a loopback port)

pytestmark = pytest.mark.usefixtures("any_db")


def _set(engine, integration_id: int, **values):
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE integrations SET {assignments} WHERE id = :id"), {"id": integration_id, **values})


# ---------------------------------------------------------------- skipped integrations and why


def test_a_run_reports_what_it_skipped_and_why(cli, engine, make_sandbox):
    sb = make_sandbox()
    healthy = add_meta(cli, account="act_1")
    limited = add_meta(cli, account="act_2", token="EAABtoken-two")
    reauth = add_google(cli, account="1111111111")
    until = datetime.now(UTC) + timedelta(hours=2)
    _set(engine, limited, status="rate_limited", rate_limited_until=until, last_error="Meta error 17")
    _set(engine, reauth, status="needs_reauth", last_error="Google invalid_grant")

    result = cli("sync-all", "--json")
    assert result.code == 0, "waiting for a rate limit or for new credentials is not a failure of this run"
    report = json.loads(result.out)
    assert (report["succeeded"], report["skipped"], report["skipped_by_reason"]) == (1, 2, {"rate_limited": 1, "needs_reauth": 1})
    items = {i["id"]: i for i in report["integrations"]}
    assert items[healthy]["status"] == "ok" and items[healthy]["skip_reason"] is None
    assert items[limited]["status"] == "skipped" and items[limited]["skip_reason"] == "rate_limited"
    assert items[limited]["error"] == f"rate_limited until {until:%Y-%m-%d %H:%M} UTC"
    assert abs(datetime.fromisoformat(items[limited]["retry_at"]) - until) < timedelta(seconds=1)
    assert items[reauth]["skip_reason"] == "needs_reauth" and f"emsync integrations update {reauth}" in items[reauth]["error"]
    assert sb.count(account="2") == 0 and sb.count(account="1111111111") == 0
    with engine.connect() as conn:
        run = conn.execute(text("SELECT integrations_total, succeeded, failed, skipped FROM sync_runs ORDER BY id DESC")).first()
    assert tuple(run) == (3, 1, 0, 2)

    plain = cli("sync-all")
    assert f"Skipping meta for anna@example.com (act_2): rate_limited until {until:%Y-%m-%d %H:%M} UTC" in plain.err
    assert "Skipping google for anna@example.com (111-111-1111): needs_reauth" in plain.err
    assert "1 success, 0 failed, 2 skipped (1 rate_limited, 1 needs_reauth)" in plain.err


def test_sync_user_with_only_a_skipped_integration_says_so(cli, engine, make_sandbox):
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    google = add_google(cli, account="1111111111")
    until = datetime.now(UTC) + timedelta(hours=5)
    _set(engine, google, status="rate_limited", rate_limited_until=until, last_error="RESOURCE_EXHAUSTED")
    result = cli("sync-user", "anna@example.com", "--platform", "google")
    assert result.code == 0
    assert f"Skipping google for anna@example.com (111-111-1111): rate_limited until {until:%Y-%m-%d %H:%M} UTC" in result.err
    assert "0 success, 0 failed, 1 skipped (1 rate_limited)" in result.err
    assert "Found 1 active integration for anna@example.com" in result.err, "the held-back one is counted, not 'Found 0'"
    report = json.loads(cli("sync-user", "anna@example.com", "--platform", "google", "--json").out)
    assert [(i["id"], i["status"], i["skip_reason"]) for i in report["integrations"]] == [(google, "skipped", "rate_limited")]
    assert sb.count() == 0


def test_a_closed_account_waiting_for_its_daily_attempt_is_reported(cli, engine, make_sandbox):
    make_sandbox()
    closed = add_meta(cli, account="act_1")
    _set(engine, closed, status="error", next_attempt_at=datetime.now(UTC) + timedelta(hours=20), last_error="closed at Meta")
    report = json.loads(cli("sync-all", "--json").out)
    assert report["skipped_by_reason"] == {"closed_upstream": 1}
    assert report["integrations"][0]["error"].startswith("account closed or disabled upstream; next attempt ")


# ---------------------------------------------------------------- the metrics file


def _families(path) -> dict:
    return {f.name: f for f in text_string_to_metric_families(path.read_text())}


def _by_id(family, **match) -> dict:
    return {int(s.labels["id"]): s.value for s in family.samples if all(s.labels.get(k) == v for k, v in match.items())}


def test_metrics_file_after_each_run_from_the_database(cli, engine, make_sandbox, monkeypatch, tmp_path):
    make_sandbox({"meta_accounts": {"2": {"faults": [{"kind": "token_expired"}]}}})
    target = tmp_path / "textfile" / "emsync.prom"
    target.parent.mkdir()
    monkeypatch.setenv("EMSYNC_METRICS_FILE", str(target))
    anna = add_meta(cli, account="act_1")
    bob = add_meta(cli, "bob@example.com", "act_2", "EAABbob")
    google = add_google(cli, "bob@example.com", "1111111111")
    old_umask = os.umask(0o077)  # emsync's own files are private; this one is read by node_exporter
    try:
        assert cli("sync-all").code == 1
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["emsync.prom"], "no temporary file left beside it"
    families = _families(target)
    with engine.connect() as conn:
        attempts = {
            r.integration_id: r
            for r in conn.execute(text("SELECT integration_id, rows, api_requests, duration_s FROM sync_attempts ORDER BY id"))
        }
        synced = conn.execute(text("SELECT last_synced_at FROM integrations WHERE id = :i"), {"i": anna}).scalar()
    assert _by_id(families["emsync_integration_last_rows"]) == {i: float(a.rows) for i, a in attempts.items()}
    assert _by_id(families["emsync_integration_last_api_requests"]) == {i: float(a.api_requests) for i, a in attempts.items()}
    assert _by_id(families["emsync_integration_last_duration_seconds"]) == pytest.approx({i: a.duration_s for i, a in attempts.items()})
    success = _by_id(families["emsync_integration_last_success_timestamp_seconds"])
    synced_at = synced if isinstance(synced, datetime) else datetime.fromisoformat(synced)
    assert success[anna] == pytest.approx(synced_at.timestamp()) and success[bob] == 0.0
    assert _by_id(families["emsync_integration_status"], status="needs_reauth") == {anna: 0.0, bob: 1.0, google: 0.0}
    assert _by_id(families["emsync_integration_status"], status="ok") == {anna: 1.0, bob: 0.0, google: 1.0}
    run = {s.labels["result"]: s.value for s in families["emsync_last_run_integrations"].samples}
    assert run == {"total": 3.0, "succeeded": 2.0, "failed": 1.0, "skipped": 0.0}
    assert {s.labels["status"]: s.value for s in families["emsync_last_run_status"].samples}["failed"] == 1.0
    assert families["emsync_last_run_rows"].samples[0].value == float(sum(a.rows for a in attempts.values()))

    # A sync-user touches one user's integrations; the file still has every active integration's series.
    cli("integrations", "disable", str(google))
    assert cli("sync-user", "anna@example.com").code == 0
    families = _families(target)
    assert set(_by_id(families["emsync_integration_last_rows"])) == {anna, bob}, "from the database, not the run; disabled ones left out"
    run = {s.labels["result"]: s.value for s in families["emsync_last_run_integrations"].samples}
    assert run == {"total": 1.0, "succeeded": 1.0, "failed": 0.0, "skipped": 0.0}


def test_a_metrics_file_that_cannot_be_written_never_fails_the_run(cli, make_sandbox, monkeypatch, tmp_path, caplog):
    make_sandbox()
    monkeypatch.setenv("EMSYNC_METRICS_FILE", str(tmp_path / "no-such-dir" / "emsync.prom"))
    add_meta(cli, account="act_1")
    with caplog.at_level(logging.WARNING, logger="emsync"):
        result = cli("sync-all")
    assert result.code == 0
    assert "could not write EMSYNC_METRICS_FILE" in result.err and "No such file or directory" in result.err


# ---------------------------------------------------------------- history


def _old_history(engine, integration_id: int, *, runs: int, days_ago: float, attempts_per_run: int = 3) -> list[int]:
    ids = []
    with engine.begin() as conn:
        for n in range(runs):
            started = datetime.now(UTC) - timedelta(days=days_ago, minutes=n)
            run_id = conn.execute(
                text(
                    "INSERT INTO sync_runs (trigger, host, pid, full_window, started_at, heartbeat_at, finished_at, status, "
                    "integrations_total, succeeded, failed, skipped, rows) VALUES ('cron', 'h', 1, false, :s, :s, :s, 'ok', 1, 1, 0, 0, 5) "
                    "RETURNING id"
                ),
                {"s": started},
            ).scalar()
            for _ in range(attempts_per_run):
                conn.execute(
                    text(
                        "INSERT INTO sync_attempts (run_id, integration_id, full_window, started_at, finished_at, status, rows, "
                        "api_requests, duration_s) VALUES (:r, :i, false, :s, :s, 'ok', 5, 1, 0.5)"
                    ),
                    {"r": run_id, "i": integration_id, "s": started},
                )
            ids.append(run_id)
    return ids


def _history(engine) -> tuple[set[int], int]:
    with engine.connect() as conn:
        runs = {r for (r,) in conn.execute(text("SELECT id FROM sync_runs"))}
        attempts = conn.execute(text("SELECT count(*) FROM sync_attempts")).scalar()
    return runs, attempts


@pytest.mark.parametrize("limit, value", [("RUNS_PER_BATCH", 2), ("ATTEMPTS_PER_BATCH", 1)])
def test_sync_all_prunes_history_older_than_history_days_in_batches(cli, engine, make_sandbox, monkeypatch, limit, value):
    from emsync import history, runs

    monkeypatch.setattr(history, limit, value)  # 5 old runs: three batches of two runs, or five of one
    batches = []
    prune_batch = runs.prune_batch
    monkeypatch.setattr(runs, "prune_batch", lambda conn, **kw: batches.append(prune_batch(conn, **kw)) or batches[-1])
    make_sandbox()
    integration_id = add_meta(cli, account="act_1")
    old = _old_history(engine, integration_id, runs=5, days_ago=91)
    kept = _old_history(engine, integration_id, runs=2, days_ago=89)
    assert cli("sync-user", "anna@example.com").code == 0
    runs, _ = _history(engine)
    assert set(old) <= runs, "only sync-all prunes"
    result = cli("sync-all")
    assert result.code == 0 and "Pruned 5 runs and 15 attempts older than 90 days" in result.err
    runs, attempts = _history(engine)
    assert not set(old) & runs and set(kept) <= runs and len(runs) == 4, "the kept ones, the sync-user and the sync-all"
    assert attempts == 2 * 3 + 2
    expected = [(2, 6), (2, 6), (1, 3)] if limit == "RUNS_PER_BATCH" else [(1, 3)] * 5
    assert batches[: len(expected)] == expected and batches[len(expected)] == (0, 0)
    monkeypatch.setenv("EMSYNC_HISTORY_DAYS", "30")
    assert cli("sync-all").code == 0
    assert not set(kept) & _history(engine)[0]


def test_history_days_zero_keeps_everything(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_HISTORY_DAYS", "0")
    make_sandbox()
    integration_id = add_meta(cli, account="act_1")
    old = _old_history(engine, integration_id, runs=2, days_ago=400)
    assert cli("sync-all").code == 0
    assert set(old) <= _history(engine)[0]


def test_pruning_that_fails_is_logged_and_never_fails_the_sync(cli, engine, make_sandbox, monkeypatch):
    from emsync import runs

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runs, "prune_batch", broken)
    make_sandbox()
    integration_id = add_meta(cli, account="act_1")
    old = _old_history(engine, integration_id, runs=2, days_ago=100)
    result = cli("sync-all")
    assert (
        result.code == 0
        and "could not prune run history older than 90 days (EMSYNC_HISTORY_DAYS): RuntimeError: disk on fire" in result.err
    )
    assert set(old) <= _history(engine)[0]
    assert json.loads(cli("status", "--json").out)["last_run"]["status"] == "ok"


def test_pruning_reads_runs_and_attempts_through_indexes(sq_engine):
    from emsync import runs

    query = runs.prune_candidates(datetime.now(UTC), 20).compile(sq_engine, compile_kwargs={"literal_binds": True})
    with sq_engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {query}")))
        delete_plan = " ".join(
            str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN DELETE FROM sync_attempts WHERE run_id IN (1, 2)"))
        )
    assert "ix_sync_runs_started_at" in plan, plan
    assert "ix_sync_attempts_run_id" in delete_plan, delete_plan


def test_history_bench_runs_and_finds_every_plan_indexed(tmp_path):
    import subprocess
    import sys

    from .conftest import ROOT

    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "history_bench.py"), "--db", "sqlite", "--integrations", "10", "--runs", "300"]
        + ["--no-save", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert (report["attempts"], report["runs_left"] + report["pruned_runs"]) == (3000, 300)
    assert report["attempts_left"] == 10 * report["runs_left"] and report["every_plan_uses_an_index"]
    statements = " ".join(p["statement"] for p in report["plans"])
    assert "DELETE FROM sync_attempts" in statements and "sync_runs.started_at <" in statements


def test_runs_started_by_serve_write_the_metrics_file(cli, make_sandbox, monkeypatch, tmp_path, request):
    import time

    import requests

    from .test_server import AUTH

    make_sandbox()
    target = tmp_path / "emsync.prom"
    monkeypatch.setenv("EMSYNC_METRICS_FILE", str(target))
    integration_id = add_meta(cli, account="act_1")
    url = request.getfixturevalue("serve")()
    assert requests.post(f"{url}/api/cron/sync-all", headers=AUTH, timeout=5).status_code == 202
    deadline = time.monotonic() + 60
    while not target.exists() and time.monotonic() < deadline:  # written after the run's record: wait for it
        time.sleep(0.05)
    success = _by_id(_families(target)["emsync_integration_last_success_timestamp_seconds"])
    assert set(success) == {integration_id} and success[integration_id] > 0
