"""What the real APIs do beyond their documentation, fixed by kind (issue 14), over real sockets against the sandbox.

Kinds: 1 a side step never blocks a sync that can succeed; 2 a passing glitch is not permanent; 3 paging is
bounded and never throws good data away; 4 the server's asked-for wait decides; 5 the HTTP status decides
first; 6 last_error says what to do; 7 a row that does not answer the query is refused; 8 redaction masks
secrets, not words. (9 and 10, attribution and link clicks: test_campaigns.py.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from emsync.redaction import redact, register_secret

from .conftest import add_google, add_meta
from .helpers import expected, integration, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")

NOT_FOUND = {"kind": "raw", "status": 404, "text": "Not Found", "content_type": "text/plain"}
HTML_401 = {"kind": "raw", "status": 401, "text": "<html><body><h1>401 Unauthorized</h1></body></html>"}
HTML_502 = {"kind": "raw", "status": 502, "text": "<html><head><title>502 Bad Gateway</title></head></html>"}


def _soon(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def _status(cli) -> dict:
    result = cli("status", "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


# ---------------------------------------------------------------- kind 1: side steps


@pytest.mark.parametrize("fault", [{"kind": "server_error"}, {"kind": "rate_limit", "code": 4}])
def test_failed_token_renewal_while_the_token_works_is_a_warning_and_the_next_clean_sync_clears_it(
    cli, engine, make_sandbox, monkeypatch, fault
):
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "2")
    sb = make_sandbox({"endpoint_faults": {"meta.token_exchange": [{**fault, "times": 2}]}})
    integration_id = add_meta(cli, "anna@example.com", "act_1", "EAABexpiring-soon-token", "--token-expires-at", _soon(3))
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and item["last_error"] is None
    assert "renewing the Meta access token" in item["last_warning"] and "next run tries again" in item["last_warning"]
    assert values(stored(engine, integration_id)) == quantized(expected(sb, "meta", "1"))
    assert sb.count("meta.token_exchange") == 2
    shown = next(i for i in _status(cli)["integrations"] if i["id"] == integration_id)
    assert shown["last_warning"] == item["last_warning"] and shown["last_warning_at"] is not None
    assert "renewing the Meta access token" in cli("status").out
    sb.reset_log()
    assert cli("sync-all").code == 0  # the renewal works now: a clean sync
    assert sb.count("meta.token_exchange") == 1
    item = integration(cli, integration_id)
    assert item["last_warning"] is None and datetime.fromisoformat(item["token_expires_at"]) > datetime.now(UTC) + timedelta(days=50)


def test_failed_renewal_of_a_token_already_expired_stops_the_integration(cli, engine, make_sandbox):
    sb = make_sandbox({"endpoint_faults": {"meta.token_exchange": [{"kind": "server_error"}]}})
    integration_id = add_meta(cli, "anna@example.com", "act_1", "EAABexpired-token")
    with engine.begin() as conn:  # `integrations add` refuses an expiry in the past: the token expired since
        for table in ("credentials", "integrations"):
            conn.execute(text(f"UPDATE {table} SET token_expires_at = :t"), {"t": datetime.now(UTC) - timedelta(days=1)})
    assert cli("sync-all").code == 1
    assert integration(cli, integration_id)["status"] == "error"
    assert sb.count("meta.insights") == 0 and stored(engine, integration_id) == {}


def test_a_failing_debug_token_never_blocks_and_is_asked_at_most_once_a_day(cli, engine, make_sandbox):
    sb = make_sandbox({"endpoint_faults": {"meta.debug_token": [{"kind": "server_error"}]}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and "debug_token" in item["last_warning"]
    assert values(stored(engine, integration_id)) == quantized(expected(sb, "meta", "1"))
    sb.reset_log()
    assert cli("sync-all", "--full").code == 0
    assert sb.count("meta.debug_token") == 0, "debug_token is asked at most once a day per integration"
    assert integration(cli, integration_id)["last_warning"] is None


def test_debug_token_data_access_expiry_is_recorded_and_warned_about(cli, make_sandbox):
    make_sandbox({"meta_data_access_days": 3})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    access = datetime.fromisoformat(item["data_access_expires_at"])
    assert timedelta(days=2) < access - datetime.now(UTC) < timedelta(days=4)
    report = _status(cli)
    assert any("loses data access" in w and f"integration {integration_id} " in w for w in report["warnings"])


def test_account_metadata_already_stored_is_a_side_step_on_later_full_syncs(cli, engine, make_sandbox):
    sb = make_sandbox()
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    sb.set_account("meta", "1", faults=[{"kind": "server_error", "endpoint": "account"}])
    sb.reset_log()
    assert cli("sync-all", "--full").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and "reading the account's metadata" in item["last_warning"]
    assert sb.count("meta.insights", "1") == 1 and values(stored(engine, integration_id)) == quantized(expected(sb, "meta", "1"))


def test_google_refresh_failure_while_the_cached_token_is_valid_is_a_warning(cli, make_sandbox):
    sb = make_sandbox({"google_token_ttl": 200})  # within the 5-minute margin: the next run refreshes it
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    sb.scenario["endpoint_faults"] = {"google.token": [{"kind": "server_error"}]}
    sb.reset_log()
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and "refreshing the Google access token" in item["last_warning"]
    assert sb.count("google.token") >= 1 and sb.count("google.search_stream") == 1


# ---------------------------------------------------------------- kind 2: a passing glitch


def test_a_report_run_answering_100_33_for_a_moment_is_retried(cli, engine, make_sandbox, waits):
    lag = {"kind": "report_lag", "endpoint": "report_insights", "page": 2, "times": 1}
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 20, "faults": [{"kind": "reduce_data"}, lag]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and item["last_error"] is None
    assert values(stored(engine, integration_id)) == quantized(expected(sb, "meta", "1"))
    assert sb.count("meta.report_insights", "1") == 3 and sb.count("meta.report_start", "1") == 1


def test_a_report_run_that_keeps_answering_100_33_is_resubmitted_once_and_never_called_a_permission_problem(cli, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "2")
    lag = {"kind": "report_lag", "endpoint": "report_insights"}
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "reduce_data"}, lag]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and "100/33" in item["last_error"] and "re-submitted once" in item["last_error"]
    assert "permission" not in item["last_error"].lower()
    assert sb.count("meta.report_start", "1") == 2 and sb.count("meta.report_insights", "1") == 4


def test_a_failed_report_run_is_resubmitted_once(cli, engine, make_sandbox):
    sb = make_sandbox(
        {"meta_accounts": {"1": {"faults": [{"kind": "reduce_data"}, {"kind": "report_failed", "endpoint": "report_status", "times": 1}]}}}
    )
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert values(stored(engine, integration_id)) == quantized(expected(sb, "meta", "1"))
    assert sb.count("meta.report_start", "1") == 2


def test_a_report_run_that_fails_twice_shows_the_reason_fields_meta_returns(cli, make_sandbox):
    sb = make_sandbox(
        {"meta_accounts": {"1": {"faults": [{"kind": "reduce_data"}, {"kind": "report_failed", "endpoint": "report_status"}]}}}
    )
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    error = integration(cli, integration_id)["last_error"]
    # the sandbox sends the error_* fields only when the poll names them, as Meta does once fields= is given
    assert "Job Failed" in error and "error -2/2490547" in error and "The report could not be generated" in error
    assert sb.count("meta.report_start", "1") == 2


# ---------------------------------------------------------------- kind 3: paging


def test_endless_empty_pages_end_the_chain_keeping_the_rows(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 20, "faults": [{"kind": "empty_pages"}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and "empty pages" in item["last_warning"]
    want = expected(sb, "meta", "1")
    assert values(stored(engine, integration_id)) == quantized(want)
    assert sb.count("meta.insights", "1") == 2 + 3, "two pages of rows, then three empty pages"


def test_a_chain_ended_by_emsync_deletes_nothing(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 20}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    before = quantized(expected(sb, "meta", "1", version=0))
    sb.set_account("meta", "1", restate=True, faults=[{"kind": "empty_pages"}])
    sb.next_call("meta", "1", "restate")  # the next answer is restatement 1: changed numbers, one row gone
    assert cli("sync-all", "--full").code == 0
    now = values(stored(engine, integration_id))
    restated = quantized(expected(sb, "meta", "1", version=1))
    gone = set(before) - set(restated)
    assert len(gone) == 1 and gone <= set(now), "the row the answer lacks is kept: the answer was not whole"
    assert {k: now[k] for k in restated} == restated, "what was read is written"


def test_pages_that_keep_coming_stop_at_the_cap_keeping_the_rows(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 20, "faults": [{"kind": "endless_pages"}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    item = integration(cli, integration_id)
    assert item["status"] == "ok" and "pages" in item["last_warning"] and "deleted nothing" in item["last_warning"]
    assert values(stored(engine, integration_id)) == quantized(expected(sb, "meta", "1"))
    # 30 days x 20 campaigns at 500 rows a page: cap 2 x 2 + 5 = 9 pages
    assert sb.count("meta.insights", "1") == 9


# ---------------------------------------------------------------- kind 4: the server's wait decides


def test_short_resource_exhausted_is_waited_for_like_temporarily_exhausted(cli, engine, make_sandbox, waits, monkeypatch):
    monkeypatch.setenv("EMSYNC_RETRY_MAX_WAIT", "10")
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": "quota_exhausted", "retry_seconds": 3, "times": 1}]}}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    assert integration(cli, integration_id)["status"] == "ok"
    assert waits == [3.0]
    assert values(stored(engine, integration_id)) == quantized(expected(sb, "google", "1111111111"))


def test_meta_retry_after_is_honoured_when_short(cli, make_sandbox, waits):
    limit = {"kind": "raw", "status": 429, "text": "Too Many Requests", "content_type": "text/plain", "headers": {"Retry-After": "5"}}
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{**limit, "times": 1}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert 5.0 in waits and sb.count("meta.insights", "1") == 2
    assert integration(cli, integration_id)["status"] == "ok"


@pytest.mark.parametrize("status", [429, 503])
def test_meta_retry_after_longer_than_the_max_wait_is_rate_limited_until_then(cli, make_sandbox, waits, status):
    limit = {"kind": "raw", "status": status, "text": "<html>slow down</html>", "headers": {"Retry-After": "7200"}}
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [limit]}}})
    integration_id = add_meta(cli, account="act_1")
    before = datetime.now(UTC)
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "rate_limited" and sb.count("meta.insights", "1") == 1 and waits == []
    until = datetime.fromisoformat(item["rate_limited_until"])
    assert before + timedelta(minutes=119) < until < before + timedelta(minutes=125)


def test_the_older_insights_throttle_header_slows_down_before_100_percent(cli, make_sandbox, waits):
    make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "legacy_throttle", "pct": 97, "times": 1}]}}})
    add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert 8.0 in waits  # one second per point above 89 %


# ---------------------------------------------------------------- kind 5: the status decides first


@pytest.mark.parametrize("platform, settings", [("google", "GOOGLE_ADS_API_URL and GOOGLE_ADS_API_VERSION"), ("meta", "META_GRAPH_URL")])
def test_404_with_a_plain_body_is_permanent_and_names_the_url_settings(cli, make_sandbox, platform, settings):
    if platform == "google":
        sb = make_sandbox({"google_customers": {"1111111111": {"faults": [NOT_FOUND]}}})
        integration_id, kind = add_google(cli, account="1111111111"), "google.search_stream"
    else:
        sb = make_sandbox({"meta_accounts": {"1": {"faults": [{**NOT_FOUND, "endpoint": "account"}]}}})
        integration_id, kind = add_meta(cli, account="act_1"), "meta.account"
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and "HTTP 404 Not Found" in item["last_error"] and settings in item["last_error"]
    assert "not complete JSON" not in item["last_error"] and "access_token" not in item["last_error"]
    assert sb.count(kind) == 1, "no retry"


def test_401_with_an_html_body_refreshes_once_then_needs_reauth(cli, make_sandbox):
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [HTML_401]}}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "needs_reauth" and f"emsync integrations update {integration_id} --refresh-token" in item["last_error"]
    assert sb.count("google.token") == 2 and sb.count("google.search_stream") == 2


@pytest.mark.parametrize("platform", ["google", "meta"])
def test_5xx_with_an_html_body_is_retried(cli, engine, make_sandbox, waits, platform):
    if platform == "google":
        sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{**HTML_502, "times": 2}]}}})
        integration_id, account = add_google(cli, account="1111111111"), "1111111111"
    else:
        sb = make_sandbox({"meta_accounts": {"1": {"faults": [{**HTML_502, "status": 503, "times": 2}]}}})
        integration_id, account = add_meta(cli, account="act_1"), "1"
    assert cli("sync-all").code == 0
    assert values(stored(engine, integration_id)) == quantized(expected(sb, platform, account))
    assert len(waits) == 2


def test_token_endpoint_401_with_an_html_body_names_the_client_settings(cli, make_sandbox):
    sb = make_sandbox({"endpoint_faults": {"google.token": [HTML_401]}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and "GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET" in item["last_error"]
    assert sb.count("google.token") == 1


def test_token_endpoint_503_with_an_html_body_is_retried(cli, make_sandbox, waits):
    sb = make_sandbox({"endpoint_faults": {"google.token": [{**HTML_502, "status": 503, "times": 1}]}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    assert integration(cli, integration_id)["status"] == "ok" and sb.count("google.token") == 2 and len(waits) == 1


# ---------------------------------------------------------------- kind 6: what to do


def test_deprecated_meta_version_names_the_setting_and_the_version_meta_asks_for(cli, make_sandbox):
    sb = make_sandbox(
        {
            "meta_accounts": {"1": {"faults": [{"kind": "version_deprecated", "wanted": "v27.0", "endpoint": "account"}]}},
            "endpoint_faults": {"meta.debug_token": [{"kind": "server_error"}]},  # a side step fails before it
        }
    )
    integration_id = add_meta(cli, account="act_1")
    result = cli("sync-all", "--json")
    assert result.code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and "META_API_VERSION=v27.0 (currently v25.0)" in item["last_error"]
    assert sb.count("meta.account") == 1 and sb.count("meta.debug_token") >= 1
    assert item["last_warning"] is None, "no warning claiming the sync went on when it did not"
    assert json.loads(result.out)["integrations"][0]["warnings"] == []


def test_permission_denied_with_a_manager_set_says_the_manager_may_not_manage_the_customer(cli, make_sandbox):
    sb = make_sandbox({"google_customers": {"2222222222": {"manager": "9999999999"}}})
    integration_id = add_google(cli, "anna@example.com", "222-222-2222", "1//r1", "--login-customer-id", "888-888-8888")
    assert cli("sync-all").code == 1
    error = integration(cli, integration_id)["last_error"]
    assert "888-888-8888" in error and "does not manage 222-222-2222" in error
    assert f"emsync integrations update {integration_id} --login-customer-id" in error
    assert "must be set in the 'login-customer-id' header" not in error
    assert sb.count("google.search_stream") == 1


def test_expired_meta_token_message_carries_the_real_integration_id(cli, make_sandbox):
    make_sandbox({"meta_accounts": {"7": {"faults": [{"kind": "token_expired"}]}}})
    add_meta(cli, account="act_1")
    integration_id = add_meta(cli, "anna@example.com", "act_7", "EAABseven")
    assert cli("sync-all").code == 1
    error = integration(cli, integration_id)["last_error"]
    assert f"emsync integrations update {integration_id} --access-token" in error and " ID " not in error


# ---------------------------------------------------------------- kind 7: rows that do not answer the query


@pytest.mark.parametrize(
    "platform, fault, words",
    [
        ("meta", "multi_day_row", "not one day"),
        ("meta", "row_outside_window", "outside the requested window"),
        ("google", "row_outside_window", "outside the requested window"),
    ],
)
def test_rows_that_do_not_answer_the_query_are_refused_and_the_previous_rows_stay(cli, engine, make_sandbox, platform, fault, words):
    sb = make_sandbox({"meta_accounts": {"1": {}}, "google_customers": {"1111111111": {}}})
    account = "1" if platform == "meta" else "1111111111"
    integration_id = add_meta(cli, account="act_1") if platform == "meta" else add_google(cli, account=account)
    assert cli("sync-all").code == 0
    before = values(stored(engine, integration_id))
    sb.set_account(platform, account, restate=True, faults=[{"kind": fault}])
    sb.next_call(platform, account, "restate")
    assert cli("sync-all", "--full").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and words in item["last_error"] and "nothing was changed" in item["last_error"]
    since = (sb.today(sb.account(platform, account)["timezone"]) - timedelta(days=29)).isoformat()
    assert since in item["last_error"], "the message names the row's dates"
    assert values(stored(engine, integration_id)) == before


# ---------------------------------------------------------------- kind 8: redaction


def test_redaction_masks_secrets_not_words():
    register_secret("client-secret-value-123")
    assert redact("Google OAuth rejected the client (invalid_client)") == "Google OAuth rejected the client (invalid_client)"
    assert redact("Authorization: Bearer ya29.a0AfH6SMBxyz") == "Authorization: Bearer ***"
    assert redact("GET /x?access_token=EAAB123456&fields=a") == "GET /x?access_token=***&fields=a"
    assert redact("POST code=4/0AX4XfWh&client_secret=abc") == "POST code=***&client_secret=***"
    assert redact("the secret is client-secret-value-123") == "the secret is ***"


def test_redaction_masks_every_character_of_overlapping_and_prefix_sharing_secrets():
    # Secrets sharing their first characters, one inside another, two overlapping, and thousands registered:
    # no character of any of them is left, wherever it starts.
    register_secret("shared-prefix-AAAA", "shared-prefix-AAAABBBB", "xyzzy-overlap-1", "overlap-1-and-more")
    register_secret(*(f"bulk-token-{n:05d}-tail" for n in range(5000)))
    assert redact("a shared-prefix-AAAABBBB b") == "a *** b"
    assert redact("a shared-prefix-AAAA b") == "a *** b"
    assert redact("[xyzzy-overlap-1-and-more]") == "[***]"
    assert redact("bulk-token-04999-tail,bulk-token-00000-tail") == "***,***"
    assert redact("no secret here, bulk-token-0 is not one") == "no secret here, bulk-token-0 is not one"


def test_invalid_client_keeps_the_providers_description_readable(cli, make_sandbox, monkeypatch):
    sb = make_sandbox()
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_SECRET", "a-wrong-client-secret-987")
    integration_id = add_google(cli, account="1111111111")
    result = cli("sync-all", "--json")
    assert result.code == 1
    error = integration(cli, integration_id)["last_error"]
    # Google answers a wrong secret with error_description "Unauthorized" (a wrong client id: "The OAuth client was not found.")
    assert "Google OAuth rejected the client" in error and "invalid_client: Unauthorized" in error
    assert integration(cli, integration_id)["status"] == "error" and sb.count("google.token") == 1
    assert "a-wrong-client-secret-987" not in result.text + cli("status").text
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_ID", "someone-else.apps.googleusercontent.com")
    assert cli("sync-all").code == 1
    assert "The OAuth client was not found." in integration(cli, integration_id)["last_error"]
