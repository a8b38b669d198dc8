"""The sandbox's Google Ads REST API (searchStream over GAQL) and Google's OAuth token endpoint."""

from __future__ import annotations

import json
import re
import time
from datetime import date, timedelta

from .data import day_stats
from .server import Request, Response, Sandbox, apply_common_faults, new_id, raw_response

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


def _token_revoked(version: str) -> Response:
    return _stream_error(
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


def token(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    p = req.params
    s = sb.scenario
    fault = sb.take_endpoint_fault("google.token", ("server_error", "raw"))
    if fault is not None:  # e.g. a 401 HTML page from a proxy, a 503
        answer = raw_response(fault) if fault["kind"] == "raw" else Response(503, {"error": "backend_error"})
        return "google.token", None, answer
    if p.get("client_id") != s["google_client_id"] or p.get("client_secret") != s["google_client_secret"]:
        return "google.token", None, Response(401, {"error": "invalid_client", "error_description": "The OAuth client was not found."})
    if p.get("grant_type") != "refresh_token":
        return "google.token", None, Response(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type: "})
    refresh = p.get("refresh_token", "")
    if not refresh or refresh in s["revoked_refresh_tokens"]:
        return "google.token", None, Response(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    access = "ya29.a0sandbox" + new_id() + new_id()
    ttl = int(s["google_token_ttl"])
    sb.google_access_tokens[access] = time.time() + ttl
    sb.google_token_owner[access] = refresh
    return (
        "google.token",
        None,
        Response(
            200, {"access_token": access, "expires_in": ttl, "scope": "https://www.googleapis.com/auth/adwords", "token_type": "Bearer"}
        ),
    )


def search_stream(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    m = re.fullmatch(r"/(v\d+)/customers/(\d+)/googleAds:searchStream", req.path)
    if not m or req.method != "POST":
        return "google.unknown", None, Response(404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}})
    version, customer = m.groups()
    return "google.search_stream", customer, _search(sb, req, version, customer)


def _search(sb: Sandbox, req: Request, version: str, customer: str) -> Response:
    auth = req.headers.get("authorization", "")
    access = auth[7:] if auth.startswith("Bearer ") else ""
    expires = sb.google_access_tokens.get(access)
    if sb.google_token_owner.get(access) in sb.scenario["revoked_refresh_tokens"]:
        # revoking a refresh token revokes the access tokens issued from it
        return _token_revoked(version)
    if expires is None or expires < time.time():
        reason = "OAUTH_TOKEN_EXPIRED" if expires is not None else "OAUTH_TOKEN_INVALID"
        return _stream_error(
            version,
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            {"authenticationError": reason},
            "Oauth token is expired." if expires else "Oauth token is invalid.",
        )
    account = sb.account("google", customer)
    manager = account.get("manager") if account else None
    if account is None or (manager and req.headers.get("login-customer-id") != manager):
        return _stream_error(
            version,
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            {"authorizationError": "USER_PERMISSION_DENIED"},
            PERMISSION_MESSAGE,
        )
    common = apply_common_faults(sb, "google", customer, "search_stream")
    if common is not None:
        return common
    fault = sb.take_fault(
        "google",
        customer,
        "search_stream",
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
    try:
        query = json.loads(req.body or b"{}").get("query", "")
    except ValueError:
        return Response(400, {"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}})
    return _answer(sb, version, customer, account, query)


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
        return _quota_error(
            version,
            "RESOURCE_EXHAUSTED",
            "Number of operations for basic access has been exceeded.",
            "DEVELOPER",
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
        return _token_revoked(version)
    if kind == "permission_denied":
        return _stream_error(
            version,
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            {"authorizationError": "USER_PERMISSION_DENIED"},
            PERMISSION_MESSAGE,
        )
    if kind == "not_enabled":
        return _stream_error(
            version,
            403,
            "PERMISSION_DENIED",
            "The caller does not have permission",
            {"authorizationError": "CUSTOMER_NOT_ENABLED"},
            "The customer account can't be accessed because it is not yet enabled or has been deactivated.",
        )
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
