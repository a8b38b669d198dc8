"""The sandbox's Meta Graph API for connecting: ``debug_token``, ``/me/adaccounts``, ``/me/businesses`` and a
business's ``owned_ad_accounts`` / ``client_ad_accounts``.

Shapes (Meta Graph API reference: "Debug-Token", "User › Ad Accounts",
"User › Businesses", "Business › Owned Ad Accounts" / "Client Ad Accounts"):

* ``GET /debug_token?input_token=T&access_token=APP_ID|APP_SECRET`` →
  ``{"data": {"app_id", "type": "USER" | "SYSTEM_USER", "application",
  "data_access_expires_at", "expires_at" (0 = never), "is_valid", "scopes",
  "user_id"}}``; an invalid token: ``is_valid: false`` plus
  ``"error": {"code": 190, "message", "subcode"}``. Besides the app token,
  the sandbox accepts the input token itself as ``access_token`` (Meta allows
  the app's developers to inspect their own tokens; the sandbox does not tell
  developers apart). Inspecting an invalid token with itself fails like any
  call made with it: a top-level 190 error.
* Edges answer ``{"data": [...], "paging": {"cursors": {"before", "after"},
  "next"}}`` (no ``next`` on the last page; 25 a page unless ``limit``). Ad
  accounts: ``id`` ("act_…"), ``account_id``, ``name``, ``account_status``
  (1 ACTIVE, 2 DISABLED, 3 UNSETTLED, 7 PENDING_RISK_REVIEW, 9 IN_GRACE_PERIOD,
  101 CLOSED, ...), ``currency``, ``timezone_name``; only requested fields
  besides ``id``. Businesses: ``id``, ``name``.
* Permissions: ad accounts need ``ads_read`` or ``ads_management``;
  businesses and their ad accounts need ``business_management``, else 403
  ``(#200) Requires business_management permission to manage the object``.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode

from .server import Request, Response, Sandbox

DEFAULT_SCOPES = ["ads_read", "read_insights"]
AD_ACCOUNT_FIELDS = {"id", "account_id", "name", "account_status", "currency", "timezone_name"}


def token_config(sb: Sandbox, token: str) -> dict:
    """The ``meta_tokens`` entry of a token, or of the token it was exchanged from."""
    seen = set()
    while token and token not in seen:
        seen.add(token)
        if token in sb.scenario["meta_tokens"]:
            return sb.scenario["meta_tokens"][token] or {}
        token = sb.meta_token_parent.get(token, "")
    return {}


def token_invalid(sb: Sandbox, token: str) -> bool:
    return token in sb.scenario["meta_revoked_tokens"] or token_config(sb, token).get("valid") is False


def token_scopes(sb: Sandbox, token: str) -> list[str]:
    """The permissions a token was granted (``meta_tokens`` entry, else ads_read and read_insights)."""
    return _scopes(token_config(sb, token))


def _scopes(config: dict) -> list[str]:
    return list(config.get("scopes", DEFAULT_SCOPES))


def _data_access_expires_at(sb: Sandbox, config: dict) -> int:
    """The token's own setting, else the scenario's ``meta_data_access_days`` from now, else 90 days (Meta's span)."""
    if "data_access_expires_at" in config:
        return int(config["data_access_expires_at"])
    days = sb.scenario.get("meta_data_access_days")
    return int(time.time() + float(days if days is not None else 90) * 86400)


def debug_token(sb: Sandbox, req: Request) -> Response:
    from .meta import error

    p = req.params
    token = p.get("input_token", "")
    app = f"{sb.scenario['meta_app_id']}|{sb.scenario['meta_app_secret']}"
    if p.get("access_token") == token and token:
        if token_invalid(sb, token):
            return error(
                400,
                190,
                "Error validating access token: The session has been invalidated because the user changed their password.",
                subcode=460,
            )
    elif p.get("access_token") != app:
        return error(400, 190, "Invalid OAuth access token - Cannot parse access token")
    config = token_config(sb, token)
    issued = sb.meta_tokens_issued.get(token)
    default_expiry = 0 if token.startswith("EAAsys") or config.get("type") == "SYSTEM_USER" else int(issued or time.time() + 50 * 86400)
    expires = int(config["expires_at"]) if "expires_at" in config and not issued else default_expiry
    data = {
        "app_id": sb.scenario["meta_app_id"],
        "type": config.get("type", "USER"),
        "application": "emsync sandbox",
        "data_access_expires_at": _data_access_expires_at(sb, config),
        "expires_at": expires,
        "is_valid": not token_invalid(sb, token),
        "scopes": _scopes(config),
        "user_id": str(config.get("user_id", "10000000000001")),
    }
    if issued:
        data["issued_at"] = int(issued - 5183944)
    if not data["is_valid"]:
        data["error"] = {
            "code": 190,
            "message": "Error validating access token: The session has been invalidated because the user "
            "changed their password or Facebook has changed the session for security reasons.",
            "subcode": 460,
        }
    return Response(200, {"data": data})


def route(sb: Sandbox, req: Request, rest: str) -> tuple[str, str | None, Response] | None:
    """Answer the connect-time edges, or None when ``rest`` is none of them."""
    if rest == "me/adaccounts":
        return "meta.adaccounts", None, _edge(sb, req, "adaccounts", None)
    if rest == "me/businesses":
        return "meta.businesses", None, _edge(sb, req, "businesses", None)
    head, _, edge = rest.partition("/")
    if head.isdigit() and edge in ("owned_ad_accounts", "client_ad_accounts"):
        return f"meta.{edge}", head, _edge(sb, req, edge, head)
    return None


def _edge(sb: Sandbox, req: Request, edge: str, business: str | None) -> Response:
    from .meta import caller_refused, error

    params = req.params
    token, refused = caller_refused(sb, req)
    if refused is not None:
        return refused
    config = token_config(sb, token)
    scopes = set(_scopes(config))
    if edge == "adaccounts" and not scopes & {"ads_read", "ads_management"}:
        return error(403, 200, "(#200) Ad account owner has NOT grant ads_management or ads_read permission")
    if edge != "adaccounts" and "business_management" not in scopes:
        return error(403, 200, "(#200) Requires business_management permission to manage the object")
    businesses = [str(b) for b in config.get("businesses") or []]
    if business is not None and business not in businesses:
        return error(
            400,
            100,
            f"Unsupported get request. Object with ID '{business}' does not exist, cannot be loaded due to missing "
            "permissions, or does not support this operation",
            subcode=33,
            kind="GraphMethodException",
        )
    fault = sb.take_listed_fault(
        ("meta_token", token),
        config.get("faults") or [],
        edge,
        ("server_error", "permission", "bad_cursor_loop"),
        default_endpoint="adaccounts",
    )
    if fault is not None and fault["kind"] == "server_error":
        return error(500, 2, "An unexpected error has occurred. Please retry your request later.", transient=True)
    if fault is not None and fault["kind"] == "permission":
        return error(403, 10, "(#10) Application does not have permission for this action")
    if edge == "businesses":
        items = [{"id": b, "name": (sb.scenario["meta_businesses"].get(b) or {}).get("name", f"Business {b}")} for b in businesses]
    else:
        if edge == "adaccounts":
            ids = config.get("accounts", sorted(sb.scenario["meta_accounts"]))
        else:
            ids = (sb.scenario["meta_businesses"].get(business) or {}).get("owned" if edge == "owned_ad_accounts" else "client") or []
        fields = {f for f in params.get("fields", "").split(",") if f} or {"id"}
        unknown = fields - AD_ACCOUNT_FIELDS
        if unknown:
            return error(
                400, 100, f"(#100) Tried accessing nonexisting field ({sorted(unknown)[0]}) on node type (AdAccount)", kind="OAuthException"
            )
        items = [_ad_account(sb, str(i), fields) for i in ids]
    return _page(req, items, limit_cap=int(sb.scenario["meta_max_limit"]), loop=fault is not None)


def _ad_account(sb: Sandbox, account_id: str, fields: set[str]) -> dict:
    config = sb.account("meta", account_id) or {}
    full = {
        "account_id": account_id,
        "name": config.get("name"),
        "account_status": int(config.get("account_status", 1)),
        "currency": config.get("currency"),
        "timezone_name": config.get("timezone"),
    }
    return {"id": f"act_{account_id}", **{k: v for k, v in full.items() if k in fields}}


def _page(req: Request, items: list[dict], *, limit_cap: int, loop: bool) -> Response:
    from .meta import _cursor, _encode

    try:
        limit = max(1, min(int(req.params.get("limit", 25)), limit_cap))
    except ValueError:
        limit = 25
    _, offset = _cursor(req.params.get("after"))
    rows = items[offset : offset + limit]
    body: dict = {"data": rows}
    if rows:
        body["paging"] = {"cursors": {"before": _encode(0, offset), "after": _encode(0, offset + len(rows))}}
        following = offset if loop else offset + limit  # a buggy server handing out the same cursor again
        if loop or following < len(items):
            query = {k: v for k, v in req.query.items() if k != "after"}
            query.update(limit=str(limit), after=_encode(0, following))
            body["paging"]["next"] = f"{req.base_url}{req.path}?{urlencode(query)}"
    return Response(200, body)
