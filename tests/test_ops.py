"""Operating emsync: status, --check, logs, quiet, healthchecks, progress on a terminal, cron and systemd lines."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import text

from emsync import logs
from emsync.config import SETTING_NAMES, load_settings

from .conftest import ROOT, add_google, add_meta
from .helpers import on_terminal

pytestmark = pytest.mark.usefixtures("any_db")


def _set(engine, integration_id: int, **values):
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE integrations SET {assignments} WHERE id = :id"), {"id": integration_id, **values})


# ---------------------------------------------------------------- status


def test_status_table_shows_what_an_operator_needs(cli, engine, make_sandbox, monkeypatch):
    make_sandbox({"meta_accounts": {"2": {"faults": [{"kind": "token_expired"}]}}})
    monkeypatch.delenv("META_APP_ID")  # without the app credentials an expiring token cannot be renewed: status must warn
    soon = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    ok = add_meta(cli, "anna@example.com", "act_1", "EAABtoken-1")
    bad = add_meta(cli, "anna@example.com", "act_2", "EAABtoken-2", "--token-expires-at", soon)
    limited = add_google(cli, "bob@example.com", "333-333-3333", "1//r3")
    assert cli("sync-all").code == 1
    until = datetime.now(UTC) + timedelta(hours=3)
    _set(engine, limited, status="rate_limited", rate_limited_until=until, last_error="Google Ads RESOURCE_EXHAUSTED: quota")
    out = cli("status").out
    table = out.split("Last runs")[0]
    row = {line.split("│")[1].strip(): line for line in table.splitlines() if line.startswith("│") and line.split("│")[1].strip().isdigit()}
    assert "ok" in row[str(ok)] and "act_1" in row[str(ok)] and re.search(r"│\s*\d+\s*│", row[str(ok)])
    assert "needs_reauth" in row[str(bad)] and "Meta error 190/463" in row[str(bad)]
    assert (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d") in row[str(bad)]
    assert "rate_limited" in row[str(limited)] and until.strftime("%Y-%m-%d %H:%M") in row[str(limited)]
    assert "Last runs" in out and "cron" in out
    assert "warning:" in out and "Meta token expires" in out


def test_status_json_shape(cli, make_sandbox):
    make_sandbox()
    meta = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    report = json.loads(cli("status", "--json").out)
    assert {"database", "integrations", "last_run", "runs", "warnings"} <= set(report)
    item = report["integrations"][0]
    assert {
        "id",
        "email",
        "platform",
        "account_id",
        "is_active",
        "status",
        "last_synced_at",
        "last_error",
        "token_expires_at",
        "rows_in_window",
        "rate_limited_until",
        "currency",
    } <= set(item)
    assert item["id"] == meta and item["rows_in_window"] > 0
    run = report["last_run"]
    assert (run["status"], run["succeeded"], run["failed"], run["trigger"]) == ("ok", 1, 0, "cron")
    assert run["host"] and run["duration_s"] is not None


def test_google_quota_warning(cli, monkeypatch):
    monkeypatch.setenv("GOOGLE_ADS_DAILY_OPERATIONS", "100")
    add_google(cli, "a@example.com", "1111111111", "1//a")
    assert json.loads(cli("status", "--json").out)["warnings"] == []
    add_google(cli, "a@example.com", "2222222222", "1//b")
    assert json.loads(cli("status", "--json").out)["warnings"] == [], "2 × 48 = 96 operations fit in 100"
    add_google(cli, "a@example.com", "3333333333", "1//c")
    warnings = json.loads(cli("status", "--json").out)["warnings"]
    assert "3 active Google integrations × 48 runs a day = 144 operations, over the 100" in warnings[0]
    assert "each is synced 33 times a day (every 44 minutes)" in warnings[0]


@pytest.mark.parametrize(
    "change, code, words",
    [
        ({}, 0, "EMSYNC OK - 1 active integration healthy"),
        ({"status": "error", "last_error": "Meta error 2: boom\nsecond line"}, 2, "is error: Meta error 2: boom"),
        ({"status": "needs_reauth", "last_error": "Meta error 190"}, 2, "is needs_reauth"),
        ({"status": "rate_limited", "last_error": "quota"}, 1, "is rate_limited; the next run retries it"),
        ({"status": "rate_limited", "rate_limited_until": -timedelta(minutes=20)}, 1, "the next run retries it"),
        ({"status": "rate_limited", "rate_limited_until": -timedelta(hours=2)}, 2, "beyond the next run"),
        ({"last_synced_at": timedelta(minutes=120)}, 1, "has not synced successfully for 120 minutes (stale after 90 minutes)"),
        ({"last_synced_at": timedelta(minutes=200)}, 2, "has not synced successfully for 200 minutes"),
        ({"status": "never_synced", "last_synced_at": None, "created_at": timedelta(minutes=150)}, 1, "has never synced"),
        ({"status": "never_synced", "last_synced_at": None, "created_at": timedelta(hours=4)}, 2, "has never synced"),
        ({"status": "never_synced", "last_synced_at": None}, 0, "EMSYNC OK"),
        ({"status": "error", "is_active": False}, 0, "EMSYNC OK - 0 active integrations healthy"),
        ({"last_warning": "renewing the Meta access token failed"}, 1, "synced with a warning: renewing the Meta access token failed"),
        ({"token_expires_at": -timedelta(days=3)}, 1, "its token expires"),
        ({"token_expires_at": timedelta(minutes=1)}, 2, "its token expired"),
    ],
)
def test_status_check(cli, engine, change, code, words):
    """Monitoring-plugin levels: exit 0 OK, 1 WARNING, 2 CRITICAL; one line, perfdata after '|'."""
    integration_id = add_meta(cli, account="act_1")
    _set(engine, integration_id, status="ok", last_synced_at=datetime.now(UTC) - timedelta(minutes=5))
    if change:  # a timedelta means "that long ago" (negative: from now), computed now rather than at collection
        now = datetime.now(UTC)
        values = {k: now - v if isinstance(v, timedelta) else v for k, v in change.items()}
        if "token_expires_at" in values:  # the credential's expiry, copied on its integrations
            with engine.begin() as conn:
                conn.execute(text("UPDATE credentials SET token_expires_at = :t"), {"t": values["token_expires_at"]})
        _set(engine, integration_id, **values)
    result = cli("status", "--check")
    assert result.code == code, result.out
    state = {0: "OK", 1: "WARNING", 2: "CRITICAL"}[code]
    assert result.out.startswith(f"EMSYNC {state} - ") and words in result.out and result.out.count("\n") == 1
    text_part, perfdata = result.out.strip().split(" | ")
    fields = dict(item.split("=") for item in perfdata.split())
    assert set(fields) == {"integrations", "failing", "needs_reauth", "rate_limited", "stale", "critical", "warning", "oldest_success_age"}
    assert fields["failing"] == str(
        int(change.get("status") in ("error", "needs_reauth", "rate_limited") and change.get("is_active", True))
    )


def test_status_check_keeps_the_end_of_a_long_error_where_the_fix_is(cli, engine):
    integration_id = add_meta(cli, account="act_1")
    fix = f"run 'emsync integrations update {integration_id} --access-token -'"
    _set(engine, integration_id, status="needs_reauth", last_error="Meta error 190: " + "the session has expired; " * 20 + fix)
    check = cli("status", "--check")
    assert check.code == 2 and check.out.count("\n") == 1
    assert f"{fix} |" in check.out, check.out


def test_status_check_staleness_follows_the_google_budget(cli, engine, monkeypatch):
    """A Google integration taking turns is stale only past its own effective interval (plus the threshold)."""
    monkeypatch.setenv("GOOGLE_ADS_DAILY_OPERATIONS", "3")  # 3 integrations, once a day each: every 1440 minutes
    monkeypatch.setenv("EMSYNC_STALE_AFTER_MINUTES", "2000")  # so the budget itself is no warning
    ids = [add_google(cli, "a@example.com", f"{n}" * 10, f"1//r{n}") for n in (1, 2, 3)]
    meta = add_meta(cli, account="act_1")
    for integration_id in ids:
        _set(engine, integration_id, status="ok", last_synced_at=datetime.now(UTC) - timedelta(minutes=2100))
    _set(engine, meta, status="ok", last_synced_at=datetime.now(UTC) - timedelta(minutes=5))
    assert cli("status", "--check").code == 0, "2100 minutes is within 1440 + 2000"
    _set(engine, ids[0], last_synced_at=datetime.now(UTC) - timedelta(minutes=4000))
    result = cli("status", "--check")
    assert result.code == 1 and f"integration {ids[0]} " in result.out and "stale after 3440 minutes" in result.out
    _set(engine, ids[0], last_synced_at=datetime.now(UTC) - timedelta(minutes=7000))
    assert cli("status", "--check").code == 2
    _set(engine, meta, last_synced_at=datetime.now(UTC) - timedelta(minutes=2100))
    assert " stale=1 " not in cli("status", "--check").out and " stale=2 " in cli("status", "--check").out


def test_status_check_critical_when_the_key_cannot_decrypt_a_credential(cli, engine, monkeypatch):
    from emsync.crypto import TokenBox, new_key

    good = add_meta(cli, account="act_1")
    other = add_meta(cli, "bob@example.com", "act_2", "EAABbob-token")
    for integration_id in (good, other):
        _set(engine, integration_id, status="ok", last_synced_at=datetime.now(UTC) - timedelta(minutes=5))
    assert cli("status", "--check").code == 0
    with engine.begin() as conn:  # bob's token, stored under another key
        credential = conn.execute(text("SELECT credential_id FROM integrations WHERE id = :i"), {"i": other}).scalar()
        blob = TokenBox(new_key()).encrypt("EAABbob-token")
        conn.execute(text("UPDATE credentials SET access_token_enc = :b WHERE id = :c"), {"b": blob, "c": credential})
    result = cli("status", "--check")
    assert result.code == 2 and f"cannot decrypt the tokens of credential {credential} (integrations {other})" in result.out
    monkeypatch.delenv("EMSYNC_SECRET_KEY")
    no_key = cli("status", "--check")
    assert no_key.code == 2, "no key at all: no token can be used"
    assert "EMSYNC_SECRET_KEY is not set" in no_key.out, "the line says the key is missing, not that it is wrong"


@pytest.mark.parametrize(
    "args, env, words",
    [
        (["status", "--check", "--bogus"], {}, "No such option"),
        (["--env-file", "missing.env", "status", "--check"], {}, "missing.env does not exist"),
        (["status", "--check"], {"EMSYNC_CONCURRENCY": "-3"}, "EMSYNC_CONCURRENCY must be between"),
        (["status", "--check"], {"EMSYNC_DATABASE_URL": "sqlite:////nonexistent/dir/emsync.db"}, "no database at"),
    ],
)
def test_status_check_unknown_when_it_cannot_judge(cli, monkeypatch, args, env, words):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = cli(*args)
    assert result.code == 3 and result.out.startswith("EMSYNC UNKNOWN - ") and words in result.out, (result.out, result.err)
    assert result.out.count("\n") == 1 and "Traceback" not in result.text


def test_status_check_unknown_when_postgres_is_unreachable(cli, monkeypatch):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", "postgresql+psycopg://emsync:secret-pw@127.0.0.1:1/emsync")
    result = cli("status", "--check")
    assert result.code == 3 and result.out.startswith("EMSYNC UNKNOWN - database error") and "secret-pw" not in result.text


def test_a_postgresql_nobody_listens_on_is_one_line_at_once_not_a_minute_of_retries(cli, monkeypatch, caplog):
    # Retrying is for a server that is full or failing over; a host and port that never answered is a setting.
    monkeypatch.setenv("EMSYNC_DATABASE_URL", "postgresql+psycopg://emsync:secret-pw@127.0.0.1:1/emsync")
    result = cli("status")
    assert result.code == 2 and result.err.count("\n") == 1 and "refused" in result.err
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], "no retry against nothing listening"


def test_stale_after_is_configurable(cli, engine, monkeypatch):
    integration_id = add_meta(cli, account="act_1")
    _set(engine, integration_id, status="ok", last_synced_at=datetime.now(UTC) - timedelta(minutes=40))
    assert cli("status", "--check").code == 0
    monkeypatch.setenv("EMSYNC_STALE_AFTER_MINUTES", "30")
    assert cli("status", "--check").code == 1
    monkeypatch.setenv("EMSYNC_STALE_AFTER_MINUTES", "15")
    assert cli("status", "--check").code == 2


# ---------------------------------------------------------------- output modes and logs


def test_plain_timestamped_lines_without_a_terminal(cli, make_sandbox):
    make_sandbox()
    add_meta(cli, account="act_1")
    result = cli("sync-all")
    lines = result.err.strip().splitlines()
    assert all(re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4} (INFO|WARNING|ERROR)", line) for line in lines), lines
    assert "Found 1 active integration" in lines[0]
    assert any("Syncing meta for anna@example.com (act_1)..." in line for line in lines)
    assert re.search(r"Sync completed: 1 success, 0 failed, \d+ rows in", lines[-1])
    assert result.out == ""


def test_json_logs_one_object_per_line(cli, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_LOG_FORMAT", "json")
    make_sandbox()
    add_meta(cli, account="act_1")
    entries = [json.loads(line) for line in cli("sync-all").err.strip().splitlines()]
    assert {"ts", "level", "message"} <= set(entries[0])
    assert entries[-1]["message"].startswith("Sync completed: 1 success")
    result = next(e for e in entries if e["message"].startswith("Successfully synced"))
    assert (result["platform"], result["email"], result["status"], result["integration_id"]) == ("meta", "anna@example.com", "ok", 1)
    assert result["rows"] > 0


def test_log_file_is_rotated(cli, make_sandbox, monkeypatch, tmp_path):
    log_file = tmp_path / "logs" / "emsync.log"
    log_file.parent.mkdir()
    monkeypatch.setenv("EMSYNC_LOG_FILE", str(log_file))
    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 600)
    make_sandbox()
    add_meta(cli, account="act_1")
    for _ in range(3):
        assert cli("sync-all").code == 0
    assert log_file.exists() and (tmp_path / "logs" / "emsync.log.1").exists()
    assert "Sync completed" in log_file.read_text() + (tmp_path / "logs" / "emsync.log.1").read_text()


def test_unwritable_log_file_is_a_config_error(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("EMSYNC_LOG_FILE", str(tmp_path / "missing-dir" / "emsync.log"))
    result = cli("sync-all")
    assert result.code == 2 and "EMSYNC_LOG_FILE" in result.err


def test_quiet_prints_nothing_on_success_and_the_log_on_failure(cli, make_sandbox):
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    quiet = cli("sync-all", "--quiet")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")
    sb.set_account("meta", "1", faults=[{"kind": "permission"}])
    failed = cli("sync-all", "--quiet")
    assert failed.code == 1
    assert "Failed to sync meta for anna@example.com (act_1)" in failed.err and "Found 1 active integration" in failed.err


class _Pings:
    def __init__(self):
        self.hits: list[tuple[str, str]] = []
        pings = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                pings.hits.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/abc"


def test_healthcheck_pings_start_then_success_or_fail(cli, make_sandbox, monkeypatch):
    pings = _Pings()
    monkeypatch.setenv("EMSYNC_HEALTHCHECK_URL", pings.url)
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert [p for p, _ in pings.hits] == ["/ping/abc/start", "/ping/abc"]
    assert pings.hits[1][1].startswith("Sync completed: 1 success, 0 failed")
    sb.set_account("meta", "1", faults=[{"kind": "permission"}])
    assert cli("sync-all").code == 1
    assert [p for p, _ in pings.hits[2:]] == ["/ping/abc/start", "/ping/abc/fail"]
    assert "1 failed" in pings.hits[3][1]
    pings.hits.clear()
    assert cli("sync-user", "anna@example.com").code == 1
    assert pings.hits == [], "sync-user is not the scheduled job: no pings"
    pings.server.shutdown()


def test_unreachable_healthcheck_never_fails_the_sync(cli, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_HEALTHCHECK_URL", "http://127.0.0.1:9/ping")
    make_sandbox()
    add_meta(cli, account="act_1")
    result = cli("sync-all")
    assert result.code == 0 and "healthcheck ping /start failed" in result.err


def test_progress_bar_and_result_lines_on_a_terminal(cli, make_sandbox):
    make_sandbox({"meta_accounts": {"2": {"faults": [{"kind": "permission"}]}}})
    add_meta(cli, account="act_1")
    add_meta(cli, account="act_2", token="EAABtoken-2")
    code, screen = on_terminal("sync-all")
    assert code == 1
    assert "✓ meta anna@example.com act_1" in screen and "✗ meta anna@example.com act_2" in screen
    assert "Sync completed: 1 success, 1 failed" in screen
    assert "INFO" not in screen and "ERROR" not in screen, "a terminal gets the progress display, not log lines"


# ---------------------------------------------------------------- cron, systemd, env example


def _cron_lines() -> list[str]:
    lines = (ROOT / "crontab.example").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#") and "=" not in line.split()[0]]


def _localise(command: str, tmp_path: Path) -> str:
    """Point the example's paths at this test's install: same command otherwise."""
    install = tmp_path / "opt-emsync"
    (install / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    shim = install / ".venv" / "bin" / "emsync"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m emsync "$@"\n')
    shim.chmod(0o755)
    (tmp_path / "var-log-emsync").mkdir(exist_ok=True)
    return command.replace("/opt/emsync", str(install)).replace("/var/log/emsync", str(tmp_path / "var-log-emsync"))


def _env_file(tmp_path: Path) -> None:
    install = tmp_path / "opt-emsync"
    install.mkdir(exist_ok=True)
    keys = (
        "EMSYNC_DATABASE_URL",
        "EMSYNC_SECRET_KEY",
        "EMSYNC_MIN_INTERVAL_MINUTES",  # the test runs the cron line twice on purpose
        "META_GRAPH_URL",
        "META_APP_ID",
        "META_APP_SECRET",
        "GOOGLE_ADS_API_URL",
        "GOOGLE_OAUTH_TOKEN_URL",
        "GOOGLE_OAUTH_CLIENT_ID",
        "GOOGLE_OAUTH_CLIENT_SECRET",
    )
    (install / ".env").write_text("".join(f"{k}={os.environ[k]}\n" for k in keys))


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}


def test_crontab_lines_run_as_written(cli, make_sandbox, tmp_path):
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    lines = _cron_lines()
    sync_line = next(line for line in lines if line.startswith("*/30 * * * *"))
    check_line = next(line for line in lines if "status --check" in line)
    _env_file(tmp_path)
    sync = subprocess.run(
        ["sh", "-c", _localise(sync_line.split(None, 5)[5], tmp_path)], capture_output=True, text=True, env=_clean_env(), timeout=120
    )
    assert (sync.returncode, sync.stdout, sync.stderr) == (0, "", "")
    assert sb.count("meta.insights", "1") == 1
    check = subprocess.run(
        ["sh", "-c", _localise(check_line.split(None, 5)[5], tmp_path)], capture_output=True, text=True, env=_clean_env(), timeout=60
    )
    assert check.stdout == "", "healthy: the monitoring line prints nothing, so cron mails nothing"
    sb.set_account("meta", "1", faults=[{"kind": "permission"}])
    failed = subprocess.run(
        ["sh", "-c", _localise(sync_line.split(None, 5)[5], tmp_path)], capture_output=True, text=True, env=_clean_env(), timeout=120
    )
    assert failed.stdout.startswith("emsync sync-all failed with exit code 1"), "cron mails one line on failure"
    assert "Failed to sync meta" in (tmp_path / "var-log-emsync" / "cron.log").read_text()
    check = subprocess.run(
        ["sh", "-c", _localise(check_line.split(None, 5)[5], tmp_path)], capture_output=True, text=True, env=_clean_env(), timeout=60
    )
    assert check.stdout.startswith("EMSYNC CRITICAL - integration 1")
    assert any(line.startswith("# */15 * * * *") for line in (ROOT / "crontab.example").read_text().splitlines())


def test_systemd_units(cli, make_sandbox, tmp_path):
    service = (ROOT / "deploy" / "emsync.service").read_text()
    timer = (ROOT / "deploy" / "emsync.timer").read_text()
    assert "OnCalendar=*:0/30" in timer and "Persistent=true" in timer
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "Type=oneshot"):
        assert option in service
    exec_start = next(line.split("=", 1)[1] for line in service.splitlines() if line.startswith("ExecStart="))
    sb = make_sandbox()
    add_meta(cli, account="act_1")
    _env_file(tmp_path)
    run = subprocess.run(shlex.split(_localise(exec_start, tmp_path)), capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert run.returncode == 0, run.stderr
    assert sb.count("meta.insights", "1") == 1


def test_env_example_lists_every_setting_and_loads(tmp_path):
    example = (ROOT / ".env.example").read_text()
    names = {line.split("=", 1)[0] for line in example.splitlines() if line and not line.startswith("#")}
    assert names == set(SETTING_NAMES)
    copy = tmp_path / "copy.env"
    copy.write_text(example)
    settings = load_settings(str(copy), environ={})
    assert settings.secret_key is None and settings.lookback_days == 30
