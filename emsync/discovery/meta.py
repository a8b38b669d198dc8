"""Meta ad accounts a token can reach. Knows the Graph API, never the database.

Graph API reference: "Debug-Token" (validity, ``type`` USER or SYSTEM_USER,
``scopes``, ``expires_at`` with 0 = never), "User › Ad Accounts", "User ›
Businesses", "Business › Owned Ad Accounts" / "Client Ad Accounts". Edges
answer ``{"data": [...], "paging": {"cursors": {"before", "after"}, "next"}}``
and are followed until ``next`` is absent. Businesses are only listed when
the token has ``business_management``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from ..connectors.meta import GraphFailure
from ..errors import FatalApiError, NeedsReauth, UserError
from ..http import HttpClient, Service, read_body, redact, register_secret

GRAPH_SERVICE = Service("Meta", "META_GRAPH_URL and META_API_VERSION")
AD_ACCOUNT_FIELDS = "id,account_id,name,account_status,currency,timezone_name"
ADS_SCOPES = ("ads_read", "ads_management")
ACCOUNT_STATUS = {
    1: "ACTIVE",
    2: "DISABLED",
    3: "UNSETTLED",
    7: "PENDING_RISK_REVIEW",
    8: "PENDING_SETTLEMENT",
    9: "IN_GRACE_PERIOD",
    100: "PENDING_CLOSURE",
    101: "CLOSED",
    201: "ANY_ACTIVE",
    202: "ANY_CLOSED",
}
MAX_PAGES = 500
PAGE_SIZE = 100


@dataclass(frozen=True)
class GraphApi:
    """Where and with which token to call the Graph API; the app credentials are optional."""

    graph_url: str
    version: str
    access_token: str = field(repr=False)
    app_id: str | None = None
    app_secret: str | None = field(default=None, repr=False)

    def params(self) -> dict[str, str]:
        params = {"access_token": self.access_token}
        if self.app_secret:  # appsecret_proof: Meta's recommended proof that a call comes from the app's server
            params["appsecret_proof"] = hmac.new(self.app_secret.encode(), self.access_token.encode(), hashlib.sha256).hexdigest()
        return params


@dataclass(frozen=True)
class MetaToken:
    """What ``debug_token`` says about a token. ``expires_at`` None: never expires (system users)."""

    token_type: str
    app_id: str | None
    user_id: str | None
    scopes: tuple[str, ...]
    expires_at: datetime | None
    data_access_expires_at: datetime | None


@dataclass(frozen=True)
class MetaAdAccount:
    """An ad account found in discovery; ``found_via`` is ``me`` or ``business ID owned|client``."""

    account_id: str  # digits, without "act_"
    name: str | None
    account_status: int
    currency: str | None
    time_zone: str | None
    found_via: str

    @property
    def status_name(self) -> str:
        return ACCOUNT_STATUS.get(self.account_status, str(self.account_status))

    @property
    def selectable(self) -> bool:
        """What ``--all`` picks: ACTIVE accounts only (``account_status`` 1)."""
        return self.account_status == 1


@dataclass(frozen=True)
class MetaDiscovery:
    token: MetaToken
    accounts: tuple[MetaAdAccount, ...]
    businesses: tuple[tuple[str, str | None], ...]  # (id, name)
    problems: tuple[str, ...]  # one line per business whose accounts could not be listed
    calls: int  # HTTP requests made, retries included


class GraphRefused(FatalApiError):
    """The Graph API refused a call for good; ``code`` is Meta's error code."""

    def __init__(self, message: str, *, code: int | None, request_id: str | None = None):
        super().__init__(message, request_id=request_id)
        self.code = code


def debug_token(http: HttpClient, graph: GraphApi) -> MetaToken:
    """Inspect the token with the app token (``APP_ID|APP_SECRET``) when the app is known, else with itself.

    Raises:
        UserError: Meta says the token is not valid.
    """
    register_secret(graph.access_token, graph.app_secret)
    inspector = f"{graph.app_id}|{graph.app_secret}" if graph.app_id and graph.app_secret else graph.access_token
    register_secret(inspector)
    try:
        body = http.send(
            "GET",
            f"{graph.graph_url}/{graph.version}/debug_token",
            params={"input_token": graph.access_token, "access_token": inspector},
            classify=lambda r: _classify_meta(r, http),
        )
    except NeedsReauth as exc:
        raise UserError(f"Meta refused the token: {exc}") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise FatalApiError("Meta's debug_token answer has no data")
    if not data.get("is_valid"):
        reason = (data.get("error") or {}).get("message") or "no reason given"
        raise UserError(redact(f"Meta says this token is not valid ({reason}): create a new token and connect again"))
    return MetaToken(
        token_type=str(data.get("type") or "USER"),
        app_id=_text(data.get("app_id")),
        user_id=_text(data.get("user_id")),
        scopes=tuple(str(s) for s in data.get("scopes") or []),
        expires_at=_epoch(data.get("expires_at")),
        data_access_expires_at=_epoch(data.get("data_access_expires_at")),
    )


def require_ads_scopes(token: MetaToken) -> None:
    """Raises UserError naming the missing permission unless the token has ``ads_read`` or ``ads_management``."""
    if not set(ADS_SCOPES) & set(token.scopes):
        held = ", ".join(token.scopes) or "none"
        raise UserError(
            f"the token lacks the ads_read permission (ads_management also works; it has: {held}): "
            "generate a token with ads_read and connect again"
        )


def ad_accounts(http: HttpClient, graph: GraphApi, edge: str = "me/adaccounts", found_via: str = "me") -> list[MetaAdAccount]:
    """Every ad account on one edge (``me/adaccounts``, ``BUSINESS/owned_ad_accounts``, ``BUSINESS/client_ad_accounts``)."""
    accounts = []
    for item in _pages(http, graph, edge, AD_ACCOUNT_FIELDS):
        raw = str(item.get("account_id") or str(item.get("id", "")).removeprefix("act_"))
        if not raw.isdigit():
            raise FatalApiError(f"Meta returned an ad account without a numeric id on {edge}")
        accounts.append(_account(item, raw, found_via))
    return accounts


def _account(item: dict, account_id: str, found_via: str) -> MetaAdAccount:
    try:
        status = int(item.get("account_status", 0))
    except (TypeError, ValueError):
        status = 0
    return MetaAdAccount(account_id, item.get("name"), status, item.get("currency"), item.get("timezone_name"), found_via)


def ad_account(http: HttpClient, graph: GraphApi, account_id: str) -> MetaAdAccount:
    """One ad account read with the token (``GET /act_ID``): proves the token reaches it, and its status.

    Raises:
        GraphRefused: the token's user cannot read it (code 200, 10, or 100 for an unknown id).
        NeedsReauth: the token is invalid.
    """
    register_secret(graph.access_token, graph.app_secret)
    body = http.send(
        "GET",
        f"{graph.graph_url}/{graph.version}/act_{account_id}",
        params={**graph.params(), "fields": AD_ACCOUNT_FIELDS.removeprefix("id,account_id,")},
        classify=lambda r: _classify_meta(r, http),
    )
    return _account(body, account_id, "me")


def businesses(http: HttpClient, graph: GraphApi) -> list[tuple[str, str | None]]:
    """(id, name) of the user's businesses; needs ``business_management``."""
    return [(str(b.get("id")), b.get("name")) for b in _pages(http, graph, "me/businesses", "id,name")]


def discover_meta(http: HttpClient, graph: GraphApi) -> MetaDiscovery:
    """Check the token, then list its ad accounts: the user's own, and with ``business_management`` its businesses'.

    Accounts reachable several ways are listed once (the first way found).
    A business whose accounts cannot be listed is named in ``problems``.

    Raises:
        UserError: the token is invalid or lacks ``ads_read``/``ads_management``.
    """
    before = http.requests
    token = debug_token(http, graph)
    require_ads_scopes(token)
    found: dict[str, MetaAdAccount] = {}
    problems: list[str] = []

    def add(accounts: list[MetaAdAccount]) -> None:
        for account in accounts:
            found.setdefault(account.account_id, account)

    add(ad_accounts(http, graph))
    owners: list[tuple[str, str | None]] = []
    if "business_management" in token.scopes:
        owners = businesses(http, graph)
        for business_id, name in owners:
            for kind in ("owned", "client"):
                try:
                    add(ad_accounts(http, graph, f"{business_id}/{kind}_ad_accounts", f"business {business_id} {kind}"))
                except GraphRefused as refused:
                    problems.append(f"business {business_id} ({name or 'no name'}): cannot list {kind} ad accounts: {refused}")
    return MetaDiscovery(
        token=token, accounts=tuple(found.values()), businesses=tuple(owners), problems=tuple(problems), calls=http.requests - before
    )


def _pages(http: HttpClient, graph: GraphApi, edge: str, fields: str) -> Iterator[dict]:
    """Items of a paged edge; stops when ``paging.next`` is absent, refuses a repeated link or one to another host."""
    register_secret(graph.access_token, graph.app_secret)
    url: str | None = f"{graph.graph_url}/{graph.version}/{edge}"
    params: dict | None = {**graph.params(), "fields": fields, "limit": str(PAGE_SIZE)}
    followed: set[str] = set()
    host = urlsplit(graph.graph_url).netloc
    while url:
        body = http.send("GET", url, params=params, classify=lambda r: _classify_meta(r, http))
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise FatalApiError(f"Meta's answer for {edge} has no data list")
        yield from (item for item in data if isinstance(item, dict))
        following = (body.get("paging") or {}).get("next")
        if not following:
            return
        if following in followed or len(followed) >= MAX_PAGES:
            raise FatalApiError(f"Meta handed out the same paging link twice for {edge} (loop detected); stopped")
        if urlsplit(following).netloc != host:
            raise FatalApiError(f"Meta's paging link for {edge} points to another host; not sending the token there")
        followed.add(following)
        url, params = following, None  # the link carries the query, token included


def _classify_meta(response, http: HttpClient) -> dict:
    """Status first, then Meta's error object, decided as a sync decides (``connectors.meta.GraphFailure``)."""
    body = read_body(response, GRAPH_SERVICE)
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code < 400 and not error:
        if not isinstance(body, dict):
            raise FatalApiError("Meta answered with JSON emsync cannot read (not an object)")
        return body
    if not isinstance(error, dict):  # no error object: the status decides (429 and 5xx honour Retry-After)
        refused = NeedsReauth(f"Meta answered HTTP {response.status_code}: the access token is not accepted")
        raise http.undescribed(response, GRAPH_SERVICE, unauthorized=refused)
    failure = GraphFailure.parse(error)
    message = redact(failure.label)
    if failure.token_refused:
        raise NeedsReauth(message, request_id=failure.trace)
    raise (
        failure.rate_limit(response, http)
        or failure.transient(response)
        or GraphRefused(message, code=failure.code if isinstance(failure.code, int) else None, request_id=failure.trace)
    )


def _epoch(value) -> datetime | None:
    try:
        seconds = int(value or 0)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None


def _text(value) -> str | None:
    return str(value) if value not in (None, "") else None
