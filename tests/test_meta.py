"""The Meta connector over real HTTP against the sandbox: exact rows, paging, tokens, every error class."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from emsync.connectors.meta import pick_conversions, throttle_delay, usage

from .conftest import TEST_KEY, add_meta
from .helpers import expected, integration, quantized, stored, values

pytestmark = pytest.mark.usefixtures("any_db")


def test_exact_rows_over_several_pages_and_one_account_request(cli, engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"123": {"campaigns": 20, "currency": "EUR", "timezone": "Europe/Berlin"}}})
    integration_id = add_meta(cli, account="act_123")
    result = cli("sync-all")
    assert result.code == 0, result.err
    want = expected(sb, "meta", "123")
    rows = stored(engine, integration_id)
    assert values(rows) == quantized(want)
    assert len(want) > 500, "the scenario must need more than one page"
    assert sb.count("meta.insights", "123") == math.ceil(len(want) / 500)
    assert sb.count("meta.account", "123") == 1
    assert {r.currency for r in rows.values()} == {"EUR"}
    item = integration(cli, integration_id)
    assert (item["status"], item["currency"], item["time_zone"]) == ("ok", "EUR", "Europe/Berlin")
    # derived metrics from the stored base metrics
    for r in rows.values():
        assert (
            r.ctr is None
            if not r.impressions
            else Decimal(str(r.ctr)) == (Decimal(r.clicks) * 100 / Decimal(r.impressions)).quantize(Decimal("0.000001"))
        )
        assert r.cpc is None if not r.clicks else abs(Decimal(str(r.cpc)) - Decimal(str(r.spend)) / r.clicks) < Decimal("0.000001")
        assert (
            r.roas is None
            if not Decimal(str(r.spend))
            else abs(Decimal(str(r.roas)) - Decimal(str(r.revenue)) / Decimal(str(r.spend))) < Decimal("0.000001")
        )
    # a second (steady) run: no account metadata request, one insights page for the recent window
    sb.reset_log()
    assert cli("sync-all").code == 0
    assert sb.count("meta.account") == 0 and sb.count("meta.insights", "123") == 1


def test_pixel_only_rows_and_overlapping_types_never_summed(cli, sq_engine, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"conversions": "pixel_only"}, "2": {"conversions": "standard"}}})
    pixel = add_meta(cli, account="act_1")
    standard = add_meta(cli, account="act_2", token="EAABtoken-two")
    assert cli("sync-all").code == 0
    assert values(stored(sq_engine, pixel)) == quantized(expected(sb, "meta", "1"))
    assert values(stored(sq_engine, standard)) == quantized(expected(sb, "meta", "2"))
    assert any(v[3] > 0 for v in expected(sb, "meta", "1").values()), "the scenario must have purchases"


def test_conversion_priority_list_is_configurable(cli, sq_engine, make_sandbox, monkeypatch):
    sb = make_sandbox({"meta_accounts": {"2": {"conversions": "standard"}}})
    monkeypatch.setenv("META_CONVERSION_ACTION_TYPES", "landing_page_view")
    integration_id = add_meta(cli, account="act_2")
    assert cli("sync-all").code == 0
    rows = stored(sq_engine, integration_id)
    stats = expected(sb, "meta", "2")
    assert {k: int(r.conversions) for k, r in rows.items()} == {k: v[2] * 4 // 5 for k, v in stats.items()}
    assert all(Decimal(str(r.revenue)) == 0 for r in rows.values())


@pytest.mark.parametrize(
    "actions, action_values, types, want",
    [
        (None, None, ("omni_purchase",), (0, 0)),
        (
            [{"action_type": "purchase", "value": "2"}, {"action_type": "omni_purchase", "value": "3"}],
            [{"action_type": "omni_purchase", "value": "30.5"}],
            ("omni_purchase", "purchase"),
            (3, Decimal("30.5")),
        ),
        (
            [{"action_type": "offsite_conversion.fb_pixel_purchase", "value": "4"}],
            [{"action_type": "offsite_conversion.fb_pixel_purchase", "value": "9.99"}],
            ("omni_purchase", "purchase", "offsite_conversion.fb_pixel_purchase"),
            (4, Decimal("9.99")),
        ),
        ([{"action_type": "link_click", "value": "40"}], [], ("omni_purchase",), (0, 0)),
    ],
)
def test_pick_conversions(actions, action_values, types, want):
    assert pick_conversions(actions, action_values, types) == (Decimal(want[0]), Decimal(want[1]))


def test_usage_headers_and_throttle():
    headers = {
        "X-Business-Use-Case-Usage": json.dumps(
            {"1": [{"call_count": 93, "total_cputime": 10, "total_time": 20, "estimated_time_to_regain_access": 2}]}
        ),
        "X-Ad-Account-Usage": json.dumps({"acc_id_util_pct": 40}),
    }
    assert usage(headers) == (93.0, 120.0)
    assert throttle_delay(89.9, 0, 60) == 0
    assert throttle_delay(95, 0, 60) == 6
    assert throttle_delay(93, 120, 60) == 60


def test_near_limit_usage_slows_down_before_meta_refuses(cli, make_sandbox, waits):
    make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "usage_high", "pct": 96, "times": 1}]}}})
    add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert 7.0 in waits


def test_short_rate_limit_waits_what_meta_says_then_succeeds(cli, make_sandbox, waits):
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "rate_limit", "code": 80000, "eta_minutes": 1, "times": 1}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert 60.0 in waits
    assert sb.count("meta.insights", "1") == 2
    assert integration(cli, integration_id)["status"] == "ok"


def test_long_rate_limit_marks_rate_limited_and_later_runs_skip(cli, make_sandbox, waits):
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "rate_limit", "code": 17, "eta_minutes": 30}]}}})
    limited = add_meta(cli, account="act_1")
    healthy = add_meta(cli, account="act_2", token="EAABtoken-two")
    before = datetime.now(UTC)
    result = cli("sync-all")
    assert result.code == 1
    item = integration(cli, limited)
    assert item["status"] == "rate_limited" and "User request limit reached" in item["last_error"]
    until = datetime.fromisoformat(item["rate_limited_until"])
    assert before + timedelta(minutes=29) < until < before + timedelta(minutes=31)
    assert sb.count("meta.insights", "1") == 1, "no retries when Meta asks for longer than EMSYNC_RETRY_MAX_WAIT"
    assert waits == []
    assert integration(cli, healthy)["status"] == "ok"
    sb.reset_log()
    assert cli("sync-all").code == 0, "a rate-limited integration waiting for its time is not a failure of this run"
    assert sb.count(account="1") == 0


def test_rate_limit_without_a_time_retries_with_backoff_then_gives_up_as_rate_limited(cli, make_sandbox, waits, monkeypatch):
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "3")
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "rate_limit", "code": 4}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    assert sb.count("meta.insights", "1") == 3 and len(waits) == 2
    assert integration(cli, integration_id)["status"] == "rate_limited"


@pytest.mark.parametrize("fault", [{"kind": "server_error", "times": 2}, {"kind": "truncated", "times": 1}, {"kind": "drop", "times": 1}])
def test_transient_failures_retry_and_succeed(cli, sq_engine, make_sandbox, waits, fault):
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [fault]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert values(stored(sq_engine, integration_id)) == quantized(expected(sb, "meta", "1"))
    assert len(waits) == fault["times"] and all(0 < w <= 60 for w in waits)


def test_slow_response_past_the_timeout_is_retried(cli, make_sandbox, monkeypatch):
    # A margin a loaded machine keeps: the retried request has a whole second to be answered.
    monkeypatch.setenv("EMSYNC_HTTP_TIMEOUT", "1")
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "slow", "seconds": 2.5, "times": 1}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert integration(cli, integration_id)["status"] == "ok"
    deadline = time.monotonic() + 10  # the slow answer is logged when the sandbox finishes sleeping
    while sb.count("meta.insights", "1") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sb.count("meta.insights", "1") == 2


def test_persistent_server_errors_fail_after_the_configured_attempts(cli, make_sandbox, monkeypatch):
    monkeypatch.setenv("EMSYNC_RETRY_ATTEMPTS", "4")
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "server_error"}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    assert sb.count("meta.insights", "1") == 4
    item = integration(cli, integration_id)
    assert item["status"] == "error" and "Meta error 2" in item["last_error"] and "request id A" in item["last_error"]


@pytest.mark.parametrize("kind, subcode", [("token_expired", "463"), ("token_revoked", "458")])
def test_invalid_token_needs_reauth_without_retries(cli, make_sandbox, kind, subcode):
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": kind}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "needs_reauth"
    assert f"190/{subcode}" in item["last_error"] and "emsync integrations update" in item["last_error"]
    assert sb.count("meta.insights", "1") == 1
    sb.reset_log()
    assert cli("sync-all").code == 0 and sb.count(account="1") == 0, "sync-all leaves needs_reauth alone"
    assert cli("sync-user", "anna@example.com").code == 1 and sb.count("meta.insights", "1") == 1, "sync-user still tries"


def test_permission_error_needs_reauth_at_once_and_is_not_retried_every_run(cli, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"faults": [{"kind": "permission"}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "needs_reauth" and "(#200)" in item["last_error"]
    assert "ads_read" in item["last_error"] and f"emsync integrations update {integration_id} " in item["last_error"]
    assert "integrations update ID" not in item["last_error"]
    assert f"integrations update {integration_id} --access-token -'" in item["last_error"], "the token goes on stdin, not argv"
    assert sb.count("meta.insights", "1") == 1
    sb.reset_log()
    assert cli("sync-all").code == 0 and sb.count(account="1") == 0, "a permission problem waits for the operator"


def test_a_token_without_ads_read_is_refused_by_the_sandbox_as_meta_does(cli, sq_engine, make_sandbox):
    make_sandbox({"meta_tokens": {"EAABprofile-only": {"scopes": ["public_profile"]}}})
    integration_id = add_meta(cli, "anna@example.com", "act_1", "EAABprofile-only")
    assert cli("sync-all").code == 1
    item = integration(cli, integration_id)
    assert item["status"] == "needs_reauth" and "(#200)" in item["last_error"] and "ads_read" in item["last_error"]
    assert stored(sq_engine, integration_id) == {}, "no rows for a token that may not read insights"


def test_reduce_the_amount_of_data_falls_back_to_an_async_report(cli, sq_engine, make_sandbox):
    sb = make_sandbox({"async_polls": 2, "meta_accounts": {"1": {"campaigns": 20, "faults": [{"kind": "reduce_data"}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 0
    assert values(stored(sq_engine, integration_id)) == quantized(expected(sb, "meta", "1"))
    assert sb.count("meta.insights", "1") == 1
    assert sb.count("meta.report_start", "1") == 1
    assert sb.count("meta.report_status", "1") == 3
    assert sb.count("meta.report_insights", "1") == 2  # > 500 rows: two pages


def test_token_expiring_within_7_days_is_exchanged_and_stored(cli, sq_engine, make_sandbox):
    sb = make_sandbox()
    soon = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    integration_id = add_meta(cli, "anna@example.com", "act_1", "EAABold-expiring-token", "--token-expires-at", soon)
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    other = add_meta(cli, "anna@example.com", "act_2", "EAABfresh-token", "--token-expires-at", later)
    system = add_meta(cli, "anna@example.com", "act_3", "EAABsystem-user-token")
    assert cli("sync-all").code == 0
    assert sb.count("meta.token_exchange") == 1
    item = integration(cli, integration_id)
    expires = datetime.fromisoformat(item["token_expires_at"])
    assert timedelta(days=59) < expires - datetime.now(UTC) < timedelta(days=61)
    from sqlalchemy import text

    from emsync.crypto import TokenBox

    with sq_engine.connect() as conn:
        blob = conn.execute(
            text("SELECT c.access_token_enc FROM credentials c JOIN integrations i ON i.credential_id = c.id WHERE i.id=:i"),
            {"i": integration_id},
        ).scalar()
    assert TokenBox(TEST_KEY).decrypt(blob) in sb.meta_tokens_issued
    assert integration(cli, other)["token_expires_at"] is not None and integration(cli, system)["token_expires_at"] is None
    sb.reset_log()
    assert cli("sync-all").code == 0 and sb.count("meta.token_exchange") == 0


def test_appsecret_proof_is_sent_on_every_call(cli, make_sandbox, monkeypatch):
    make_sandbox()
    monkeypatch.setenv("META_APP_SECRET", "a-different-app-secret")
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    assert "Invalid appsecret_proof" in integration(cli, integration_id)["last_error"]


def test_a_repeated_cursor_is_refused_instead_of_looping(cli, make_sandbox):
    sb = make_sandbox({"meta_accounts": {"1": {"campaigns": 20, "faults": [{"kind": "bad_cursor_loop"}]}}})
    integration_id = add_meta(cli, account="act_1")
    assert cli("sync-all").code == 1
    assert "same page cursor twice" in integration(cli, integration_id)["last_error"]
    assert sb.count("meta.insights", "1") <= 3


def test_no_token_in_any_output_or_log(cli, make_sandbox, monkeypatch, tmp_path):
    log_file = tmp_path / "emsync.log"
    monkeypatch.setenv("EMSYNC_LOG_FILE", str(log_file))
    make_sandbox(
        {
            "meta_accounts": {
                "1": {"campaigns": 20, "faults": [{"kind": "server_error", "page": 2, "endpoint": "insights", "times": 1}]},
                "2": {"faults": [{"kind": "token_expired"}]},
            }
        }
    )
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    add_meta(cli, "anna@example.com", "act_1", "EAABdistinctive-token-one", "--token-expires-at", soon)
    add_meta(cli, "anna@example.com", "act_2", "EAABdistinctive-token-two")
    outputs = [cli("--verbose", "sync-all"), cli("sync-all", "--json", "--full"), cli("status", "--json"), cli("status")]
    captured = "".join(r.text for r in outputs) + log_file.read_text()
    assert "distinctive" not in captured and "EAAS" not in captured
    assert "sandbox-app-secret" not in captured


def test_an_unreadable_number_is_named_with_its_article():
    from emsync.errors import FatalApiError
    from emsync.numbers import api_decimal, api_int

    with pytest.raises(FatalApiError, match=r"^Meta returned an impression count emsync cannot read: 'x'$"):
        api_int("x", "Meta", "impression count")
    with pytest.raises(FatalApiError, match=r"^Meta returned a spend emsync cannot read: 'NaN'$"):
        api_decimal("NaN", "Meta", "spend")
