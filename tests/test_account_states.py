"""Accounts closed or disabled upstream back off to one attempt a day and are a WARNING for monitoring;
Meta accounts in other states sync with a warning; ``status --check`` levels."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from .conftest import add_google, add_meta
from .helpers import integration

pytestmark = pytest.mark.usefixtures("any_db")


def _closed_setup(make_sandbox, cli, platform: str, state: int | None):
    if platform == "meta":
        sb = make_sandbox({"meta_accounts": {"1": {"account_status": state}}})
        return sb, add_meta(cli, account="act_1"), "1"
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": "not_enabled"}]}}})
    return sb, add_google(cli, account="1111111111"), "1111111111"


@pytest.mark.parametrize(
    "platform, state, words",
    [("meta", 2, "disabled at Meta"), ("meta", 101, "closed at Meta"), ("google", None, "not enabled or has been deactivated at Google")],
)
def test_a_closed_account_stays_error_and_is_tried_once_a_day(cli, engine, make_sandbox, platform, state, words):
    sb, integration_id, account = _closed_setup(make_sandbox, cli, platform, state)
    before = datetime.now(UTC)
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and words in item["last_error"]
    assert f"emsync integrations disable {integration_id}" in item["last_error"]
    next_attempt = datetime.fromisoformat(item["next_attempt_at"])
    assert before + timedelta(hours=23) < next_attempt < before + timedelta(hours=25)

    sb.reset_log()
    assert cli("sync-all").code == 0, "nothing due: the closed account waits for its daily attempt"
    assert sb.count(account=account) == 0

    check = cli("status", "--check")
    assert check.code == 1 and check.out.startswith("EMSYNC WARNING - ") and f"integration {integration_id} " in check.out
    assert "CRITICAL" not in check.out
    status = cli("status")
    assert "(daily)" in status.out and "next attempt" in status.out
    assert json.loads(cli("status", "--json").out)["integrations"][0]["next_attempt_at"] is not None

    assert cli("sync-user", "anna@example.com").code == 1 and sb.count(account=account) >= 1, "a person pressing Sync still tries"


def test_the_daily_attempt_after_reopening_succeeds_and_clears_the_backoff(cli, engine, make_sandbox):
    sb, integration_id, _ = _closed_setup(make_sandbox, cli, "meta", 2)
    assert cli("sync-all").code == 1
    sb.set_account("meta", "1", account_status=1)
    with engine.begin() as conn:  # a day has passed
        conn.execute(
            text("UPDATE integrations SET next_attempt_at = :t WHERE id = :i"),
            {"t": datetime.now(UTC) - timedelta(minutes=1), "i": integration_id},
        )
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and item["next_attempt_at"] is None and item["last_error"] is None


def test_account_status_is_read_on_every_full_window_sync(cli, make_sandbox):
    sb = make_sandbox()
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    sb.reset_log()
    assert cli("sync-all").code == 0 and sb.count("meta.account") == 0, "a recent-window run reads no account"
    sb.set_account("meta", "1", account_status=101)
    assert cli("sync-all", "--full").code == 1
    assert sb.count("meta.account") == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and "closed at Meta" in item["last_error"]


@pytest.mark.parametrize("state, name", [(3, "UNSETTLED"), (9, "IN_GRACE_PERIOD"), (100, "PENDING_CLOSURE")])
def test_meta_accounts_in_other_states_sync_with_a_warning(cli, make_sandbox, state, name):
    make_sandbox({"meta_accounts": {"1": {"account_status": state}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and name in item["last_warning"] and item["next_attempt_at"] is None
    check = cli("status", "--check")
    assert check.code == 1 and check.out.startswith("EMSYNC WARNING - ") and name in check.out


def test_check_is_critical_when_anything_fails_even_beside_warnings(cli, make_sandbox):
    make_sandbox({"meta_accounts": {"1": {"account_status": 2}, "2": {"faults": [{"kind": "server_error"}]}}})
    add_meta(cli, account="act_1")
    failing = add_meta(cli, "anna@example.com", "act_2", "EAABtwo")
    assert cli("sync-all").code == 1
    check = cli("status", "--check")
    assert check.code == 2 and check.out.startswith("EMSYNC CRITICAL - ") and f"integration {failing} " in check.out
    assert "(+1 more: 1 critical, 1 warning)" in check.out and check.out.count("\n") == 1


def test_check_is_ok_without_problems(cli, make_sandbox):
    make_sandbox()
    add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    check = cli("status", "--check")
    assert check.code == 0 and check.out.startswith("EMSYNC OK - 1 active integration healthy | integrations=1 failing=0 ")
