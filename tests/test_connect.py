"""`emsync connect google|meta` end to end over real sockets: the test plays the browser (or pastes the token), the
sandbox plays Google and Meta; then the first sync. Errors: one line, exit 2, nothing written."""

from __future__ import annotations

import io
import json
import os
import queue
import socket
import subprocess
import threading
import time
import webbrowser
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import text

from .helpers import expected, integration, quantized, stored, values
from .test_connect_flows import ANNA, META, TREE, Browser


@pytest.fixture(autouse=True)
def http_sandbox_allowed(monkeypatch):
    """oauthlib refuses http URLs; the sandbox is http. Only tests set this, never emsync."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.fixture
def browser(monkeypatch):
    """The person's browser: emsync's webbrowser.open visits the address, consents and follows the redirect."""
    player = Browser()
    monkeypatch.setattr(webbrowser, "open", lambda url, new=0, autoraise=True: player(url) or True)
    return player


class Terminal(io.StringIO):
    """Typed answers on a terminal (stdin.isatty() is true)."""

    def isatty(self) -> bool:
        return True


def _rows(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def _integrations(cli) -> dict[str, dict]:
    return {i["account_id"]: i for i in json.loads(cli("integrations", "list", "--json").out)}


def _credentials(cli) -> list[dict]:
    result = cli("credentials", "list", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


def _nothing_written(engine) -> None:
    assert [_rows(engine, t) for t in ("users", "credentials", "integrations")] == [0, 0, 0]


def _one_error_line(result, message: str) -> None:
    assert result.code == 2, (result.out, result.err)
    errors = [line for line in result.err.splitlines() if line.startswith("emsync:")]
    assert len(errors) == 1 and message in errors[0], result.err
    assert "Traceback" not in result.err


# ---------------------------------------------------------------- Google


def test_connect_google_in_the_browser_adds_the_tree_and_the_first_sync_succeeds(cli, engine, make_sandbox, browser):
    sb = make_sandbox(TREE)
    result = cli("connect", "google", "--email", ANNA, "--all")
    browser.join()
    assert result.code == 0, result.err
    asked = parse_qs(urlsplit(browser.urls[0]).query)
    assert asked["code_challenge_method"] == ["S256"] and len(asked["code_challenge"][0]) == 43, "PKCE"
    assert browser.urls[0] in result.err, "the sign-in address is shown too"
    assert "Signed in to Google as anna@example.com" in result.out and "Hats" in result.out and "CUSTOMER_NOT_ENABLED" in result.out
    found = _integrations(cli)
    # --all: enabled non-manager customers, each with the manager it was found through (None: reached directly)
    assert {a: i["login_customer_id"] for a, i in found.items()} == {
        "2000000001": "1000000001",
        "2000000002": "1000000001",
        "3000000001": None,
    }
    (credential,) = _credentials(cli)
    assert (credential["platform"], credential["platform_user"]) == ("google", ANNA)
    assert "https://www.googleapis.com/auth/adwords" in credential["scopes"]
    assert sorted(credential["integrations"]) == sorted(i["id"] for i in found.values())
    assert {i["credential_id"] for i in found.values()} == {credential["id"]}
    hats = found["2000000002"]
    assert (hats["account_name"], hats["currency"], hats["status"]) == (
        "Hats",
        sb.account("google", "2000000002")["currency"],
        "never_synced",
    )
    assert "Added user anna@example.com" in result.out and "3 added, 0 updated" in result.out
    with engine.connect() as conn:
        spent = conn.execute(text("SELECT source, operations FROM google_operations")).all()
    listed = sb.count("google.list_accessible") + sb.count("google.customer_client")
    assert [tuple(r) for r in spent] == [("connect", listed)] and listed == 4, "discovery's operations are in the ledger"

    sb.reset_log()
    synced = cli("sync-all")
    assert synced.code == 0, synced.err
    assert sb.count("google.token") == 0, "the access token from the sign-in is cached on the credential"
    assert sb.count("google.search_stream", "2000000002") == 1, "discovery already told the currency and time zone"
    assert values(stored(engine, hats["id"])) == quantized(expected(sb, "google", "2000000002"))
    assert all(integration(cli, i["id"])["status"] == "ok" for i in found.values())


def test_connect_google_without_a_browser_reads_back_the_redirected_address(cli, sq_engine, make_sandbox, spawn):
    sb = make_sandbox(TREE)
    process = spawn("connect", "google", "--email", ANNA, "--no-browser", "--account-id", "200-000-0002", stdin=subprocess.PIPE)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    deadline = time.monotonic() + 60
    address = None
    while address is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1).strip()
        except queue.Empty:
            continue
        address = line if line.startswith(f"{sb.url}/o/oauth2/v2/auth?") else None
    assert address, "the command prints the sign-in address"
    location = requests.get(address, allow_redirects=False, timeout=5).headers["Location"]  # the laptop's browser
    assert location.startswith("http://127.0.0.1:")
    process.stdin.write(f"{location}\n")
    process.stdin.close()
    out = process.stdout.read()  # stderr is drained by the thread above
    assert process.wait(timeout=120) == 0, (out, list(lines.queue))
    hats = _integrations(cli)["2000000002"]
    assert hats["login_customer_id"] == "1000000001" and "Added integration" in out
    assert _credentials(cli)[0]["platform_user"] == ANNA


def test_no_browser_with_standard_input_closed_is_one_line_exit_2(cli, sq_engine, make_sandbox, monkeypatch):
    make_sandbox(TREE)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    result = cli("connect", "google", "--email", ANNA, "--no-browser", "--all")
    assert result.code == 2 and "standard input ended before the address was pasted" in result.err
    assert cli("integrations", "list", "--json").out.strip() == "[]"


def test_the_numbered_prompt_chooses_and_asks_again_after_a_wrong_answer(cli, sq_engine, make_sandbox, browser, monkeypatch):
    make_sandbox(TREE)
    # 1: the agency manager (refused: no campaigns); then 3 and 7: Shoes (under the manager) and the own account
    monkeypatch.setattr("sys.stdin", Terminal("1\n3,7\n"))
    result = cli("connect", "google", "--email", ANNA)
    browser.join()
    assert result.code == 0, result.err
    assert "manager account" in result.err and "try again" in result.err
    assert sorted(_integrations(cli)) == ["2000000001", "3000000001"]


def test_an_empty_answer_connects_nothing(cli, sq_engine, make_sandbox, browser, monkeypatch):
    make_sandbox(TREE)
    monkeypatch.setattr("sys.stdin", Terminal("\n"))
    result = cli("connect", "google", "--email", ANNA)
    browser.join()
    assert result.code == 0 and "nothing was connected" in result.out
    _nothing_written(sq_engine)


def test_reconnecting_repoints_existing_integrations_and_clears_needs_reauth(cli, sq_engine, make_sandbox, browser):
    sb = make_sandbox({**TREE, "revoked_refresh_tokens": ["1//old-revoked"]})
    assert cli("users", "add", ANNA).code == 0
    added = cli(
        "integrations", "add", "--email", ANNA, "--platform", "google", "--account-id", "2000000001", "--refresh-token", "1//old-revoked"
    )
    old_id = int(added.out.split("integration ")[1].split()[0])
    assert cli("sync-all").code == 1 and integration(cli, old_id)["status"] == "needs_reauth"
    old_credential = integration(cli, old_id)["credential_id"]

    result = cli("connect", "google", "--email", ANNA, "--account-id", "200-000-0001", "--account-id", "3000000001")
    browser.join()
    assert result.code == 0, result.err
    assert f"Updated integration {old_id}" in result.out and "1 added, 1 updated" in result.out
    shoes = integration(cli, old_id)
    assert (shoes["status"], shoes["last_error"], shoes["login_customer_id"]) == ("never_synced", None, "1000000001")
    assert shoes["credential_id"] != old_credential
    assert cli("sync-all").code == 0 and integration(cli, old_id)["status"] == "ok"

    # The same Google user again: its credential gets the new tokens, no second credential appears.
    again = cli("connect", "google", "--email", ANNA, "--account-id", "2000000001")
    browser.join()
    assert again.code == 0 and "updated with the new tokens" in again.out and "0 added, 1 updated" in again.out
    credentials = _credentials(cli)
    assert [c["platform_user"] for c in credentials] == [None, ANNA]
    assert credentials[0]["integrations"] == [], "the typed-in credential is left unused, for 'credentials remove'"
    assert sb.count("google.revoke") == 0, "reconnecting never revokes: that would end the new grant too"


@pytest.mark.parametrize(
    "scenario, args, message",
    [
        ({"google_oauth_faults": [{"kind": "access_denied"}]}, [], "access was denied on Google's consent screen"),
        ({"google_oauth_faults": [{"kind": "state_mismatch"}]}, [], "state mismatch"),
        ({}, ["--email", "nobody@example.com"], "NOT_ADS_USER"),
    ],
)
def test_google_sign_in_errors_are_one_line_and_write_nothing(cli, sq_engine, make_sandbox, browser, scenario, args, message):
    make_sandbox({**TREE, **scenario})
    result = cli("connect", "google", "--email", ANNA, "--all", *args)
    browser.join()
    _one_error_line(result, message)
    _nothing_written(sq_engine)


def test_a_refused_client_is_one_line_naming_the_settings(cli, sq_engine, make_sandbox, browser, monkeypatch):
    make_sandbox(TREE)
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_SECRET", "a-wrong-client-secret-0123")
    result = cli("connect", "google", "--email", ANNA, "--all")
    browser.join()
    _one_error_line(result, "invalid_client")
    assert "GOOGLE_OAUTH_CLIENT_SECRET" in result.err and "a-wrong-client-secret-0123" not in result.err
    _nothing_written(sq_engine)


def test_a_port_in_use_is_one_line(cli, sq_engine, make_sandbox, browser):
    sb = make_sandbox(TREE)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = cli("connect", "google", "--email", ANNA, "--all", "--port", str(port))
    _one_error_line(result, f"port {port} on 127.0.0.1 is in use")
    assert sb.count() == 0 and browser.urls == []
    _nothing_written(sq_engine)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--account-id", "9999999999"], "does not reach 999-999-9999"),
        (["--account-id", "100-000-0002"], "100-000-0002 is a manager account"),
    ],
)
def test_choosing_what_the_login_does_not_offer_writes_nothing(cli, sq_engine, make_sandbox, browser, args, message):
    make_sandbox(TREE)
    result = cli("connect", "google", "--email", ANNA, *args)
    browser.join()
    _one_error_line(result, message)
    _nothing_written(sq_engine)


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "choose the accounts with --account-id ID (repeatable) or --all"),
        (["--account-id", "12-34"], "not a Google Ads customer id"),
        (["--all", "--port", "70000"], "--port must be between 0 and 65535"),
    ],
)
def test_what_can_be_refused_before_the_sign_in_is(cli, sq_engine, make_sandbox, browser, args, message):
    sb = make_sandbox(TREE)
    result = cli("connect", "google", "--email", ANNA, *args)
    _one_error_line(result, message)
    assert sb.count() == 0 and browser.urls == [], "nobody was sent to sign in"


def test_missing_oauth_client_settings_say_how_to_get_them(cli, sq_engine, make_sandbox, browser, monkeypatch):
    make_sandbox(TREE)
    monkeypatch.delenv("GOOGLE_OAUTH_CLIENT_ID")
    result = cli("connect", "google", "--email", ANNA, "--all")
    _one_error_line(result, "GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET must be set")
    assert "Desktop app" in result.err and browser.urls == []


# ---------------------------------------------------------------- Meta


def _meta(cli, monkeypatch, token: str, *args: str):
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    return cli("connect", "meta", "--email", ANNA, *args)


def test_connect_meta_reads_the_token_from_stdin_and_adds_active_business_accounts(cli, engine, make_sandbox, monkeypatch):
    sb = make_sandbox(META)
    result = _meta(cli, monkeypatch, "EAAagency-token", "--all")
    assert result.code == 0, result.err
    assert "EAAagency-token" not in result.out + result.err
    found = _integrations(cli)
    assert sorted(found) == ["11", "31", "32", "34"], "ACTIVE only: 33 is DISABLED"
    (credential,) = _credentials(cli)
    assert (credential["platform"], credential["token_type"], credential["platform_user"]) == ("meta", "USER", "10000000000001")
    assert "business_management" in credential["scopes"] and credential["token_expires_at"] is not None
    assert all(i["token_expires_at"] == credential["token_expires_at"] for i in found.values()), "the dashboard's copy"
    with engine.connect() as conn:
        blob = conn.execute(text("SELECT access_token_enc FROM credentials")).scalar()
    assert blob.startswith("gAAAA") and "EAAagency" not in blob

    assert cli("sync-all").code == 0
    assert values(stored(engine, found["32"]["id"])) == quantized(expected(sb, "meta", "32"))
    # discovery told the currency and time zone; the account is still read once on this full-window sync,
    # for its account_status (closed or disabled accounts back off), as on every full-window sync
    assert sb.count("meta.account") == 4 and sb.count("meta.insights") >= 4


def test_connect_meta_exchanges_a_short_lived_token_and_keeps_a_system_users_forever(cli, sq_engine, make_sandbox, monkeypatch):
    short = {"scopes": ["ads_read"], "accounts": ["41"], "user_id": "777", "expires_at": int(time.time()) + 3600}
    sb = make_sandbox({**META, "meta_tokens": {**META["meta_tokens"], "EAAshort-lived": short}})
    result = _meta(cli, monkeypatch, "EAAshort-lived", "--account-id", "act_41")
    assert result.code == 0, result.err
    assert sb.count("meta.token_exchange") == 1 and "long-lived" in result.out
    from emsync.crypto import TokenBox

    from .conftest import TEST_KEY

    with sq_engine.connect() as conn:
        blob = conn.execute(text("SELECT access_token_enc FROM credentials WHERE platform_user = '777'")).scalar()
    assert TokenBox(TEST_KEY).decrypt(blob) in sb.meta_tokens_issued, "the long-lived token is stored, not the pasted one"
    expires = _credentials(cli)[0]["token_expires_at"]
    assert expires > time.strftime("%Y-%m-%dT", time.gmtime(time.time() + 50 * 86400))

    system = _meta(cli, monkeypatch, "EAAsystem-token", "--all")
    assert system.code == 0, system.err
    credential = next(c for c in _credentials(cli) if c["token_type"] == "SYSTEM_USER")
    assert credential["token_expires_at"] is None and _integrations(cli)["21"]["credential_id"] == credential["id"]


def test_connect_meta_without_app_credentials_keeps_the_token_and_says_when_it_expires(cli, sq_engine, make_sandbox, monkeypatch):
    short = {"scopes": ["ads_read"], "accounts": ["41"], "expires_at": int(time.time()) + 3600}
    sb = make_sandbox({"meta_tokens": {"EAAshort-lived": short}})
    monkeypatch.delenv("META_APP_ID")
    monkeypatch.delenv("META_APP_SECRET")
    result = _meta(cli, monkeypatch, "EAAshort-lived", "--all")
    assert result.code == 0, result.err
    assert "set META_APP_ID and META_APP_SECRET" in result.out and sb.count("meta.token_exchange") == 0


@pytest.mark.parametrize(
    "token, message",
    [
        ("EAAexpired-token", "not valid"),
        ("EAAprofile-only", "lacks the ads_read permission"),
        ("", "must not be empty"),
    ],
)
def test_meta_token_errors_are_one_line_and_write_nothing(cli, sq_engine, make_sandbox, monkeypatch, token, message):
    sb = make_sandbox(META)
    result = _meta(cli, monkeypatch, token, "--all")
    _one_error_line(result, message)
    _nothing_written(sq_engine)
    assert sb.count("meta.adaccounts") == 0


def test_no_token_of_a_connected_login_leaves_in_clear(cli, sq_engine, sqlite_url, make_sandbox, browser, monkeypatch, tmp_path):
    sb = make_sandbox({**TREE, **META, "google_customers": TREE["google_customers"]})
    outputs = [cli("--verbose", "connect", "google", "--email", ANNA, "--all")]
    browser.join()
    outputs.append(_meta(cli, monkeypatch, "EAAagency-token", "--all"))
    outputs += [
        cli("--verbose", "sync-all"),
        cli("credentials", "list"),
        cli("credentials", "list", "--json"),
        cli("integrations", "check", "--all", "--json"),
        cli("integrations", "list", "--json"),
        cli("status", "--json"),
    ]
    assert all(r.code == 0 for r in outputs), [r.err for r in outputs if r.code]
    secrets = [
        *sb.google_access_tokens,
        *(t for t in sb.google_token_user if t.startswith("1//")),
        *sb.google_codes,
        "EAAagency-token",
        sb.scenario["google_client_secret"],
        sb.scenario["meta_app_secret"],
    ]
    assert {s[:4] for s in secrets} >= {"ya29", "1//0", "4/0A"}, "the scan covers what Google issued: access and refresh token, code"
    sq_engine.dispose()
    database = sqlite_url.removeprefix("sqlite:///")
    raw = b"".join(open(p, "rb").read() for p in (database, database + "-wal") if os.path.exists(p)).decode("latin-1")
    everything = "\n".join(r.out + r.err for r in outputs) + raw
    assert [s for s in secrets if s in everything] == []
