"""Schema 0004: a database made by schema 0001, holding tokens, is upgraded by `emsync init` and then synced."""

from __future__ import annotations

import json

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from emsync import db
from emsync.config import user_env_file
from emsync.crypto import TokenBox, new_key

from .conftest import TEST_KEY
from .helpers import integration

T0 = "2026-11-01 08:00:00+00:00"
PAST = "2026-11-01 09:00:00+00:00"


def _database_at_0001(url: str):
    """The schema of the release before credentials existed (tokens on each integration)."""
    engine = db.make_engine(url, create=True)
    cfg = Config()
    cfg.set_main_option("script_location", "emsync:migrations")
    with db.write_transaction(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    return engine


def _integration(conn, id_, user, platform, account, *, access=None, refresh=None, cached=None, expires=None):
    conn.execute(
        text(
            "INSERT INTO integrations (id, user_id, platform, account_id, is_active, status, created_at, updated_at, "
            "access_token_enc, refresh_token_enc, cached_access_token_enc, cached_access_token_expires_at, token_expires_at) "
            "VALUES (:id, :user, :platform, :account, :active, 'ok', :t, :t, :access, :refresh, :cached, :cached_at, :expires)"
        ),
        dict(
            id=id_,
            user=user,
            platform=platform,
            account=account,
            active=True,
            t=T0,
            access=access,
            refresh=refresh,
            cached=cached,
            cached_at=PAST if cached else None,
            expires=expires,
        ),
    )


@pytest.fixture
def old_database(empty_db_url, monkeypatch):
    """A 0001 database with users, five integrations (three holding one Google token, one stored under another key),
    a metric row, a run and an attempt. Returns (url, engine, the other key's box, that integration's ciphertext)."""
    monkeypatch.setenv("EMSYNC_DATABASE_URL", empty_db_url)
    monkeypatch.setenv("EMSYNC_SECRET_KEY", TEST_KEY)
    engine = _database_at_0001(empty_db_url)
    box, other = TokenBox(TEST_KEY), TokenBox(new_key())
    lost_key_blob = other.encrypt("1//stored-under-an-older-key")
    with db.write_transaction(engine) as conn:
        conn.execute(
            text("INSERT INTO users (id, email, created_at) VALUES (1, 'anna@example.com', :t), (2, 'bob@example.com', :t)"), {"t": T0}
        )
        _integration(conn, 1, 1, "meta", "1", access=box.encrypt("EAABmeta-anna"), expires="2027-01-01 00:00:00+00:00")
        _integration(conn, 2, 1, "google", "1111111111", refresh=box.encrypt("1//shared"), cached=box.encrypt("ya29.stale"))
        _integration(conn, 3, 1, "google", "2222222222", refresh=box.encrypt("1//shared"))
        _integration(conn, 4, 2, "google", "3333333333", refresh=box.encrypt("1//shared"))
        _integration(conn, 5, 1, "google", "4444444444", refresh=lost_key_blob)
        conn.execute(
            text(
                "INSERT INTO campaign_metrics (integration_id, campaign_id, date, spend, impressions, clicks, conversions, revenue, "
                "synced_at) VALUES (1, 'old-campaign', '2025-01-01', 1, 1, 1, 0, 0, :t)"
            ),
            {"t": T0},
        )
        conn.execute(
            text(
                "INSERT INTO sync_runs (id, trigger, host, pid, full_window, started_at, heartbeat_at, status, integrations_total, "
                "succeeded, failed, skipped, rows) VALUES (1, 'cron', 'old-host', 1, :f, :t, :t, 'ok', 5, 5, 0, 0, 1)"
            ),
            {"t": T0, "f": False},
        )
        conn.execute(
            text(
                "INSERT INTO sync_attempts (run_id, integration_id, full_window, started_at, status, rows, api_requests, duration_s) "
                "VALUES (1, 5, :f, :t, 'ok', 1, 1, 0.5)"
            ),
            {"t": T0, "f": False},
        )
        if conn.dialect.name == "postgresql":  # rows written with explicit ids: move the sequences on, as real inserts would
            for table in ("users", "integrations", "sync_runs", "sync_attempts"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
    yield empty_db_url, engine, other, lost_key_blob
    engine.dispose()


def test_upgrade_moves_every_token_into_credentials_merges_identical_ones_and_syncs(cli, old_database, make_sandbox, backend):
    url, engine, other, lost_key_blob = old_database
    sb = make_sandbox()
    upgraded = cli("init", "--yes")
    assert upgraded.code == 0, upgraded.err
    assert f"from 0001 to {db.HEAD}" in upgraded.out and "2 duplicate credentials merged" in upgraded.out

    with engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT id, credential_id FROM integrations")).all())
        credentials = {r.id: r for r in conn.execute(text("SELECT * FROM credentials"))}
        kept = conn.execute(text("SELECT count(*) FROM campaign_metrics WHERE campaign_id = 'old-campaign'")).scalar()
        attempts = conn.execute(text("SELECT count(*) FROM sync_attempts")).scalar()
    assert owners[2] == owners[3] == owners[4], "one Google token, one credential, across users too"
    assert len({owners[1], owners[2], owners[5]}) == 3 and len(credentials) == 3
    assert credentials[owners[5]].refresh_token_enc == lost_key_blob, "a token the key cannot decrypt is kept as it was"
    assert other.decrypt(credentials[owners[5]].refresh_token_enc) == "1//stored-under-an-older-key"
    assert TokenBox(TEST_KEY).decrypt(credentials[owners[1]].access_token_enc) == "EAABmeta-anna"
    assert credentials[owners[2]].platform_user is None and (kept, attempts) == (1, 1)
    listed = {i["id"]: i for i in json.loads(cli("integrations", "list", "--json").out)}
    assert {i: listed[i]["credential_id"] for i in listed} == owners
    assert listed[1]["token_expires_at"].startswith("2027-01-01T00:00:00")

    synced = cli("sync-all")
    assert synced.code == 1, synced.err
    assert [integration(cli, i)["status"] for i in (1, 2, 3, 4)] == ["ok"] * 4
    assert "refresh token of credential" in integration(cli, 5)["last_error"]
    assert "emsync integrations update 5 --refresh-token -" in integration(cli, 5)["last_error"]
    assert sb.count("google.token") == 1, "the merged credential is refreshed once for its three integrations"
    assert cli("init").out.startswith("Database") and "merged" not in cli("init").out


@pytest.mark.parametrize("backend", ["sqlite"])  # the refusal comes before any SQL that differs between the databases
@pytest.mark.parametrize("key, message", [(None, "EMSYNC_SECRET_KEY is not set"), ("other", "cannot decrypt any of the 6 stored tokens")])
def test_init_refuses_to_migrate_tokens_it_could_not_read(cli, old_database, monkeypatch, backend, key, message):
    url, engine, *_ = old_database
    if key is None:
        monkeypatch.delenv("EMSYNC_SECRET_KEY")
    else:
        monkeypatch.setenv("EMSYNC_SECRET_KEY", new_key())
    result = cli("init")
    assert result.code == 2 and message in result.err and "restore the key" in result.err
    with engine.connect() as conn:
        assert db.current_revision(conn) == "0001"
    assert not user_env_file().exists(), "no new key written beside tokens it cannot read"
