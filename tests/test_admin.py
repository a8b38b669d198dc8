"""init, users and integrations commands on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import stat

import pytest
from sqlalchemy import text

from emsync import db

from .conftest import TEST_KEY, add_google, add_meta

# ---------------------------------------------------------------- init and the schema


def test_init_creates_schema_and_is_idempotent(cli, empty_db_url, monkeypatch):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    first = cli("init")
    assert first.code == 0, first.err
    assert f"Created the emsync schema ({db.HEAD})" in first.out
    assert cli("users", "add", "a@example.com").code == 0
    second = cli("init")
    assert second.code == 0 and "up to date" in second.out
    assert "a@example.com" in cli("users", "list", "--json").out  # nothing lost by the second init


def test_commands_refuse_a_database_without_schema(cli, empty_db_url, monkeypatch, backend):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    result = cli("users", "list")
    assert result.code == 2
    assert "emsync init" in result.err
    if backend == "sqlite":
        assert not os.path.exists(empty_db_url.removeprefix("sqlite:///")), "a refused command must not create the file"


def test_commands_refuse_an_older_schema_and_a_newer_one(cli, db_url, engine):
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    result = cli("users", "list")
    assert result.code == 2 and "newer than this emsync" in result.err
    original = db.REVISIONS
    try:
        db.REVISIONS, db.HEAD = ("0000", "0001"), "0001"
        result = cli("users", "list")
        assert result.code == 2 and "older than this emsync" in result.err and "emsync init" in result.err
    finally:
        db.REVISIONS, db.HEAD = original, original[-1]


def test_head_constant_matches_the_shipped_migrations():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", "emsync:migrations")
    script = ScriptDirectory.from_config(cfg)
    assert script.get_current_head() == db.HEAD
    assert [r.revision for r in reversed(list(script.walk_revisions()))] == list(db.REVISIONS)


def test_migration_matches_the_models(db_url, engine):
    """No drift between models.py and the migration (what autogenerate would add is empty)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import emsync.models  # noqa: F401

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), SQLModel.metadata)
    assert diff == []


def test_unreachable_postgres_is_exit_2_without_password(cli, monkeypatch):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", "postgresql+psycopg://emsync:hunter2-secret@127.0.0.1:1/emsync")
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    result = cli("users", "list")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "hunter2-secret" not in result.err and "127.0.0.1" in result.err


def test_init_generates_a_key_into_the_env_file_mode_0600(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'k.db'}")
    env_file = tmp_path / "work" / ".env"
    env_file.write_text("EMSYNC_CONCURRENCY=2")
    result = cli("init")
    assert result.code == 0 and str(env_file) in result.out
    content = env_file.read_text()
    assert content.startswith("EMSYNC_CONCURRENCY=2\n") and "EMSYNC_SECRET_KEY=" in content
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    key = content.split("EMSYNC_SECRET_KEY=")[1].strip()
    assert key not in result.out
    again = cli("init")
    assert "Generated" not in again.out and env_file.read_text() == content


def test_init_without_env_file_writes_the_user_config_file(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'k.db'}")
    assert cli("init").code == 0
    user_file = tmp_path / "home" / ".config" / "emsync" / "emsync.env"
    assert "EMSYNC_SECRET_KEY=" in user_file.read_text()
    # cron from another working directory still finds the key
    monkeypatch.chdir(tmp_path)
    assert cli("users", "add", "x@example.com").code == 0
    assert add_meta(cli, "x@example.com") == 1


def test_default_database_is_created_by_init_in_the_data_directory(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    assert cli("init").code == 0
    assert (tmp_path / "home" / ".local" / "share" / "emsync" / "emsync.db").is_file()


# ---------------------------------------------------------------- users


def test_users_add_list_json(cli, db_url):
    assert cli("users", "add", "Anna.Nowak@Example.COM", "--name", "Anna Nowak").code == 0
    assert cli("users", "add", "bob@example.com").code == 0
    users = json.loads(cli("users", "list", "--json").out)
    assert [(u["id"], u["email"], u["name"], u["integrations"]) for u in users] == [
        (1, "anna.nowak@example.com", "Anna Nowak", 0),
        (2, "bob@example.com", None, 0),
    ]
    table = cli("users", "list").out
    assert "anna.nowak@example.com" in table and "Anna Nowak" in table


def test_duplicate_user_any_case_is_exit_2_and_writes_nothing(cli, db_url):
    assert cli("users", "add", "anna@example.com").code == 0
    result = cli("users", "add", "ANNA@example.com", "--name", "Other")
    assert result.code == 2 and "already exists" in result.err
    assert len(json.loads(cli("users", "list", "--json").out)) == 1


# ---------------------------------------------------------------- integrations


def test_integrations_add_list_update_disable_enable(cli, db_url):
    meta_id = add_meta(cli, "anna@example.com", "123456", "EAABtoken-one", "--token-expires-at", "2027-01-28T10:00:00Z")
    google_id = add_google(cli, "anna@example.com", "123-456-7890", "1//refresh-one", "--login-customer-id", "111-222-3333")
    items = json.loads(cli("integrations", "list", "--json").out)
    required = {"id", "email", "platform", "account_id", "is_active", "status", "last_synced_at", "last_error", "token_expires_at"}
    assert all(required <= set(i) for i in items)
    meta, google = items
    assert (meta["id"], meta["platform"], meta["account_id"], meta["status"], meta["is_active"]) == (
        meta_id,
        "meta",
        "123456",
        "never_synced",
        True,
    )
    assert meta["token_expires_at"].startswith("2027-01-28T10:00:00")
    assert (google["id"], google["account_id"], google["login_customer_id"]) == (google_id, "1234567890", "1112223333")

    assert cli("integrations", "disable", str(meta_id)).code == 0
    assert json.loads(cli("integrations", "list", "--json").out)[0]["is_active"] is False
    assert cli("integrations", "enable", str(meta_id)).code == 0
    assert json.loads(cli("integrations", "list", "--json").out)[0]["is_active"] is True

    updated = cli("integrations", "update", str(meta_id), "--access-token", "EAABtoken-two", "--token-expires-at", "2027-03-01")
    assert updated.code == 0, updated.err
    assert json.loads(cli("integrations", "list", "--json").out)[0]["token_expires_at"].startswith("2027-03-01T00:00:00")
    assert "anna@example.com" in cli("integrations", "list").out


def test_update_clears_needs_reauth(cli, db_url, engine):
    integration = add_meta(cli)
    with engine.begin() as conn:
        conn.execute(text("UPDATE integrations SET status='needs_reauth', last_error='Meta error 190' WHERE id=:i"), {"i": integration})
    assert cli("integrations", "update", str(integration), "--access-token", "EAABnew-token").code == 0
    item = json.loads(cli("integrations", "list", "--json").out)[0]
    assert (item["status"], item["last_error"]) == ("never_synced", None)


def test_tokens_are_encrypted_at_rest_and_never_listed(cli, db_url, engine, backend):
    add_meta(cli, token="EAABvery-distinctive-meta-token")
    add_google(cli, token="1//very-distinctive-refresh-token")
    listing = cli("integrations", "list", "--json").out + cli("integrations", "list").out + cli("status", "--json").out
    assert "distinctive" not in listing
    with engine.connect() as conn:
        encrypted = conn.execute(text("SELECT access_token_enc, refresh_token_enc FROM credentials ORDER BY id")).all()
    assert encrypted[0][0].startswith("gAAAA") and encrypted[1][1].startswith("gAAAA")
    if backend == "sqlite":
        engine.dispose()
        raw = open(db_url.removeprefix("sqlite:///"), "rb").read()
        assert b"distinctive" not in raw
    from emsync.crypto import TokenBox

    assert TokenBox(TEST_KEY).decrypt(encrypted[0][0]) == "EAABvery-distinctive-meta-token"


def test_wrong_secret_key_is_a_clear_error_not_a_leak(cli, db_url, monkeypatch):
    add_meta(cli)
    from emsync.crypto import new_key

    monkeypatch.setenv("EMSYNC_SECRET_KEY", new_key())
    result = cli("sync-all")
    assert result.code == 2 and "EMSYNC_SECRET_KEY cannot decrypt" in result.err
    assert json.loads(cli("status", "--json").out)["last_run"] is None  # nothing written


def test_remove_deletes_rows_in_one_go_and_refuses_without_confirmation(cli, db_url, engine):
    integration = add_meta(cli)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO campaign_metrics (integration_id, campaign_id, date, spend, impressions, clicks, conversions, revenue, synced_at) "
                "VALUES (:i, 'c1', '2026-11-01', 1, 1, 1, 0, 0, '2026-11-02 00:00:00+00:00')"
            ),
            {"i": integration},
        )
    refused = cli("integrations", "remove", str(integration))  # stdin is not a terminal under pytest
    assert refused.code == 2 and "--yes" in refused.err
    assert len(json.loads(cli("integrations", "list", "--json").out)) == 1
    done = cli("integrations", "remove", str(integration), "--yes")
    assert done.code == 0 and "1 metric rows" in done.out
    assert json.loads(cli("integrations", "list", "--json").out) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM campaign_metrics")).scalar() == 0


BAD_ADDS = [
    (["--email", "nobody@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", "T0k3n"], "no user"),
    (["--email", "not-an-email", "--platform", "meta", "--account-id", "act_1", "--access-token", "T0k3n"], "email"),
    (["--email", "anna@example.com", "--platform", "tiktok", "--account-id", "1", "--access-token", "T0k3n"], "platform"),
    (["--email", "anna@example.com", "--platform", "meta", "--account-id", "act_12x", "--access-token", "T0k3n"], "Meta ad account id"),
    (["--email", "anna@example.com", "--platform", "meta", "--account-id", "act_0", "--access-token", "T0k3n"], "Meta ad account id"),
    (
        ["--email", "anna@example.com", "--platform", "meta", "--account-id", "1'; DROP TABLE users;--", "--access-token", "T"],
        "Meta ad account id",
    ),
    (["--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1"], "--access-token"),
    (["--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", ""], "must not be empty"),
    (["--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", "two words"], "single word"),
    (
        ["--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", "T", "--token-expires-at", "soon"],
        "ISO-8601",
    ),
    (
        ["--email", "anna@example.com", "--platform", "meta", "--account-id", "act_1", "--access-token", "T", "--refresh-token", "R"],
        "Google",
    ),
    (["--email", "anna@example.com", "--platform", "google", "--account-id", "123-456-789", "--refresh-token", "R"], "10 digits"),
    (["--email", "anna@example.com", "--platform", "google", "--account-id", "1234567890"], "--refresh-token"),
    (
        [
            "--email",
            "anna@example.com",
            "--platform",
            "google",
            "--account-id",
            "1234567890",
            "--refresh-token",
            "R",
            "--login-customer-id",
            "12",
        ],
        "login customer id",
    ),
    (
        [
            "--email",
            "anna@example.com",
            "--platform",
            "google",
            "--account-id",
            "1234567890",
            "--refresh-token",
            "R",
            "--access-token",
            "T",
        ],
        "Meta",
    ),
]


@pytest.mark.parametrize("args, message", BAD_ADDS)
def test_bad_integration_input_is_exit_2_one_line_nothing_written(cli, db_url, args, message):
    assert cli("users", "add", "anna@example.com").code == 0
    result = cli("integrations", "add", *args)
    assert result.code == 2, result.out
    assert message in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert json.loads(cli("integrations", "list", "--json").out) == []


def test_duplicate_integration_is_exit_2(cli, db_url):
    add_meta(cli, account="act_777")
    result = cli(
        "integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "777", "--access-token", "EAABother"
    )
    assert result.code == 2 and "already has meta account 777" in result.err
    assert len(json.loads(cli("integrations", "list", "--json").out)) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["integrations", "disable", "99"],
        ["integrations", "update", "99", "--access-token", "T"],
        ["integrations", "remove", "99", "--yes"],
        ["integrations", "enable", "0"],
    ],
)
def test_unknown_integration_id_is_exit_2(cli, db_url, args):
    result = cli(*args)
    assert result.code == 2 and "integration" in result.err


def test_an_id_beyond_the_column_says_the_range_not_positive(cli, db_url):
    result = cli("integrations", "disable", "99999999999999999999999")
    assert result.code == 2 and "from 1 to 2147483647" in result.err and result.err.count("\n") == 1


def test_unknown_email_for_sync_user_is_exit_2(cli, db_url):
    result = cli("sync-user", "ghost@example.com")
    assert result.code == 2 and "no user with email ghost@example.com" in result.err


def test_usage_errors_are_one_line_exit_2(cli, db_url):
    for args in (["users", "add"], ["bogus"], ["integrations", "disable", "abc"], ["sync-all", "--platform", "tiktok"]):
        result = cli(*args)
        assert result.code == 2, args
        assert result.err.count("\n") == 1, (args, result.err)


def _command_paths(group, prefix=()):
    """Every leaf command of the Typer app, as argument lists (walks the app, so a new command cannot be missed)."""
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):  # a group (Typer sub-app)
            yield from _command_paths(command, (*prefix, name))
        else:
            yield [*prefix, name]


def test_every_command_has_help_with_an_example(cli):
    import typer

    from emsync.cli import app

    commands = list(_command_paths(typer.main.get_command(app)))
    assert ["sync-all"] in commands and ["integrations", "add"] in commands  # the walk itself works
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    for command in commands:
        result = cli(*command, "--help")
        assert result.code == 0 and "Example" in result.out, command
        assert "emsync " + " ".join(command) in readme, f"README does not show 'emsync {' '.join(command)}'"


def test_ctrl_c_while_the_command_line_is_still_importing_is_exit_130_without_a_traceback(monkeypatch):
    import sys
    import types

    from emsync import console

    class Interrupted(types.ModuleType):  # a Ctrl-C that lands inside `from .cli import main`
        def __getattr__(self, name):
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "emsync.cli", Interrupted("emsync.cli"))
    assert console.main() == 130
