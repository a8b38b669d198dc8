"""Google Ads customers a freshly connected Google user can reach. Knows the API, never the database.

Google Ads API documents: "Listing Accessible Accounts", "Get Account
Hierarchy", the ``customer_client`` resource; REST
``customers:listAccessibleCustomers`` and ``googleAds:searchStream``.
``listAccessibleCustomers`` returns only the customers the user reaches
directly (``{"resourceNames": ["customers/123…"]}``) and ignores
``login-customer-id``. Which of them are managers is only known from a
``customer_client`` query on each, which for a manager returns itself
(level 0) and every direct and indirect client (``{"customerClient": {"id",
"descriptiveName", "manager", "level", "status", "currencyCode",
"timeZone"}}``, int64 as strings, false and 0 possibly left out), and for any
other customer just itself. Each call is one Google Ads API operation;
``operations`` counts the calls (retries of a failed call are not counted),
and the ``HttpClient``'s own ``operations`` every request sent, retries
included: what the ledger records (``ledger.record(conn, operations=
http.operations, source="connect")``).

Errors are read and decided as a sync decides them (``connectors.google.AdsFailure``):
a rate limit waits or becomes ``RateLimited`` by what Google asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

from ..connectors.google import AdsFailure, stream_error
from ..errors import FatalApiError, NeedsReauth, UserError
from ..http import HttpClient, Service, read_body, register_secret

CUSTOMER_CLIENT_QUERY = (
    "SELECT customer_client.id, customer_client.descriptive_name, customer_client.manager, customer_client.level, "
    "customer_client.status, customer_client.currency_code, customer_client.time_zone FROM customer_client"
)


@dataclass(frozen=True)
class GoogleAdsApi:
    """Where and as whom to call the Google Ads API."""

    api_url: str
    version: str
    access_token: str = field(repr=False)
    developer_token: str | None = field(default=None, repr=False)

    def headers(self, login_customer_id: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.access_token}"}
        if login_customer_id:
            headers["login-customer-id"] = login_customer_id
        if self.developer_token:
            headers["developer-token"] = self.developer_token
        return headers


@dataclass(frozen=True)
class GoogleCustomer:
    """A customer found in discovery. ``level`` counts from ``login_customer_id``, the customer it was found through.

    ``status`` is the API's (ENABLED, CANCELED, SUSPENDED, CLOSED), or the
    error code a directly accessible customer answered with
    (``CUSTOMER_NOT_ENABLED``; then name, currency and time zone are unknown).
    """

    customer_id: str
    name: str | None
    manager: bool
    level: int
    status: str
    currency: str | None
    time_zone: str | None
    login_customer_id: str

    @property
    def selectable(self) -> bool:
        """What ``--all`` picks: enabled accounts that hold campaigns (not managers)."""
        return self.status == "ENABLED" and not self.manager


@dataclass(frozen=True)
class GoogleDiscovery:
    accessible: tuple[str, ...]
    customers: tuple[GoogleCustomer, ...]
    operations: int


class CustomerRefused(FatalApiError):
    """Google Ads refused one customer (403); ``code`` is its error code, e.g. ``CUSTOMER_NOT_ENABLED``."""

    def __init__(self, message: str, *, code: str, request_id: str | None = None):
        super().__init__(message, request_id=request_id)
        self.code = code


def list_accessible_customers(http: HttpClient, api: GoogleAdsApi) -> list[str]:
    """Ids of the customers the signed-in user reaches directly (one operation).

    Raises:
        UserError: the Google account has no Google Ads access (``NOT_ADS_USER``).
        NeedsReauth: the access token was refused.
    """
    register_secret(api.access_token, api.developer_token)
    body = http.send(
        "GET",
        f"{api.api_url}/{api.version}/customers:listAccessibleCustomers",
        headers=api.headers(None),
        classify=lambda r: _classify_google(r, http),
        operation=True,  # counted in http.operations for the ledger (source "connect" or "check")
    )
    names = (body.get("resourceNames") or []) if isinstance(body, dict) else []  # proto3 JSON: {} when empty
    return [str(name).rsplit("/", 1)[-1] for name in names]


def customer_clients(
    http: HttpClient, api: GoogleAdsApi, customer_id: str, *, login_customer_id: str | None = None, max_level: int | None = None
) -> list[GoogleCustomer]:
    """The ``customer_client`` rows of one customer (one operation), queried through ``login_customer_id`` (itself by default).

    Raises:
        CustomerRefused: 403 for this customer (``CUSTOMER_NOT_ENABLED``, ``USER_PERMISSION_DENIED``).
        UserError: ``NOT_ADS_USER``.
    """
    register_secret(api.access_token, api.developer_token)
    login = login_customer_id or customer_id
    query = CUSTOMER_CLIENT_QUERY + (f" WHERE customer_client.level <= {int(max_level)}" if max_level is not None else "")
    batches = http.send(
        "POST",
        f"{api.api_url}/{api.version}/customers/{customer_id}/googleAds:searchStream",
        json={"query": query},
        headers=api.headers(login),
        classify=lambda r: _classify_google(r, http),
        operation=True,
    )
    rows = []
    for batch in batches if isinstance(batches, list) else [batches]:
        for result in (batch or {}).get("results") or []:
            client = result.get("customerClient") or {}
            cid = str(client.get("id") or str(client.get("clientCustomer", "")).rsplit("/", 1)[-1])
            if not cid.isdigit():
                raise FatalApiError(f"Google Ads returned a customer_client row without an id for customer {customer_id}")
            rows.append(
                GoogleCustomer(
                    customer_id=cid,
                    name=client.get("descriptiveName"),
                    manager=bool(client.get("manager", False)),
                    level=int(client.get("level", 0)),  # proto3 JSON leaves out false and 0
                    status=str(client.get("status") or "UNKNOWN"),
                    currency=client.get("currencyCode"),
                    time_zone=client.get("timeZone"),
                    login_customer_id=login,
                )
            )
    return rows


def discover_google(http: HttpClient, api: GoogleAdsApi) -> GoogleDiscovery:
    """Every customer the user reaches, directly or under an accessible manager (both levels of a tree).

    A customer found through several paths is listed once, through the
    closest one (the smallest ``level``). A directly accessible customer that
    refuses the query (a cancelled or suspended one: ``CUSTOMER_NOT_ENABLED``)
    is listed with that status; discovery goes on.

    Raises:
        UserError: ``NOT_ADS_USER``.
        NeedsReauth, RateLimited, RetryableError: the whole call failed.
    """
    accessible = list_accessible_customers(http, api)
    operations = 1
    best: dict[str, GoogleCustomer] = {}
    for customer_id in accessible:
        operations += 1
        try:
            found = customer_clients(http, api, customer_id)
        except CustomerRefused as refused:
            found = [GoogleCustomer(customer_id, None, False, 0, refused.code, None, None, customer_id)]
        for row in found:
            known = best.get(row.customer_id)
            if known is None or row.level < known.level:
                best[row.customer_id] = row
    ordered = sorted(best.values(), key=lambda c: (c.login_customer_id, c.level, c.customer_id))
    return GoogleDiscovery(accessible=tuple(accessible), customers=tuple(ordered), operations=operations)


ADS_SERVICE = Service("Google Ads", "GOOGLE_ADS_API_URL and GOOGLE_ADS_API_VERSION")


def _classify_google(response, http: HttpClient) -> Any:
    """Status first, then Google's error object, decided as a sync decides (``AdsFailure.shared_error``)."""
    body = read_body(response, ADS_SERVICE)
    error = stream_error(body)
    if 200 <= response.status_code < 300:
        if error is not None:
            _raise_google(error, 500, http)  # searchStream can fail inside a 200 array
        return body
    if error is None:  # no error object (an HTML page from a proxy, a bare 502): the status decides
        refused = NeedsReauth(f"Google Ads answered HTTP {response.status_code}: the access token was not accepted")
        raise http.undescribed(response, ADS_SERVICE, unauthorized=refused)
    _raise_google(error, response.status_code, http, retry_after=http.retry_after(response))


def _raise_google(error: dict, http_status: int, http: HttpClient, *, retry_after: float | None = None) -> NoReturn:
    failure = AdsFailure.parse(error, http_status)
    if "NOT_ADS_USER" in failure.codes:
        raise UserError(
            "this Google account has no access to Google Ads (NOT_ADS_USER): sign in with a Google account "
            "that has a Google Ads account or was invited to one"
        )
    if failure.unauthenticated:
        raise NeedsReauth(failure.label, request_id=failure.request_id)
    shared = failure.shared_error(http, retry_after=retry_after)
    if shared is not None:
        raise shared
    if failure.code == 403 or failure.status == "PERMISSION_DENIED":
        code = sorted(failure.codes)[0] if failure.codes else "PERMISSION_DENIED"
        raise CustomerRefused(failure.label, code=code, request_id=failure.request_id)
    raise FatalApiError(failure.label, request_id=failure.request_id)
