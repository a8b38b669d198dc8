"""`emsync integrations check`: are the stored credentials still good, without syncing anything?

One cheap call per credential — Google: a refresh-token grant, unless the cached access token is still
fresh; Meta: ``debug_token`` (validity, scopes, expiry) — and one per integration — Google: a
``customer_client`` query on the customer itself through its ``login-customer-id`` (access, manager
link, status; one operation); Meta: ``GET /act_ID`` (access, ``account_status``). Nothing is written
but a refreshed Google access token, cached on its credential as a sync would.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from . import discovery, ledger, store
from .clock import SYSTEM_CLOCK, Clock
from .config import Settings
from .crypto import TokenBox
from .db import write_transaction
from .domain import Account, Credentials, account_label
from .errors import ApiError, ConfigError, FatalApiError, NeedsReauth, UserError
from .http import HttpClient
from .onboarding import ads_api, graph_api, http_client

EXPIRY_WARNING = timedelta(days=7)


@dataclass(frozen=True)
class CheckResult:
    """One integration's verdict: ``problem`` is None when it is fine; ``fix`` says what to do otherwise."""

    integration_id: int
    email: str
    platform: str
    account_id: str
    credential_id: int
    detail: str
    problem: str | None = None
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def label(self) -> str:
        return account_label(self.platform, self.account_id)

    def as_dict(self) -> dict:
        return {
            "id": self.integration_id,
            "email": self.email,
            "platform": self.platform,
            "account_id": self.account_id,
            "credential_id": self.credential_id,
            "ok": self.ok,
            "detail": self.detail,
            "problem": self.problem,
            "fix": self.fix,
        }


def check_integrations(settings: Settings, engine, ids: list[int] | None, *, clock: Clock = SYSTEM_CLOCK) -> list[CheckResult]:
    """Check the integrations ``ids`` (None: every active one), credential by credential, in id order.

    Raises:
        UserError: an unknown integration id; ConfigError: no secret key (restore it, when tokens are stored).
    """
    from .keys import require_box

    box = require_box(settings, engine)
    with engine.begin() as conn:
        rows = store.list_integrations(conn)
    if ids is not None:
        known = {r["id"] for r in rows}
        unknown = [str(i) for i in ids if i not in known]
        if unknown:
            raise UserError(f"no integration with id {', '.join(unknown)}: see 'emsync integrations list'")
        rows = [r for r in rows if r["id"] in set(ids)]
    else:
        rows = [r for r in rows if r["is_active"]]  # a disabled account is often one known to be closed
    http = http_client(settings)
    results: list[CheckResult] = []
    by_credential: dict[int, list[dict]] = {}
    for row in rows:
        by_credential.setdefault(row["credential_id"], []).append(row)
    try:
        for credential_id, group in by_credential.items():
            checker = _GoogleCheck if group[0]["platform"] == "google" else _MetaCheck
            results.extend(checker(settings, engine, box, http, clock).run(credential_id, group))
    finally:  # Google counts every call against the developer token's daily operations
        ledger.record_spent(engine, operations=http.operations, source="check", now=clock.now())
    return sorted(results, key=lambda r: r.integration_id)


def _result(row: dict, detail: str, problem: str | None = None, fix: str | None = None) -> CheckResult:
    return CheckResult(row["id"], row["email"], row["platform"], row["account_id"], row["credential_id"], detail, problem, fix)


class _Check:
    platform = ""

    def __init__(self, settings: Settings, engine, box: TokenBox, http: HttpClient, clock: Clock):
        self.settings, self.engine, self.box, self.http, self.clock = settings, engine, box, http, clock

    def run(self, credential_id: int, rows: list[dict]) -> list[CheckResult]:
        reconnect = f"emsync connect {self.platform} --email {rows[0]['email']}"
        with self.engine.begin() as conn:
            stored = store.credential_state(conn, credential_id)
        try:
            assert stored is not None
            creds = Credentials(
                access_token=self.box.decrypt(stored.access_token_enc),
                refresh_token=self.box.decrypt(stored.refresh_token_enc),
                # a cached access token no key decrypts (another host's newer key) is just refreshed again
                cached_access_token=self.box.decrypt(cached)
                if (cached := stored.cached_access_token_enc) and self.box.readable(cached)
                else None,
                token_expires_at=stored.token_expires_at,
                cached_access_token_expires_at=stored.cached_access_token_expires_at,
            )
            summary = self.credential(credential_id, creds)
        except ConfigError as exc:
            option = "--access-token" if self.platform == "meta" else "--refresh-token"
            fix = f"restore the key the tokens were stored with, or give the token again: emsync integrations update {rows[0]['id']} {option} -"
            return [_result(r, "", str(exc), fix) for r in rows]
        except (ApiError, UserError) as exc:
            return [_result(r, "", f"credential {credential_id}: {exc}", reconnect) for r in rows]
        return [self.account(row, creds, summary, reconnect) for row in rows]

    def credential(self, credential_id: int, creds: Credentials) -> str:
        """Check the token itself (one call at most); returns what to show, raises what is wrong."""
        raise NotImplementedError

    def account(self, row: dict, creds: Credentials, summary: str, reconnect: str) -> CheckResult:
        raise NotImplementedError


class _GoogleCheck(_Check):
    platform = "google"

    def credential(self, credential_id: int, creds: Credentials) -> str:
        from .connectors.google import GoogleConnector

        warnings = GoogleConnector(self.settings, self.http, self.clock).prepare(Account("google", f"credential {credential_id}"), creds)
        if warnings:  # the refresh failed while a cached access token was still valid: a problem for a check
            raise FatalApiError(warnings[0])
        if creds.changed:  # the one write: a fresh access token, cached for the syncs as they would
            with write_transaction(self.engine) as conn:
                store.save_tokens(conn, self.box, credential_id, creds)
        return "refresh token valid"

    def account(self, row: dict, creds: Credentials, summary: str, reconnect: str) -> CheckResult:
        api = ads_api(self.settings, creds.cached_access_token or "")
        login = row["login_customer_id"]
        through = f" through manager {account_label('google', login)}" if login else ""
        try:
            found = discovery.customer_clients(self.http, api, row["account_id"], login_customer_id=login, max_level=0)
        except discovery.CustomerRefused as exc:
            if exc.code == "CUSTOMER_NOT_ENABLED":
                return _result(row, summary, "the customer is cancelled or suspended", f"emsync integrations disable {row['id']}")
            return _result(
                row,
                summary,
                f"no access to the customer{through} ({exc.code})",
                f"{reconnect} (or emsync integrations update {row['id']} --login-customer-id MANAGER_ID)",
            )
        except (ApiError, UserError) as exc:
            return _result(row, summary, str(exc), reconnect if isinstance(exc, NeedsReauth | UserError) else "run the check again later")
        me = next((c for c in found if c.customer_id == row["account_id"]), None)
        if me is None:
            return _result(row, summary, "Google Ads answered without the customer", "run the check again later")
        if me.manager:
            return _result(row, summary, "a manager account has no campaigns", f"emsync integrations remove {row['id']}")
        if me.status != "ENABLED":
            return _result(row, summary, f"the customer is {me.status}", f"emsync integrations disable {row['id']}")
        return _result(row, f"{summary}; customer ENABLED{through}")


class _MetaCheck(_Check):
    platform = "meta"

    def _graph(self, creds: Credentials) -> discovery.GraphApi:
        return graph_api(self.settings, creds.access_token or "")

    def credential(self, credential_id: int, creds: Credentials) -> str:
        token = discovery.debug_token(self.http, self._graph(creds))
        discovery.require_ads_scopes(token)
        expires = token.expires_at
        if expires is None:
            return f"{token.token_type} token valid, never expires"
        now = self.clock.now()
        if expires <= now:
            raise UserError(f"the token expired {expires:%Y-%m-%d}")
        renews = self.settings.meta_app_id and self.settings.meta_app_secret
        if expires - now < EXPIRY_WARNING and not renews:
            raise UserError(f"the token expires {expires:%Y-%m-%d} and META_APP_ID/META_APP_SECRET are not set to renew it")
        return f"{token.token_type} token valid until {expires:%Y-%m-%d}"

    def account(self, row: dict, creds: Credentials, summary: str, reconnect: str) -> CheckResult:
        try:
            account = discovery.ad_account(self.http, self._graph(creds), row["account_id"])
        except discovery.GraphRefused as exc:
            return _result(row, summary, f"the token cannot read this ad account ({exc})", reconnect)
        except ApiError as exc:
            return _result(row, summary, str(exc), reconnect if isinstance(exc, NeedsReauth) else "run the check again later")
        if not account.selectable:
            return _result(row, summary, f"the ad account is {account.status_name}", f"emsync integrations disable {row['id']}")
        return _result(row, f"{summary}; ad account ACTIVE")
