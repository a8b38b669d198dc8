"""Connecting, over real sockets against the sandbox: Google's installed-app OAuth (loopback and paste-back),
Google Ads account discovery across a manager tree, and Meta token checks and ad account discovery."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pytest
import requests

from emsync import discovery, oauth
from emsync.errors import FatalApiError, RateLimited, UserError
from emsync.http import HttpClient, new_session, redact

ANNA = "anna@example.com"
TREE = {
    "google_customers": {
        "1000000001": {"is_manager": True, "children": ["1000000002", "2000000001"], "name": "Agency MCC"},
        "1000000002": {"is_manager": True, "children": ["2000000002", "2000000003"], "name": "Sub-manager"},
        "2000000001": {"name": "Shoes"},
        "2000000002": {"name": "Hats"},
        "2000000003": {"name": "Old shop", "status": "CANCELED"},
        "2000000009": {"name": "Suspended direct", "status": "SUSPENDED"},
        "3000000001": {"name": "Own account"},
    },
    "google_users": {
        ANNA: {"accessible": ["1000000001", "2000000009", "3000000001"]},
        "nobody@example.com": {"ads_user": False},
        "sub@example.com": {"accessible": ["1000000001", "1000000002"]},
    },
}


@pytest.fixture(autouse=True)
def http_sandbox_allowed(monkeypatch):
    """oauthlib refuses http URLs; the sandbox is http. Only tests set this, never emsync."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")


def _client(sb, **changes) -> oauth.OAuthClient:
    env = sb.env()
    values = {
        "client_id": env["GOOGLE_OAUTH_CLIENT_ID"],
        "client_secret": env["GOOGLE_OAUTH_CLIENT_SECRET"],
        "auth_url": env["GOOGLE_OAUTH_AUTH_URL"],
        "token_url": env["GOOGLE_OAUTH_TOKEN_URL"],
        **changes,
    }
    return oauth.OAuthClient(**values)


def _http() -> HttpClient:
    return HttpClient(new_session(2), timeout=5, attempts=2, max_wait=1)


class Browser:
    """Plays the person's browser: opens the authorization URL, lets the sandbox consent, follows the redirect."""

    def __init__(self, tamper=None):
        self.tamper = tamper or (lambda location: location)
        self.urls: list[str] = []
        self.pages: list[str] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def __call__(self, url: str) -> None:  # emsync's show_url hook: the local server already listens
        self.urls.append(url)
        thread = threading.Thread(target=self._visit, args=(url,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _visit(self, url: str) -> None:
        try:
            consent = requests.get(url, allow_redirects=False, timeout=5)
            assert consent.status_code == 302, consent.text
            self.pages.append(requests.get(self.tamper(consent.headers["Location"]), timeout=5).text)
        except BaseException as exc:  # noqa: BLE001 - surfaced by join()
            self.errors.append(exc)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(10)
        if self.errors:
            raise self.errors[0]


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _refresh(sb, refresh_token: str) -> requests.Response:
    return requests.post(
        f"{sb.url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": sb.scenario["google_client_id"],
            "client_secret": sb.scenario["google_client_secret"],
        },
        timeout=5,
    )


# ---------------------------------------------------------------- Google OAuth


def test_loopback_flow_gets_a_working_refresh_token_and_the_email(make_sandbox):
    sb = make_sandbox(TREE)
    browser = Browser()
    grant = oauth.run_loopback(_client(sb), show_url=browser, open_browser=False, timeout=20, login_hint=ANNA)
    browser.join()
    asked = _query(browser.urls[0])
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert (asked["access_type"], asked["prompt"], asked["login_hint"]) == ("offline", "consent", ANNA)
    assert asked["scope"].split() == ["https://www.googleapis.com/auth/adwords", "openid", "email"] and asked["state"]
    assert asked["redirect_uri"].startswith("http://127.0.0.1:") and browser.pages == [oauth.SUCCESS_PAGE]
    assert grant.email == ANNA and oauth.ADS_SCOPE in grant.scopes and grant.expiry is not None
    assert _refresh(sb, grant.refresh_token).status_code == 200, "the refresh token is one the token endpoint accepts"
    assert grant.refresh_token not in repr(grant) and grant.access_token not in repr(grant)
    assert redact(f"got {grant.refresh_token}") == "got ***", "tokens are registered for redaction"
    assert [e["kind"] for e in sb.log] == ["google.auth", "google.token", "google.token"]


def test_paste_back_flow_and_pkce_challenge_matches_the_verifier(make_sandbox):
    sb = make_sandbox(TREE)
    pending = oauth.start_manual(_client(sb), port=47999, login_hint=ANNA)
    assert pending.redirect_uri == "http://127.0.0.1:47999/"
    verifier = pending.flow.code_verifier
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert _query(pending.url)["code_challenge"] == expected
    location = requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"]
    grant = oauth.finish_manual(pending, f"  {location}\n")
    assert grant.email == ANNA and grant.refresh_token.startswith("1//")


def test_a_wrong_verifier_is_refused_by_the_sandbox(make_sandbox):
    sb = make_sandbox()
    pending = oauth.start_manual(_client(sb))
    location = requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"]
    pending.flow.code_verifier = "x" * 64  # not the one the challenge came from
    with pytest.raises(UserError, match="invalid_grant: Invalid code verifier"):
        oauth.finish_manual(pending, location)


def test_consent_denied_is_one_line_and_exchanges_nothing(make_sandbox):
    sb = make_sandbox({"google_oauth_faults": [{"kind": "access_denied"}]})
    browser = Browser()
    with pytest.raises(UserError, match="denied on Google's consent screen") as caught:
        oauth.run_loopback(_client(sb), show_url=browser, open_browser=False, timeout=20)
    browser.join()
    assert "\n" not in str(caught.value) and sb.count("google.token") == 0


def test_state_mismatch_on_the_loopback_is_refused(make_sandbox):
    sb = make_sandbox()

    def forge(location: str) -> str:
        parts = urlsplit(location)
        query = {**_query(location), "state": "forged"}
        return urlunsplit(parts._replace(query=urlencode(query)))

    browser = Browser(tamper=forge)
    with pytest.raises(UserError, match="state mismatch"):
        oauth.run_loopback(_client(sb), show_url=browser, open_browser=False, timeout=20)
    browser.join()
    assert sb.count("google.token") == 0


def test_state_mismatch_on_the_paste_back_path(make_sandbox):
    sb = make_sandbox({"google_oauth_faults": [{"kind": "state_mismatch", "times": 1}]})
    pending = oauth.start_manual(_client(sb))
    location = requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"]
    with pytest.raises(UserError, match="state mismatch"):
        oauth.finish_manual(pending, location)


def test_invalid_client_names_the_settings_not_the_secret(make_sandbox):
    sb = make_sandbox()
    wrong = "wrong-secret-0123456789"
    pending = oauth.start_manual(_client(sb, client_secret=wrong))
    location = requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"]
    with pytest.raises(UserError, match="invalid_client.*GOOGLE_OAUTH_CLIENT_SECRET") as caught:
        oauth.finish_manual(pending, location)
    assert wrong not in str(caught.value) and _query(location)["code"] not in str(caught.value)


def test_an_unticked_ads_scope_is_refused(make_sandbox):
    sb = make_sandbox({"google_oauth_faults": [{"kind": "untick_ads"}]})
    pending = oauth.start_manual(_client(sb))
    with pytest.raises(UserError, match="did not grant access to Google Ads"):
        oauth.finish_manual(pending, requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"])


def test_a_reused_code_is_invalid_grant(make_sandbox):
    sb = make_sandbox()
    pending = oauth.start_manual(_client(sb))
    location = requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"]
    oauth.finish_manual(pending, location)
    with pytest.raises(UserError, match="invalid_grant"):
        oauth.finish_manual(pending, location)


@pytest.mark.parametrize(
    "pasted, message",
    [
        ("4/0Asandbox-just-the-code", "paste the whole address"),
        ("http://127.0.0.1:1234/?code=x&state=y", "not the address Google redirected to"),
        ("https://evil.example/?code=x&state=y", "not the address Google redirected to"),
    ],
)
def test_paste_back_refuses_other_text(make_sandbox, pasted, message):
    pending = oauth.start_manual(_client(make_sandbox()), port=47998)
    with pytest.raises(UserError, match=message):
        oauth.finish_manual(pending, pasted)


def test_the_pasted_loopback_address_reaches_oauthlib_as_https():
    assert (
        oauth._loopback_as_https("http://127.0.0.1:5000/?state=s&code=c", "http://127.0.0.1:5000/")
        == "https://127.0.0.1:5000/?state=s&code=c"
    )


def test_a_port_in_use_is_one_clear_line(make_sandbox):
    sb = make_sandbox()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} on 127.0.0.1 is in use") as caught:
            oauth.run_loopback(_client(sb), port=port, show_url=lambda url: None, open_browser=False, timeout=5)
    assert "\n" not in str(caught.value) and sb.count() == 0


def test_no_browser_answer_ends_with_a_clear_line(make_sandbox):
    sb = make_sandbox()
    with pytest.raises(UserError, match="no answer from the browser"):
        oauth.run_loopback(_client(sb), show_url=lambda url: None, open_browser=False, timeout=0.2)


def test_emsync_never_allows_http_itself(make_sandbox, monkeypatch):
    sb = make_sandbox()
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT")
    with pytest.raises(UserError, match="refuses plain http"):
        oauth.start_manual(_client(sb))
    assert "OAUTHLIB_INSECURE_TRANSPORT" not in os.environ


def test_revoke_ends_the_grant(make_sandbox):
    sb = make_sandbox()
    pending = oauth.start_manual(_client(sb))
    grant = oauth.finish_manual(pending, requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"])
    assert oauth.revoke(grant.refresh_token, sb.env()["GOOGLE_OAUTH_REVOKE_URL"], http=_http()) is True
    assert oauth.revoke(grant.refresh_token, sb.env()["GOOGLE_OAUTH_REVOKE_URL"], http=_http()) is False
    assert _refresh(sb, grant.refresh_token).json()["error"] == "invalid_grant"
    assert sb.count("google.revoke") == 2


def test_id_token_email_is_read_without_trusting_a_signature():
    assert oauth.email_from_id_token(None) is None and oauth.email_from_id_token("not-a-jwt") is None
    payload = base64.urlsafe_b64encode(b'{"email": "x@example.com"}').decode().rstrip("=")
    assert oauth.email_from_id_token(f"e30.{payload}.sig") == "x@example.com"


# ---------------------------------------------------------------- Google Ads discovery


def _connect(sb, email=ANNA) -> oauth.GoogleGrant:
    pending = oauth.start_manual(_client(sb), login_hint=email)
    return oauth.finish_manual(pending, requests.get(pending.url, allow_redirects=False, timeout=5).headers["Location"])


def _ads(sb, grant) -> discovery.GoogleAdsApi:
    return discovery.GoogleAdsApi(sb.url, "v26", grant.access_token, developer_token="dev-token-123456")


def test_discovery_walks_a_two_level_manager_tree_and_lists_a_not_enabled_customer(make_sandbox):
    sb = make_sandbox(TREE)
    found = discovery.discover_google(_http(), _ads(sb, _connect(sb)))
    assert found.accessible == ("1000000001", "2000000009", "3000000001")
    rows = {(c.customer_id, c.manager, c.level, c.status, c.login_customer_id) for c in found.customers}
    assert rows == {
        ("1000000001", True, 0, "ENABLED", "1000000001"),
        ("1000000002", True, 1, "ENABLED", "1000000001"),
        ("2000000001", False, 1, "ENABLED", "1000000001"),
        ("2000000002", False, 2, "ENABLED", "1000000001"),
        ("2000000003", False, 2, "CANCELED", "1000000001"),
        ("2000000009", False, 0, "CUSTOMER_NOT_ENABLED", "2000000009"),
        ("3000000001", False, 0, "ENABLED", "3000000001"),
    }
    hats = next(c for c in found.customers if c.customer_id == "2000000002")
    assert (hats.name, hats.currency, hats.time_zone) == (
        "Hats",
        sb.account("google", "2000000002")["currency"],
        sb.account("google", "2000000002")["timezone"],
    )
    assert {c.customer_id for c in found.customers if c.selectable} == {"2000000001", "2000000002", "3000000001"}
    assert found.operations == 4 == sb.count("google.list_accessible") + sb.count("google.customer_client")


def test_a_customer_under_a_sub_manager_is_listed_once_through_the_closest_manager(make_sandbox):
    sb = make_sandbox(TREE)
    found = discovery.discover_google(_http(), _ads(sb, _connect(sb, "sub@example.com")))
    hats = [c for c in found.customers if c.customer_id == "2000000002"]
    assert [(c.level, c.login_customer_id) for c in hats] == [(1, "1000000002")]
    sub = [c for c in found.customers if c.customer_id == "1000000002"]
    assert [(c.level, c.login_customer_id, c.manager) for c in sub] == [(0, "1000000002", True)]
    assert len({c.customer_id for c in found.customers}) == len(found.customers) == 5
    assert found.operations == 3


def test_customer_clients_sends_the_login_customer_id(make_sandbox):
    sb = make_sandbox(TREE)
    api = _ads(sb, _connect(sb))
    through_manager = discovery.customer_clients(_http(), api, "2000000002", login_customer_id="1000000001")
    assert [(c.customer_id, c.level, c.login_customer_id) for c in through_manager] == [("2000000002", 0, "1000000001")]
    with pytest.raises(discovery.CustomerRefused) as refused:
        discovery.customer_clients(_http(), api, "2000000002")  # not directly accessible: the manager must be named
    assert refused.value.code == "USER_PERMISSION_DENIED"
    direct = discovery.customer_clients(_http(), api, "1000000001", max_level=1)
    assert [c.customer_id for c in direct] == ["1000000001", "1000000002", "2000000001"]


def test_not_ads_user_is_a_clear_error(make_sandbox):
    sb = make_sandbox(TREE)
    with pytest.raises(UserError, match="NOT_ADS_USER"):
        discovery.discover_google(_http(), _ads(sb, _connect(sb, "nobody@example.com")))
    assert sb.count("google.customer_client") == 0


def test_discovery_waits_a_short_retry_delay_whatever_the_quota_errors_name(make_sandbox):
    # g-04's kind in discovery: a 429 RESOURCE_EXHAUSTED asking for 1 s is waited and retried like a temporary one
    scenario = {**TREE, "google_customers": dict(TREE["google_customers"])}
    fault = {"kind": "quota_exhausted", "scope": "ACCOUNT", "retry_seconds": 1, "endpoint": "customer_client", "times": 1}
    scenario["google_customers"]["3000000001"] = {"name": "Own account", "faults": [fault]}
    sb = make_sandbox(scenario)
    found = discovery.discover_google(_http(), _ads(sb, _connect(sb)))
    assert "3000000001" in {c.customer_id for c in found.customers if c.selectable}
    assert sb.count("google.customer_client", "3000000001") == 2, "refused once, then answered"
    assert found.operations == 4, "a retried call is one operation of discovery's own count"


def test_discovery_stops_at_once_when_google_asks_for_longer_than_emsync_waits(make_sandbox):
    scenario = {**TREE, "google_customers": dict(TREE["google_customers"])}
    fault = {"kind": "quota_exhausted", "scope": "ACCOUNT", "retry_seconds": 40591, "endpoint": "customer_client"}
    scenario["google_customers"]["3000000001"] = {"name": "Own account", "faults": [fault]}
    sb = make_sandbox(scenario)
    with pytest.raises(RateLimited, match="longer than EMSYNC_RETRY_MAX_WAIT"):
        discovery.discover_google(_http(), _ads(sb, _connect(sb)))
    assert sb.count("google.customer_client", "3000000001") == 1, "no retry into a wait of 11 hours"


# ---------------------------------------------------------------- Meta


META = {
    "meta_max_limit": 2,  # the server caps the page size: five accounts take three pages
    "meta_tokens": {
        "EAAuser-token-1": {"scopes": ["ads_read"], "accounts": ["11", "12", "13", "14", "15"], "user_id": "501"},
        "EAAagency-token": {"scopes": ["ads_read", "business_management"], "accounts": ["11"], "businesses": ["900"]},
        "EAAsystem-token": {"type": "SYSTEM_USER", "scopes": ["ads_management"], "expires_at": 0, "accounts": ["21"]},
        "EAAprofile-only": {"scopes": ["public_profile", "email"]},
        "EAAexpired-token": {"valid": False},
        "EAAloop-token": {"scopes": ["ads_read"], "accounts": ["11", "12", "13"], "faults": [{"kind": "bad_cursor_loop"}]},
        "EAAbroken-biz": {
            "scopes": ["ads_read", "business_management"],
            "accounts": ["11"],
            "businesses": ["900"],
            "faults": [{"kind": "permission", "endpoint": "client_ad_accounts"}],
        },
    },
    "meta_businesses": {"900": {"name": "Agency BM", "owned": ["11", "31"], "client": ["32", "33", "34"]}},
    "meta_accounts": {"12": {"account_status": 101}, "33": {"account_status": 2}},
}


def _graph(sb, token, **changes) -> discovery.GraphApi:
    env = sb.env()
    values = {
        "graph_url": sb.url,
        "version": "v25.0",
        "access_token": token,
        "app_id": env["META_APP_ID"],
        "app_secret": env["META_APP_SECRET"],
        **changes,
    }
    return discovery.GraphApi(**values)


def test_meta_user_token_accounts_are_paged_and_statuses_kept(make_sandbox):
    sb = make_sandbox(META)
    found = discovery.discover_meta(_http(), _graph(sb, "EAAuser-token-1"))
    assert (found.token.token_type, found.token.user_id, found.token.scopes) == ("USER", "501", ("ads_read",))
    assert found.token.expires_at is not None
    assert [a.account_id for a in found.accounts] == ["11", "12", "13", "14", "15"]
    closed = found.accounts[1]
    assert (closed.status_name, closed.selectable) == ("CLOSED", False)
    assert (found.accounts[0].currency, found.accounts[0].time_zone) == (
        sb.account("meta", "11")["currency"],
        sb.account("meta", "11")["timezone"],
    )
    assert sb.count("meta.adaccounts") == 3 and sb.count("meta.debug_token") == 1
    assert sb.count("meta.businesses") == 0, "no business_management, no business calls"


def test_meta_businesses_add_owned_and_client_accounts_once(make_sandbox):
    sb = make_sandbox(META)
    found = discovery.discover_meta(_http(), _graph(sb, "EAAagency-token"))
    assert found.businesses == (("900", "Agency BM"),)
    assert [(a.account_id, a.found_via) for a in found.accounts] == [
        ("11", "me"),
        ("31", "business 900 owned"),
        ("32", "business 900 client"),
        ("33", "business 900 client"),
        ("34", "business 900 client"),
    ]
    assert [a.account_id for a in found.accounts if a.selectable] == ["11", "31", "32", "34"]
    assert sb.count("meta.owned_ad_accounts", "900") == 1 and sb.count("meta.client_ad_accounts", "900") == 2


def test_meta_a_business_that_refuses_is_a_problem_not_a_failure(make_sandbox):
    sb = make_sandbox(META)
    found = discovery.discover_meta(_http(), _graph(sb, "EAAbroken-biz"))
    assert [a.account_id for a in found.accounts] == ["11", "31"]
    assert len(found.problems) == 1 and "business 900" in found.problems[0] and "client" in found.problems[0]


def test_meta_system_user_token_never_expires(make_sandbox):
    sb = make_sandbox(META)
    found = discovery.discover_meta(_http(), _graph(sb, "EAAsystem-token"))
    assert (found.token.token_type, found.token.expires_at, [a.account_id for a in found.accounts]) == ("SYSTEM_USER", None, ["21"])


def test_meta_invalid_token_and_missing_ads_read_are_refused(make_sandbox):
    sb = make_sandbox(META)
    with pytest.raises(UserError, match="not valid"):
        discovery.discover_meta(_http(), _graph(sb, "EAAexpired-token"))
    with pytest.raises(UserError, match="not valid|refused the token"):
        discovery.discover_meta(_http(), _graph(sb, "EAAexpired-token", app_id=None, app_secret=None))  # inspected with itself
    with pytest.raises(UserError, match="lacks the ads_read permission.*public_profile"):
        discovery.discover_meta(_http(), _graph(sb, "EAAprofile-only"))
    assert sb.count("meta.adaccounts") == 0


def test_meta_a_repeated_paging_link_stops_discovery(make_sandbox):
    sb = make_sandbox(META)
    with pytest.raises(FatalApiError, match="loop detected"):
        discovery.ad_accounts(_http(), _graph(sb, "EAAloop-token"))
    assert sb.count("meta.adaccounts") == 2


def test_meta_appsecret_proof_is_sent_with_the_app_secret(make_sandbox):
    sb = make_sandbox(META)
    with pytest.raises(discovery.GraphRefused, match="appsecret_proof"):
        discovery.ad_accounts(_http(), _graph(sb, "EAAuser-token-1", app_secret="another-app-secret"))
    assert len(discovery.ad_accounts(_http(), _graph(sb, "EAAuser-token-1"))) == 5


def test_meta_discovery_honours_retry_after_as_a_sync_does(make_sandbox):
    slow_down = {
        "kind": "raw",
        "status": 429,
        "text": "Too Many Requests",
        "content_type": "text/plain",
        "headers": {"Retry-After": "3600"},
    }
    sb = make_sandbox({**META, "endpoint_faults": {"meta.debug_token": [slow_down]}})
    with pytest.raises(RateLimited, match="HTTP 429"):
        discovery.debug_token(_http(), _graph(sb, "EAAuser-token-1"))
    assert sb.count("meta.debug_token") == 1, "an hour's Retry-After is not retried within the command"
