"""The sandbox's Google Ads REST API: searchStream over GAQL (campaign, customer, customer_client) and
``customers:listAccessibleCustomers``. Google's OAuth endpoints live in ``google_oauth``.

``customer_client`` (Google Ads API, "Get Account Hierarchy"): querying a
manager returns a row for itself (level 0) and one for every direct and
indirect client, ``level`` being the distance; querying a non-manager returns
just itself at level 0. Rows look like ``{"customerClient": {"resourceName":
"customers/M/customerClients/C", "clientCustomer": "customers/C", "id": "C",
"descriptiveName", "manager": true, "level": "2", "status": "ENABLED",
"currencyCode", "timeZone"}}`` — int64 as strings and, as proto3 JSON does,
``manager: false`` and ``level: 0`` left out. ``listAccessibleCustomers``
answers ``{"resourceNames": ["customers/123…"]}`` (``{}`` when empty) and
ignores ``login-customer-id``.
"""

from __future__ import annotations

import json
import re
import time
from datetime import date, timedelta

from .data import day_stats
from .google_oauth import user_of
from .server import Request, Response, Sandbox, apply_common_faults, new_id

BETWEEN = re.compile(r"segments\.date\s+BETWEEN\s+'(\d{4}-\d{2}-\d{2})'\s+AND\s+'(\d{4}-\d{2}-\d{2})'", re.I)
GE = re.compile(r"segments\.date\s*>=\s*'(\d{4}-\d{2}-\d{2})'", re.I)
LE = re.compile(r"segments\.date\s*<=\s*'(\d{4}-\d{2}-\d{2})'", re.I)
DURING = re.compile(r"segments\.date\s+DURING\s+([A-Z_0-9]+)", re.I)
SELECT = re.compile(r"^\s*SELECT\s+(.+?)\s+FROM\s+([a-z_]+)", re.I | re.S)
FAILURE_TYPE = "type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure"
PERMISSION_MESSAGE = (
    "User doesn't have permission to access customer. Note: If you're accessing a client customer, the manager's "
    "customer id must be set in the 'login-customer-id' header. See "
    "https://developers.google.com/google-ads/api/docs/concepts/call-structure#cid"
)


def failure(
    version: str, http: int, status: str, top: str, code: dict, message: str, *, details: dict | None = None, request_id: str | None = None
) -> dict:
    error = {"errorCode": code, "message": message}
    if details:
        error["details"] = details
    return {
        "error": {
            "code": http,
            "message": top,
            "status": status,
            "details": [{"@type": FAILURE_TYPE.format(version=version), "errors": [error], "requestId": request_id or new_id()[:22]}],
        }
    }


def _token_revoked(version: str) -> dict:
    return failure(
        version,
        401,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials.",
        {"authenticationError": "OAUTH_TOKEN_REVOKED"},
        "Oauth token is revoked.",
    )


def _quota_error(version: str, quota_error: str, message: str, scope: str, rate_name: str, retry_seconds: int) -> Response:
    """A 429 with a QuotaError and its ``quotaErrorDetails`` (rate scope, rate name, retryDelay), as Google sends it."""
    return _stream_error(
        version,
        429,
        "RESOURCE_EXHAUSTED",
        "Resource has been exhausted (e.g. check quota).",
        {"quotaError": quota_error},
        message,
        details={"quotaErrorDetails": {"rateScope": scope, "rateName": rate_name, "retryDelay": f"{retry_seconds}s"}},
    )


def _stream_error(version: str, http: int, *args, **kwargs) -> Response:
    # searchStream sends its errors inside the JSON array, with the HTTP status set.
    return Response(http, [failure(version, http, *args, **kwargs)])


NOT_FOUND = {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}


def _authenticate(sb: Sandbox, req: Request, version: str) -> tuple[dict | None, dict | None]:
    """(error body, the caller's ``google_users`` entry): the Bearer token checks every Ads API call makes."""
    auth = req.headers.get("authorization", "")
    access = auth[7:] if auth.startswith("Bearer ") else ""
    expires = sb.google_access_tokens.get(access)
    unauthenticated = (401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
    if sb.google_token_owner.get(access) in sb.scenario["revoked_refresh_tokens"]:
        # revoking a refresh token revokes the access tokens issued from it
        return _token_revoked(version), None
    if expires is None or expires < time.time():
        reason = "OAUTH_TOKEN_EXPIRED" if expires is not None else "OAUTH_TOKEN_INVALID"
        return failure(
            version, *unauthenticated, {"authenticationError": reason}, "Oauth token is expired." if expires else "Oauth token is invalid."
        ), None
    _, user = user_of(sb, access)
    if user is not None and user.get("ads_user") is False:
        return failure(
            version, *unauthenticated, {"authenticationError": "NOT_ADS_USER"}, "User in the cookie is not a valid Ads user."
        ), None
    return None, user


def list_accessible(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    m = re.fullmatch(r"/(v\d+)/customers:listAccessibleCustomers", req.path)
    if not m or req.method != "GET":
        return "google.unknown", None, Response(404, NOT_FOUND)
    version = m.group(1)
    problem, user = _authenticate(sb, req, version)
    if problem is not None:  # a unary call: the error is an object, not inside an array
        return "google.list_accessible", None, Response(problem["error"]["code"], problem)
    if not sb.spend_google_operation():
        exhausted = _project_exhausted(version)
        return "google.list_accessible", None, Response(429, exhausted.body[0])  # type: ignore[index]
    ids = user["accessible"] if user is not None and "accessible" in user else _roots(sb)
    body = {"resourceNames": [f"customers/{i}" for i in ids]} if ids else {}  # proto3 JSON leaves out an empty list
    return "google.list_accessible", None, Response(200, body)


def _roots(sb: Sandbox) -> list[str]:
    customers = sb.scenario["google_customers"]
    children = {str(c) for cfg in customers.values() for c in (cfg or {}).get("children") or []}
    return sorted(c for c in customers if c not in children)


def descendants(sb: Sandbox, manager: str) -> dict[str, int]:
    """{customer id: level} for a customer and, when it is a manager, every direct and indirect client (breadth first)."""
    found = {manager: 0}
    queue = [manager]
    while queue:
        current = queue.pop(0)
        config = sb.account("google", current) or {}
        if not config.get("is_manager"):
            continue
        for child in config.get("children") or []:
            if str(child) not in found:
                found[str(child)] = found[current] + 1
                queue.append(str(child))
    return found


def _query_of(req: Request) -> tuple[str | None, str]:
    """(query, resource in its FROM clause); query None when the body is not JSON."""
    try:
        query = json.loads(req.body or b"{}").get("query", "")
    except (ValueError, AttributeError):
        return None, ""
    select = SELECT.match(query or "")
    return query, select.group(2).lower() if select else ""


def search_stream(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    m = re.fullmatch(r"/(v\d+)/customers/(\d+)/googleAds:searchStream", req.path)
    if not m or req.method != "POST":
        return "google.unknown", None, Response(404, NOT_FOUND)
    version, customer = m.groups()
    query, resource = _query_of(req)
    kind = "google.customer_client" if resource == "customer_client" else "google.search_stream"
    return kind, customer, _search(sb, req, version, customer, query, resource)


def _search(sb: Sandbox, req: Request, version: str, customer: str, query: str | None, resource: str) -> Response:
    problem, user = _authenticate(sb, req, version)
    if problem is not None:
        return Response(problem["error"]["code"], [problem])  # searchStream sends its errors inside the array
    account = sb.account("google", customer)
    manager = (account or {}).get("manager")
    login = req.headers.get("login-customer-id")
    if account is None or (manager and login != manager) or not _reachable(sb, user, customer, login):
        return _permission_denied(version)
    if account.get("status", "ENABLED") != "ENABLED":
        return _not_enabled(version)
    endpoint = "customer_client" if resource == "customer_client" else "search_stream"
    common = apply_common_faults(sb, "google", customer, endpoint)
    if common is not None:
        return common
    if not sb.spend_google_operation():
        return _project_exhausted(version)
    fault = sb.take_fault(
        "google",
        customer,
        endpoint,
        (
            "rate_limit",
            "quota_exhausted",
            "server_error",
            "unauthenticated",
            "permission_denied",
            "not_enabled",
            "error_in_stream",
            "bad_query",
        ),
    )
    if fault is not None:
        answer = _fault(version, fault)
        if answer is not None:
            return answer
    if query is None:
        return Response(400, {"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}})
    return _answer(sb, version, customer, account, query)


def _reachable(sb: Sandbox, user: dict | None, customer: str, login: str | None) -> bool:
    """Whether a user with an ``accessible`` list may query ``customer`` through ``login`` (itself when absent)."""
    if user is None or "accessible" not in user:
        return True
    through = login or customer
    return through in {str(a) for a in user["accessible"]} and customer in descendants(sb, through)


def _permission_denied(version: str) -> Response:
    return _stream_error(
        version,
        403,
        "PERMISSION_DENIED",
        "The caller does not have permission",
        {"authorizationError": "USER_PERMISSION_DENIED"},
        PERMISSION_MESSAGE,
    )


def _not_enabled(version: str) -> Response:
    return _stream_error(
        version,
        403,
        "PERMISSION_DENIED",
        "The caller does not have permission",
        {"authorizationError": "CUSTOMER_NOT_ENABLED"},
        "The customer account can't be accessed because it is not yet enabled or has been deactivated.",
    )


def _fault(version: str, fault: dict) -> Response | None:
    kind = fault["kind"]
    if kind == "rate_limit":
        return _quota_error(
            version,
            "RESOURCE_TEMPORARILY_EXHAUSTED",
            "Too many requests. Retry in a few seconds.",
            "ACCOUNT",
            "Requests per account",
            int(fault.get("retry_seconds", 2)),
        )
    if kind == "quota_exhausted":
        scope = str(fault.get("scope", "DEVELOPER"))
        if scope == "ACCOUNT":
            return _quota_error(
                version,
                "RESOURCE_EXHAUSTED",
                "Too many requests for this customer. Retry in a few hours.",
                "ACCOUNT",
                "Requests per customer per day",
                int(fault.get("retry_seconds", 40591)),
            )
        return _quota_error(
            version,
            "RESOURCE_EXHAUSTED",
            "Number of operations for basic access has been exceeded.",
            scope,
            "Number of operations for basic access",
            int(fault.get("retry_seconds", 40591)),
        )
    if kind == "server_error":
        status = int(fault.get("status", 500))
        name = {500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}.get(status, "INTERNAL")
        return _stream_error(
            version, status, name, "Internal error encountered.", {"internalError": "INTERNAL_ERROR"}, "An internal error has occurred."
        )
    if kind == "unauthenticated":
        return Response(401, [_token_revoked(version)])
    if kind == "permission_denied":
        return _permission_denied(version)
    if kind == "not_enabled":
        return _not_enabled(version)
    if kind == "bad_query":
        return _stream_error(
            version,
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            {"queryError": "UNRECOGNIZED_FIELD"},
            "Error in SELECT clause: invalid field name 'campaign.nme'.",
        )
    if kind == "error_in_stream":
        return Response(
            200,
            [
                failure(
                    version,
                    500,
                    "INTERNAL",
                    "Internal error encountered.",
                    {"internalError": "TRANSIENT_ERROR"},
                    "A transient internal error has occurred.",
                )
            ],
        )
    return None


def _project_exhausted(version: str) -> Response:
    """What Google answers once the developer token's daily operations (``google_daily_operations``) are spent."""
    return _quota_error(
        version,
        "RESOURCE_EXHAUSTED",
        "Number of operations for basic access has been exceeded.",
        "DEVELOPER",
        "Number of operations for basic access",
        40591,
    )


def _dates(query: str, today: date) -> tuple[date, date] | None:
    if m := BETWEEN.search(query):
        return date.fromisoformat(m.group(1)), date.fromisoformat(m.group(2))
    ge, le = GE.search(query), LE.search(query)
    if ge and le:
        return date.fromisoformat(ge.group(1)), date.fromisoformat(le.group(1))
    if m := DURING.search(query):
        name = m.group(1).upper()
        spans = {"TODAY": (0, 0), "YESTERDAY": (1, 1), "LAST_7_DAYS": (7, 1), "LAST_14_DAYS": (14, 1), "LAST_30_DAYS": (30, 1)}
        if name in spans:
            first, last = spans[name]
            return today - timedelta(days=first), today - timedelta(days=last)
    return None


def _answer(sb: Sandbox, version: str, customer: str, account: dict, query: str) -> Response:
    request_id = new_id()[:22]
    select = SELECT.match(query)
    if not select:
        return _stream_error(
            version,
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            {"queryError": "PROHIBITED_RESOURCE_TYPE_IN_SELECT_CLAUSE"},
            "Error in query: unexpected input.",
        )
    fields = [f.strip() for f in select.group(1).split(",")]
    resource = select.group(2).lower()
    mask = ",".join(_camel(f) for f in fields)
    if resource == "customer":
        row = {
            "customer": {
                "resourceName": f"customers/{customer}",
                "currencyCode": account["currency"],
                "timeZone": account["timezone"],
                "descriptiveName": account["name"],
                "id": customer,
            }
        }
        return Response(200, [{"results": [row], "fieldMask": mask, "requestId": request_id, "queryResourceConsumption": "1"}])
    if resource == "customer_client":
        return _customer_clients(sb, version, customer, query, fields, mask, request_id)
    if resource != "campaign":
        return _stream_error(
            version,
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            {"queryError": "BAD_RESOURCE_TYPE_IN_FROM_CLAUSE"},
            f"Unsupported resource in sandbox: {resource}",
        )
    today = sb.today(account["timezone"])
    span = _dates(query, today)
    if span is None:  # the sandbox serves campaign metrics per day only
        return _stream_error(
            version,
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            {"queryError": "EXPECTED_FILTERS_ON_DATE_RANGE"},
            "A date range must be specified in the WHERE clause when segments.date is selected.",
        )
    sb.wait_if_held(span[0])
    version_n = sb.next_call("google", customer, "restate") if account.get("restate") else 0
    stats = day_stats(sb.scenario["seed"], "google", customer, int(account["campaigns"]), span[0], span[1], today=today, version=version_n)
    customer_fields = {_camel(f.split(".", 1)[1]) for f in fields if f.startswith("customer.")}
    customer_values = {
        "id": customer,
        "currencyCode": account["currency"],
        "timeZone": account["timezone"],
        "descriptiveName": account["name"],
    }
    rows = [_row(customer, s, account) for s in stats]
    if rows and sb.take_fault("google", customer, "search_stream", ("row_outside_window",)):
        early = {**rows[0], "segments": {"date": (span[0] - timedelta(days=5)).isoformat()}}
        rows.append(early)
    if customer_fields:  # selected customer fields come back on every row, as the API does
        extra = {"resourceName": f"customers/{customer}", **{k: v for k, v in customer_values.items() if k in customer_fields}}
        for row in rows:
            row["customer"] = extra
    size = int(sb.scenario["google_batch_size"])
    batches = [{"results": rows[i : i + size], "fieldMask": mask, "requestId": request_id} for i in range(0, len(rows), size)]
    if not batches:
        batches = [{"fieldMask": mask, "requestId": request_id}]
    batches[-1]["queryResourceConsumption"] = str(50 + len(rows))
    return Response(200, batches)


def _row(customer: str, s, account: dict) -> dict:
    metrics = {
        "costMicros": str(s.spend_cents * 10_000 + s.extra_micros) if s.spend_cents or s.extra_micros else None,
        "impressions": str(s.impressions) if s.impressions else None,
        "clicks": str(s.clicks) if s.clicks else None,
        "conversions": (s.purchases + s.fractional_conversions) or None,
        "conversionsValue": (s.purchase_value_cents / 100) or None,
    }
    return {
        "campaign": {
            "resourceName": f"customers/{customer}/campaigns/{s.campaign_id}",
            "id": s.campaign_id,
            "name": (account.get("campaign_names") or {}).get(s.campaign_id, s.campaign_name),
            "status": (account.get("campaign_statuses") or {}).get(s.campaign_id, "ENABLED"),
        },
        "metrics": {k: v for k, v in metrics.items() if v is not None},  # proto3 JSON omits zeros
        "segments": {"date": s.day.isoformat()},
    }


def _camel(field: str) -> str:
    return ".".join(re.sub(r"_([a-z])", lambda m: m.group(1).upper(), part) for part in field.split("."))


CLIENT_FIELDS = {  # customer_client field -> (JSON key, value from (customer id, level, config))
    "resource_name": None,
    "client_customer": None,
    "id": ("id", lambda cid, level, cfg: cid),
    "descriptive_name": ("descriptiveName", lambda cid, level, cfg: cfg["name"]),
    "manager": ("manager", lambda cid, level, cfg: bool(cfg.get("is_manager"))),
    "level": ("level", lambda cid, level, cfg: str(level)),
    "status": ("status", lambda cid, level, cfg: cfg.get("status", "ENABLED")),
    "currency_code": ("currencyCode", lambda cid, level, cfg: cfg["currency"]),
    "time_zone": ("timeZone", lambda cid, level, cfg: cfg["timezone"]),
    "hidden": ("hidden", lambda cid, level, cfg: bool(cfg.get("hidden"))),
    "test_account": ("testAccount", lambda cid, level, cfg: bool(cfg.get("test_account"))),
}
LEVEL_FILTER = re.compile(r"^customer_client\.level\s*(<=|<|=|>=|>)\s*(\d+)$", re.I)


def _customer_clients(sb: Sandbox, version: str, customer: str, query: str, fields: list[str], mask: str, request_id: str) -> Response:
    def bad(code: str, message: str) -> Response:
        return _stream_error(version, 400, "INVALID_ARGUMENT", "Request contains an invalid argument.", {"queryError": code}, message)

    names = []
    for field in fields:
        resource, _, name = field.partition(".")
        if resource.lower() != "customer_client" or name.lower() not in CLIENT_FIELDS:
            return bad("UNRECOGNIZED_FIELD", f"Error in SELECT clause: unrecognized field '{field}'.")
        names.append(name.lower())
    where = re.search(r"\bWHERE\s+(.+?)\s*(?:ORDER\s+BY|LIMIT|$)", query, re.I | re.S)
    keep = lambda level: True  # noqa: E731
    if where:
        conditions = re.split(r"\s+AND\s+", where.group(1).strip(), flags=re.I)
        tests = []
        for condition in conditions:
            m = LEVEL_FILTER.match(condition.strip())
            if not m:
                return bad("UNRECOGNIZED_FIELD", f"sandbox: only customer_client.level can be filtered, got {condition[:60]!r}")
            op, bound = m.group(1), int(m.group(2))
            tests.append(
                {
                    "<=": lambda v, b=bound: v <= b,
                    "<": lambda v, b=bound: v < b,
                    "=": lambda v, b=bound: v == b,
                    ">=": lambda v, b=bound: v >= b,
                    ">": lambda v, b=bound: v > b,
                }[op]
            )
        keep = lambda level: all(t(level) for t in tests)  # noqa: E731
    rows = []
    for cid, level in descendants(sb, customer).items():
        config = sb.account("google", cid)
        if config is None or not keep(level):
            continue
        row: dict[str, object] = {"resourceName": f"customers/{customer}/customerClients/{cid}"}
        if "client_customer" in names:
            row["clientCustomer"] = f"customers/{cid}"
        for name in names:
            spec = CLIENT_FIELDS[name]
            if spec is None:
                continue
            key, value = spec[0], spec[1](cid, level, config)
            if value not in (False, "0"):  # proto3 JSON leaves out false and zero
                row[key] = value
        rows.append({"customerClient": row})
    batch = {"results": rows, "fieldMask": mask, "requestId": request_id, "queryResourceConsumption": str(len(rows))}
    if not rows:
        del batch["results"]
    return Response(200, [batch])
