"""Hostile input: every bad argument or setting gets exit 2, one line, nothing written."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from ..conftest import add_meta

pytestmark = pytest.mark.usefixtures("any_db")

INJECTION = "x'); DROP TABLE users; --"
HUGE = "9" * 5000

BAD_COMMANDS = [
    # emails
    ["users", "add", ""],
    ["users", "add", "anna"],
    ["users", "add", "anna@"],
    ["users", "add", "@example.com"],
    ["users", "add", "anna@example..com"],
    ["users", "add", f"anna{INJECTION}@example.com"],
    ["users", "add", "anna@exämple.com"],
    ["users", "add", "a" * 300 + "@example.com"],
    ["users", "add", "anna@example.com\nbob@example.com"],
    ["users", "add", "ok@example.com", "--name", "x" * 201],
    ["users", "add", "ok@example.com", "--name", "bell\x07"],
    ["sync-user", f"anna@example.com{INJECTION}"],
    ["sync-user", ""],
    # ids
    ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", INJECTION, "--access-token", "T0k3n"],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", HUGE, "--access-token", "T0k3n"],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "act_١٢٣", "--access-token", "T0k3n"],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "", "--access-token", "T0k3n"],
    [
        "integrations",
        "add",
        "--email",
        "anna@example.com",
        "--platform",
        "google",
        "--account-id",
        "123-456-7890' OR '1'='1",
        "--refresh-token",
        "R",
    ],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "google", "--account-id", "12345678901", "--refresh-token", "R"],
    [
        "integrations",
        "add",
        "--email",
        "anna@example.com",
        "--platform",
        "google",
        "--account-id",
        "1234567890",
        "--refresh-token",
        "R",
        "--login-customer-id",
        INJECTION,
    ],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "META ", "--account-id", "1", "--access-token", "T"],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "", "--account-id", "1", "--access-token", "T"],
    # tokens and dates
    ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "1", "--access-token", "tok\x00en"],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "1", "--access-token", "ţøķęñ"],
    ["integrations", "add", "--email", "anna@example.com", "--platform", "meta", "--account-id", "1", "--access-token", "T" * 5000],
    [
        "integrations",
        "add",
        "--email",
        "anna@example.com",
        "--platform",
        "meta",
        "--account-id",
        "1",
        "--access-token",
        "T",
        "--token-expires-at",
        "2027-13-45",
    ],
    [
        "integrations",
        "add",
        "--email",
        "anna@example.com",
        "--platform",
        "meta",
        "--account-id",
        "1",
        "--access-token",
        "T",
        "--token-expires-at",
        INJECTION,
    ],
    # integration ids
    ["integrations", "disable", "-1"],
    ["integrations", "disable", "99999999999999999999"],
    ["integrations", "enable", "1; DROP TABLE integrations"],
    ["integrations", "remove", "0", "--yes"],
    ["integrations", "update", "1"],
    # flags
    ["sync-all", "--platform", "tiktok"],
    ["sync-all", "--platform", INJECTION],
    ["sync-all", "--trigger", "x" * 40],
    ["sync-user", "anna@example.com", "--platform", ""],
    ["sandbox", "--port", "-1"],
    ["serve", "--port", "0"],
]


def _snapshot(engine) -> tuple:
    with engine.connect() as conn:
        return tuple(
            conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
            for t in ("users", "integrations", "campaign_metrics", "sync_runs", "sync_attempts")
        )


@pytest.mark.parametrize("args", BAD_COMMANDS, ids=[" ".join(a)[:60] for a in BAD_COMMANDS])
def test_bad_arguments(cli, engine, args):
    add_meta(cli, "anna@example.com", "act_1")
    before = _snapshot(engine)
    result = cli(*args)
    assert result.code == 2, (result.out, result.err)
    assert result.err.count("\n") == 1 and result.err.startswith("emsync: "), result.err
    assert "Traceback" not in result.err and len(result.err) < 600
    assert _snapshot(engine) == before


BAD_SETTINGS = [
    ("EMSYNC_CONCURRENCY", "1000000000000"),
    ("EMSYNC_CONCURRENCY", "-3"),
    ("EMSYNC_CONCURRENCY", "８"),
    ("EMSYNC_LOOKBACK_DAYS", "100000"),
    ("EMSYNC_LOOKBACK_DAYS", INJECTION),
    ("EMSYNC_HTTP_TIMEOUT", "1e309"),
    ("EMSYNC_HTTP_TIMEOUT", "0"),
    ("EMSYNC_RETRY_ATTEMPTS", "0"),
    ("EMSYNC_RETRY_MAX_WAIT", "nan"),
    ("EMSYNC_DATABASE_URL", "sqlite:///" + "/x" * 3000 + ".db"),
    ("EMSYNC_DATABASE_URL", "oracle://scott:tiger@db/orcl"),
    ("EMSYNC_SECRET_KEY", "not-a-key"),
    ("EMSYNC_SECRET_KEY", "ü" * 44),
    ("EMSYNC_LOG_FORMAT", "JSON; rm -rf /"),
    ("META_GRAPH_URL", "javascript:alert(1)"),
    ("META_API_VERSION", "latest"),
    ("GOOGLE_ADS_API_URL", "http://"),
    ("GOOGLE_OAUTH_TOKEN_URL", "file:///etc/passwd"),
    ("GOOGLE_ADS_DAILY_OPERATIONS", "0"),
    ("EMSYNC_HEALTHCHECK_URL", "not a url"),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=[f"{n}={v[:20]}" for n, v in BAD_SETTINGS])
def test_bad_settings(cli, engine, monkeypatch, name, value):
    add_meta(cli, "anna@example.com", "act_1")
    before = _snapshot(engine)
    monkeypatch.setenv(name, value)
    for command in (["sync-all"], ["users", "add", "new@example.com"], ["status"]):
        result = cli(*command)
        if name == "EMSYNC_DATABASE_URL" and result.code == 2:
            assert "Traceback" not in result.err
        assert result.code == 2, (command, result.err)
        assert result.err.count("\n") == 1 and (name in result.err or "database" in result.err), result.err
    monkeypatch.delenv(name)
    assert _snapshot(engine) == before


def test_strings_that_look_like_sql_are_stored_verbatim(cli, engine):
    assert cli("users", "add", "bobby@example.com", "--name", INJECTION).code == 0
    assert cli("users", "add", "zoe@example.com", "--name", "Zoë 🚀 Żółć").code == 0
    users = json.loads(cli("users", "list", "--json").out)
    assert [u["name"] for u in users] == [INJECTION, "Zoë 🚀 Żółć"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar() == 2


def test_gaql_only_ever_sees_digits_and_dates():
    from emsync.connectors.google import METRICS_QUERY

    assert METRICS_QUERY.count("{") == 2  # since and until: dates emsync formats itself; the customer id is in the URL, validated digits
