"""Secrets never leave: run every kind of scenario with distinctive secrets, then scan everything emsync wrote."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from ..conftest import add_google, add_meta
from ..test_server import serve  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("any_db")

META_APP_SECRET = "zz-meta-app-secret-7f3a9c"
GOOGLE_CLIENT_SECRET = "zz-google-client-secret-51be0d"
CRON_SECRET = "zz-cron-secret-" + "q" * 40
TOKENS = {
    "healthy": "EAABzz-meta-token-healthy-1a",
    "expiring": "EAABzz-meta-token-expiring-2b",
    "revoked": "EAABzz-meta-token-revoked-3c",
    "flaky": "EAABzz-meta-token-flaky-4d",
    "g-healthy": "1//zz-google-refresh-healthy-5e",
    "g-revoked": "1//zz-google-refresh-revoked-6f",
    "g-401": "1//zz-google-refresh-401-7a",
    "g-quota": "1//zz-google-refresh-quota-8b",
}


def test_no_secret_anywhere(cli, engine, make_sandbox, monkeypatch, tmp_path, backend, db_url, serve):  # noqa: F811
    log_file = tmp_path / "emsync.log"
    monkeypatch.setenv("EMSYNC_LOG_FILE", str(log_file))
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "2")
    sb = make_sandbox(
        {
            "meta_app_secret": META_APP_SECRET,
            "google_client_secret": GOOGLE_CLIENT_SECRET,
            "meta_revoked_tokens": [TOKENS["revoked"]],
            "revoked_refresh_tokens": [TOKENS["g-revoked"]],
            "meta_accounts": {"4": {"campaigns": 20, "faults": [{"kind": "page_error", "page": 2}]}},
            "google_customers": {
                "3333333333": {"faults": [{"kind": "unauthenticated", "times": 1}]},
                "4444444444": {"faults": [{"kind": "quota_exhausted"}]},
            },
        }
    )
    soon = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    add_meta(cli, "anna@example.com", "act_1", TOKENS["healthy"])
    add_meta(cli, "anna@example.com", "act_2", TOKENS["expiring"], "--token-expires-at", soon)
    add_meta(cli, "anna@example.com", "act_3", TOKENS["revoked"])
    add_meta(cli, "anna@example.com", "act_4", TOKENS["flaky"])
    add_google(cli, "anna@example.com", "1111111111", TOKENS["g-healthy"])
    add_google(cli, "anna@example.com", "2222222222", TOKENS["g-revoked"])
    add_google(cli, "anna@example.com", "3333333333", TOKENS["g-401"])
    add_google(cli, "anna@example.com", "4444444444", TOKENS["g-quota"])

    captured = [
        cli("--verbose", "sync-all"),
        cli("sync-all", "--json", "--full"),
        cli("sync-user", "anna@example.com", "--json"),
        cli("--verbose", "sync-all", "--quiet", "--full"),
        cli("status"),
        cli("status", "--json"),
        cli("status", "--check"),
        cli("integrations", "list"),
        cli("integrations", "list", "--json"),
        cli("users", "list", "--json"),
    ]
    texts = [r.out + r.err for r in captured]
    process = subprocess.run(
        [sys.executable, "-m", "emsync", "--verbose", "sync-all", "--full"], capture_output=True, text=True, timeout=120
    )
    texts += [process.stdout, process.stderr]

    monkeypatch.setenv("CRON_SECRET", CRON_SECRET)
    url = serve()
    auth = {"Authorization": f"Bearer {CRON_SECRET}"}
    for response in (
        requests.post(f"{url}/api/cron/sync-all", headers=auth, timeout=5),
        requests.get(f"{url}/api/status", headers=auth, timeout=5),
        requests.get(f"{url}/api/runs/1", headers=auth, timeout=5),
        requests.post(f"{url}/api/sync/user", headers={"Authorization": "Bearer wrong"}, json={"email": "x@example.com"}, timeout=5),
    ):
        texts.append(response.text + str(dict(response.headers)))
    texts.append(log_file.read_text())

    with engine.connect() as conn:
        errors = [r[0] or "" for r in conn.execute(text("SELECT last_error FROM integrations"))]
        errors += [r[0] or "" for r in conn.execute(text("SELECT error FROM sync_attempts"))]
    assert any("190/460" in e for e in errors) and any("invalid_grant" in e for e in errors), "the scenarios did fail"
    texts += errors
    if backend == "sqlite":
        engine.dispose()
        database = Path(db_url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*") if p.is_file())
        texts.append(raw.decode("latin-1"))
    else:
        with engine.connect() as conn:
            for table in ("users", "integrations", "campaign_metrics", "sync_runs", "sync_attempts", "alembic_version"):
                texts.append("\n".join(r[0] for r in conn.execute(text(f"SELECT row_to_json(t)::text FROM {table} t"))))

    secrets = [*TOKENS.values(), META_APP_SECRET, GOOGLE_CLIENT_SECRET, CRON_SECRET, *sb.meta_tokens_issued, *sb.google_access_tokens]
    import os

    secrets.append(os.environ["EMSYNC_SECRET_KEY"])
    assert len(sb.meta_tokens_issued) >= 1 and len(sb.google_access_tokens) >= 3, "renewed and issued tokens are part of the scan"
    everything = "\n".join(texts)
    leaks = [s for s in secrets if s in everything]
    assert leaks == []
