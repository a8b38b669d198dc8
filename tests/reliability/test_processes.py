"""Several processes and crashes: overlapping runs, kill -9 at random moments, the database going away mid-run."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import pytest
from sqlalchemy import create_engine, text

from ..conftest import add_google, add_meta
from ..helpers import expected, integration, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")


def _wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def _runs_started(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM sync_runs")).scalar()


def _one_of_the_versions(sb, engine, integration_id: int, platform: str, account: str, versions=range(0, 12)) -> bool:
    """The window is entirely one answer of the API: never half old, half new."""
    now = values(stored(engine, integration_id))
    return any(now == quantized(expected(sb, platform, account, version=v)) for v in versions)


@pytest.mark.parametrize("processes", [2, 4])
def test_overlapping_runs_fetch_each_integration_exactly_once(cli, engine, make_sandbox, spawn, monkeypatch, processes):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "2")
    sb = make_sandbox(latency_ms=40)
    ids = [add_meta(cli, account=f"act_{n}", token=f"EAABtoken-{n}") for n in range(1, 7)]
    ids += [add_google(cli, account=f"{n}" * 10, token=f"1//refresh-{n}") for n in range(1, 5)]
    sb.hold()  # "started together": every run records its start before any integration can finish
    procs = [spawn("sync-all") for _ in range(processes)]
    _wait_for(lambda: _runs_started(engine) == processes, seconds=60)
    sb.release()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, outputs
    for n in range(1, 7):
        assert sb.count("meta.insights", str(n)) == 1, f"act_{n} fetched more than once"
    for n in range(1, 5):
        assert sb.count("google.search_stream", f"{n}" * 10) == 2, "customer query + metrics query, once"
    assert sb.count("google.token") == 4
    assert all(integration(cli, i)["status"] == "ok" for i in ids)
    with engine.connect() as conn:
        attempts = conn.execute(text("SELECT integration_id, count(*) FROM sync_attempts GROUP BY integration_id")).all()
        runs = conn.execute(text("SELECT succeeded, skipped FROM sync_runs")).all()
    assert sorted(n for _, n in attempts) == [1] * len(ids)
    assert sum(r.succeeded for r in runs) == len(ids)
    assert sum(r.skipped for r in runs) == len(ids) * (processes - 1)
    for n, integration_id in enumerate(ids[:6], start=1):
        assert values(stored(engine, integration_id)) == quantized(expected(sb, "meta", str(n)))


def test_cron_and_sync_user_at_once_share_the_work(cli, engine, make_sandbox, spawn):
    sb = make_sandbox(latency_ms=40)
    add_meta(cli, "anna@example.com", "act_1")
    add_meta(cli, "anna@example.com", "act_2", "EAABtoken-2")
    add_meta(cli, "bob@example.com", "act_3", "EAABtoken-3")
    sb.hold()
    procs = [spawn("sync-all"), spawn("sync-user", "anna@example.com")]
    _wait_for(lambda: _runs_started(engine) == 2, seconds=60)
    sb.release()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert [sb.count("meta.insights", str(n)) for n in (1, 2, 3)] == [1, 1, 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_moments_leaves_a_consistent_database(cli, engine, make_sandbox, spawn, monkeypatch, seed):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "3")
    rng = random.Random(seed)
    accounts = [str(n) for n in range(1, 9)]
    sb = make_sandbox({"restate": True, "meta_accounts": {a: {"campaigns": 20} for a in accounts}}, latency_ms=60)
    ids = dict(zip(accounts, (add_meta(cli, account=f"act_{a}", token=f"EAABtoken-{a}") for a in accounts), strict=True))
    assert cli("sync-all").code == 0  # a baseline, so the killed run has old rows to leave alone
    victims = []
    for _ in range(2):
        victim = spawn("sync-all", "--full")
        victims.append(victim.pid)
        time.sleep(rng.uniform(0.3, 1.6))  # somewhere during start-up, fetching or writing
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        for account, integration_id in ids.items():
            assert _one_of_the_versions(sb, engine, integration_id, "meta", account), f"act_{account} holds a half-written window"
    result = cli("sync-all", "--full", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert (report["succeeded"], report["skipped"]) == (len(ids), 0), "nothing may be held by a dead run"
    for account, integration_id in ids.items():
        assert _one_of_the_versions(sb, engine, integration_id, "meta", account)
    runs = json.loads(cli("status", "--json").out)["runs"]
    assert "running" not in [r["status"] for r in runs]
    for run in runs:
        if run["pid"] in victims:  # killed before it recorded a run: no row at all, also fine
            assert run["status"] in ("died", "ok"), run


def test_database_connections_killed_mid_run(cli, engine, make_sandbox, spawn, backend, db_url, monkeypatch):
    if backend != "postgres":
        pytest.skip("SQLite is a local file: there is no server connection to lose")
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "2")
    accounts = [str(n) for n in range(1, 7)]
    sb = make_sandbox({"restate": True, "meta_accounts": {a: {"campaigns": 20} for a in accounts}}, latency_ms=40)
    ids = dict(zip(accounts, (add_meta(cli, account=f"act_{a}", token=f"EAABtoken-{a}") for a in accounts), strict=True))
    assert cli("sync-all").code == 0
    killer_engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    stop = threading.Event()

    def kill_connections():
        with killer_engine.connect() as conn:
            while not stop.is_set():
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
                time.sleep(0.03)

    sb.reset_log()
    victim = spawn("sync-all", "--full")
    _wait_for(lambda: sb.count() >= 2)
    killer = threading.Thread(target=kill_connections)
    killer.start()
    try:
        _, err = victim.communicate(timeout=120)
    finally:
        stop.set()
        killer.join()
        killer_engine.dispose()
    engine.dispose()  # our own pooled connections were terminated too
    assert victim.returncode in (1, 2), err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and ("database error" in last or "Sync completed" in last), last
    for account, integration_id in ids.items():
        assert _one_of_the_versions(sb, engine, integration_id, "meta", account), f"act_{account} holds a half-written window"
    result = cli("sync-all", "--full")
    assert result.code == 0, result.err
    assert all(integration(cli, i)["status"] == "ok" for i in ids.values())
