"""Settings: sources, precedence, validation (exit 2 naming the setting), secrets kept out of repr."""

from __future__ import annotations

import pytest

from emsync.config import load_settings
from emsync.errors import ConfigError

from .conftest import TEST_KEY


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
