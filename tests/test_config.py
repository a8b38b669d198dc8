"""Settings: sources, precedence, validation (exit 2 naming the setting), secrets kept out of repr;
the one table of settings agrees with the Settings dataclass, README.md and .env.example."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from emsync.config import REQUIRED, SETTING_NAMES, SETTINGS, Settings, load_settings
from emsync.errors import ConfigError

from .conftest import ROOT, TEST_KEY


def test_defaults_put_the_database_in_the_user_data_directory(tmp_path):
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'home' / '.local' / 'share' / 'emsync' / 'emsync.db'}"
    assert (settings.lookback_days, settings.recent_days, settings.full_sync_hours, settings.concurrency) == (30, 3, 24, 8)
    assert settings.meta_conversion_action_types == ("omni_purchase", "purchase", "offsite_conversion.fb_pixel_purchase")
    assert settings.google_ads_daily_operations == 15000


def test_environment_beats_env_file_which_beats_user_file(tmp_path, monkeypatch):
    user_file = tmp_path / "home" / ".config" / "emsync" / "emsync.env"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("EMSYNC_CONCURRENCY=3\nEMSYNC_LOOKBACK_DAYS=10\nEMSYNC_RECENT_DAYS=2\n")
    (tmp_path / "work" / ".env").write_text("EMSYNC_CONCURRENCY=4\nEMSYNC_LOOKBACK_DAYS=20\n")
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "5")
    settings = load_settings()
    assert (settings.concurrency, settings.lookback_days, settings.recent_days) == (5, 20, 2)


def test_explicit_env_file_replaces_the_local_dotenv(tmp_path):
    (tmp_path / "work" / ".env").write_text("EMSYNC_CONCURRENCY=4\n")
    other = tmp_path / "other.env"
    other.write_text("EMSYNC_CONCURRENCY=9\n")
    assert load_settings(str(other)).concurrency == 9
    assert load_settings(str(other)).env_file == other


def test_missing_explicit_env_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(str(tmp_path / "nope.env"))


@pytest.mark.parametrize(
    "name, value",
    [
        ("EMSYNC_CONCURRENCY", "0"),
        ("EMSYNC_CONCURRENCY", "many"),
        ("EMSYNC_LOOKBACK_DAYS", "-1"),
        ("EMSYNC_HTTP_TIMEOUT", "nan"),
        ("EMSYNC_HTTP_TIMEOUT", "inf"),
        ("EMSYNC_RETRY_MAX_WAIT", "-5"),
        ("EMSYNC_LOG_FORMAT", "xml"),
        ("EMSYNC_DATABASE_URL", "mysql://x/y"),
        ("EMSYNC_DATABASE_URL", "not a url"),
        ("EMSYNC_DATABASE_URL", "postgresql+psycopg://u:pw@127.0.0.1:notaport/db"),
        ("EMSYNC_SECRET_KEY", "short"),
        ("META_GRAPH_URL", "ftp://graph.facebook.com"),
        ("GOOGLE_ADS_API_VERSION", "26"),
        ("META_CONVERSION_ACTION_TYPES", " , "),
        ("EMSYNC_HEALTHCHECK_URL", "hc-ping.com/uuid"),
    ],
)
def test_invalid_values_name_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert name in str(info.value)


def test_invalid_setting_is_exit_2_with_one_line(cli, monkeypatch):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "zero")
    result = cli("users", "list")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "EMSYNC_CONCURRENCY" in result.err
    assert "Traceback" not in result.err


def test_plain_postgresql_url_gets_the_psycopg_driver(monkeypatch):
    monkeypatch.setenv("EMSYNC_DATABASE_URL", "postgresql://u:p@db.example/emsync")
    assert load_settings().database_url.startswith("postgresql+psycopg://")


def test_secrets_never_in_repr(monkeypatch):
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    monkeypatch.setenv("META_APP_SECRET", "meta-app-secret-value")
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_SECRET", "google-client-secret-value")
    monkeypatch.setenv("CRON_SECRET", "cron-secret-value-cron-secret-value")
    text = repr(load_settings())
    for secret in (TEST_KEY, "meta-app-secret-value", "google-client-secret-value", "cron-secret-value"):
        assert secret not in text


# ---------------------------------------------------------------- the table


def _accepts(hint, value) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    return isinstance(value, typing.get_origin(hint) or hint)


def test_table_and_dataclass_agree(monkeypatch):
    monkeypatch.delenv("EMSYNC_MIN_INTERVAL_MINUTES")  # set by the isolated fixture for every other test
    assert {f.name for f in fields(Settings)} == {s.attr for s in SETTINGS} | {"env_file", "origins"}
    assert len(set(SETTING_NAMES)) == len(SETTING_NAMES) == len(SETTINGS)
    hints = typing.get_type_hints(Settings)
    by_attr = {f.name: f for f in fields(Settings)}
    for s in SETTINGS:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", s.env) and s.help.strip(), s
        assert by_attr[s.attr].default is s.default and by_attr[s.attr].repr is not s.secret, s.env
        if s.default is REQUIRED:
            continue
        assert _accepts(hints[s.attr], s.default), f"{s.env}: default {s.default!r} is not a {hints[s.attr]}"
        if s.default is not None:  # within its own bounds, and written in the docs as default_text
            assert s.parse(s.env, s.default_text) == s.default, s.env
    assert load_settings() == Settings(database_url=load_settings().database_url), "unset means the table's default"


def test_every_secret_setting_is_redacted_and_kept_out_of_repr():
    secret = {s.attr: f"value-of-{s.env}" for s in SETTINGS if s.secret}
    assert {"secret_key", "meta_app_secret", "google_ads_developer_token", "google_oauth_client_secret", "cron_secret"} <= set(secret)
    plain = {s.attr: f"value-of-{s.env}" for s in SETTINGS if not s.secret and s.default is None}
    settings = Settings(database_url="sqlite://", **secret, **plain)
    assert settings.secrets() == list(secret.values())
    text = repr(settings)
    assert all(value not in text for value in secret.values())
    assert all(value in text for value in plain.values())


# ---------------------------------------------------------------- the docs agree with the table


def _readme_configuration_table() -> dict[str, str]:
    """README.md's Configuration table: setting name -> its default cell (a row may name several settings)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = lines.index("| setting | default | meaning |")
    assert lines[start + 1] == "| --- | --- | --- |"
    documented: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"README row without exactly three cells: {line}"
        names = re.findall(r"`([^`]+)`", cells[0])
        assert names and cells[0] == ", ".join(f"`{name}`" for name in names), f"README row names no setting: {line}"
        for name in names:
            assert name not in documented, f"README documents {name} twice"
            documented[name] = cells[1]
    return documented


def _env_example() -> dict[str, str]:
    documented: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        assert equals and name not in documented, f".env.example: {line!r} is not a new NAME=value line"
        documented[name] = value
    return documented


@pytest.mark.parametrize("doc, read", [("README.md", _readme_configuration_table), (".env.example", _env_example)])
def test_docs_list_exactly_the_settings(doc, read):
    documented = read()
    missing, unknown = sorted(set(SETTING_NAMES) - set(documented)), sorted(set(documented) - set(SETTING_NAMES))
    assert not missing, f"{doc} does not document {missing}"
    assert not unknown, f"{doc} documents {unknown}, which the code does not know"


def test_readme_defaults_are_the_code_defaults():
    documented = _readme_configuration_table()
    # The one default that is computed, not a constant: the SQLite file in the XDG data directory.
    sqlite_file = load_settings(environ={}).database_url.removeprefix("sqlite:///").replace(str(Path.home()), "~")
    for s in SETTINGS:
        cell = documented[s.env]
        if s.default is REQUIRED:
            assert f"`{sqlite_file}`" in cell, f"README: {s.env} defaults to {sqlite_file}, the table says {cell!r}"
        elif s.default is None:
            assert cell.startswith("none"), f"README: {s.env} has no default, the table says {cell!r}"
        else:
            assert cell in (s.default_text, f"`{s.default_text}`"), (
                f"README: {s.env} defaults to {s.default_text!r}, the table says {cell!r}"
            )


def test_env_example_values_are_the_code_defaults():
    """A copy of .env.example behaves like no env file at all: each setting is empty or its default."""
    documented = _env_example()
    for s in SETTINGS:
        assert documented[s.env] == s.default_text, f".env.example: {s.env}={documented[s.env]!r}, the default is {s.default_text!r}"


@pytest.mark.parametrize("doc", ["README.md", ".env.example"])
def test_docs_mention_no_unknown_setting(doc):
    """A renamed or removed setting does not linger in the prose either."""
    mentioned = set(re.findall(r"\b(?:EMSYNC|META|GOOGLE|CRON)_[A-Z0-9_]+\b", (ROOT / doc).read_text()))
    not_settings = {"EMSYNC_ENV_FILE", "EMSYNC_TEST_POSTGRES_URL"}  # read elsewhere: by load_settings itself, by the tests
    not_settings.add("EMSYNC_CONCURENCY")  # the README's example of a misspelt setting
    unknown = sorted(mentioned - set(SETTING_NAMES) - not_settings)
    assert not unknown, f"{doc} mentions {unknown}: not settings (add real non-settings to not_settings here)"


# ---------------------------------------------------------------- env files: strict, with warnings and origins


@pytest.mark.parametrize(
    "content, line, reason",
    [
        (b"EMSYNC_CONCURRENCY=3\nMETA_APP_ID=caf\xe9\n", 2, "not UTF-8"),
        (b"# settings\n\nEMSYNC_CONCURRENCY 3\n", 3, "not NAME=value (no '=')"),
        (b"EMSYNC_CONCURRENCY=3\nEMSYNC_LOOKBACK_DAYS\n", 2, "not NAME=value (no '=')"),
        (b"EMSYNC-CONCURRENCY=3\n", 1, "'EMSYNC-CONCURRENCY' is not a name"),
        (b"=3\n", 1, "not NAME=value (nothing before '=')"),
        (b'META_APP_ID="12345\nEMSYNC_CONCURRENCY=3\n', 1, "the value's opening \" is never closed"),
    ],
)
@pytest.mark.parametrize("command", [("users", "list"), ("secret",), ("init",)])
def test_a_bad_env_file_is_exit_2_naming_file_line_and_reason_for_every_command(cli, tmp_path, content, line, reason, command):
    env_file = tmp_path / "bad.env"
    env_file.write_bytes(content)
    result = cli("--env-file", env_file, *command)
    assert result.code == 2 and result.out == ""
    assert result.err.startswith(f"emsync: env file {env_file} line {line}: {reason}")
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert not (tmp_path / "home" / ".local" / "share" / "emsync").exists(), "nothing written"


def test_the_working_directory_env_file_is_read_as_strictly(cli, tmp_path):
    (tmp_path / "work" / ".env").write_text("EMSYNC_CONCURRENCY: 3\n")
    result = cli("users", "list")
    assert result.code == 2 and f"env file {tmp_path / 'work' / '.env'} line 1: not NAME=value" in result.err


def test_an_env_file_that_is_a_directory_says_so(cli, tmp_path):
    (tmp_path / "conf").mkdir()
    result = cli("--env-file", tmp_path / "conf", "secret")
    assert (result.code, result.err) == (2, f"emsync: env file {tmp_path / 'conf'} is a directory, not a file of NAME=value lines\n")
    user_file = tmp_path / "home" / ".config" / "emsync" / "emsync.env"
    user_file.mkdir(parents=True)
    assert cli("users", "list").code == 2


def test_a_dotenv_virtualenv_directory_in_the_working_directory_is_passed_over(cli, tmp_path, monkeypatch):
    (tmp_path / "work" / ".env").mkdir()  # python -m venv .env
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    assert cli("init").code == 0
    assert cli("users", "list").code == 0


def test_help_works_whatever_the_env_file_holds(cli, tmp_path):
    env_file = tmp_path / "bad.env"
    env_file.write_bytes(b"\xff\xfe")
    result = cli("--env-file", env_file, "users", "list", "--help")
    assert result.code == 0 and "List users" in result.out


def test_env_files_take_python_dotenv_syntax(tmp_path):
    env_file = tmp_path / "ok.env"
    env_file.write_bytes(
        "\ufeff# a comment\r\n\r\nexport EMSYNC_CONCURRENCY=3\r\n"
        "META_APP_ID='12 # 34'\n"
        'EMSYNC_LOG_FILE="/var/log/emsync/emsync.log"  # where\n'
        "  EMSYNC_LOOKBACK_DAYS = 7\n"
        'META_CONVERSION_ACTION_TYPES="purchase,\nlead"\n'
        "EMSYNC_RECENT_DAYS=\n".encode()
    )
    settings = load_settings(str(env_file), environ={})
    assert (settings.concurrency, settings.meta_app_id, settings.log_file) == (3, "12 # 34", "/var/log/emsync/emsync.log")
    assert settings.lookback_days == 7 and settings.meta_conversion_action_types == ("purchase", "lead")
    assert settings.recent_days == 3, "an empty value is unset: the default"


def test_a_misspelt_setting_in_an_env_file_is_a_warning_naming_the_closest_one(cli, tmp_path, monkeypatch):
    env_file = tmp_path / "typo.env"
    env_file.write_text(f"EMSYNC_SECRET_KEY={TEST_KEY}\nEMSYNC_CONCURENCY=4\nGOOGLE_OATH_CLIENT_ID=x\nEMSYNC_FOO=1\nOTHER_TOOL=1\n")
    result = cli("--env-file", env_file, "secret")
    assert result.code == 0
    assert result.err.splitlines() == [
        f"emsync: warning: {env_file} line 2: unknown setting EMSYNC_CONCURENCY (did you mean EMSYNC_CONCURRENCY?); ignored",
        f"emsync: warning: {env_file} line 3: unknown setting GOOGLE_OATH_CLIENT_ID (did you mean GOOGLE_OAUTH_CLIENT_ID?); ignored",
        f"emsync: warning: {env_file} line 4: unknown setting EMSYNC_FOO (see .env.example for the settings); ignored",
    ]
    assert load_settings(str(env_file), environ={}).concurrency == 8


def test_unknown_names_in_the_process_environment_are_not_warned_about(cli, monkeypatch):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/etc/gcloud.json")  # another program's
    monkeypatch.setenv("EMSYNC_CONCURENCY", "4")
    result = cli("secret")
    assert result.code == 0 and result.err == ""


def test_a_setting_set_twice_in_one_file_is_a_warning(cli, tmp_path):
    env_file = tmp_path / "twice.env"
    env_file.write_text(f"EMSYNC_SECRET_KEY={TEST_KEY}\nEMSYNC_CONCURRENCY=4\n# later\nEMSYNC_CONCURRENCY=5\n")
    result = cli("--env-file", env_file, "secret")
    assert result.err == f"emsync: warning: {env_file} line 4: EMSYNC_CONCURRENCY is set again (first on line 2); this line wins\n"
    assert load_settings(str(env_file), environ={}).concurrency == 5


def test_an_invalid_value_says_where_it_came_from(cli, tmp_path, monkeypatch):
    env_file = tmp_path / "app.env"
    env_file.write_text("EMSYNC_LOOKBACK_DAYS=7\n\nEMSYNC_CONCURRENCY=many\n")
    result = cli("--env-file", env_file, "users", "list")
    assert result.err == f"emsync: EMSYNC_CONCURRENCY must be a whole number, got 'many' (set in {env_file} line 3)\n"
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "0")
    result = cli("--env-file", env_file, "users", "list")
    assert result.err == "emsync: EMSYNC_CONCURRENCY must be between 1 and 256, got 0 (set in the environment)\n"
    env_file.write_text("EMSYNC_LOOKBACK_DAYS=7\n\nEMSYNC_CONCURRENCY=5\n")
    settings = load_settings(str(env_file), environ={"EMSYNC_CONCURRENCY": "6"})
    assert settings.concurrency == 6 and settings.origin("EMSYNC_CONCURRENCY") == "the environment"
    assert settings.origin("EMSYNC_LOOKBACK_DAYS") == f"{env_file} line 1" and settings.origin("EMSYNC_RECENT_DAYS") == "the default"


def test_errors_about_a_value_found_later_say_where_it_was_set(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    env_file = tmp_path / "app.env"
    env_file.write_text(f"EMSYNC_DATABASE_URL=sqlite:///{tmp_path / 'x.db'}\nEMSYNC_LOG_FILE={tmp_path / 'no' / 'such' / 'dir.log'}\n")
    assert cli("--env-file", env_file, "init").code == 0
    result = cli("--env-file", env_file, "sync-all")
    assert result.code == 2 and result.err.endswith(f"No such file or directory (set in {env_file} line 2)\n")
    pytest.importorskip("uvicorn")
    monkeypatch.setenv("CRON_SECRET", "short-secret")
    result = cli("--env-file", env_file, "serve")
    assert result.code == 2 and "shorter than 32 characters (set in the environment)" in result.err


def test_a_postgresql_url_without_its_driver_says_which_extra_to_install(monkeypatch):
    """The Quick start installs emsync without the postgres extra: pointing it at PostgreSQL must be a setting's
    error (one line, exit 2), not an internal error."""
    import sys

    from emsync import db
    from emsync.errors import ConfigError

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"driver \(psycopg\) is not installed: pip install 'emsync\[postgres\]'") as caught:
        db.make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    assert caught.value.exit_code == 2
