"""Many hosts on one PostgreSQL: leases instead of held connections, fencing, freshness, a bounded connection budget,
refused connections, the spread full window, and status at size."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text

from emsync import db
from emsync.sync import full_window_due

from .conftest import TEST_KEY, add_google, add_meta
from .helpers import integration, pg_role, stored, values


def _wait_for(predicate, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _json(result):
    assert result.code in (0, 1), result.err
    return json.loads(result.out)


def _lease(engine, integration_id):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT lease_host, lease_pid, lease_token, lease_until FROM integrations WHERE id = :i"), {"i": integration_id}
        ).one()


def _set_lease(engine, integration_id, *, host, pid, until_sql):
    with engine.begin() as conn:
        conn.execute(
            text(
                f"UPDATE integrations SET lease_host = :h, lease_pid = :p, lease_token = 'someone-else', lease_until = {until_sql} WHERE id = :i"
            ),
            {"h": host, "p": pid, "i": integration_id},
        )


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- leases


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_lease_is_taken_and_released_and_another_hosts_live_lease_is_respected(cli, engine, make_sandbox):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert tuple(_lease(engine, meta)) == (None, None, None, None), "released with the window's commit"

    _set_lease(engine, meta, host="other-host", pid=1, until_sql="now() + interval '1 minute'")
    sb.reset_log()
    result = _json(cli("sync-all", "--json"))
    assert result["integrations"][0]["status"] == "skipped" and "another run" in result["integrations"][0]["error"]
    assert sb.count() == 0, "an integration leased by a live process elsewhere is not fetched"

    _set_lease(engine, meta, host="other-host", pid=1, until_sql="now() - interval '1 second'")
    assert _json(cli("sync-all", "--json"))["integrations"][0]["status"] == "ok", "a dead host's expired lease is taken over"
    assert sb.count("meta.insights", "1") == 1


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_dead_process_on_this_host_delays_nothing(cli, engine, make_sandbox):
    make_sandbox()
    meta = add_meta(cli, account="act_1")
    _set_lease(engine, meta, host=socket.gethostname(), pid=_dead_pid(), until_sql="now() + interval '2 minutes'")
    assert _json(cli("sync-all", "--json"))["integrations"][0]["status"] == "ok"
    assert _lease(engine, meta).lease_token is None


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_window_is_not_written_by_a_process_that_lost_its_lease(cli, engine, db_url, make_sandbox):
    """Fencing: a process paused past its lease (here: the lease is taken from under it) rolls its window back."""
    from emsync.config import load_settings
    from emsync.sync import Syncer, SyncOptions

    sb = make_sandbox({"restate": True})
    meta = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    before = values(stored(engine, meta))
    status_before = integration(cli, meta)

    sb.hold()
    settings = load_settings()
    app_engine = db.engine_for(settings)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=Syncer(settings, app_engine).run(SyncOptions(full=True))))
    runner.start()
    try:
        _wait_for(lambda: _lease(engine, meta).lease_token is not None)
        with engine.begin() as conn:  # another process takes the lease over (as if ours had expired)
            conn.execute(text("UPDATE integrations SET lease_host = 'thief', lease_token = 'stolen' WHERE id = :i"), {"i": meta})
    finally:
        sb.release()
        runner.join(timeout=120)
    app_engine.dispose()
    item = outcome["result"].results[0]
    assert item.status == "error" and "lost the lease" in item.error
    assert values(stored(engine, meta)) == before, "the loser's window (a restated answer) was rolled back"
    after = integration(cli, meta)
    assert (after["status"], after["last_synced_at"]) == (status_before["status"], status_before["last_synced_at"])
    assert _lease(engine, meta).lease_token == "stolen", "the new holder's lease is untouched"
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT count(*) FROM sync_attempts WHERE integration_id = :i"), {"i": meta}).scalar()
    assert attempts == 1, "the loser's attempt row (written in the same statement as its status) was rolled back too"


# ---------------------------------------------------------------- freshness


@pytest.mark.usefixtures("any_db")
def test_freshness_skips_what_another_run_just_synced_unless_asked(cli, make_sandbox, monkeypatch, engine):
    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    add_google(cli, account="1111111111")
    monkeypatch.setenv("EMSYNC_MIN_INTERVAL_MINUTES", "10")
    assert cli("sync-all").code == 0
    sb.reset_log()

    again = _json(cli("sync-all", "--json"))
    assert again["skipped"] == 2 and again["succeeded"] == 0
    assert all("synced recently" in i["error"] for i in again["integrations"])
    assert sb.count() == 0, "a host whose cron fires minutes later repeats nothing"

    for args in (["sync-all", "--force"], ["sync-all", "--full"], ["sync-user", "anna@example.com"]):
        sb.reset_log()
        result = _json(cli(*args, "--json"))
        assert result["succeeded"] == 2, args
        assert sb.count("meta.insights", "1") == 1 and sb.count("google.search_stream", "1111111111") == 1, args

    monkeypatch.setenv("EMSYNC_MIN_INTERVAL_MINUTES", "0")
    assert _json(cli("sync-all", "--json"))["succeeded"] == 2
    with engine.connect() as conn:
        started = conn.execute(text("SELECT last_sync_started_at FROM integrations WHERE id = :i"), {"i": meta}).scalar()
    assert started is not None


@pytest.mark.usefixtures("any_db")
def test_force_also_ignores_the_start_time_rule(cli, make_sandbox, engine):
    make_sandbox()
    meta = add_meta(cli, account="act_1")
    future = datetime.now(UTC) + timedelta(minutes=5)
    with engine.begin() as conn:  # as if another run had attempted it after this run started
        conn.execute(text("UPDATE integrations SET last_attempt_at = :t WHERE id = :i"), {"t": future, "i": meta})
    assert _json(cli("sync-all", "--json"))["integrations"][0]["error"] == "already synced by another run"
    assert _json(cli("sync-all", "--json", "--force"))["integrations"][0]["status"] == "ok"


# ---------------------------------------------------------------- the connection budget


def _emsync_connections(admin_url: str, database: str, stop: threading.Event, seen: list[int]) -> None:
    watcher = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with watcher.connect() as conn:
        while not stop.is_set():
            seen.append(
                conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND application_name = 'emsync'"), {"d": database}
                ).scalar()
            )
            time.sleep(0.01)
    watcher.dispose()


@pytest.mark.parametrize("backend", ["postgres"])
def test_connections_do_not_grow_with_concurrency(cli, db_url, make_sandbox, monkeypatch, pg_server):
    from sqlalchemy.engine import make_url

    make_sandbox({"campaigns": 2}, latency_ms=30)
    for n in range(1, 25):
        add_meta(cli, email="agency@example.com", account=f"act_{n}", token=f"EAABtoken-{n}")
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "32")
    monkeypatch.setenv("EMSYNC_DB_POOL_SIZE", "2")
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_emsync_connections, args=(pg_server[1], make_url(db_url).database, stop, seen))
    watcher.start()
    try:
        result = _json(cli("sync-all", "--json"))
    finally:
        stop.set()
        watcher.join()
    assert result["succeeded"] == 24
    assert max(seen) >= 2, "the watcher saw the run's connections"
    assert max(seen) <= 3, f"pool (2) + 1 for the heartbeat, whatever the concurrency; saw {max(seen)}"


@pytest.fixture
def limited_role(db_url, pg_server):
    """A NOSUPERUSER role with a connection limit (limits do not apply to superusers), owning nothing but allowed everything."""
    with pg_role(pg_server, db_url, "emsync_limited", role_options="CONNECTION LIMIT 2") as role:
        yield role


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_connection_limit_below_the_pool_is_waited_for_not_failed(cli, make_sandbox, monkeypatch, limited_role, caplog):
    """PostgreSQL refusing connections (53300: the role's limit is 2, the pool wants 4 + 1) slows the run; it loses nothing."""
    make_sandbox({"campaigns": 2}, latency_ms=10)
    ids = [add_meta(cli, email="agency@example.com", account=f"act_{n}", token=f"EAABtoken-{n}") for n in range(1, 13)]
    _, url = limited_role
    monkeypatch.setenv("EMSYNC_DATABASE_URL", url)
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "8")
    monkeypatch.setenv("EMSYNC_DB_POOL_SIZE", "4")
    result = _json(cli("sync-all", "--json"))
    assert (result["succeeded"], result["failed"]) == (12, 0), [i["error"] for i in result["integrations"]]
    assert sorted(i["id"] for i in result["integrations"]) == ids


@pytest.mark.parametrize("backend", ["postgres"])
def test_refused_connections_past_the_bound_fail_the_run_and_name_what_was_not_stored(
    cli, engine, make_sandbox, monkeypatch, limited_role, pg_server
):
    from emsync.config import load_settings
    from emsync.sync import Syncer, SyncOptions

    sb = make_sandbox({"campaigns": 2})
    ids = [add_meta(cli, email="agency@example.com", account=f"act_{n}", token=f"EAABtoken-{n}") for n in range(1, 5)]
    assert cli("sync-all").code == 0
    before = {i: values(stored(engine, i)) for i in ids}
    name, url = limited_role
    admin = pg_server[0]
    monkeypatch.setenv("EMSYNC_DATABASE_URL", url)
    monkeypatch.setattr(db, "REFUSAL_RETRY_S", 1.0)
    settings = load_settings()
    app_engine = db.engine_for(settings)

    def reopen_when_every_result_is_in(result):
        finished.append(result)
        if len(finished) == len(ids):  # the database comes back: the run's end can be recorded
            with admin.connect() as conn:
                conn.execute(text(f"ALTER ROLE {name} CONNECTION LIMIT 5"))

    finished: list = []
    syncer = Syncer(settings, app_engine, on_result=reopen_when_every_result_is_in)
    sb.hold()
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=syncer.run(SyncOptions(full=True))))
    runner.start()
    try:
        _wait_for(lambda: all(_lease(engine, i).lease_token is not None for i in ids))
        with admin.connect() as conn:  # a failover, or every slot taken: existing connections die, new ones are refused
            conn.execute(text(f"ALTER ROLE {name} CONNECTION LIMIT 0"))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :n"), {"n": name})
    finally:
        sb.release()
        runner.join(timeout=180)
    app_engine.dispose()
    run = outcome["result"]
    assert run.failed == len(ids) and run.succeeded == 0
    assert all("could not store" in r.error or "database error" in r.error for r in run.results), [r.error for r in run.results]
    assert {i: values(stored(engine, i)) for i in ids} == before, "nothing half-written"
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM sync_runs WHERE id = :r"), {"r": run.run_id}).scalar()
    assert status == "failed", "never ok"


# ---------------------------------------------------------------- the daily full window, spread


def test_the_full_window_falls_at_each_integrations_own_time_of_day():
    start = datetime(2026, 11, 30, tzinfo=UTC)
    period_hours = 24
    last_full: dict[int, datetime | None] = {i: None for i in range(1, 401)}
    fulls_per_slot = [0] * 48
    fulls_per_integration = dict.fromkeys(last_full, 0)
    for step in range(48 * 4):  # four simulated days of */30 runs
        now = start + timedelta(minutes=30 * step)
        for i in last_full:
            if full_window_due(i, last_full[i], period_hours, now):
                last_full[i] = now
                fulls_per_integration[i] += 1
                if step >= 48:
                    fulls_per_slot[step % 48] += 1
    assert all(3 <= n <= 5 for n in fulls_per_integration.values()), "once a day (plus the first sync)"
    assert max(fulls_per_slot) <= 3 * (sum(fulls_per_slot) / 48), f"spread over the day, not all at once: {fulls_per_slot}"
    assert min(fulls_per_slot) > 0


def test_full_window_due_is_never_twice_within_half_a_period():
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    for i in range(1, 200):
        assert not full_window_due(i, now - timedelta(minutes=30), 24, now)
    assert full_window_due(7, None, 24, now) and full_window_due(7, now, 0, now)


# ---------------------------------------------------------------- status at size, ids


@pytest.mark.usefixtures("any_db")
def test_status_summarises_a_large_installation_and_all_shows_everything(cli, engine, monkeypatch):
    from emsync import store
    from emsync.crypto import TokenBox

    box = TokenBox(TEST_KEY)
    with db.write_transaction(engine) as conn:
        store.add_user(conn, "agency@example.com")
        for n in range(1, 251):
            store.add_integration(conn, box, email="agency@example.com", platform="meta", account_id=str(n), access_token=f"EAAB{n:06d}")
        conn.execute(text("UPDATE integrations SET status = 'error', last_error = 'boom' WHERE id = 7"))
        today = datetime.now(UTC).date()
        for integration_id, days in ((7, 3), (8, 2)):
            for day in range(days):
                conn.execute(
                    text(
                        "INSERT INTO campaign_metrics (integration_id, campaign_id, date, spend, impressions, clicks, conversions, "
                        "revenue, synced_at) VALUES (:i, 'c1', :d, 1, 1, 1, 0, 0, :now)"
                    ),
                    {"i": integration_id, "d": today - timedelta(days=day), "now": datetime.now(UTC)},
                )
    summary = cli("status")
    assert summary.code == 0
    assert "250 integrations" in summary.out and "act_7" in summary.out and "boom" in summary.out
    assert "act_8 " not in summary.out and "--all" in summary.out, "the healthy ones are counted, not listed"
    everything = cli("status", "--all")
    assert "act_8" in everything.out and "act_250" in everything.out
    report = json.loads(cli("status", "--json").out)
    assert len(report["integrations"]) == 250
    in_window = {i["id"]: i["rows_in_window"] for i in report["integrations"]}
    assert (in_window[7], in_window[8], in_window[9]) == (3, 2, 0), "--json counts every integration's rows"
    listed = next(line for line in summary.out.splitlines() if "act_7" in line)
    assert " 3 " in f"{listed} ", "the summary counts the rows of the integrations it lists"


@pytest.mark.parametrize("backend", ["postgres"])
def test_run_and_attempt_ids_are_64_bit(engine):
    with engine.connect() as conn:
        kinds = dict(
            conn.execute(
                text(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE (table_name, column_name) IN (('sync_runs', 'id'), ('sync_attempts', 'id'), ('sync_attempts', 'run_id'))"
                )
            ).all()
        )
    assert kinds == {"sync_runs.id": "bigint", "sync_attempts.id": "bigint", "sync_attempts.run_id": "bigint"}
    with engine.begin() as conn:
        conn.execute(text("SELECT setval('sync_runs_id_seq', 3000000000)"))
        conn.execute(
            text(
                "INSERT INTO sync_runs (trigger, host, pid, full_window, started_at, heartbeat_at, status, integrations_total, "
                "succeeded, failed, skipped, rows) VALUES ('cron', 'h', 1, false, now(), now(), 'ok', 0, 0, 0, 0, 0)"
            )
        )
        assert conn.execute(text("SELECT max(id) FROM sync_runs")).scalar() > 2**31


def test_the_pools_own_info_lines_stay_out_of_emsyncs_log(pg_server, caplog):
    """SQLAlchemy logs a pool's life under its class's module, emsync.db: "Pool disposed" is not the user's business."""
    _admin, url, _template = pg_server
    engine = db.make_engine(url)
    with caplog.at_level("INFO", logger="emsync"):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("emsync.db")] == []
