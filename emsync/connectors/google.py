"""Google Ads API over REST: one searchStream per customer → ``InsightRow``. Never touches the database."""

from __future__ import annotations

import logging
import re
from datetime import date, timedelta
from decimal import Decimal
from typing import NoReturn

from ..domain import Account, AccountInfo, Credentials, Fetched, InsightRow, SyncWindow
from ..errors import ApiError, FatalApiError, NeedsReauth, RateLimited, RetryableError
from ..http import parse_json
from ..numbers import api_decimal, api_int
from ..redaction import register_secret
from .base import HttpConnector, issued_token

log = logging.getLogger("emsync")

REFRESH_MARGIN = timedelta(minutes=5)
UNKNOWN_QUOTA_DELAY = timedelta(hours=1)
METRICS_QUERY = (
    "SELECT campaign.id, campaign.name, segments.date, metrics.cost_micros, metrics.impressions, "
    "metrics.clicks, metrics.conversions, metrics.conversions_value FROM campaign "
    "WHERE segments.date BETWEEN '{since}' AND '{until}'"
)
CUSTOMER_QUERY = "SELECT customer.currency_code, customer.time_zone, customer.descriptive_name FROM customer"
MICROS = Decimal(1_000_000)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class _Unauthenticated(ApiError):
    """401 from the Ads API: the access token is no longer accepted; refresh once."""


def parse_rows(batches) -> list[InsightRow]:
    """Rows from a searchStream body: an array of batches, each maybe without ``results``; zeros omitted."""
    rows = []
    for batch in batches:
        results = batch.get("results") or []
        if not isinstance(results, list):
            raise FatalApiError("Google Ads returned a batch whose results are not a list")
        for result in results:
            try:
                campaign, metrics, segments = (result.get(k) or {} for k in ("campaign", "metrics", "segments"))
                campaign_id = str(campaign["id"])
                day = date.fromisoformat(str(segments["date"]))
                metrics.get  # noqa: B018 - must be an object
            except (AttributeError, KeyError, ValueError, TypeError):
                raise FatalApiError("Google Ads returned a row without campaign.id or segments.date") from None
            rows.append(
                InsightRow(
                    campaign_id=campaign_id,
                    date=day,
                    campaign_name=campaign.get("name"),
                    spend=api_decimal(metrics.get("costMicros"), "Google Ads", "cost") / MICROS,
                    impressions=api_int(metrics.get("impressions"), "Google Ads", "impression count"),
                    clicks=api_int(metrics.get("clicks"), "Google Ads", "click count"),
                    conversions=api_decimal(metrics.get("conversions"), "Google Ads", "conversion count"),
                    revenue=api_decimal(metrics.get("conversionsValue"), "Google Ads", "conversion value"),
                )
            )
    return rows


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


def _rate_scope(failures: list[dict]) -> str | None:
    """Whose quota a QuotaError names (``quotaErrorDetails.rateScope``: ACCOUNT, DEVELOPER, PROJECT)."""
    for failure in failures:
        scope = ((failure.get("details") or {}).get("quotaErrorDetails") or {}).get("rateScope")
        if scope:
            return str(scope)
    return None


def _failures(error: dict) -> tuple[list[dict], str | None]:
    failures: list[dict] = []
    request_id = None
    for detail in error.get("details") or []:
        failures.extend(detail.get("errors") or [])
        request_id = request_id or detail.get("requestId")
    return failures, request_id


def _codes(failures: list[dict]) -> set[str]:
    return {str(v) for f in failures for v in (f.get("errorCode") or {}).values()}


class GoogleConnector(HttpConnector):
    platform = "google"

    # ---------------------------------------------------------------- OAuth

    def prepare(self, creds: Credentials) -> None:
        """Make sure a cached access token valid for at least five more minutes is at hand."""
        register_secret(creds.refresh_token, creds.cached_access_token)
        expires = creds.cached_access_token_expires_at
        if creds.cached_access_token and expires and expires - self.clock.now() > REFRESH_MARGIN:
            return
        self._refresh(creds)

    def _refresh(self, creds: Credentials) -> None:
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
            classify=self._classify_token,
        )
        creds.cached_access_token, expires = issued_token(body, "Google's token endpoint", self.clock.now())
        creds.cached_access_token_expires_at = expires or self.clock.now() + timedelta(seconds=3599)
        creds.changed = True

    def _classify_token(self, response) -> dict:
        if response.status_code >= 500 or response.status_code == 429:
            raise RetryableError(f"Google's token endpoint answered HTTP {response.status_code}")
        body = parse_json(response)
        if response.status_code == 200 and isinstance(body, dict):
            return body
        error = body.get("error") if isinstance(body, dict) else None
        described = body.get("error_description", "") if isinstance(body, dict) else ""
        if error == "invalid_grant":
            raise NeedsReauth(
                f"Google refused the refresh token (invalid_grant: {described or 'expired or revoked'}). "
                "Reconnect the account and run 'emsync integrations update ID --refresh-token NEW_TOKEN'. "
                "If the OAuth app is in 'Testing' status, its refresh tokens expire after 7 days: publish it to 'In production'."
            )
        if error in ("invalid_client", "unauthorized_client"):
            raise FatalApiError(f"Google OAuth rejected the client ({error}): check GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET")
        raise FatalApiError(f"Google's token endpoint answered HTTP {response.status_code}: {error or 'no error code'} {described}".strip())

    # ---------------------------------------------------------------- searchStream

    def _classify(self, response, account: Account) -> list:
        body = parse_json(response)
        if response.status_code == 200:
            batches = body if isinstance(body, list) else [body]
            for batch in batches:
                if isinstance(batch, dict) and "error" in batch:
                    self._raise(batch["error"], 500, account)
            if not all(isinstance(b, dict) for b in batches):
                raise FatalApiError("Google Ads returned a searchStream body emsync cannot read")
            return batches
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(body, list):
            error = next((b.get("error") for b in body if isinstance(b, dict) and "error" in b), None)
        self._raise(error if isinstance(error, dict) else {}, response.status_code, account)

    def _raise(self, error: dict, http_status: int, account: Account) -> NoReturn:
        failures, request_id = _failures(error)
        codes = _codes(failures)
        status = error.get("status", "")
        message = (failures[0].get("message") if failures else None) or error.get("message") or f"HTTP {http_status}"
        label = f"Google Ads {status or http_status}" + (f" {', '.join(sorted(codes))}" if codes else "") + f": {message}"
        code = error.get("code", http_status)
        if code == 401 or status == "UNAUTHENTICATED":
            raise _Unauthenticated(label, request_id=request_id)
        if code == 429 or status == "RESOURCE_EXHAUSTED":
            delay = _retry_delay(error)
            if "RESOURCE_TEMPORARILY_EXHAUSTED" in codes and (delay is None or delay <= self.api.max_wait):
                raise RetryableError(label, wait=delay, rate_limit=True, request_id=request_id)
            until = self.clock.now() + (timedelta(seconds=delay) if delay else UNKNOWN_QUOTA_DELAY)
            raise RateLimited(label, retry_at=until, request_id=request_id, scope=_rate_scope(failures))
        if code in (500, 502, 503, 504) or status in ("INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise RetryableError(label, request_id=request_id)
        if "USER_PERMISSION_DENIED" in codes and not account.login_customer_id:
            label += " — if this customer is managed through a manager account, set it with 'emsync integrations update ID --login-customer-id MANAGER_ID'"
        raise FatalApiError(label, request_id=request_id)

    def _search(self, account: Account, query: str, creds: Credentials) -> list:
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
                classify=lambda response: self._classify(response, account),
                operation=True,  # every searchStream is one operation of the daily quota, answered or not
            )

        try:
            return send()
        except _Unauthenticated:
            log.info("customer %s: access token refused; refreshing once", account.account_id)
            self._refresh(creds)
            try:
                return send()
            except _Unauthenticated as exc:
                raise NeedsReauth(f"{exc} (even after refreshing the access token)", request_id=exc.request_id) from None

    def account_info(self, account: Account, creds: Credentials) -> AccountInfo:
        for batch in self._search(account, CUSTOMER_QUERY, creds):
            for result in batch.get("results") or []:
                customer = result.get("customer") or {}
                return AccountInfo(customer.get("currencyCode"), customer.get("timeZone"), customer.get("descriptiveName"))
        raise FatalApiError(f"Google Ads returned no customer row for {account.account_id}")

    def fetch(self, account: Account, window: SyncWindow, creds: Credentials) -> Fetched:
        query = METRICS_QUERY.format(since=window.since.isoformat(), until=window.until.isoformat())
        return Fetched(parse_rows(self._search(account, query, creds)))
