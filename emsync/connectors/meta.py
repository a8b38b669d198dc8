"""Meta Marketing API: daily campaign insights → ``InsightRow``. Knows the Graph API, never the database.

What the query asks and how a row reads: ``meta_insights``. Here: requests, how Meta's answers are
classified, paging and its bounds, async report runs, the token's side steps (renewal, ``debug_token``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlsplit

from ..domain import Account, AccountInfo, Credentials, Fetched, InsightRow, SyncWindow
from ..errors import AccountClosed, ApiError, FatalApiError, NeedsAsyncReport, NeedsReauth, RetryableError
from ..http import HttpClient, Service, read_body
from ..redaction import register_secret
from .base import CLOSED_ACCOUNT_RETRY, HttpConnector, issued_token, refuse_unasked_rows, side_step_warning
from .meta_insights import (
    EMPTY_PAGES_END,
    PAGE_SIZE,
    decode_page,
    insights_params,
    page_cap,
    parse_row,
    pick_conversions,
    read_page,
    throttle_delay,
    usage,
)

log = logging.getLogger("emsync")

RENEW_WITHIN = timedelta(days=7)
TOKEN_CHECK_EVERY = timedelta(days=1)
ASYNC_MAX_WAIT_S = 900.0
RATE_LIMIT_CODES = {4, 17, 32, 613} | set(range(80000, 80015))
TOKEN_CODES = {190, 102}
DEPRECATED_VERSION = 2635
# Ad account states (AdAccount.account_status). Disabled and closed accounts are tried once a day; the
# others may still deliver and are synced with a warning.
CLOSED_STATES = {2: "disabled", 101: "closed"}
OTHER_STATES = {3: "UNSETTLED", 7: "PENDING_RISK_REVIEW", 8: "PENDING_SETTLEMENT", 9: "IN_GRACE_PERIOD", 100: "PENDING_CLOSURE"}
# Asked for explicitly when polling a report run (v25.0+): naming fields suppresses the default ones.
REPORT_ERROR_FIELDS = ("error_code", "error_subcode", "error_message", "error_user_title", "error_user_msg")
SERVICE = Service("Meta", "META_GRAPH_URL and META_API_VERSION")
_VERSION = re.compile(r"\bv(\d+)(?:\.(\d+))?\b")

__all__ = ["MetaConnector", "parse_row", "pick_conversions", "throttle_delay", "usage"]


class _ReportLag(RetryableError):
    """Meta answered 100/33 ("Unsupported get request") for a report run it has just created or completed."""


class _ReportFailed(ApiError):
    """A report run ended with "Job Failed" or "Job Skipped"."""


@dataclass(frozen=True)
class GraphFailure:
    """A Graph API error object, read once (``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}``).

    Graph API documents: "Handling Errors" (codes 1, 2 transient; 4, 17, 32, 613
    and 80000-80014 rate limits; 190/102 the access token), "Rate Limiting"
    (``X-Business-Use-Case-Usage``'s ``estimated_time_to_regain_access``, minutes).
    """

    code: object
    sub: object
    message: str
    trace: str | None
    transient_flag: bool

    @classmethod
    def parse(cls, error: dict) -> GraphFailure:
        message = str(error.get("message", "")).strip().rstrip(".")
        return cls(error.get("code"), error.get("error_subcode"), message, error.get("fbtrace_id"), bool(error.get("is_transient")))

    @property
    def label(self) -> str:
        return f"Meta error {self.code}" + (f"/{self.sub}" if self.sub else "") + f": {self.message}"

    @property
    def token_refused(self) -> bool:
        return self.code in TOKEN_CODES

    def rate_limit(self, response, api: HttpClient) -> ApiError | None:
        """A rate limit, decided by what Meta asks (usage headers' regain time, ``Retry-After``); None when not one."""
        if self.code in RATE_LIMIT_CODES or self.sub == 2446079 or response.status_code == 429:
            _, wait = usage(response.headers)
            return api.rate_limited(self.label, wait or api.retry_after(response), request_id=self.trace)
        return None

    def transient(self, response) -> RetryableError | None:
        """Codes 1 and 2, ``is_transient`` and 5xx: retried with backoff; None otherwise."""
        if self.code in (1, 2) or self.transient_flag or response.status_code >= 500:
            return RetryableError(self.label, request_id=self.trace)
        return None


def _token(creds: Credentials) -> str:
    if not creds.access_token:
        raise NeedsReauth("the integration has no Meta access token: reconnect it")
    return creds.access_token


def _version_number(version: str) -> float:
    match = _VERSION.search(version)
    return float(f"{match.group(1)}.{match.group(2) or 0}") if match else 0.0


class MetaConnector(HttpConnector):
    platform = "meta"
    reads_account_on_full_sync = True  # account_status: closed and disabled accounts back off

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.base = f"{self.settings.meta_graph_url}/{self.settings.meta_api_version}"

    # ---------------------------------------------------------------- requests

    def _auth(self, token: str) -> dict:
        params = {"access_token": token}
        if self.settings.meta_app_secret:
            params["appsecret_proof"] = hmac.new(self.settings.meta_app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        return params

    def _get(self, account: Account, url: str, params: dict, token: str, *, report_run: str | None = None, decode=None) -> Any:
        """GET with the token; the body as ``_classify`` reads it (``decode``: a typed decoder tried first)."""
        present = {k for k, _ in parse_qsl(urlsplit(url).query)}
        extra = {k: v for k, v in {**params, **self._auth(token)}.items() if k not in present}
        return self.api.send("GET", url, params=extra, classify=lambda r: self._classify(r, account, report_run=report_run, decode=decode))

    def _classify(self, response, account: Account | None = None, *, report_run: str | None = None, decode=None) -> Any:
        """Status first (``http.read_body``), then Meta's error object; a success pauses when usage nears 100 %.

        ``decode`` (bytes → a typed body or None, e.g. ``decode_page``) reads a 200's body first; when it
        answers None the body is read the general way, as a dict, and any error object in it is raised.
        """
        body = decode(response.content) if decode is not None and response.status_code == 200 else None
        if body is None:
            body = read_body(response, SERVICE)
            error = body.get("error") if isinstance(body, dict) else None
            if response.status_code >= 400 or error:
                account = account or Account("meta", "?")
                if not isinstance(error, dict):
                    reconnect = NeedsReauth(f"Meta answered HTTP 401: the access token is not accepted. {self._reconnect(account)}")
                    raise self.api.undescribed(response, SERVICE, unauthorized=reconnect)
                self._raise(error, response, account, report_run)
            if not isinstance(body, dict):
                raise FatalApiError("Meta answered with JSON emsync cannot read (not an object)")
        pct, wait = usage(response.headers)
        delay = throttle_delay(pct, wait, self.api.max_wait)
        if delay:
            self.api.pause(delay, f"Meta usage at {pct:.0f}%")
        return body

    def _raise(self, error: dict, response, account: Account, report_run: str | None) -> NoReturn:
        failure = GraphFailure.parse(error)
        code, sub, message, trace, label = failure.code, failure.sub, failure.message, failure.trace, failure.label
        if failure.token_refused:
            raise NeedsReauth(f"{label}. The access token is expired or revoked. {self._reconnect(account)}", request_id=trace)
        limited = failure.rate_limit(response, self.api)
        if limited is not None:
            raise limited
        if code == DEPRECATED_VERSION:
            raise FatalApiError(self._version_advice(label, message), request_id=trace)
        if report_run and (code, sub) == (100, 33):
            # Meta's text blames permissions, but right after a report completes this is a passing lag.
            raise _ReportLag(
                f"Meta answered 100/33 'Unsupported get request' for report run {report_run}, as it does for a while after a "
                "report completes",
                request_id=trace,
            )
        if code == 10 or (isinstance(code, int) and 200 <= code <= 299) or (code, sub) == (100, 33):
            raise NeedsReauth(
                f"{label}. The token's user has no access to {account.label} (or it does not exist): reconnect granting "
                f"ads_read ('emsync connect meta --email EMAIL', or '{account.update_command} --access-token -' with the new token "
                f"on standard input), or get access to {account.label} in "
                "Business Manager (sync-user still tries it; a successful sync clears the status)",
                request_id=trace,
            )
        if (code == 1 and "reduce the amount of data" in message.lower()) or (code, sub) in ((100, 1504018), (2, 1504038)):
            raise NeedsAsyncReport(label, request_id=trace)
        raise failure.transient(response) or FatalApiError(label, request_id=trace)

    def _reconnect(self, account: Account) -> str:
        return (
            "Reconnect: 'emsync connect meta --email EMAIL', or give the new token with "
            f"'{account.update_command} --access-token -' (read from standard input)"
        )

    def _version_advice(self, label: str, message: str) -> str:
        current = self.settings.meta_api_version
        asked = [f"v{m.group(1)}.{m.group(2) or 0}" for m in _VERSION.finditer(message)]
        wanted = next((v for v in reversed(asked) if _version_number(v) > _version_number(current)), None)
        if wanted:
            return f"{label}. Set META_API_VERSION={wanted} (currently {current}), the version Meta asks for, or upgrade emsync"
        return f"{label}. META_API_VERSION={current} is retired: set a current version (see Meta's changelog) or upgrade emsync"

    # ---------------------------------------------------------------- the three things the engine asks

    def prepare(self, account: Account, creds: Credentials) -> tuple[str, ...]:
        """Renew a long-lived token that expires within 7 days (system-user tokens have no expiry), and once a
        day ask ``debug_token`` when the user's data access ends.

        A renewal that fails while the token still works is a warning: the sync goes on with the current
        token and the next run tries again. Only a token that no longer works stops the integration.
        """
        register_secret(creds.access_token)
        return self._renew_if_due(account, creds) + self._check_token(account, creds)

    def _renew_if_due(self, account: Account, creds: Credentials) -> tuple[str, ...]:
        expires = creds.token_expires_at
        now = self.clock.now()
        if expires is None or expires - now > RENEW_WITHIN:
            return ()
        if not (self.settings.meta_app_id and self.settings.meta_app_secret):
            log.warning("Meta token expires %s and META_APP_ID/META_APP_SECRET are not set to renew it", expires.date())
            return ()
        try:
            self.renew(account, creds)
        except NeedsReauth:
            raise
        except ApiError as exc:
            if expires <= now:
                raise
            what = f"renewing the Meta access token (it expires {expires:%Y-%m-%d %H:%M} UTC)"
            return (side_step_warning(what, exc, "synced with the current token; the next run tries again"),)
        return ()

    def renew(self, account: Account, creds: Credentials) -> None:
        """Exchange the token for a new long-lived one (``fb_exchange_token``); also turns a short-lived user
        token into a long-lived one (``emsync connect meta``). Raises ``ApiError`` subclasses."""
        body = self.api.send(
            "GET",
            f"{self.base}/oauth/access_token",
            params={
                "grant_type": "fb_exchange_token",
                "client_id": self.settings.meta_app_id,
                "client_secret": self.settings.meta_app_secret,
                "fb_exchange_token": creds.access_token,
            },
            classify=lambda r: self._classify(r, account),
        )
        creds.access_token, creds.token_expires_at = issued_token(body, "Meta's token exchange", self.clock.now())
        creds.changed = True
        log.info("renewed the Meta access token; it now expires %s", creds.token_expires_at.date() if creds.token_expires_at else "never")

    def account_info(self, account: Account, creds: Credentials) -> AccountInfo:
        """Currency, time zone, name and state of the ad account.

        Raises:
            AccountClosed: ``account_status`` 2 (disabled) or 101 (closed).
        """
        fields = "currency,timezone_name,name,account_status"
        body = self._get(account, f"{self.base}/act_{account.account_id}", {"fields": fields}, _token(creds))
        state = body.get("account_status")
        if state in CLOSED_STATES:
            raise AccountClosed(
                f"the Meta ad account {account.label} is {CLOSED_STATES[state]} at Meta (account_status {state}): emsync tries it "
                "once a day instead of every run; if it is gone for good, stop syncing it with "
                f"'emsync integrations disable {account.integration_id}'",
                retry_at=self.clock.now() + CLOSED_ACCOUNT_RETRY,
            )
        warnings: tuple[str, ...] = ()
        if state in OTHER_STATES:
            warnings = (
                f"Meta reports {account.label} as {OTHER_STATES[state]} (account_status {state}); it may still deliver, so it is synced as usual",
            )
        return AccountInfo(currency=body.get("currency"), time_zone=body.get("timezone_name"), name=body.get("name"), warnings=warnings)

    def fetch(self, account: Account, window: SyncWindow, creds: Credentials) -> Fetched:
        """Every campaign's rows for the window, deleted and archived campaigns included; then, at most once a
        day, what ``debug_token`` says about the token (a failure there is a warning)."""
        params = insights_params(window, self.settings.meta_attribution_windows)
        url = f"{self.base}/act_{account.account_id}/insights"
        try:
            fetched = self._pages(account, url, params, _token(creds), window)
        except NeedsAsyncReport as exc:
            log.info("%s: %s; using an async report run", account.label, exc)
            fetched = self._async_report(account, url, params, _token(creds), window)
        refuse_unasked_rows(fetched.rows, window, "Meta")
        return fetched

    # ---------------------------------------------------------------- debug_token

    def _check_token(self, account: Account, creds: Credentials) -> tuple[str, ...]:
        """Record the token's ``data_access_expires_at`` (user tokens lose data access ~90 days after the user
        last logged in) when the app is configured, at most once a day."""
        s = self.settings
        now = self.clock.now()
        if not (s.meta_app_id and s.meta_app_secret and creds.access_token):
            return ()
        if creds.token_checked_at is not None and now - creds.token_checked_at < TOKEN_CHECK_EVERY:
            return ()
        creds.token_checked_at, creds.changed = now, True
        app_token = f"{s.meta_app_id}|{s.meta_app_secret}"
        register_secret(app_token)
        try:
            body = self.api.send(
                "GET",
                f"{self.base}/debug_token",
                params={"input_token": creds.access_token, "access_token": app_token},
                classify=lambda r: self._classify(r, account),
            )
        except ApiError as exc:
            return (side_step_warning("checking the Meta token with debug_token", exc, "the sync went on; checked again tomorrow"),)
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        expires = data.get("data_access_expires_at")
        if isinstance(expires, int) and not isinstance(expires, bool) and expires > 0:
            creds.data_access_expires_at = datetime.fromtimestamp(expires, UTC)
        return ()

    # ---------------------------------------------------------------- paging and async runs

    def _pages(self, account: Account, url: str, params: dict, token: str, window: SyncWindow, *, report_run: str | None = None) -> Fetched:
        """Follow ``paging.next`` until it is absent (a complete answer).

        Ends early, keeping the rows read and marking the answer incomplete (nothing will be deleted), after
        ``EMPTY_PAGES_END`` empty pages in a row, at the page cap, or at a repeated cursor on an empty page.
        A repeated cursor on a page with rows is an error: rows may be missing.
        """
        types = self.settings.meta_conversion_action_types
        windows = self.settings.meta_attribution_windows
        rows: list[InsightRow] = []
        campaigns: set[str] = set()
        seen: set[str] = set()
        pages = empty = largest = 0
        body = self._get(account, url, params, token, report_run=report_run, decode=decode_page)
        while True:
            pages += 1
            page, next_url = read_page(body, types, windows)
            rows.extend(page)
            campaigns.update(r.campaign_id for r in page)
            largest = max(largest, len(page))
            if not next_url:
                return Fetched(rows)
            empty = 0 if page else empty + 1
            kept = f"kept the {len(rows)} rows read and deleted nothing"
            if empty >= EMPTY_PAGES_END:
                return self._ended(rows, f"Meta kept answering empty pages with a next link: stopped after {empty} in a row; {kept}")
            cap = page_cap(window.days, len(campaigns), largest)
            if pages >= cap:
                return self._ended(
                    rows,
                    f"Meta's paging went past {cap} pages ({window.days} days × {len(campaigns)} campaigns at "
                    f"{min(max(largest, 1), PAGE_SIZE)} rows a page): stopped; {kept}",
                )
            if next_url in seen:
                if not page:
                    return self._ended(rows, f"Meta repeated a page cursor on an empty page: took it as the end; {kept}")
                raise FatalApiError(
                    f"Meta returned the same page cursor twice, on a page with rows, after {len(rows)} rows: stopped instead of "
                    "looping; rows may be missing, so nothing was changed"
                )
            seen.add(next_url)
            self._check_same_host(next_url)
            body = self._get(account, next_url, {}, token, report_run=report_run, decode=decode_page)

    @staticmethod
    def _ended(rows: list[InsightRow], warning: str) -> Fetched:
        log.info("%s", warning)
        return Fetched(rows, complete=False, warnings=(warning,))

    def _check_same_host(self, url: str) -> None:
        if urlsplit(url).netloc != urlsplit(self.base).netloc:
            raise FatalApiError(f"Meta's paging.next points at another host ({urlsplit(url).netloc}); not sending the token there")

    def _async_report(self, account: Account, url: str, params: dict, token: str, window: SyncWindow) -> Fetched:
        """An async report run: start, poll until "Job Completed", read its pages. A run that fails ("Job Failed")
        or whose results Meta keeps refusing with 100/33 after bounded retries is re-submitted once (a new run)."""
        for attempt in (1, 2):
            try:
                run_id = self._start_report(account, url, params, token)
                self._wait_for_report(account, run_id, token)
                return self._pages(account, f"{self.base}/{run_id}/insights", {"limit": str(PAGE_SIZE)}, token, window, report_run=run_id)
            except (_ReportFailed, _ReportLag) as exc:
                if attempt == 2:
                    raise ApiError(f"{exc}; the report was re-submitted once and failed again: the next run tries again") from None
                log.warning("%s; re-submitting the report once", exc)
        raise AssertionError("unreachable")

    def _start_report(self, account: Account, url: str, params: dict, token: str) -> str:
        started = self.api.send("POST", url, data={**params, **self._auth(token)}, classify=lambda r: self._classify(r, account))
        run_id = str(started.get("report_run_id") or "")
        if not run_id.isdigit():
            raise FatalApiError("Meta did not return a report_run_id for the async report")
        return run_id

    def _wait_for_report(self, account: Account, run_id: str, token: str) -> None:
        fields = ["async_status", "async_percent_completion"]
        if _version_number(self.settings.meta_api_version) >= 25:
            fields += REPORT_ERROR_FIELDS
        waited, delay = 0.0, 1.0
        while True:
            job = self._get(account, f"{self.base}/{run_id}", {"fields": ",".join(fields)}, token, report_run=run_id)
            status = job.get("async_status")
            if status == "Job Completed":
                return
            if status in ("Job Failed", "Job Skipped"):
                raise _ReportFailed(f"Meta async report {run_id} ended with '{status}'{_report_reason(job)}")
            if waited >= ASYNC_MAX_WAIT_S:
                raise ApiError(f"Meta async report {run_id} did not complete within {ASYNC_MAX_WAIT_S / 60:.0f} minutes")
            self.api.pause(delay, f"async report {run_id} at {job.get('async_percent_completion', 0)}%")
            waited += delay
            delay = min(delay * 2, 10.0)


def _report_reason(job: dict) -> str:
    """Why a report run failed, from the error fields Meta returns for it (v25.0+); '' when it said nothing."""
    code, sub = job.get("error_code"), job.get("error_subcode")
    parts = []
    if code is not None:
        parts.append(f"error {code}" + (f"/{sub}" if sub is not None else ""))
    for key in ("error_message", "error_user_title", "error_user_msg"):
        text = str(job.get(key) or "").strip()
        if text and text not in parts:
            parts.append(text)
    return f": {'; '.join(parts)}" if parts else ""
