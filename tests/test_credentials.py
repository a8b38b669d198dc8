"""Credentials shared by integrations: one refresh or renewal per credential, updates that reach every integration using
it, credentials list/remove (with Google's revocation), integrations check and integrations import."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from .conftest import add_google, add_meta
from .helpers import integration

ANNA = "anna@example.com"


def _credentials(cli) -> list[dict]:
    result = cli("credentials", "list", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _table(engine, table: str) -> list[tuple]:
    order = "integration_id, campaign_id, date" if table == "campaign_metrics" else "id"
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))]


# ---------------------------------------------------------------- sharing in the sync path


def test_one_google_refresh_per_credential_for_concurrent_integrations(cli, engine, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "4")
    sb = make_sandbox()
    ids = [add_google(cli, ANNA, f"{n}" * 10, "1//shared-refresh") for n in range(1, 5)]
    other = add_google(cli, "bob@example.com", "5555555555", "1//shared-refresh")
    credentials = _credentials(cli)
    assert [sorted(c["integrations"]) for c in credentials] == [ids, [other]], "the same user's identical token is one credential"
    assert cli("sync-all").code == 0
    assert sb.count("google.token") == 2, "one refresh per credential, whatever the threads"
    assert all(integration(cli, i)["status"] == "ok" for i in [*ids, other])
    sb.reset_log()
    assert cli("sync-all").code == 0 and sb.count("google.token") == 0, "the cached access token serves the next run"


def test_a_revoked_credential_is_tried_once_per_run(cli, make_sandbox, sqlite_url, monkeypatch):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "3")
    sb = make_sandbox({"revoked_refresh_tokens": ["1//revoked"]})
    ids = [add_google(cli, ANNA, f"{n}" * 10, "1//revoked") for n in range(1, 4)]
    assert cli("sync-all").code == 1
    assert sb.count("google.token") == 1
    assert all(integration(cli, i)["status"] == "needs_reauth" for i in ids)
    assert all("invalid_grant" in integration(cli, i)["last_error"] for i in ids)


def test_one_meta_renewal_per_credential(cli, make_sandbox, sqlite_url, monkeypatch):
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "3")
    sb = make_sandbox()
    soon = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    ids = [add_meta(cli, ANNA, f"act_{n}", "EAABshared-expiring", "--token-expires-at", soon) for n in (1, 2, 3)]
    assert cli("sync-all").code == 0
    assert sb.count("meta.token_exchange") == 1
    expiries = {integration(cli, i)["token_expires_at"] for i in ids}
    assert len(expiries) == 1 and expiries.pop() > (datetime.now(UTC) + timedelta(days=50)).isoformat()


def test_update_on_a_shared_credential_updates_and_names_every_integration(cli, sq_engine, make_sandbox):
    make_sandbox({"revoked_refresh_tokens": ["1//revoked"]})
    ids = [add_google(cli, ANNA, f"{n}" * 10, "1//revoked") for n in (1, 2)]
    alone = add_google(cli, ANNA, "3333333333", "1//another")
    assert cli("sync-all").code == 1
    result = cli("integrations", "update", str(ids[0]), "--refresh-token", "1//fresh")
    assert result.code == 0, result.err
    assert f"Updated integration {ids[0]}" in result.out and f"Updated integration {ids[1]}" in result.out
    assert f"integration {alone}" not in result.out and "shares credential" in result.out
    assert [integration(cli, i)["status"] for i in ids] == ["never_synced", "never_synced"]
    assert cli("sync-all").code == 0
    assert cli("integrations", "update", str(ids[1]), "--login-customer-id", "111-222-3333").out.count("Updated integration") == 1


def test_integrations_list_and_status_name_the_credential(cli, make_sandbox, sqlite_url):
    make_sandbox()
    meta = add_meta(cli)
    google = add_google(cli)
    listed = {i["id"]: i["credential_id"] for i in json.loads(cli("integrations", "list", "--json").out)}
    status = {i["id"]: i["credential_id"] for i in json.loads(cli("status", "--json").out)["integrations"]}
    assert listed == status and len(set(listed.values())) == 2 and set(listed) == {meta, google}
    table = cli("integrations", "list").out
    assert "cred" in table


# ---------------------------------------------------------------- credentials list / remove


def test_credentials_list_never_shows_a_token(cli, make_sandbox, sqlite_url):
    make_sandbox()
    first = add_meta(cli, ANNA, "act_1", "EAABdistinctive-token-1")
    second = add_meta(cli, ANNA, "act_2", "EAABdistinctive-token-1")
    add_google(cli, "bob@example.com", "1111111111", "1//distinctive-refresh")
    listed = _credentials(cli)
    assert [(c["platform"], c["integrations"], c["emails"]) for c in listed] == [
        ("meta", [first, second], [ANNA]),
        ("google", [3], ["bob@example.com"]),
    ]
    human = cli("credentials", "list").out
    assert "distinctive" not in json.dumps(listed) + human and "anna@example.com" in human


def test_remove_is_refused_while_used_then_revokes_and_removes_with_its_integrations(cli, sq_engine, make_sandbox):
    sb = make_sandbox()
    ids = [add_google(cli, ANNA, f"{n}" * 10, "1//to-be-removed") for n in (1, 2)]
    kept = add_meta(cli)
    assert cli("sync-all").code == 0
    credential = integration(cli, ids[0])["credential_id"]
    refused = cli("credentials", "remove", str(credential))
    assert refused.code == 2 and f"used by integrations {ids[0]}, {ids[1]}" in refused.err
    unconfirmed = cli("credentials", "remove", str(credential), "--with-integrations")
    assert unconfirmed.code == 2 and "--yes" in unconfirmed.err
    assert sb.count("google.revoke") == 0 and len(_credentials(cli)) == 2

    done = cli("credentials", "remove", str(credential), "--with-integrations", "--yes")
    assert done.code == 0, done.err
    assert "2 integrations" in done.out and "revoked at Google" in done.out
    assert sb.count("google.revoke") == 1 and "1//to-be-removed" in sb.scenario["revoked_refresh_tokens"]
    assert [c["integrations"] for c in _credentials(cli)] == [[kept]]
    with sq_engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM campaign_metrics WHERE integration_id IN (:a, :b)"), dict(a=ids[0], b=ids[1])).scalar()
            == 0
        )
        assert conn.execute(text("SELECT count(*) FROM campaign_metrics")).scalar() > 0, "the other integration's rows stay"


def test_an_unused_meta_credential_is_removed_without_calling_anyone(cli, make_sandbox, sqlite_url):
    sb = make_sandbox()
    meta = add_meta(cli)
    credential = integration(cli, meta)["credential_id"]
    assert cli("integrations", "remove", str(meta), "--yes").code == 0
    sb.reset_log()
    done = cli("credentials", "remove", str(credential), "--yes")
    assert done.code == 0 and _credentials(cli) == [] and sb.count() == 0
    assert cli("credentials", "remove", str(credential), "--yes").code == 2


def test_a_failed_revocation_removes_nothing(cli, make_sandbox, sqlite_url, monkeypatch):
    make_sandbox()
    google = add_google(cli)
    credential = integration(cli, google)["credential_id"]
    assert cli("integrations", "remove", str(google), "--yes").code == 0
    monkeypatch.setenv("GOOGLE_OAUTH_REVOKE_URL", "http://127.0.0.1:1/revoke")
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "1")
    result = cli("credentials", "remove", str(credential), "--yes")
    assert result.code == 2 and "could not revoke" in result.err and "nothing was removed" in result.err
    assert [c["id"] for c in _credentials(cli)] == [credential]


# ---------------------------------------------------------------- integrations check

CHECKS = {
    "revoked_refresh_tokens": ["1//revoked"],
    "meta_revoked_tokens": ["EAABrevoked"],
    "google_customers": {
        "2222222222": {"manager": "9999999999"},  # reached only through a manager
        "3333333333": {"status": "CANCELED"},
    },
    "meta_accounts": {"7": {"account_status": 2}, "8": {"faults": [{"kind": "permission", "endpoint": "account"}]}},
}


def test_check_names_each_problem_with_its_fix_and_writes_only_the_cached_token(cli, engine, make_sandbox):
    sb = make_sandbox(CHECKS)
    ok_google = add_google(cli, ANNA, "1111111111", "1//good")
    no_manager = add_google(cli, ANNA, "2222222222", "1//good")
    cancelled = add_google(cli, ANNA, "3333333333", "1//good")
    revoked = add_google(cli, ANNA, "4444444444", "1//revoked")
    ok_meta = add_meta(cli, ANNA, "act_6", "EAABgood")
    disabled = add_meta(cli, ANNA, "act_7", "EAABgood")
    no_access = add_meta(cli, ANNA, "act_8", "EAABgood")
    meta_revoked = add_meta(cli, ANNA, "act_9", "EAABrevoked")
    before = {t: _table(engine, t) for t in ("users", "integrations", "campaign_metrics", "sync_runs")}
    credentials_before = _table(engine, "credentials")

    result = cli("integrations", "check", "--all", "--json")
    assert result.code == 1, result.err
    checks = {c["id"]: c for c in json.loads(result.out)}
    assert [i for i, c in checks.items() if c["ok"]] == [ok_google, ok_meta]
    assert "USER_PERMISSION_DENIED" in checks[no_manager]["problem"] and "--login-customer-id" in checks[no_manager]["fix"]
    assert (
        "cancelled or suspended" in checks[cancelled]["problem"] and checks[cancelled]["fix"] == f"emsync integrations disable {cancelled}"
    )
    assert "invalid_grant" in checks[revoked]["problem"] and checks[revoked]["fix"] == f"emsync connect google --email {ANNA}"
    assert "DISABLED" in checks[disabled]["problem"]
    assert "cannot read this ad account" in checks[no_access]["problem"]
    assert "not valid" in checks[meta_revoked]["problem"] and "connect meta" in checks[meta_revoked]["fix"]
    assert sb.count("google.token") == 2 and sb.count("meta.debug_token") == 2, "one token call per credential"
    assert sb.count("google.customer_client") == 3 and sb.count("meta.account") == 3, "one call per reachable account"

    assert {t: _table(engine, t) for t in before} == before, "a check writes no integration, row or run"
    with engine.connect() as conn:
        spent = [tuple(r) for r in conn.execute(text("SELECT source, operations FROM google_operations"))]
    assert spent == [("check", 3)], "the customer_client calls are in the ledger"
    after = _table(engine, "credentials")
    changed = [
        (b[0], [k for k, (x, y) in enumerate(zip(b, a, strict=True)) if x != y]) for b, a in zip(credentials_before, after, strict=True)
    ]
    good_google = integration(cli, ok_google)["credential_id"]
    assert [c for c in changed if c[1]] == [(good_google, changed_columns(engine))], "only the good Google credential's cached token"

    human = cli("integrations", "check", str(ok_google), str(ok_meta))
    assert human.code == 0 and "2 OK, 0 with problems" in human.out
    assert sb.count("google.token") == 2, "the cached access token was saved and reused"


def changed_columns(engine) -> list[int]:
    with engine.connect() as conn:
        names = list(conn.execute(text("SELECT * FROM credentials")).keys())
    return [names.index(c) for c in ("updated_at", "cached_access_token_enc", "cached_access_token_expires_at")]


def test_check_needs_ids_or_all(cli, sqlite_url):
    for args in ([], ["1", "--all"]):
        result = cli("integrations", "check", *args)
        assert result.code == 2 and "ids or --all" in result.err
    assert cli("integrations", "check", "42").code == 2


# ---------------------------------------------------------------- integrations import


def _credential_ids(cli, sandbox) -> tuple[int, int]:
    google = integration(cli, add_google(cli, "owner@example.com", "1000000001", "1//agency"))["credential_id"]
    meta = integration(cli, add_meta(cli, "owner@example.com", "act_1", "EAABagency"))["credential_id"]
    return google, meta


def test_import_csv_creates_users_and_integrations_and_is_idempotent(cli, sq_engine, make_sandbox, tmp_path):
    sb = make_sandbox()
    google, meta = _credential_ids(cli, sb)
    path = tmp_path / "clients.csv"
    path.write_text(
        "email,platform,account_id,login_customer_id,credential_id\n"
        f"Anna@Example.com,google,123-456-7890,100-000-0001,{google}\n"
        f"anna@example.com,meta,act_22,,{meta}\n"
        f"bob@example.com,meta,23,,{meta}\n"
    )
    first = cli("integrations", "import", str(path))
    assert first.code == 0, first.err
    assert "3 added, 0 updated, 0 unchanged, 2 users added" in first.out
    found = {i["account_id"]: i for i in json.loads(cli("integrations", "list", "--json").out)}
    assert (found["1234567890"]["email"], found["1234567890"]["login_customer_id"], found["1234567890"]["credential_id"]) == (
        ANNA,
        "1000000001",
        google,
    )
    assert (found["23"]["email"], found["23"]["credential_id"]) == ("bob@example.com", meta)
    snapshot = _table(sq_engine, "integrations")
    again = cli("integrations", "import", str(path))
    assert again.code == 0 and "0 added, 0 updated, 3 unchanged, 0 users added" in again.out
    assert _table(sq_engine, "integrations") == snapshot
    assert cli("sync-all").code == 0, "imported integrations sync with the credentials they name"


def test_import_json_repoints_an_existing_integration(cli, make_sandbox, sqlite_url, tmp_path):
    sb = make_sandbox()
    google, _ = _credential_ids(cli, sb)
    existing = add_google(cli, ANNA, "1234567890", "1//typed-in")
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([{"email": ANNA, "platform": "google", "account_id": "1234567890", "credential_id": google}]))
    result = cli("integrations", "import", str(path))
    assert result.code == 0 and "0 added, 1 updated" in result.out
    assert integration(cli, existing)["credential_id"] == google


def test_a_bad_import_names_every_bad_line_and_writes_nothing(cli, sq_engine, make_sandbox, tmp_path):
    sb = make_sandbox()
    google, meta = _credential_ids(cli, sb)
    before = {t: _table(sq_engine, t) for t in ("users", "integrations", "credentials")}
    path = tmp_path / "clients.csv"
    path.write_text(
        "email,platform,account_id,login_customer_id,credential_id\n"
        f"anna@example.com,google,123-456-7890,,{google}\n"
        f"anna@example.com,meta,act_12x,,{meta}\n"
        "\n"
        f"bob@example.com,meta,act_5,,{google}\n"
        "carol@example.com,google,1234567890,,999\n"
        f"anna@example.com,google,1234567890,,{google}\n"
        f"dave@example.com,meta,act_6,111-222-3333,{meta}\n"
    )
    result = cli("integrations", "import", str(path))
    assert result.code == 2, result.out
    lines = result.err.splitlines()
    assert lines[-1] == f"emsync: 5 bad entries in {path}; nothing imported"
    assert [line.split(": ")[1] for line in lines[:-1]] == ["line 3", "line 5", "line 6", "line 7", "line 8"]
    assert "Meta ad account id" in lines[0] and f"credential {google} is a google credential, not meta" in lines[1]
    assert "no credential 999" in lines[2] and "already listed at line 2" in lines[3] and "Google customers only" in lines[4]
    assert {t: _table(sq_engine, t) for t in before} == before


@pytest.mark.parametrize(
    "content, message",
    [
        ("email,platform,account\nanna@example.com,meta,1\n", "the header line must name the columns"),
        ('{"email": "anna@example.com"}', "JSON array"),
        ("[]", "holds no integrations"),
        ("[1]", "entry 1: must be an object"),
        ('[{"email": "anna@example.com", "platform": "meta", "account_id": "1", "credential_id": 1, "token": "x"}]', "unknown field"),
    ],
)
def test_import_refuses_files_of_the_wrong_shape(cli, sqlite_url, tmp_path, content, message):
    path = tmp_path / ("clients.json" if content.lstrip()[:1] in "[{" else "clients.csv")
    path.write_text(content)
    result = cli("integrations", "import", str(path))
    assert result.code == 2 and message in result.err
    assert json.loads(cli("users", "list", "--json").out) == []


def test_import_of_a_missing_file_is_one_line(cli, sqlite_url, tmp_path):
    result = cli("integrations", "import", str(tmp_path / "nope.csv"))
    assert result.code == 2 and "cannot read" in result.err and result.err.count("\n") == 1


def test_check_all_leaves_disabled_integrations_out_unless_named(cli, make_sandbox, sqlite_url):
    sb = make_sandbox({"meta_accounts": {"7": {"account_status": 101}}})
    ok = add_meta(cli, ANNA, "act_6", "EAABgood")
    closed = add_meta(cli, ANNA, "act_7", "EAABgood")
    assert cli("integrations", "check", "--all").code == 1
    assert cli("integrations", "disable", str(closed)).code == 0
    checked = cli("integrations", "check", "--all", "--json")
    assert checked.code == 0 and [c["id"] for c in json.loads(checked.out)] == [ok]
    named = cli("integrations", "check", str(closed), "--json")
    assert named.code == 1 and "CLOSED" in json.loads(named.out)[0]["problem"]
    assert sb.count("meta.account", "7") == 2
