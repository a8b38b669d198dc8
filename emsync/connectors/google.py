"""Google Ads API over REST: one searchStream per customer → ``InsightRow``. Never touches the database."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Annotated, Any, NoReturn

import msgspec

from ..domain import Account, AccountInfo, Credentials, Fetched, InsightRow, SyncWindow, account_label
from ..errors import AccountClosed, ApiError, FatalApiError, NeedsReauth, RetryableError
from ..http import HttpClient, Service, read_body
from ..numbers import ZERO, api_decimal, api_int, finite
from ..redaction import redact, register_secret
from .base import CLOSED_ACCOUNT_RETRY, HttpConnector, campaign_id_text, issued_token, refuse_unasked_rows, side_step_warning

log = logging.getLogger("emsync")

REFRESH_MARGIN = timedelta(minutes=5)
UNKNOWN_QUOTA_DELAY = timedelta(hours=1)
METRICS_QUERY = (
    "SELECT campaign.id, campaign.name, campaign.status, segments.date, metrics.cost_micros, metrics.impressions, "
    "metrics.clicks, metrics.conversions, metrics.conversions_value FROM campaign "
    "WHERE segments.date BETWEEN '{since}' AND '{until}'"
)
CUSTOMER_QUERY = "SELECT customer.currency_code, customer.time_zone, customer.descriptive_name FROM customer"
MICROS = Decimal(1_000_000)
ADS = Service("Google Ads", "GOOGLE_ADS_API_URL and GOOGLE_ADS_API_VERSION")
TOKEN_ENDPOINT = Service("Google's token endpoint", "GOOGLE_OAUTH_TOKEN_URL")
# The signed-in user (or the login-customer-id's manager) may not reach this customer.
MANAGER_CODES = {"USER_PERMISSION_DENIED", "INVALID_LOGIN_CUSTOMER_ID_SERVING_CUSTOMER_ID_COMBINATION"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class _Unauthenticated(ApiError):
    """401 from the Ads API: the access token is no longer accepted; refresh once."""


def parse_rows(batches) -> list[InsightRow]:
    """Rows from a searchStream body: an array of batches, each maybe without ``results``; zeros omitted.

    Google's clicks are link clicks (clicks on the ad that lead to its destination), so ``link_clicks`` = ``clicks``.
    """
    return _parse(batches)[0]


# ---------------------------------------------------------------- the typed reading of the metrics stream
# The metrics query's answer is read first by a typed decoder (msgspec) straight into numbers; when its shape does
# not hold (an error inside the stream, a field of another type, a value that is not a number) it is read the
# general way (``read_body`` and ``_parse``), which names the fault. Both give the same rows for every answer the
# typed decoder accepts (tested property by property). No ``| None`` on numbers and dates: the lenient decoder
# (int64 arrive as strings) would read the string "null" as null there, where the general reading refuses it.


class _Campaign(msgspec.Struct, gc=False):
    id: Annotated[str, msgspec.Meta(min_length=1)]  # "": no id, read the general way (refused there)
    name: str | None = None
    status: Any = None


class _Metrics(msgspec.Struct, gc=False):
    """Named as the API names them (camelCase in REST JSON)."""

    costMicros: Decimal = ZERO
    impressions: int = 0
    clicks: int = 0
    conversions: Decimal = ZERO
    conversionsValue: Decimal = ZERO


class _Segments(msgspec.Struct, gc=False):
    date: date


class _Result(msgspec.Struct, gc=False):
    campaign: _Campaign
    segments: _Segments
    metrics: _Metrics | msgspec.UnsetType = msgspec.UNSET


class _Batch(msgspec.Struct, gc=False):
    results: list[_Result] | msgspec.UnsetType = msgspec.UNSET
    error: Any = None


_STREAM_DECODER = msgspec.json.Decoder(list[_Batch], strict=False)
_NO_METRICS = _Metrics()


def decode_stream(raw: bytes) -> list | None:
    """A 2xx searchStream body of the metrics query as typed batches; None when it is not in that shape (an error
    inside the stream, another type, not JSON): the caller reads it the general way."""
    try:
        batches = _STREAM_DECODER.decode(raw)
    except msgspec.MsgspecError:
        return None
    return None if any(b.error is not None for b in batches) else batches


def _parse_typed(batch: _Batch, rows: list[InsightRow], statuses: dict[str, str]) -> None:
    for result in batch.results or ():
        campaign, metrics = result.campaign, result.metrics or _NO_METRICS
        cost, conversions, value = metrics.costMicros, metrics.conversions, metrics.conversionsValue
        rows.append(
            InsightRow(
                campaign.id,
                result.segments.date,
                campaign.name,
                finite(cost, "Google Ads", "cost") / MICROS,
                metrics.impressions,
                metrics.clicks,
                finite(conversions, "Google Ads", "conversion count"),
                finite(value, "Google Ads", "conversion value"),
                metrics.clicks,
            )
        )
        if isinstance(campaign.status, str):
            statuses[campaign.id] = campaign.status


def _no_id_or_date() -> FatalApiError:
    return FatalApiError("Google Ads returned a row without campaign.id or segments.date")


def _parse(batches) -> tuple[list[InsightRow], dict[str, str]]:
    """Rows and campaign statuses from batches: ``decode_stream``'s typed ones or generally decoded dicts."""
    rows: list[InsightRow] = []
    statuses: dict[str, str] = {}
    for batch in batches:
        if isinstance(batch, _Batch):
            _parse_typed(batch, rows, statuses)
            continue
        results = batch.get("results") or []
        if not isinstance(results, list):
            raise FatalApiError("Google Ads returned a batch whose results are not a list")
        for result in results:
            try:
                campaign, metrics, segments = (result.get(k) or {} for k in ("campaign", "metrics", "segments"))
                campaign_id = campaign_id_text(campaign["id"])
                day = date.fromisoformat(str(segments["date"]))
                metrics.get  # noqa: B018 - must be an object
            except (AttributeError, KeyError, ValueError, TypeError):
                raise _no_id_or_date() from None
            clicks = api_int(metrics.get("clicks"), "Google Ads", "click count")
            rows.append(
                InsightRow(
                    campaign_id=campaign_id,
                    date=day,
                    campaign_name=campaign.get("name"),
                    spend=api_decimal(metrics.get("costMicros"), "Google Ads", "cost") / MICROS,
                    impressions=api_int(metrics.get("impressions"), "Google Ads", "impression count"),
                    clicks=clicks,
                    conversions=api_decimal(metrics.get("conversions"), "Google Ads", "conversion count"),
                    revenue=api_decimal(metrics.get("conversionsValue"), "Google Ads", "conversion value"),
                    link_clicks=clicks,
                )
            )
            if isinstance(campaign.get("status"), str):
                statuses[campaign_id] = campaign["status"]
    return rows, statuses


def _retry_delay(error: dict) -> float | None:
    """Seconds from ``quotaErrorDetails.retryDelay`` or a ``RetryInfo`` detail ("40591s")."""
    for detail in error.get("details") or []:
        candidates = [detail.get("retryDelay")]
        for failure in detail.get("errors") or []:
            candidates.append(((failure.get("details") or {}).get("quotaErrorDetails") or {}).get("retryDelay"))
        for raw in candidates:
            match = _DURATION.match(str(raw)) if raw else None
            if match:
                return float(match.group(1))
    return None


@dataclass(frozen=True)
class AdsFailure:
    """A Google Ads API error object, read once (``{"error": {"code", "status", "message", "details": [GoogleAdsFailure]}}``).

    ``codes``: the ``errorCode`` values of every failure (``RESOURCE_EXHAUSTED``,
    ``CUSTOMER_NOT_ENABLED``, ...); ``head``: "Google Ads STATUS CODES" for
    messages; ``delay``: seconds the server asked to wait, when it did;
    ``scope``: ``quotaErrorDetails.rateScope`` (ACCOUNT, DEVELOPER, PROJECT).
    Google Ads API documents: "Understand API errors", "API Limits and Quotas".
    """

    code: object
    status: str
    codes: frozenset[str]
    head: str
    message: str
    request_id: str | None
    delay: float | None
    scope: str | None

    @classmethod
    def parse(cls, error: dict, http_status: int) -> AdsFailure:
        failures: list[dict] = []
        request_id = None
        for detail in error.get("details") or []:
            failures.extend(detail.get("errors") or [])
            request_id = request_id or detail.get("requestId")
        codes = frozenset(str(v) for f in failures for v in (f.get("errorCode") or {}).values())
        status = str(error.get("status") or "")
        message = (failures[0].get("message") if failures else None) or error.get("message") or f"HTTP {http_status}"
        scope = next(
            (str(q["rateScope"]) for f in failures if (q := (f.get("details") or {}).get("quotaErrorDetails") or {}).get("rateScope")),
            None,
        )
        named = sorted(codes - {status})  # a QuotaError RESOURCE_EXHAUSTED repeats the status: name it once
        head = f"Google Ads {status or http_status}" + (f" {', '.join(named)}" if named else "")
        return cls(error.get("code", http_status), status, codes, head, str(message), request_id, _retry_delay(error), scope)

    @property
    def label(self) -> str:
        return redact(f"{self.head}: {self.message}")

    @property
    def unauthenticated(self) -> bool:
        return self.code == 401 or self.status == "UNAUTHENTICATED"

    def shared_error(self, api: HttpClient, *, retry_after: float | None = None) -> ApiError | None:
        """What every Google Ads call does with a rate limit or a server fault; None: the caller decides.

        A 429 ``RESOURCE_EXHAUSTED`` or ``RESOURCE_TEMPORARILY_EXHAUSTED`` is
        decided by what the server asks, not by the error's name: a
        ``retryDelay`` (or ``Retry-After``) up to ``EMSYNC_RETRY_MAX_WAIT`` is
        waited and retried, a longer one is ``RateLimited`` until then; a daily
        quota that names no time is ``RateLimited`` for an hour. 5xx and
        INTERNAL/UNKNOWN/UNAVAILABLE/DEADLINE_EXCEEDED are retried.
        """
        if self.code == 429 or self.status == "RESOURCE_EXHAUSTED":
            daily = "RESOURCE_EXHAUSTED" in self.codes and "RESOURCE_TEMPORARILY_EXHAUSTED" not in self.codes
            return api.rate_limited(
                self.label,
                self.delay or retry_after,
                request_id=self.request_id,
                unknown=UNKNOWN_QUOTA_DELAY if daily else None,
                scope=self.scope,
            )
        if self.code in (500, 502, 503, 504) or self.status in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
            return RetryableError(self.label, request_id=self.request_id)
        return None


def stream_error(body) -> dict | None:
    """The error object of a searchStream answer: the body's own, or one inside the array of batches."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    if isinstance(body, list):
        return next((b["error"] for b in body if isinstance(b, dict) and isinstance(b.get("error"), dict)), None)
    return None


class GoogleConnector(HttpConnector):
    platform = "google"

    # ---------------------------------------------------------------- OAuth

    def prepare(self, account: Account, creds: Credentials) -> tuple[str, ...]:
        """Make sure a cached access token valid for at least five more minutes is at hand.

        A refresh that fails while the cached token is still valid is a warning: the sync goes on with it.
        """
        register_secret(creds.refresh_token, creds.cached_access_token)
        expires = creds.cached_access_token_expires_at
        now = self.clock.now()
        if creds.cached_access_token and expires and expires - now > REFRESH_MARGIN:
            return ()
        try:
            self._refresh(account, creds)
        except NeedsReauth:
            raise
        except ApiError as exc:
            if not (creds.cached_access_token and expires and expires > now):
                raise
            what = "refreshing the Google access token"
            return (side_step_warning(what, exc, f"synced with the cached one, valid until {expires:%H:%M} UTC"),)
        return ()

    def _refresh(self, account: Account, creds: Credentials) -> None:
        s = self.settings
        if not (s.google_oauth_client_id and s.google_oauth_client_secret):
            raise FatalApiError("GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET must be set to sync Google integrations")
        body = self.api.send(
            "POST",
            s.google_oauth_token_url,
            data={
                "grant_type": "refresh_token",
                "client_id": s.google_oauth_client_id,
                "client_secret": s.google_oauth_client_secret,
                "refresh_token": creds.refresh_token,
            },
            classify=lambda r: self._classify_token(r, account),
        )
        creds.cached_access_token, expires = issued_token(body, "Google's token endpoint", self.clock.now())
        creds.cached_access_token_expires_at = expires or self.clock.now() + timedelta(seconds=3599)
        creds.changed = True

    def _classify_token(self, response, account: Account | None = None) -> dict:
        """Status first: 401 is the OAuth client's authentication (RFC 6749 section 5.2), whatever the body."""
        body = read_body(response, TOKEN_ENDPOINT)
        status = response.status_code
        fields = body if isinstance(body, dict) else {}
        error = fields.get("error") if isinstance(fields.get("error"), str) else None
        described = str(fields.get("error_description") or "").strip()
        detail = ": ".join(p for p in (error, described) if p)
        client = "check GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET (reconnecting the account does not help)"
        if status == 401 or error in ("invalid_client", "unauthorized_client"):
            raise FatalApiError(f"Google OAuth rejected the client (HTTP {status}{', ' + detail if detail else ''}): {client}")
        if 200 <= status < 300 and isinstance(body, dict):
            return body
        if error == "invalid_grant":
            command = (account or Account("google", "?")).update_command
            raise NeedsReauth(
                f"Google refused the refresh token (invalid_grant: {described or 'expired or revoked'}). "
                f"Reconnect: 'emsync connect google --email EMAIL', or '{command} --refresh-token -' (read from standard input). "
                "If the OAuth app is in 'Testing' status, its refresh tokens expire after 7 days: publish it to 'In production'."
            )
        if error is None or status == 429 or status >= 500:
            raise self.api.undescribed(response, TOKEN_ENDPOINT)
        raise FatalApiError(f"Google's token endpoint answered HTTP {status}: {detail}")

    # ---------------------------------------------------------------- searchStream

    def _classify(self, response, account: Account, decode=None) -> list:
        """Status first (``http.read_body``), then the error object (the body's own or one inside the stream).

        ``decode`` (bytes → typed batches or None, ``decode_stream``) reads a 2xx body first; when it answers None
        the body is read the general way.
        """
        if decode is not None and 200 <= response.status_code < 300:
            typed = decode(response.content)
            if typed is not None:
                return typed
        body = read_body(response, ADS)
        error = stream_error(body)
        if 200 <= response.status_code < 300:
            if error is not None:
                self._raise(error, 500, account)  # an error inside a stream that had started
            batches = body if isinstance(body, list) else [body]
            if not all(isinstance(b, dict) for b in batches):
                raise FatalApiError("Google Ads returned a searchStream body emsync cannot read")
            return batches
        if error is None:
            refused = _Unauthenticated(f"Google Ads answered HTTP {response.status_code}: the access token was not accepted")
            raise self.api.undescribed(response, ADS, unauthorized=refused)
        self._raise(error, response.status_code, account, retry_after=self.api.retry_after(response))

    def _raise(self, error: dict, http_status: int, account: Account, *, retry_after: float | None = None) -> NoReturn:
        failure = AdsFailure.parse(error, http_status)
        head, codes, request_id = failure.head, failure.codes, failure.request_id
        label = f"{head}: {failure.message}"
        if failure.unauthenticated:
            raise _Unauthenticated(label, request_id=request_id)
        shared = failure.shared_error(self.api, retry_after=retry_after)
        if shared is not None:
            raise shared
        if "CUSTOMER_NOT_ENABLED" in codes:
            raise AccountClosed(
                f"{head}: the Google Ads account {account.label} is not enabled or has been deactivated at Google: emsync tries it "
                f"once a day instead of every run; re-enable it in Google Ads, or stop syncing it with "
                f"'emsync integrations disable {account.integration_id}'",
                retry_at=self.clock.now() + CLOSED_ACCOUNT_RETRY,
                request_id=request_id,
            )
        if codes & MANAGER_CODES:
            fix = f"'{account.update_command} --login-customer-id MANAGER_ID'"
            if account.login_customer_id:
                manager = account_label("google", account.login_customer_id)
                label = (
                    f"{head}: the configured manager account {manager} (login-customer-id) does not manage {account.label}, or the "
                    f"signed-in user cannot use it: set the manager that does with {fix}, or give the user access to {account.label}"
                )
            else:
                label += f" — if this customer is managed through a manager account, set it with {fix}"
        raise FatalApiError(label, request_id=request_id)

    def _search(self, account: Account, query: str, creds: Credentials, decode=None) -> list:
        s = self.settings
        url = f"{s.google_ads_api_url}/{s.google_ads_api_version}/customers/{account.account_id}/googleAds:searchStream"

        def send():
            headers = {"Authorization": f"Bearer {creds.cached_access_token}"}
            if account.login_customer_id:
                headers["login-customer-id"] = account.login_customer_id
            if s.google_ads_developer_token:
                headers["developer-token"] = s.google_ads_developer_token
            return self.api.send(
                "POST",
                url,
                json={"query": query},
                headers=headers,
                classify=lambda response: self._classify(response, account, decode),
                operation=True,  # every searchStream is one operation of the daily quota, answered or not
            )

        try:
            return send()
        except _Unauthenticated:
            log.info("customer %s: access token refused; refreshing once", account.account_id)
            self._refresh(account, creds)
            try:
                return send()
            except _Unauthenticated as exc:
                raise NeedsReauth(
                    f"{exc} (even after refreshing the access token): reconnect with 'emsync connect google --email EMAIL', or "
                    f"'{account.update_command} --refresh-token -' (read from standard input)",
                    request_id=exc.request_id,
                ) from None

    def account_info(self, account: Account, creds: Credentials) -> AccountInfo:
        for batch in self._search(account, CUSTOMER_QUERY, creds):
            for result in batch.get("results") or []:
                customer = result.get("customer") or {}
                return AccountInfo(customer.get("currencyCode"), customer.get("timeZone"), customer.get("descriptiveName"))
        raise FatalApiError(f"Google Ads returned no customer row for {account.account_id}")

    def fetch(self, account: Account, window: SyncWindow, creds: Credentials) -> Fetched:
        query = METRICS_QUERY.format(since=window.since.isoformat(), until=window.until.isoformat())
        rows, statuses = _parse(self._search(account, query, creds, decode_stream))
        refuse_unasked_rows(rows, window, "Google Ads")
        return Fetched(rows, statuses=statuses)
