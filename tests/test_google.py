"""The Google Ads connector over real HTTP against the sandbox: one searchStream per customer, OAuth, managers, quota."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from emsync.connectors.google import _retry_delay, parse_rows
from emsync.errors import FatalApiError

from .conftest import add_google
from .helpers import expected, integration, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")


def test_exact_rows_multi_batch_and_one_stream_per_customer(cli, engine, make_sandbox):
    sb = make_sandbox(
        {"google_batch_size": 25, "google_customers": {"1234567890": {"campaigns": 8, "currency": "USD", "timezone": "America/New_York"}}}
    )
    integration_id = add_google(cli, account="123-456-7890")
    assert cli("sync-all").code == 0
    want = expected(sb, "google", "1234567890")
    rows = stored(engine, integration_id)
    assert values(rows) == quantized(want)
    assert {r.currency for r in rows.values()} == {"USD"}
    assert sb.count("google.token") == 1
    assert sb.count("google.search_stream", "1234567890") == 2  # the customer query once, then the metrics
    item = integration(cli, integration_id)
    assert (item["currency"], item["time_zone"], item["status"]) == ("USD", "America/New_York", "ok")
    sb.reset_log()
    assert cli("sync-all").code == 0
    assert sb.count("google.search_stream", "1234567890") == 1, "a steady run is one searchStream per customer"
    assert sb.count("google.token") == 0, "the cached access token is reused across runs"


def test_expired_cached_token_is_refreshed_before_use(cli, make_sandbox):
    sb = make_sandbox({"google_token_ttl": 60})  # shorter than the 5-minute margin: never reused
    add_google(cli)
    assert cli("sync-all").code == 0
    sb.reset_log()
    assert cli("sync-all").code == 0
    assert sb.count("google.token") == 1 and sb.count("google.search_stream") == 1


def test_manager_accounts_send_login_customer_id(cli, make_sandbox):
    sb = make_sandbox({"google_customers": {"2222222222": {"manager": "9999999999"}}})
    with_header = add_google(cli, "anna@example.com", "222-222-2222", "1//r1", "--login-customer-id", "999-999-9999")
    assert cli("sync-all").code == 0
    assert integration(cli, with_header)["status"] == "ok"
    assert sb.count("google.search_stream", "2222222222") == 2


def test_missing_login_customer_id_says_so(cli, make_sandbox):
    sb = make_sandbox({"google_customers": {"2222222222": {"manager": "9999999999"}}})
    integration_id = add_google(cli, "anna@example.com", "222-222-2222", "1//r1")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error"
    assert "USER_PERMISSION_DENIED" in item["last_error"]
    assert "login-customer-id" in item["last_error"] and "--login-customer-id MANAGER_ID" in item["last_error"]
    assert "request id" in item["last_error"]
    assert sb.count("google.search_stream", "2222222222") == 1, "403 is not retried"


def test_401_refreshes_once_and_retries_once(cli, make_sandbox):
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": "unauthenticated", "times": 1}]}}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    assert integration(cli, integration_id)["status"] == "ok"
    assert sb.count("google.token") == 2


def test_401_after_refresh_needs_reauth(cli, make_sandbox):
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": "unauthenticated"}]}}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 1
    assert integration(cli, integration_id)["status"] == "needs_reauth"
    assert sb.count("google.token") == 2


def test_invalid_grant_needs_reauth_and_mentions_testing_apps(cli, make_sandbox):
    sb = make_sandbox({"revoked_refresh_tokens": ["1//revoked-refresh"]})
    integration_id = add_google(cli, token="1//revoked-refresh")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "needs_reauth"
    assert "invalid_grant" in item["last_error"] and "Testing" in item["last_error"] and "7 days" in item["last_error"]
    assert "--refresh-token -' (read from standard input)" in item["last_error"] and "emsync connect google" in item["last_error"]
    assert sb.count("google.token") == 1 and sb.count("google.search_stream") == 0


def test_invalid_client_names_the_settings(cli, make_sandbox, monkeypatch):
    make_sandbox()
    monkeypatch.setenv("GOOGLE_OAUTH_CLIENT_SECRET", "wrong-client-secret")
    integration_id = add_google(cli)
    assert cli("sync-all").code == 1
    error = integration(cli, integration_id)["last_error"]
    assert "invalid_client" in error and "GOOGLE_OAUTH_CLIENT_ID" in error and "GOOGLE_OAUTH_CLIENT_SECRET" in error
    assert "wrong-client-secret" not in error


def test_missing_oauth_client_settings_fail_clearly(cli, make_sandbox, monkeypatch):
    make_sandbox()
    monkeypatch.delenv("GOOGLE_OAUTH_CLIENT_ID")
    integration_id = add_google(cli)
    assert cli("sync-all").code == 1
    assert "GOOGLE_OAUTH_CLIENT_ID" in integration(cli, integration_id)["last_error"]


def test_temporary_rate_limit_waits_retry_delay(cli, make_sandbox, waits):
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": "rate_limit", "retry_seconds": 7, "times": 1}]}}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    assert waits == [7.0]
    assert integration(cli, integration_id)["status"] == "ok"
    assert sb.count("google.search_stream", "1111111111") == 3


def test_daily_quota_marks_rate_limited_without_waiting_and_later_runs_skip(cli, make_sandbox, waits, monkeypatch):
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": "quota_exhausted", "retry_seconds": 40591}]}}})
    # The quota is the developer token's (scope DEVELOPER): once it is gone, no Google customer is asked. One
    # worker and the healthy customer first, so it is synced before the quota runs out, whatever the timing.
    monkeypatch.setenv("EMSYNC_CONCURRENCY", "1")
    healthy = add_google(cli, account="3333333333", token="1//other")
    limited = add_google(cli, account="1111111111")
    before = datetime.now(UTC)
    assert cli("sync-all").code == 1
    after = datetime.now(UTC)
    item = integration(cli, limited)
    assert item["status"] == "rate_limited" and "RESOURCE_EXHAUSTED" in item["last_error"]
    until = datetime.fromisoformat(item["rate_limited_until"])
    # the 429's retry delay (40591 s) counted from when it came, whenever in the run that was
    retry_window = (before + timedelta(seconds=40590), after + timedelta(seconds=40592))
    assert retry_window[0] <= until <= retry_window[1]
    assert waits == [] and integration(cli, healthy)["status"] == "ok"
    sb.reset_log()
    assert cli("sync-all").code == 0
    assert sb.count(account="1111111111") == 0


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "server_error", "status": 500, "times": 2},
        {"kind": "server_error", "status": 503, "times": 1},
        {"kind": "server_error", "status": 504, "times": 1},
        {"kind": "truncated", "times": 1},
        {"kind": "drop", "times": 1},
        {"kind": "error_in_stream", "times": 1},
    ],
)
def test_transient_failures_retry_with_backoff(cli, engine, make_sandbox, waits, fault):
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [fault]}}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 0
    assert values(stored(engine, integration_id)) == quantized(expected(sb, "google", "1111111111"))
    assert len(waits) == fault["times"]


@pytest.mark.parametrize("kind, text", [("not_enabled", "CUSTOMER_NOT_ENABLED"), ("bad_query", "invalid field name")])
def test_403_and_400_fail_at_once_with_message_and_request_id(cli, make_sandbox, kind, text):
    sb = make_sandbox({"google_customers": {"1111111111": {"faults": [{"kind": kind}]}}})
    integration_id = add_google(cli, account="1111111111")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "error" and "request id" in item["last_error"]
    assert text in item["last_error"]
    assert sb.count("google.search_stream", "1111111111") == 1, "not retried"


def test_parse_rows_handles_empty_and_missing_results():
    assert parse_rows([]) == []
    assert parse_rows([{"fieldMask": "campaign.id", "requestId": "x"}]) == []
    rows = parse_rows([{"results": [{"campaign": {"id": "1"}, "segments": {"date": "2026-11-01"}, "metrics": {}}]}])
    assert (rows[0].spend, rows[0].impressions, rows[0].clicks, rows[0].conversions) == (0, 0, 0, 0)
    with pytest.raises(FatalApiError):
        parse_rows([{"results": [{"campaign": {"id": "1"}, "metrics": {"costMicros": "NaN"}, "segments": {"date": "2026-11-01"}}]}])


def test_retry_delay_parsing():
    error = {"details": [{"errors": [{"details": {"quotaErrorDetails": {"retryDelay": "40591s"}}}]}]}
    assert _retry_delay(error) == 40591.0
    assert _retry_delay({"details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2.5s"}]}) == 2.5
    assert _retry_delay({}) is None


def test_no_google_token_in_any_output(cli, make_sandbox, monkeypatch, tmp_path):
    log_file = tmp_path / "emsync.log"
    monkeypatch.setenv("EMSYNC_LOG_FILE", str(log_file))
    make_sandbox(
        {
            "revoked_refresh_tokens": ["1//distinctive-revoked"],
            "google_customers": {"1111111111": {"faults": [{"kind": "unauthenticated", "times": 1}]}},
        }
    )
    add_google(cli, "anna@example.com", "111-111-1111", "1//distinctive-refresh")
    add_google(cli, "anna@example.com", "222-222-2222", "1//distinctive-revoked")
    outputs = [cli("--verbose", "sync-all"), cli("sync-all", "--json"), cli("status", "--json")]
    captured = "".join(r.text for r in outputs) + log_file.read_text()
    assert "distinctive" not in captured and "ya29." not in captured and "sandbox-client-secret" not in captured
