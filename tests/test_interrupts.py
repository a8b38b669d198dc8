"""Interrupts and failed runs: Ctrl-C and SIGTERM mid-run, a second Ctrl-C, database errors, a closed stdout pipe,
and `emsync serve` on a busy address, in JSON logs and on SIGTERM. Real processes, real sockets, real databases."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import bindparam, event, text
from sqlalchemy.exc import DBAPIError

from emsync import db
from emsync.config import load_settings
from emsync.sync import Syncer, SyncOptions

from .conftest import add_meta

SECRET = "s3cret-" + "y" * 40
LINE = re.compile(r"interrupted: \d+ finished, .*not started.*; previous rows kept")


def _wait_for(predicate, seconds: float = 90.0, why: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{why} not reached in time")
        time.sleep(0.02)


def _rows(engine, ids) -> list[tuple]:
    """Every stored row of these integrations, with its values and when it was written."""
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT integration_id, campaign_id, date, spend, impressions, clicks, synced_at FROM campaign_metrics "
                "WHERE integration_id IN :ids ORDER BY integration_id, campaign_id, date"
            ).bindparams(_expanding("ids")),
            {"ids": list(ids)},
        ).all()
    return [tuple(r) for r in found]


def _expanding(name: str):
    return bindparam(name, expanding=True)


def _one(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).one()


def _scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def _last_run(engine):
    return _one(engine, "SELECT id, status, integrations_total, succeeded, failed, skipped FROM sync_runs ORDER BY id DESC LIMIT 1")


def _six_integrations(cli) -> list[int]:
    return [add_meta(cli, "anna@example.com", f"act_{n}", f"EAABtoken-interrupt-{n}") for n in range(1, 7)]


def _days_ago(days: int):
    return datetime.now(UTC).date() - timedelta(days=days)


# ---------------------------------------------------------------- a signal during a run


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_aborts_the_fetches_keeps_what_finished_and_records_the_run_as_interrupted(
    cli, engine, make_sandbox, spawn, sig, code
):
    sb = make_sandbox({"restate": True})  # every answer differs from the last: a rewrite would show
    ids = _six_integrations(cli)
    assert cli("sync-all").code == 0
    with engine.begin() as conn:  # the first two sync their recent days; the others their whole window, which is held
        conn.execute(
            text("UPDATE integrations SET last_full_sync_at = NULL WHERE id IN :ids").bindparams(_expanding("ids")), {"ids": ids[2:]}
        )
    before = _rows(engine, ids[2:])
    states = {i: _one(engine, "SELECT status, last_attempt_at, last_synced_at FROM integrations WHERE id = :i", i=i) for i in ids}
    sb.reset_log()
    sb.hold_dates(_days_ago(10))  # never released while the process lives: only an abort ends those fetches
    try:
        proc = spawn("sync-all", env={"EMSYNC_CONCURRENCY": "2"})
        _wait_for(lambda: sb.held == 2, why="two whole-window fetches in flight")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        sb.release_dates()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if LINE.search(line)]
    assert len(lines) == 1, err
    assert lines[0].endswith("interrupted: 2 finished, 2 stopped mid-fetch, 2 not started; previous rows kept"), lines
    run = _last_run(engine)
    assert (run.status, run.integrations_total, run.succeeded, run.failed, run.skipped) == ("interrupted", 6, 2, 0, 0)
    attempted = _scalar(engine, "SELECT count(DISTINCT integration_id) FROM sync_attempts WHERE run_id = :r", r=run.id)
    assert attempted == 2, "only the finished ones have an attempt record"
    assert _rows(engine, ids[2:]) == before, "the stopped and the never-started integrations keep their previous rows exactly"
    for i in ids[2:]:
        assert _one(engine, "SELECT status, last_attempt_at, last_synced_at FROM integrations WHERE id = :i", i=i) == states[i]
    assert sb.count("meta.insights", "5") == sb.count("meta.insights", "6") == 0, "no integration starts after the signal"
    if engine.dialect.name == "postgresql":
        leased = _scalar(engine, "SELECT count(*) FROM integrations WHERE lease_token IS NOT NULL")
        assert leased == 0, "the run released every lease it took"
    again = cli("sync-all", "--json")
    assert again.code == 0, again.err
    assert [r["status"] for r in json.loads(again.out)["integrations"]] == ["ok"] * 6, "nothing blocks the next run"


def test_a_meta_async_report_being_polled_is_abandoned_at_once_on_sigterm(cli, make_sandbox, spawn, sq_engine):
    sb = make_sandbox({"async_polls": 1_000_000, "meta_accounts": {"1": {"faults": [{"kind": "reduce_data"}]}}})
    add_meta(cli, account="act_1")
    proc = spawn("sync-all", "--json")
    _wait_for(lambda: sb.count("meta.report_status", "1") >= 2, why="the report being polled")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)  # the polling alone would go on for 15 minutes
    assert proc.returncode == 143, err
    report = json.loads(out)
    assert report["status"] == "interrupted" and report["interrupted"]
    assert [(r["status"], r["rows"]) for r in report["integrations"]] == [("interrupted", 0)]
    assert "interrupted: 0 finished, 1 stopped mid-fetch, 0 not started; previous rows kept" in err
    assert _last_run(sq_engine).status == "interrupted"
    assert _scalar(sq_engine, "SELECT count(*) FROM campaign_metrics") == 0
    assert _scalar(sq_engine, "SELECT status FROM integrations") == "never_synced", "an interrupt is no failure of the integration"


def test_quiet_prints_only_the_interrupted_line(cli, make_sandbox, spawn, sqlite_url):
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    sb.hold()
    try:
        proc = spawn("sync-all", "--quiet")
        _wait_for(lambda: sb.waiting >= 1, why="a request in flight")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        sb.release()
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if not line.startswith("emsync: stopping")]
    assert lines == ["interrupted: 0 finished, 1 stopped mid-fetch, 0 not started; previous rows kept"], err
    assert out == ""


def test_a_second_ctrl_c_exits_at_once_without_a_traceback(cli, make_sandbox, spawn, sqlite_url, sq_engine):
    """The first Ctrl-C waits for the run's end to be written; a second one does not wait (here the database is
    locked by another process, so the first could not finish before it)."""
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    sb.hold()
    blocker = sqlite3.connect(str(db.sqlite_path(sqlite_url)), isolation_level=None)
    try:
        proc = spawn("sync-all", env={"EMSYNC_LOG_FORMAT": "text"})
        _wait_for(lambda: sb.waiting >= 1, why="a request in flight")
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's write lock: the run's end must wait
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("emsync: stopping"):
                break
        proc.send_signal(signal.SIGINT)
        out, rest = proc.communicate(timeout=120)  # a bound, not the evidence: the message and the run row are
        assert proc.returncode == 130
        assert "emsync: stopped at once" in rest
        assert "Traceback" not in rest and not LINE.search(rest), "nothing more is done or printed"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        sb.release()
    assert _last_run(sq_engine).status == "running", "the run's end was never written (a later run calls it died)"


def test_backfill_aborts_the_chunk_in_flight_at_once_on_sigterm(cli, make_sandbox, spawn, sq_engine):
    from emsync.backfill.plan import add_months

    sb = make_sandbox()
    meta = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    today = datetime.now(UTC).date()
    sb.hold_dates(add_months(today, -2))
    try:
        proc = spawn("backfill", "--since", add_months(today, -4).isoformat(), "--json", env={"EMSYNC_HTTP_TIMEOUT": "600"})
        _wait_for(lambda: sb.held == 1, why="a chunk in flight")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # the held request alone would last two minutes
    finally:
        sb.release_dates()
    assert proc.returncode == 143, err
    item = json.loads(out)["integrations"][0]
    assert item["id"] == meta and item["status"] == "interrupted"
    held_since = _scalar(sq_engine, "SELECT min(since) FROM backfill_chunks WHERE status = 'pending' AND integration_id = :i", i=meta)
    assert held_since is not None and str(held_since) < add_months(today, -2).isoformat(), "the chunk in flight was given back"
    lease = _one(sq_engine, "SELECT lease_token, last_error FROM backfill_chunks WHERE since = :s", s=held_since)
    assert lease == (None, None), "released unwritten, without an error: an interrupt is no failure"


# ---------------------------------------------------------------- database errors


@pytest.mark.parametrize("backend", ["postgres"])
def test_a_database_connection_lost_mid_run_records_the_run_failed_never_ok(cli, engine, db_url, make_sandbox, pg_server):
    make_sandbox()
    add_meta(cli, account="act_1")
    settings = load_settings()
    app_engine = db.engine_for(settings)
    try:
        syncer = Syncer(settings, app_engine)
        opened = syncer.open_run(SyncOptions())
        with pg_server[0].connect() as conn:  # a database restart between two steps of the run
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND application_name = 'emsync'"),
                {"d": engine.url.database},
            )
        with pytest.raises(DBAPIError) as raised:
            syncer.run(SyncOptions(), opened)
    finally:
        app_engine.dispose()
    assert "database connection lost" in db.describe_error(raised.value)
    assert "OperationalError" not in db.describe_error(raised.value)
    status = _scalar(engine, "SELECT status FROM sync_runs WHERE id = :r", r=opened.run_id)
    assert status == "failed", "a run that broke off is never ok"


def test_a_full_disk_is_said_in_words_and_the_run_is_failed(cli, make_sandbox, sqlite_url, sq_engine):
    make_sandbox()
    meta = add_meta(cli, account="act_1")
    settings = load_settings()
    app_engine = db.engine_for(settings)

    @event.listens_for(app_engine, "connect")
    def _no_room(dbapi_conn, _record):  # the file may not grow: SQLite answers "database or disk is full"
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

    try:
        result = Syncer(settings, app_engine).run(SyncOptions())
    finally:
        app_engine.dispose()
    item = result.results[0]
    assert item.integration_id == meta and item.status == "error"
    assert "disk full" in item.error and "OperationalError" not in item.error, item.error
    assert "previous rows kept" in item.error
    assert _scalar(sq_engine, "SELECT status FROM sync_runs WHERE id = :r", r=result.run_id) == "failed"
    assert _scalar(sq_engine, "SELECT count(*) FROM campaign_metrics") == 0


@pytest.mark.parametrize(
    "message, words",
    [
        ("(sqlite3.OperationalError) database or disk is full", "disk full (database or disk is full)"),
        ("(psycopg.OperationalError) server closed the connection unexpectedly", "database connection lost"),
        ("(psycopg.errors.AdminShutdown) terminating connection due to administrator command", "database connection lost"),
        ("(sqlite3.OperationalError) database is locked", "the database stayed locked by another process"),
    ],
)
def test_database_errors_are_described_in_words_without_the_driver_class(message, words):
    from sqlalchemy.exc import OperationalError

    described = db.describe_error(OperationalError("UPDATE sync_runs SET ...", {}, Exception(message.split(") ", 1)[1])))
    assert described.startswith(words) and "Error" not in described and "UPDATE" not in described, described


# ---------------------------------------------------------------- a reader that goes away


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("users", "list"), ("integrations", "list", "--json"), ("--help",), ("secret",)],
)
def test_a_closed_stdout_pipe_ends_quietly_with_exit_0(cli, sqlite_url, args):
    add_meta(cli, account="act_1")
    read_end, write_end = os.pipe()
    os.close(read_end)  # `emsync status | head` after head has gone
    try:
        proc = subprocess.run([sys.executable, "-m", "emsync", *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


# ---------------------------------------------------------------- serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_on_a_busy_port_says_so_and_exits_2(cli, sqlite_url, monkeypatch):
    monkeypatch.setenv("CRON_SECRET", SECRET)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "emsync", "serve", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == f"emsync: cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_serve_on_an_address_of_no_interface_says_so_and_exits_2(cli, sqlite_url, monkeypatch):
    monkeypatch.setenv("CRON_SECRET", SECRET)
    proc = subprocess.run(
        [sys.executable, "-m", "emsync", "serve", "--host", "192.0.2.1", "--port", "8787"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr == "emsync: cannot listen on 192.0.2.1:8787: cannot assign requested address\n"
    assert "listening" not in proc.stdout


def test_with_json_logs_every_line_of_an_interrupted_run_is_json_and_the_metrics_file_says_interrupted(
    cli, engine, make_sandbox, spawn, tmp_path
):
    sb = make_sandbox()
    add_meta(cli, "anna@example.com", "act_1", "EAABtoken-json-1")
    metrics_file = tmp_path / "emsync.prom"
    sb.hold_dates(_days_ago(10))
    try:
        proc = spawn("sync-all", env={"EMSYNC_LOG_FORMAT": "json", "EMSYNC_METRICS_FILE": str(metrics_file)})
        _wait_for(lambda: sb.held == 1, why="the fetch in flight")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        sb.release_dates()
    assert proc.returncode == 143, err
    messages = [json.loads(line)["message"] for line in err.splitlines()]  # a plain line would not parse
    assert any(m.startswith("emsync: stopping:") for m in messages), messages
    assert 'emsync_last_run_status{status="interrupted"} 1.0' in metrics_file.read_text(), "monitoring sees the stop"


def test_serve_logs_json_and_on_sigterm_interrupts_the_runs_it_started(cli, engine, make_sandbox, spawn, monkeypatch):
    sb = make_sandbox()
    ids = [add_meta(cli, "anna@example.com", f"act_{n}", f"EAABtoken-serve-{n}") for n in (1, 2)]
    monkeypatch.setenv("CRON_SECRET", SECRET)
    port = _free_port()
    sb.hold()
    try:
        proc = spawn("serve", "--port", str(port), env={"EMSYNC_LOG_FORMAT": "json"})
        assert proc.stderr is not None
        lines: list[str] = []

        def read() -> None:
            for line in proc.stderr:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        _wait_for(lambda: any("listening" in line for line in lines), why="listening")
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        started = requests.post(f"http://127.0.0.1:{port}/api/cron/sync-all", headers={"Authorization": f"Bearer {SECRET}"}, timeout=10)
        assert started.status_code == 202
        run_id = started.json()["run_id"]
        _wait_for(lambda: sb.waiting >= 2, why="both integrations fetching")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        sb.release()
    assert proc.returncode == 143, "".join(lines)
    entries = [json.loads(line) for line in lines]  # every line is JSON: emsync's, uvicorn's, its access log
    messages = [e["message"] for e in entries]
    assert any("GET /healthz" in m and "200" in m for m in messages), messages  # uvicorn's access log
    assert any(m.startswith("Started server process") for m in messages), messages  # uvicorn's own lines
    assert any(m.startswith("emsync serve listening on http://127.0.0.1:") for m in messages)
    assert any(m.startswith("interrupted: 0 finished, 2 stopped mid-fetch, 0 not started") for m in messages), messages
    assert any(m == "stopped by signal 15; 1 run started by this server interrupted" for m in messages), messages
    run = _one(engine, "SELECT status, integrations_total, succeeded FROM sync_runs WHERE id = :r", r=run_id)
    assert tuple(run) == ("interrupted", 2, 0)
    if engine.dialect.name == "postgresql":
        assert _scalar(engine, "SELECT count(*) FROM integrations WHERE lease_token IS NOT NULL") == 0
    assert _scalar(engine, "SELECT count(*) FROM sync_attempts") == 0
    assert [i for i in ids if _scalar(engine, "SELECT status FROM integrations WHERE id = :i", i=i) != "never_synced"] == []


def test_the_systemd_unit_counts_a_sigterm_stop_as_clean():
    """`systemctl stop` sends SIGTERM; the run then exits 143 (tested above), which the unit must not call a failure."""
    from .conftest import ROOT

    service = (ROOT / "deploy" / "emsync.service").read_text().splitlines()
    success = [line.split("=", 1)[1].split() for line in service if line.startswith("SuccessExitStatus=")]
    assert success and "143" in success[0]
