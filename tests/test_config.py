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
    assert {f.name for f in fields(Settings)} == {s.attr for s in SETTINGS} | {"env_file"}
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
    unknown = sorted(mentioned - set(SETTING_NAMES) - not_settings)
    assert not unknown, f"{doc} mentions {unknown}: not settings (add real non-settings to not_settings here)"
