"""Meta Marketing API: daily campaign insights → ``InsightRow``. Knows the Graph API, never the database."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import date, timedelta
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain import Account, AccountInfo, Credentials, Fetched, InsightRow, SyncWindow
from ..errors import FatalApiError, NeedsAsyncReport, NeedsReauth, RateLimited, RetryableError
from ..http import HttpClient, parse_json
from ..numbers import ZERO, api_decimal, api_int
from ..redaction import register_secret
from .base import HttpConnector, issued_token

log = logging.getLogger("emsync")

FIELDS = "campaign_id,campaign_name,spend,impressions,clicks,actions,action_values"
PAGE_SIZE = 500
RENEW_WITHIN = timedelta(days=7)
THROTTLE_AT_PCT = 90.0
ASYNC_MAX_WAIT_S = 900.0
RATE_LIMIT_CODES = {4, 17, 32, 613} | set(range(80000, 80015))
TOKEN_CODES = {190, 102}


def usage(headers) -> tuple[float, float]:
    """(highest usage percent, seconds until access is regained) from Meta's usage headers."""
    pct, wait = 0.0, 0.0

    def load(name):
        raw = headers.get(name)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def numbers(entry: dict, keys) -> list[float]:
        found = []
        for key in keys:
            try:
                found.append(float(entry.get(key) or 0))
            except (TypeError, ValueError):
                pass
        return found

    buc = load("X-Business-Use-Case-Usage")
    if isinstance(buc, dict):
        for entries in buc.values():
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict):
                    pct = max([pct, *numbers(entry, ("call_count", "total_cputime", "total_time"))])
                    wait = max([wait, *[m * 60 for m in numbers(entry, ("estimated_time_to_regain_access",))]])
    account = load("X-Ad-Account-Usage")
    if isinstance(account, dict):
        pct = max([pct, *numbers(account, ("acc_id_util_pct",))])
        if pct >= 100:
            wait = max([wait, *numbers(account, ("reset_time_duration",))])
    app = load("X-App-Usage")
    if isinstance(app, dict):
        pct = max([pct, *numbers(app, ("call_count", "total_cputime", "total_time"))])
    return pct, wait


def throttle_delay(pct: float, wait: float, max_wait: float) -> float:
    """How long to pause after a successful call, so we slow down before Meta refuses.

    Below 90 % nothing; from 90 % the time Meta says access returns, or one
    second per point above 89 % when it does not say; never above ``max_wait``.
    """
    if pct < THROTTLE_AT_PCT:
        return 0.0
    return min(max_wait, wait if wait > 0 else pct - 89)


def pick_conversions(actions, action_values, types: tuple[str, ...]) -> tuple[Decimal, Decimal]:
    """Conversions and revenue from the first listed action type present; never a sum of overlapping types."""
    counts = _listed(actions, types)
    values = _listed(action_values, types)
    chosen = next((t for t in types if t in counts), None) or next((t for t in types if t in values), None)
    if chosen is None:
        return ZERO, ZERO
    return api_decimal(counts.get(chosen), "Meta", "conversion count"), api_decimal(values.get(chosen), "Meta", "conversion value")


def _listed(items, types: tuple[str, ...]) -> dict:
    """{action_type: raw value} for the listed types only (most actions are clicks and views: skip them cheaply)."""
    found = {}
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                kind = item.get("action_type")
                if kind in types:
                    found[kind] = item.get("value", "0")
    return found


def parse_row(item: dict, types: tuple[str, ...]) -> InsightRow:
    """One element of an insights ``data`` list."""
    try:
        campaign_id = str(item["campaign_id"])
        day = date.fromisoformat(str(item["date_start"]))
        item.get  # noqa: B018 - must be an object
    except (AttributeError, KeyError, ValueError, TypeError):
        raise FatalApiError("Meta returned an insights row without campaign_id or date_start") from None
    conversions, revenue = pick_conversions(item.get("actions"), item.get("action_values"), types)
    return InsightRow(
        campaign_id=campaign_id,
        date=day,
        campaign_name=item.get("campaign_name"),
        spend=api_decimal(item.get("spend"), "Meta", "spend"),
        impressions=api_int(item.get("impressions"), "Meta", "impression count"),
        clicks=api_int(item.get("clicks"), "Meta", "click count"),
        conversions=conversions,
        revenue=revenue,
    )


def _token(creds: Credentials) -> str:
    if not creds.access_token:
        raise NeedsReauth("the integration has no Meta access token: reconnect it")
    return creds.access_token


class MetaConnector(HttpConnector):
    platform = "meta"

    def __init__(self, settings: Settings, api: HttpClient, clock: Clock = SYSTEM_CLOCK):
        super().__init__(settings, api, clock)
        self.base = f"{settings.meta_graph_url}/{settings.meta_api_version}"

    # ---------------------------------------------------------------- requests

    def _auth(self, token: str) -> dict:
        params = {"access_token": token}
        if self.settings.meta_app_secret:
            params["appsecret_proof"] = hmac.new(self.settings.meta_app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
        return params

    def _get(self, url: str, params: dict, token: str) -> dict:
        present = {k for k, _ in parse_qsl(urlsplit(url).query)}
        extra = {k: v for k, v in {**params, **self._auth(token)}.items() if k not in present}
        return self.api.send("GET", url, params=extra, classify=self._classify)

    def _classify(self, response) -> dict:
        body = parse_json(response) if response.content else {}
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code < 400 and isinstance(body, dict) and not error:
            pct, wait = usage(response.headers)
            delay = throttle_delay(pct, wait, self.api.max_wait)
            if delay:
                self.api.pause(delay, f"Meta usage at {pct:.0f}%")
            return body
        if not isinstance(error, dict):
            if response.status_code >= 500 or response.status_code == 429:
                raise RetryableError(f"Meta answered HTTP {response.status_code}")
            raise FatalApiError(f"Meta answered HTTP {response.status_code} without an error description")
        code = error.get("code")
        sub = error.get("error_subcode")
        message = str(error.get("message", "")).strip().rstrip(".")
        trace = error.get("fbtrace_id")
        label = f"Meta error {code}" + (f"/{sub}" if sub else "") + f": {message}"
        if code in TOKEN_CODES:
            raise NeedsReauth(
                f"{label}. The access token is expired or revoked: reconnect the ad account and run "
                "'emsync integrations update ID --access-token NEW_TOKEN --token-expires-at DATE'",
                request_id=trace,
            )
        if code in RATE_LIMIT_CODES or sub == 2446079:
            _, wait = usage(response.headers)
            if wait > self.api.max_wait:
                raise RateLimited(
                    f"{label} (access returns in {wait / 60:.0f} min)",
                    retry_at=self.clock.now() + timedelta(seconds=wait),
                    request_id=trace,
                )
            raise RetryableError(label, wait=wait or None, rate_limit=True, request_id=trace)
        if (code == 1 and "reduce the amount of data" in message.lower()) or (code, sub) in ((100, 1504018), (2, 1504038)):
            raise NeedsAsyncReport(label, request_id=trace)
        if code in (1, 2) or error.get("is_transient") or response.status_code >= 500:
            raise RetryableError(label, request_id=trace)
        raise FatalApiError(label, request_id=trace)

    # ---------------------------------------------------------------- the three things the engine asks

    def prepare(self, creds: Credentials) -> None:
        """Renew a long-lived token that expires within 7 days (system-user tokens have no expiry)."""
        register_secret(creds.access_token)
        expires = creds.token_expires_at
        if expires is None or expires - self.clock.now() > RENEW_WITHIN:
            return
        if not (self.settings.meta_app_id and self.settings.meta_app_secret):
            log.warning("Meta token expires %s and META_APP_ID/META_APP_SECRET are not set to renew it", expires.date())
            return
        body = self.api.send(
            "GET",
            f"{self.base}/oauth/access_token",
            params={
                "grant_type": "fb_exchange_token",
                "client_id": self.settings.meta_app_id,
                "client_secret": self.settings.meta_app_secret,
                "fb_exchange_token": creds.access_token,
            },
            classify=self._classify,
        )
        creds.access_token, creds.token_expires_at = issued_token(body, "Meta's token exchange", self.clock.now())
        creds.changed = True
        log.info("renewed the Meta access token; it now expires %s", creds.token_expires_at.date() if creds.token_expires_at else "never")

    def account_info(self, account: Account, creds: Credentials) -> AccountInfo:
        body = self._get(f"{self.base}/act_{account.account_id}", {"fields": "currency,timezone_name,name,account_status"}, _token(creds))
        return AccountInfo(currency=body.get("currency"), time_zone=body.get("timezone_name"), name=body.get("name"))

    def fetch(self, account: Account, window: SyncWindow, creds: Credentials) -> Fetched:
        params = {
            "level": "campaign",
            "time_increment": "1",
            "time_range": json.dumps({"since": window.since.isoformat(), "until": window.until.isoformat()}, separators=(",", ":")),
            "fields": FIELDS,
            "limit": str(PAGE_SIZE),
        }
        url = f"{self.base}/act_{account.account_id}/insights"
        try:
            return Fetched(self._pages(url, params, _token(creds)))
        except NeedsAsyncReport as exc:
            log.info("act_%s: %s; using an async report run", account.account_id, exc)
            return Fetched(self._async_report(url, params, _token(creds)))

    # ---------------------------------------------------------------- paging and async runs

    def _pages(self, url: str, params: dict, token: str) -> list[InsightRow]:
        types = self.settings.meta_conversion_action_types
        rows: list[InsightRow] = []
        seen: set[str] = set()
        body = self._get(url, params, token)
        while True:
            data, paging = body.get("data") or [], body.get("paging") or {}
            if not isinstance(data, list) or not isinstance(paging, dict):
                raise FatalApiError("Meta returned an insights page whose data or paging emsync cannot read")
            rows.extend(parse_row(item, types) for item in data)
            next_url = paging.get("next")
            if not next_url:
                return rows
            if next_url in seen:
                raise FatalApiError("Meta returned the same page cursor twice; stopped instead of looping")
            seen.add(next_url)
            self._check_same_host(next_url)
            body = self._get(next_url, {}, token)

    def _check_same_host(self, url: str) -> None:
        if urlsplit(url).netloc != urlsplit(self.base).netloc:
            raise FatalApiError(f"Meta's paging.next points at another host ({urlsplit(url).netloc}); not sending the token there")

    def _async_report(self, url: str, params: dict, token: str) -> list[InsightRow]:
        started = self.api.send("POST", url, data={**params, **self._auth(token)}, classify=self._classify)
        run_id = str(started.get("report_run_id") or "")
        if not run_id.isdigit():
            raise FatalApiError("Meta did not return a report_run_id for the async report")
        waited, delay = 0.0, 1.0
        while True:
            job = self._get(f"{self.base}/{run_id}", {"fields": "async_status,async_percent_completion"}, token)
            status = job.get("async_status")
            if status == "Job Completed":
                break
            if status in ("Job Failed", "Job Skipped"):
                raise RetryableError(f"Meta async report {run_id} ended with '{status}'")
            if waited >= ASYNC_MAX_WAIT_S:
                raise FatalApiError(f"Meta async report {run_id} did not complete within {ASYNC_MAX_WAIT_S / 60:.0f} minutes")
            self.api.pause(delay, f"async report {run_id} at {job.get('async_percent_completion', 0)}%")
            waited += delay
            delay = min(delay * 2, 10.0)
        return self._pages(f"{self.base}/{run_id}/insights", {"limit": str(PAGE_SIZE)}, token)
