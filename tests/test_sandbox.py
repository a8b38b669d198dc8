"""The sandbox answers in the documented shapes, and every fault reaches a client over real HTTP."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date, timedelta

import pytest
import requests

from emsync.sandbox import Sandbox
from emsync.sandbox.data import day_stats

V = "v25.0"
GV = "v26"


@pytest.fixture
def sb():
    with Sandbox({"campaigns": 3, "meta_accounts": {"77": {"conversions": "pixel_only"}}}) as s:
        yield s


def _range(days=30, today=None):
    today = today or date.today()
    return json.dumps({"since": (today - timedelta(days=days - 1)).isoformat(), "until": today.isoformat()})


def _insights(sb, account="123", **params):
    query = {
        "level": "campaign",
        "time_increment": "1",
        "time_range": _range(),
        "limit": "500",
        "fields": "campaign_id,campaign_name,spend,impressions,clicks,actions,action_values",
        "access_token": "EAABt0ken",
        **params,
    }
    return requests.get(f"{sb.url}/{V}/act_{account}/insights", params=query, timeout=5)


def test_meta_insights_shape_strings_absent_fields_and_usage_headers(sb):
    response = _insights(sb)
    assert response.status_code == 200
    body = response.json()
    rows = body["data"]
    assert rows, "the sandbox produced no data"
    for row in rows:
        assert isinstance(row["spend"], str) and isinstance(row["impressions"], str)
        assert row["date_start"] == row["date_stop"]
        if "clicks" not in row:
            assert "actions" not in row or all(a["action_type"] != "link_click" for a in row["actions"])
    assert any("actions" not in r for r in rows) or any("action_values" not in r for r in rows), "absent fields expected"
    purchase_rows = [r for r in rows if "action_values" in r]
    types = {a["action_type"] for r in purchase_rows for a in r["actions"]}
    assert {"omni_purchase", "purchase", "offsite_conversion.fb_pixel_purchase", "link_click"} <= types
    buc = json.loads(response.headers["X-Business-Use-Case-Usage"])
    assert set(buc["123"][0]) >= {"call_count", "total_cputime", "total_time", "estimated_time_to_regain_access"}
    assert "acc_id_util_pct" in json.loads(response.headers["X-Ad-Account-Usage"])


def test_meta_pixel_only_account_carries_only_the_pixel_type(sb):
    rows = _insights(sb, account="77").json()["data"]
    types = {a["action_type"] for r in rows for a in r.get("actions", [])}
    assert "offsite_conversion.fb_pixel_purchase" in types
    assert not types & {"omni_purchase", "purchase"}


def test_meta_paging_next_is_absolute_and_carries_the_query(sb):
    first = _insights(sb, limit="40").json()
    next_url = first["paging"]["next"]
    assert next_url.startswith(sb.url + f"/{V}/act_123/insights?")
    assert "access_token=EAABt0ken" in next_url and "after=" in next_url
    second = requests.get(next_url, timeout=5).json()
    total = len(first["data"]) + len(second["data"])
    while "next" in second.get("paging", {}):
        second = requests.get(second["paging"]["next"], timeout=5).json()
        total += len(second["data"])
    today = date.today()
    expected = day_stats(7, "meta", "123", 3, today - timedelta(days=29), today, today=sb.today(sb.account("meta", "123")["timezone"]))
    assert total == len(expected)


def test_meta_errors_have_the_graph_shape(sb):
    body = requests.get(f"{sb.url}/{V}/act_123/insights", params={"fields": "spend"}, timeout=5).json()
    assert body["error"]["code"] == 104 and "fbtrace_id" in body["error"]
    bad_field = _insights(sb, fields="campaign_id,bogus").json()["error"]
    assert (bad_field["code"], bad_field["type"]) == (100, "OAuthException")


def test_meta_appsecret_proof_is_checked(sb):
    secret = sb.scenario["meta_app_secret"].encode()
    good = hmac.new(secret, b"EAABt0ken", hashlib.sha256).hexdigest()
    assert _insights(sb, appsecret_proof=good).status_code == 200
    bad = _insights(sb, appsecret_proof="0" * 64).json()
    assert "appsecret_proof" in bad["error"]["message"]


def test_meta_account_token_exchange_and_debug_token(sb):
    account = requests.get(
        f"{sb.url}/{V}/act_123", params={"fields": "currency,timezone_name,name,account_status", "access_token": "t0ken1"}, timeout=5
    ).json()
    assert set(account) == {"currency", "timezone_name", "name", "account_status", "id"}
    exchanged = requests.get(
        f"{sb.url}/{V}/oauth/access_token",
        params={
            "grant_type": "fb_exchange_token",
            "client_id": sb.scenario["meta_app_id"],
            "client_secret": sb.scenario["meta_app_secret"],
            "fb_exchange_token": "EAABold",
        },
        timeout=5,
    ).json()
    assert exchanged["token_type"] == "bearer" and exchanged["expires_in"] == 5183944 and exchanged["access_token"] != "EAABold"
    debug = requests.get(
        f"{sb.url}/debug_token",
        params={"input_token": exchanged["access_token"], "access_token": f"{sb.scenario['meta_app_id']}|{sb.scenario['meta_app_secret']}"},
        timeout=5,
    ).json()
    assert debug["data"]["is_valid"] is True and debug["data"]["expires_at"] > 0


def test_meta_async_report_run(sb):
    params = {"level": "campaign", "time_increment": "1", "time_range": _range(), "fields": "campaign_id,spend", "access_token": "t0ken1"}
    started = requests.post(f"{sb.url}/{V}/act_123/insights", data=params, timeout=5).json()
    run_id = started["report_run_id"]
    statuses = []
    for _ in range(5):
        job = requests.get(f"{sb.url}/{V}/{run_id}", params={"access_token": "t0ken1"}, timeout=5).json()
        statuses.append(job["async_status"])
        if job["async_status"] == "Job Completed":
            assert job["async_percent_completion"] == 100
            break
    assert statuses[-1] == "Job Completed" and statuses[0] != "Job Completed"
    results = requests.get(f"{sb.url}/{V}/{run_id}/insights", params={"access_token": "t0ken1", "limit": "500"}, timeout=5).json()
    assert results["data"] and set(results["data"][0]) == {"campaign_id", "spend", "date_start", "date_stop"}


def _token(sb):
    return requests.post(
        f"{sb.url}/token",
        data={
            "grant_type": "refresh_token",
            "client_id": sb.scenario["google_client_id"],
            "client_secret": sb.scenario["google_client_secret"],
            "refresh_token": "1//r",
        },
        timeout=5,
    )


def _stream(sb, customer="1234567890", query=None, token=None, headers=None):
    token = token or _token(sb).json()["access_token"]
    query = query or (
        f"SELECT campaign.id, campaign.name, segments.date, metrics.cost_micros, metrics.impressions, metrics.clicks, "
        f"metrics.conversions, metrics.conversions_value FROM campaign WHERE segments.date BETWEEN "
        f"'{date.today() - timedelta(days=29)}' AND '{date.today()}'"
    )
    return requests.post(
        f"{sb.url}/{GV}/customers/{customer}/googleAds:searchStream",
        json={"query": query},
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
        timeout=5,
    )


def test_google_token_endpoint(sb):
    body = _token(sb).json()
    assert body["expires_in"] == 3599 and body["token_type"] == "Bearer" and body["access_token"].startswith("ya29.")
    bad_client = requests.post(
        f"{sb.url}/token", data={"grant_type": "refresh_token", "client_id": "x", "client_secret": "y", "refresh_token": "r"}, timeout=5
    )
    assert bad_client.status_code == 401 and bad_client.json()["error"] == "invalid_client"


def test_google_stream_shape_camel_case_int64_strings_omitted_zeros(sb):
    response = _stream(sb)
    assert response.status_code == 200
    batches = response.json()
    assert isinstance(batches, list) and batches[0]["fieldMask"].startswith("campaign.id,campaign.name,segments.date,metrics.costMicros")
    rows = [r for b in batches for r in b.get("results", [])]
    assert rows and all(isinstance(r["metrics"].get("impressions", "0"), str) for r in rows)
    assert all(isinstance(r["metrics"].get("costMicros", "0"), str) for r in rows)
    assert any("conversions" not in r["metrics"] for r in rows), "zero conversions must be omitted"
    assert any(isinstance(r["metrics"].get("conversions"), float) for r in rows)
    assert "requestId" in batches[0] and "queryResourceConsumption" in batches[-1]


def test_google_multi_batch_and_empty_and_during(sb):
    sb.scenario["google_batch_size"] = 7
    batches = _stream(sb).json()
    assert len(batches) > 1 and all(len(b["results"]) <= 7 for b in batches)
    future = _stream(
        sb, query="SELECT campaign.id, segments.date FROM campaign WHERE segments.date BETWEEN '2030-01-01' AND '2030-01-02'"
    ).json()
    assert future == [{"fieldMask": "campaign.id,segments.date", "requestId": future[0]["requestId"], "queryResourceConsumption": "50"}]
    during = [
        r
        for b in _stream(sb, query="SELECT campaign.id, segments.date FROM campaign WHERE segments.date DURING LAST_30_DAYS").json()
        for r in b.get("results", [])
    ]
    assert during and str(date.today()) not in {r["segments"]["date"] for r in during}, "LAST_30_DAYS excludes today"
    customer = _stream(sb, query="SELECT customer.currency_code, customer.time_zone FROM customer").json()
    assert set(customer[0]["results"][0]["customer"]) >= {"currencyCode", "timeZone"}


def test_google_manager_account_needs_login_customer_id(sb):
    sb.set_account("google", "2222222222", manager="9999999999")
    denied = _stream(sb, customer="2222222222")
    assert denied.status_code == 403
    error = denied.json()[0]["error"]
    failure = error["details"][0]["errors"][0]
    assert failure["errorCode"] == {"authorizationError": "USER_PERMISSION_DENIED"} and "login-customer-id" in failure["message"]
    assert _stream(sb, customer="2222222222", headers={"login-customer-id": "9999999999"}).status_code == 200


def test_google_expired_access_token_is_401():
    with Sandbox({"google_token_ttl": 0}) as sb:
        token = _token(sb).json()["access_token"]
        response = _stream(sb, token=token)
        assert response.status_code == 401
        assert response.json()[0]["error"]["status"] == "UNAUTHENTICATED"


META_FAULTS = [
    ({"kind": "rate_limit", "code": 17, "eta_minutes": 3}, 400, 17),
    ({"kind": "rate_limit", "code": 80000}, 400, 80000),
    ({"kind": "server_error"}, 500, 2),
    ({"kind": "token_expired"}, 400, 190),
    ({"kind": "token_revoked"}, 400, 190),
    ({"kind": "permission"}, 400, 200),
    ({"kind": "reduce_data"}, 500, 1),
]


@pytest.mark.parametrize("fault, status, code", META_FAULTS)
def test_meta_faults_reach_the_client(fault, status, code):
    with Sandbox({"meta_accounts": {"5": {"faults": [{**fault, "times": 1}]}}}) as sb:
        response = _insights(sb, account="5")
        assert response.status_code == status and response.json()["error"]["code"] == code
        if fault["kind"] == "rate_limit":
            usage = json.loads(response.headers["X-Business-Use-Case-Usage"])["5"][0]
            assert usage["estimated_time_to_regain_access"] == fault.get("eta_minutes", 0)
        assert _insights(sb, account="5").status_code == 200, "times=1 means the next call succeeds"
        assert sb.count("meta.insights", "5") == 2


def test_meta_page_error_fails_page_two_only():
    with Sandbox({"meta_accounts": {"5": {"campaigns": 10, "faults": [{"kind": "page_error", "page": 2}]}}}) as sb:
        first = _insights(sb, account="5", limit="50")
        assert first.status_code == 200
        assert requests.get(first.json()["paging"]["next"], timeout=5).status_code == 500


@pytest.mark.parametrize("kind", ["truncated", "drop", "slow"])
def test_wire_faults_reach_the_client(kind):
    with Sandbox(
        {
            "meta_accounts": {"5": {"faults": [{"kind": kind, "seconds": 1}]}},
            "google_customers": {"1111111111": {"faults": [{"kind": kind, "seconds": 1}]}},
        }
    ) as sb:
        if kind == "truncated":
            with pytest.raises(ValueError):
                _insights(sb, account="5").json()
            with pytest.raises(ValueError):
                _stream(sb, customer="1111111111").json()
        elif kind == "drop":
            with pytest.raises(requests.ConnectionError):
                _insights(sb, account="5")
        else:
            with pytest.raises(requests.Timeout):
                requests.get(
                    f"{sb.url}/{V}/act_5/insights", params={"access_token": "t", "time_range": _range(), "time_increment": "1"}, timeout=0.3
                )


GOOGLE_FAULTS = [
    ({"kind": "rate_limit", "retry_seconds": 3}, 429, "RESOURCE_TEMPORARILY_EXHAUSTED", "3s"),
    ({"kind": "quota_exhausted"}, 429, "RESOURCE_EXHAUSTED", "40591s"),
    ({"kind": "server_error", "status": 503}, 503, "INTERNAL_ERROR", None),
    ({"kind": "permission_denied"}, 403, "USER_PERMISSION_DENIED", None),
    ({"kind": "not_enabled"}, 403, "CUSTOMER_NOT_ENABLED", None),
    ({"kind": "unauthenticated"}, 401, "OAUTH_TOKEN_REVOKED", None),
    ({"kind": "bad_query"}, 400, "UNRECOGNIZED_FIELD", None),
]


@pytest.mark.parametrize("fault, status, code, delay", GOOGLE_FAULTS)
def test_google_faults_reach_the_client(fault, status, code, delay):
    with Sandbox({"google_customers": {"1111111111": {"faults": [{**fault, "times": 1}]}}}) as sb:
        response = _stream(sb, customer="1111111111")
        assert response.status_code == status
        failure = response.json()[0]["error"]["details"][0]["errors"][0]
        assert code in failure["errorCode"].values()
        if delay:
            assert failure["details"]["quotaErrorDetails"]["retryDelay"] == delay
        assert _stream(sb, customer="1111111111").status_code == 200


def test_google_error_inside_a_200_stream_and_revoked_refresh_token():
    with Sandbox(
        {"revoked_refresh_tokens": ["1//gone"], "google_customers": {"1111111111": {"faults": [{"kind": "error_in_stream"}]}}}
    ) as sb:
        body = _stream(sb, customer="1111111111")
        assert body.status_code == 200 and "error" in body.json()[0]
        revoked = requests.post(
            f"{sb.url}/token",
            data={
                "grant_type": "refresh_token",
                "client_id": sb.scenario["google_client_id"],
                "client_secret": sb.scenario["google_client_secret"],
                "refresh_token": "1//gone",
            },
            timeout=5,
        )
        assert revoked.status_code == 400 and revoked.json() == {
            "error": "invalid_grant",
            "error_description": "Token has been expired or revoked.",
        }


def test_restatement_changes_numbers_and_drops_a_row():
    with Sandbox({"restate": True, "campaigns": 2}) as sb:
        first = {(r["campaign_id"], r["date_start"]): r for r in _insights(sb, account="9").json()["data"]}
        second = {(r["campaign_id"], r["date_start"]): r for r in _insights(sb, account="9").json()["data"]}
        assert len(second) == len(first) - 1
        changed = [k for k in second if second[k]["impressions"] != first[k]["impressions"]]
        assert changed


def test_request_log_over_http(sb):
    _insights(sb)
    log = requests.get(f"{sb.url}/__sandbox/requests", timeout=5).json()["requests"]
    assert [(e["kind"], e["account"], e["status"]) for e in log] == [("meta.insights", "123", 200)]
    assert sb.count("meta.insights", "123") == 1 and sb.count("google.search_stream") == 0


# ---------------------------------------------------------------- connecting: Google OAuth, account discovery, Meta edges

TREE = {
    "google_customers": {
        "1000000001": {"is_manager": True, "children": ["1000000002", "2000000001"], "name": "Agency"},
        "1000000002": {"is_manager": True, "children": ["2000000002", "2000000003"], "name": "Sub-manager"},
        "2000000003": {"status": "CANCELED"},
        "2000000009": {"status": "SUSPENDED"},
    },
    "google_users": {"anna@example.com": {"accessible": ["1000000001", "2000000009"]}, "nobody@example.com": {"ads_user": False}},
}
CLIENT_QUERY = (
    "SELECT customer_client.id, customer_client.descriptive_name, customer_client.manager, customer_client.level, "
    "customer_client.status, customer_client.currency_code, customer_client.time_zone FROM customer_client"
)


def _challenge(verifier: str) -> str:
    import base64

    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def _authorize(sb, verifier="v" * 64, **params):
    query = {
        "client_id": sb.scenario["google_client_id"],
        "redirect_uri": "http://127.0.0.1:8765/",
        "response_type": "code",
        "scope": "https://www.googleapis.com/auth/adwords openid email",
        "state": "st4te",
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
        "access_type": "offline",
        "prompt": "consent",
        **params,
    }
    return requests.get(
        sb.env()["GOOGLE_OAUTH_AUTH_URL"], params={k: v for k, v in query.items() if v is not None}, allow_redirects=False, timeout=5
    )


def _redirected(response) -> dict:
    from urllib.parse import parse_qs, urlsplit

    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}


def _exchange(sb, code, verifier="v" * 64, redirect_uri="http://127.0.0.1:8765/", secret=None):
    return requests.post(
        f"{sb.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": sb.scenario["google_client_id"],
            "client_secret": secret or sb.scenario["google_client_secret"],
        },
        timeout=5,
    )


def test_google_authorization_redirects_with_code_and_state_and_the_code_is_single_use():
    with Sandbox(TREE) as sb:
        answer = _authorize(sb, login_hint="anna@example.com")
        assert answer.headers["Location"].startswith("http://127.0.0.1:8765/?")
        params = _redirected(answer)
        assert params["state"] == "st4te" and params["code"].startswith("4/")
        token = _exchange(sb, params["code"])
        body = token.json()
        assert token.status_code == 200 and body["token_type"] == "Bearer" and body["refresh_token"].startswith("1//")
        assert body["scope"].split() == [
            "https://www.googleapis.com/auth/adwords",
            "https://www.googleapis.com/auth/userinfo.email",
            "openid",
        ]
        payload = body["id_token"].split(".")[1]
        assert json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["email"] == "anna@example.com"
        reused = _exchange(sb, params["code"])
        assert (reused.status_code, reused.json()["error"]) == (400, "invalid_grant")
        assert [e["kind"] for e in sb.log] == ["google.auth", "google.token", "google.token"]


def test_google_token_exchange_verifies_pkce_redirect_uri_and_client_secret():
    with Sandbox() as sb:
        wrong = _exchange(sb, _redirected(_authorize(sb))["code"], verifier="w" * 64)
        assert (wrong.status_code, wrong.json()) == (400, {"error": "invalid_grant", "error_description": "Invalid code verifier."})
        moved = _exchange(sb, _redirected(_authorize(sb))["code"], redirect_uri="http://127.0.0.1:9999/")
        assert (moved.status_code, moved.json()["error"]) == (400, "redirect_uri_mismatch")
        bad_secret = _exchange(sb, _redirected(_authorize(sb))["code"], secret="not-the-secret")
        assert (bad_secret.status_code, bad_secret.json()["error"]) == (401, "invalid_client")
        basic = requests.post(
            f"{sb.url}/token",
            data={
                "grant_type": "authorization_code",
                "code": _redirected(_authorize(sb))["code"],
                "redirect_uri": "http://127.0.0.1:8765/",
                "code_verifier": "v" * 64,
            },
            auth=(sb.scenario["google_client_id"], sb.scenario["google_client_secret"]),
            timeout=5,
        )
        assert basic.status_code == 200, "client_secret_basic is accepted as Google does"


@pytest.mark.parametrize(
    "params, status, error",
    [
        ({"client_id": "someone-else"}, 401, "invalid_client"),
        ({"redirect_uri": "https://example.com/callback"}, 400, "redirect_uri_mismatch"),
        ({"code_challenge": None}, 400, "invalid_request"),
        ({"code_challenge_method": "plain"}, 400, "invalid_request"),
        ({"state": None}, 400, "invalid_request"),
        ({"scope": "openid email"}, 400, "invalid_scope"),
        ({"response_type": "token"}, 400, "unsupported_response_type"),
    ],
)
def test_google_authorization_refuses_bad_requests_without_redirecting(params, status, error):
    with Sandbox() as sb:
        answer = _authorize(sb, **params)
        assert (answer.status_code, answer.json()["error"]) == (status, error)
        assert "Location" not in answer.headers


def test_google_refresh_token_only_offline_and_on_first_consent_unless_prompted():
    with Sandbox() as sb:
        online = _exchange(sb, _redirected(_authorize(sb, access_type=None, prompt=None))["code"]).json()
        assert "refresh_token" not in online
        again = _exchange(sb, _redirected(_authorize(sb, prompt=None))["code"]).json()
        assert "refresh_token" not in again, "the user consented before and no prompt=consent asked again"
        assert "refresh_token" in _exchange(sb, _redirected(_authorize(sb))["code"]).json()


def test_google_consent_denied_and_forged_state_faults():
    with Sandbox({"google_oauth_faults": [{"kind": "access_denied", "times": 1}, {"kind": "state_mismatch", "times": 1}]}) as sb:
        assert _redirected(_authorize(sb)) == {"error": "access_denied", "state": "st4te"}
        assert _redirected(_authorize(sb))["state"] != "st4te"
        assert _redirected(_authorize(sb))["state"] == "st4te"


def test_google_revoke_invalidates_the_refresh_token_and_its_access_tokens():
    with Sandbox() as sb:
        body = _exchange(sb, _redirected(_authorize(sb))["code"]).json()
        assert requests.post(f"{sb.url}/revoke", data={"token": body["refresh_token"]}, timeout=5).status_code == 200
        again = requests.post(f"{sb.url}/revoke", data={"token": body["refresh_token"]}, timeout=5)
        assert (again.status_code, again.json()["error"]) == (400, "invalid_token")
        assert _stream(sb, token=body["access_token"]).json()[0]["error"]["details"][0]["errors"][0]["errorCode"] == {
            "authenticationError": "OAUTH_TOKEN_REVOKED"
        }
        refreshed = requests.post(
            f"{sb.url}/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": body["refresh_token"],
                "client_id": sb.scenario["google_client_id"],
                "client_secret": sb.scenario["google_client_secret"],
            },
            timeout=5,
        )
        assert refreshed.json()["error"] == "invalid_grant"


def _user_token(sb, email):
    return _exchange(sb, _redirected(_authorize(sb, login_hint=email))["code"]).json()["access_token"]


def test_google_accessible_customers_and_a_two_level_customer_client_tree():
    with Sandbox(TREE) as sb:
        token = _user_token(sb, "anna@example.com")
        listed = requests.get(f"{sb.url}/{GV}/customers:listAccessibleCustomers", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert listed.json() == {"resourceNames": ["customers/1000000001", "customers/2000000009"]}
        tree = _stream(sb, customer="1000000001", query=CLIENT_QUERY, token=token, headers={"login-customer-id": "1000000001"})
        rows = [r["customerClient"] for b in tree.json() for r in b["results"]]
        assert [(r["id"], r.get("level", "0"), r.get("manager", False), r["status"]) for r in rows] == [
            ("1000000001", "0", True, "ENABLED"),
            ("1000000002", "1", True, "ENABLED"),
            ("2000000001", "1", False, "ENABLED"),
            ("2000000002", "2", False, "ENABLED"),
            ("2000000003", "2", False, "CANCELED"),
        ]
        assert "level" not in rows[0] and "manager" not in rows[2], "proto3 JSON leaves out zero and false"
        direct = _stream(
            sb,
            customer="1000000001",
            query=CLIENT_QUERY + " WHERE customer_client.level <= 1",
            token=token,
            headers={"login-customer-id": "1000000001"},
        )
        assert [r["customerClient"]["id"] for r in direct.json()[0]["results"]] == ["1000000001", "1000000002", "2000000001"]
        assert sb.count("google.customer_client", "1000000001") == 2 and sb.count("google.list_accessible") == 1


def test_google_client_alone_not_enabled_unreachable_and_not_ads_user():
    with Sandbox(TREE) as sb:
        token = _user_token(sb, "anna@example.com")
        alone = _stream(sb, customer="2000000002", query=CLIENT_QUERY, token=token, headers={"login-customer-id": "1000000001"})
        assert [r["customerClient"]["id"] for r in alone.json()[0]["results"]] == ["2000000002"]
        suspended = _stream(sb, customer="2000000009", query=CLIENT_QUERY, token=token)
        assert suspended.status_code == 403
        assert suspended.json()[0]["error"]["details"][0]["errors"][0]["errorCode"] == {"authorizationError": "CUSTOMER_NOT_ENABLED"}
        outside = _stream(sb, customer="2000000002", query=CLIENT_QUERY, token=token)
        assert outside.json()[0]["error"]["details"][0]["errors"][0]["errorCode"] == {"authorizationError": "USER_PERMISSION_DENIED"}
        stranger = _user_token(sb, "nobody@example.com")
        refused = requests.get(
            f"{sb.url}/{GV}/customers:listAccessibleCustomers", headers={"Authorization": f"Bearer {stranger}"}, timeout=5
        )
        assert refused.status_code == 401
        failure = refused.json()["error"]["details"][0]["errors"][0]
        assert failure["errorCode"] == {"authenticationError": "NOT_ADS_USER"}


META_CONNECT = {
    "meta_tokens": {
        "EAAfull": {"scopes": ["ads_read", "business_management"], "accounts": ["1", "2", "3"], "businesses": ["900"]},
        "EAAsmall": {"scopes": ["ads_read"], "accounts": ["1"]},
        "EAAnoads": {"scopes": ["public_profile"]},
        "EAAsystem": {"type": "SYSTEM_USER", "scopes": ["ads_management"], "expires_at": 0},
        "EAAdead": {"valid": False},
    },
    "meta_businesses": {"900": {"name": "Agency BM", "owned": ["3", "4"], "client": ["5"]}},
    "meta_accounts": {"2": {"account_status": 101}},
}


def _graph(sb, path, token, **params):
    return requests.get(f"{sb.url}/{V}/{path}", params={"access_token": token, **params}, timeout=5)


def test_meta_adaccounts_are_paged_with_cursors_and_next():
    with Sandbox(META_CONNECT) as sb:
        first = _graph(sb, "me/adaccounts", "EAAfull", fields="id,account_id,name,account_status,currency,timezone_name", limit="2").json()
        assert [a["id"] for a in first["data"]] == ["act_1", "act_2"] and first["data"][1]["account_status"] == 101
        assert set(first["data"][0]) == {"id", "account_id", "name", "account_status", "currency", "timezone_name"}
        assert set(first["paging"]["cursors"]) == {"before", "after"} and first["paging"]["next"].startswith(f"{sb.url}/{V}/me/adaccounts?")
        second = requests.get(first["paging"]["next"], timeout=5).json()
        assert [a["id"] for a in second["data"]] == ["act_3"] and "next" not in second["paging"]
        assert sb.count("meta.adaccounts") == 2


def test_meta_businesses_need_business_management():
    with Sandbox(META_CONNECT) as sb:
        assert _graph(sb, "me/businesses", "EAAfull").json()["data"] == [{"id": "900", "name": "Agency BM"}]
        assert [a["id"] for a in _graph(sb, "900/owned_ad_accounts", "EAAfull", fields="name").json()["data"]] == ["act_3", "act_4"]
        assert [a["id"] for a in _graph(sb, "900/client_ad_accounts", "EAAfull").json()["data"]] == ["act_5"]
        refused = _graph(sb, "me/businesses", "EAAsmall")
        assert refused.status_code == 403 and refused.json()["error"]["code"] == 200
        assert "business_management" in refused.json()["error"]["message"]
        assert _graph(sb, "me/adaccounts", "EAAnoads").json()["error"]["code"] == 200
        assert sb.count("meta.owned_ad_accounts", "900") == 1 and sb.count("meta.businesses") == 2


def test_meta_debug_token_types_scopes_and_an_invalid_token():
    with Sandbox(META_CONNECT) as sb:
        app = f"{sb.scenario['meta_app_id']}|{sb.scenario['meta_app_secret']}"

        def debug(token):
            return requests.get(f"{sb.url}/{V}/debug_token", params={"input_token": token, "access_token": app}, timeout=5).json()["data"]

        system = debug("EAAsystem")
        assert (system["type"], system["expires_at"], system["scopes"], system["is_valid"]) == ("SYSTEM_USER", 0, ["ads_management"], True)
        dead = debug("EAAdead")
        assert dead["is_valid"] is False and dead["error"]["code"] == 190
        exchanged = requests.get(
            f"{sb.url}/{V}/oauth/access_token",
            params={
                "grant_type": "fb_exchange_token",
                "client_id": sb.scenario["meta_app_id"],
                "client_secret": sb.scenario["meta_app_secret"],
                "fb_exchange_token": "EAAfull",
            },
            timeout=5,
        ).json()
        assert set(exchanged) == {"access_token", "token_type", "expires_in"}
        assert debug(exchanged["access_token"])["scopes"] == ["ads_read", "business_management"], "the long-lived token keeps the scopes"
        self_inspected = requests.get(f"{sb.url}/{V}/debug_token", params={"input_token": "EAAdead", "access_token": "EAAdead"}, timeout=5)
        assert self_inspected.json()["error"]["code"] == 190


# ---------------------------------------------------------------- issue 14: what the real APIs do beyond their docs


def test_meta_filtering_on_campaign_status_shows_deleted_campaigns_and_refuses_invalid_values():
    from emsync.sandbox.data import campaign_ids

    gone = campaign_ids("meta", "5", 3)[1][0]
    with Sandbox({"meta_accounts": {"5": {"campaigns": 3, "campaign_states": {gone: "DELETED"}}}}) as sb:
        default = {r["campaign_id"] for r in _insights(sb, account="5").json()["data"]}
        every = json.dumps([{"field": "campaign.effective_status", "operator": "IN", "value": ["ACTIVE", "PAUSED", "DELETED"]}])
        asked = {r["campaign_id"] for r in _insights(sb, account="5", filtering=every).json()["data"]}
        assert gone not in default and gone in asked
        invalid = json.dumps([{"field": "campaign.effective_status", "operator": "IN", "value": ["ACTIVE", "PENDING_REVIEW"]}])
        error = _insights(sb, account="5", filtering=invalid).json()["error"]
        assert (error["code"], error["error_subcode"]) == (100, 1487561)


def test_meta_attribution_changes_the_purchases_of_an_account_whose_ad_sets_use_another_setting():
    with Sandbox({"meta_accounts": {"5": {"ad_set_attribution": "1d_click", "campaigns": 10}}}) as sb:

        def purchases(**params):
            rows = _insights(sb, account="5", **params).json()["data"]
            return {
                (r["campaign_id"], r["date_start"]): a for r in rows for a in r.get("actions", []) if a["action_type"] == "omni_purchase"
            }

        unified, default = purchases(use_unified_attribution_setting="true"), purchases()
        windows = purchases(action_attribution_windows='["7d_click","1d_view"]')
        assert unified and any(unified[k]["value"] != default[k]["value"] for k in unified)
        assert all(set(a) >= {"7d_click", "1d_view"} for a in windows.values())


def test_raw_and_app_endpoint_faults_reach_the_client():
    scenario = {
        "google_customers": {"1111111111": {"faults": [{"kind": "raw", "status": 404, "text": "Not Found", "content_type": "text/plain"}]}},
        "endpoint_faults": {
            "meta.token_exchange": [{"kind": "server_error", "times": 1}],
            "google.token": [{"kind": "raw", "status": 401, "times": 1}],
        },
    }
    with Sandbox(scenario) as sb:
        token = requests.post(f"{sb.url}/token", data={"grant_type": "refresh_token"}, timeout=5)
        assert token.status_code == 401 and token.text.startswith("<html>")
        response = _stream(sb, customer="1111111111")
        assert (response.status_code, response.text, response.headers["Content-Type"]) == (404, "Not Found", "text/plain")
        exchange = requests.get(f"{sb.url}/{V}/oauth/access_token", params={"grant_type": "fb_exchange_token"}, timeout=5)
        assert exchange.status_code == 500 and exchange.json()["error"]["code"] == 2


def test_meta_account_status_and_legacy_throttle_header():
    with Sandbox({"meta_accounts": {"5": {"account_status": 101, "faults": [{"kind": "legacy_throttle", "pct": 97}]}}}) as sb:
        account = requests.get(f"{sb.url}/{V}/act_5", params={"fields": "account_status", "access_token": "t0ken"}, timeout=5)
        assert account.json()["account_status"] == 101
        throttle = json.loads(_insights(sb, account="5").headers["x-fb-ads-insights-throttle"])
        assert throttle["app_id_util_pct"] == 97


def test_the_listen_backlog_takes_a_burst_of_parallel_clients():
    """request_queue_size reaches listen(): 64 clients connect before the server accepts any (socketserver's default
    backlog of 5 refused the sixth, which parallel runs and benchmarks met as timeouts and resets)."""
    import socket

    sb = Sandbox()  # listening, not accepting yet
    host, port = sb._server.server_address[:2]
    clients = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection((host, port), timeout=30))
        assert len(clients) == 64
    finally:
        for client in clients:
            client.close()
        sb._server.server_close()
