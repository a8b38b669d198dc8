"""`integrations reset`, `users remove`, `--version` and shell completion."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib.metadata import version

import pytest
from sqlalchemy import text

from .conftest import add_google, add_meta
from .helpers import integration

pytestmark = pytest.mark.usefixtures("any_db")


def _set(engine, integration_id: int, **values):
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE integrations SET {assignments} WHERE id = :id"), {"id": integration_id, **values})


@pytest.mark.parametrize(
    "status, extra",
    [
        ("rate_limited", {"rate_limited_until": timedelta(hours=6)}),
        ("needs_reauth", {}),
        ("error", {"next_attempt_at": timedelta(hours=20)}),  # an account closed upstream, backing off a day
    ],
)
def test_reset_lets_the_next_run_try_it(cli, engine, make_sandbox, status, extra):
    sb = make_sandbox()
    integration_id = add_meta(cli, account="act_1")
    _set(engine, integration_id, status=status, last_error="it failed", **{k: datetime.now(UTC) + v for k, v in extra.items()})
    assert cli("sync-all").code == 0 and sb.count("meta.insights", "1") == 0, "held back before the reset"
    result = cli("integrations", "reset", str(integration_id))
    assert result.code == 0 and f"was {status}, now never_synced: the next run tries it" in result.out
    item = integration(cli, integration_id)
    assert (item["status"], item["last_error"], item["rate_limited_until"], item["next_attempt_at"]) == ("never_synced", None, None, None)
    assert cli("sync-all").code == 0 and sb.count("meta.insights", "1") == 1
    assert integration(cli, integration_id)["status"] == "ok"


def test_reset_of_a_google_integration_waiting_for_its_turn_takes_it_next_run(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("GOOGLE_ADS_DAILY_OPERATIONS", "3")  # 3 customers, once a day each
    sb = make_sandbox()
    ids = [add_google(cli, account=f"{n}" * 10, token=f"1//r-{n}") for n in (1, 2, 3)]
    assert cli("sync-all").code == 0
    _set(engine, ids[0], status="error", last_error="Google Ads 500")
    sb.reset_log()
    assert cli("sync-all").code == 0 and sb.count("google.search_stream") == 0, "every one waits for tomorrow's turn"
    assert cli("integrations", "reset", str(ids[0])).code == 0
    assert cli("sync-all").code == 0 and sb.count("google.search_stream") == 1 and sb.count(account="1111111111") >= 1


def test_reset_leaves_a_healthy_integration_alone_and_refuses_unknown_ids(cli, engine):
    integration_id = add_meta(cli, account="act_1")
    _set(engine, integration_id, status="ok", last_synced_at=datetime.now(UTC))
    result = cli("integrations", "reset", str(integration_id))
    assert result.code == 0 and "is ok: nothing to reset" in result.out and integration(cli, integration_id)["status"] == "ok"
    missing = cli("integrations", "reset", "999")
    assert missing.code == 2 and missing.err.startswith("emsync: no integration with id 999")


def _counts(engine, user_email: str) -> tuple:
    with engine.connect() as conn:
        return tuple(
            conn.execute(text(sql), {"e": user_email}).scalar()
            for sql in (
                "SELECT count(*) FROM users WHERE email = :e",
                "SELECT count(*) FROM integrations i JOIN users u ON u.id = i.user_id WHERE u.email = :e",
                "SELECT count(*) FROM campaign_metrics m JOIN integrations i ON i.id = m.integration_id "
                "JOIN users u ON u.id = i.user_id WHERE u.email = :e",
            )
        )


def test_users_remove_deletes_the_user_with_integrations_and_rows(cli, engine, make_sandbox):
    make_sandbox()
    anna_meta = add_meta(cli, "anna@example.com", "act_1", "EAABanna")
    anna_google = add_google(cli, "anna@example.com", "1111111111")
    add_meta(cli, "bob@example.com", "act_2", "EAABbob")
    assert cli("sync-all").code == 0
    anna, bob = _counts(engine, "anna@example.com"), _counts(engine, "bob@example.com")
    assert anna[:2] == (1, 2) and anna[2] > 0 and bob[2] > 0

    refused = cli("users", "remove", "anna@example.com")  # no terminal, no --yes
    assert refused.code == 2 and "pass --yes" in refused.err and _counts(engine, "anna@example.com") == anna
    unknown = cli("users", "remove", "nobody@example.com", "--yes")
    assert unknown.code == 2 and "no user with email nobody@example.com" in unknown.err

    result = cli("users", "remove", "ANNA@example.com", "--yes")
    assert result.code == 0, result.err
    assert f"Removed user anna@example.com, integrations {anna_meta}, {anna_google} and {anna[2]} metric rows" in result.out
    assert "is no longer used: 'emsync credentials remove" in result.out
    assert _counts(engine, "anna@example.com") == (0, 0, 0)
    assert _counts(engine, "bob@example.com") == bob, "another user's data untouched"
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM sync_attempts WHERE integration_id IN (:a, :b)"), {"a": anna_meta, "b": anna_google})
        assert left.scalar() == 0
    assert [u["email"] for u in json.loads(cli("users", "list", "--json").out)] == ["bob@example.com"]


def test_version(cli):
    result = cli("--version")
    assert (result.code, result.out) == (0, f"emsync {version('emsync')}\n")


def test_shell_completion_is_installable_and_completes_commands(spawn, tmp_path):
    home = tmp_path / "completion-home"
    home.mkdir()
    env = {"HOME": str(home), "SHELL": "/bin/bash"}
    installed = spawn("--install-completion", "bash", env=env)
    out, err = installed.communicate(timeout=60)
    assert installed.returncode == 0, err
    script = home / ".bash_completions" / "emsync.sh"
    assert script.is_file() and "_EMSYNC_COMPLETE=complete_bash" in script.read_text()
    assert f"source '{script}'" in (home / ".bashrc").read_text()
    # What bash asks when the user presses Tab after "emsync integrations re":
    completing = spawn(env={**env, "_EMSYNC_COMPLETE": "complete_bash", "COMP_WORDS": "emsync integrations re", "COMP_CWORD": "2"})
    out, err = completing.communicate(timeout=60)
    assert completing.returncode == 0 and set(out.split()) == {"reset", "remove"}, (out, err)
