"""The sandbox's Meta Graph API: insights (sync and async), ad account, token exchange.

``debug_token`` and the edges used to discover ad accounts live in ``meta_discovery``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from datetime import date, timedelta
from urllib.parse import urlencode

from .data import day_stats, months_before
from .meta_discovery import token_invalid, token_scopes
from .meta_query import action as _action
from .meta_query import attributed as _attributed
from .meta_query import attribution_asked as _attribution_asked
from .server import Request, Response, Sandbox, apply_common_faults, new_id, raw_response

VERSION = re.compile(r"^/(v\d+(?:\.\d+)?)/(.+)$")
INSIGHT_FIELDS = {
    "campaign_id",
    "campaign_name",
    "spend",
    "impressions",
    "clicks",
    "inline_link_clicks",
    "actions",
    "action_values",
    "account_currency",
    "account_id",
    "account_name",
    "date_start",
    "date_stop",
    "ctr",
    "cpc",
    "reach",
    "frequency",
}
PURCHASE_TYPES = ("omni_purchase", "purchase", "offsite_conversion.fb_pixel_purchase")
# What campaign.effective_status accepts in `filtering`; any other value fails the query (100/1487561).
CAMPAIGN_STATUSES = {"ACTIVE", "PAUSED", "DELETED", "ARCHIVED", "IN_PROCESS", "WITH_ISSUES"}
RETENTION_MONTHS = 37  # Insights API: "The start date of the time range cannot be beyond 37 months from the current date"


def error(
    status: int,
    code: int,
    message: str,
    *,
    kind: str = "OAuthException",
    subcode: int | None = None,
    transient: bool | None = None,
    headers: dict | None = None,
) -> Response:
    body = {"message": message, "type": kind, "code": code}
    if subcode is not None:
        body["error_subcode"] = subcode
    if transient is not None:
        body["is_transient"] = transient
    body["fbtrace_id"] = "A" + new_id()[:15]
    return Response(status, {"error": body}, headers=headers or {})


def _usage_headers(account_id: str, pct: float, eta_minutes: int = 0) -> dict[str, str]:
    buc = {
        account_id: [
            {
                "type": "ads_insights",
                "call_count": pct,
                "total_cputime": max(pct - 3, 0),
                "total_time": max(pct - 1, 0),
                "estimated_time_to_regain_access": eta_minutes,
                "ads_api_access_tier": "standard_access",
            }
        ]
    }
    acc = {"acc_id_util_pct": pct, "reset_time_duration": eta_minutes * 60, "ads_api_access_tier": "standard_access"}
    return {"X-Business-Use-Case-Usage": json.dumps(buc), "X-Ad-Account-Usage": json.dumps(acc)}


def route(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    from . import meta_discovery

    if req.path.rstrip("/") == "/debug_token":
        return "meta.debug_token", None, _endpoint_fault(sb, "meta.debug_token") or meta_discovery.debug_token(sb, req)
    match = VERSION.match(req.path)
    if not match:
        return "meta.unknown", None, error(400, 2500, "Unknown path components: " + req.path[:60])
    rest = match.group(2).rstrip("/")
    if rest == "debug_token":
        return "meta.debug_token", None, _endpoint_fault(sb, "meta.debug_token") or meta_discovery.debug_token(sb, req)
    if rest == "oauth/access_token":
        return "meta.token_exchange", None, _endpoint_fault(sb, "meta.token_exchange") or exchange(sb, req)
    discovered = meta_discovery.route(sb, req, rest)
    if discovered is not None:
        return discovered
    m = re.fullmatch(r"act_(\d+)(/insights)?", rest)
    if m:
        account_id = m.group(1)
        if m.group(2):
            kind = "meta.report_start" if req.method == "POST" else "meta.insights"
            return kind, account_id, _guarded(sb, req, account_id, "insights", lambda acc: insights(sb, req, account_id, acc))
        return "meta.account", account_id, _guarded(sb, req, account_id, "account", lambda acc: ad_account(req, account_id, acc))
    m = re.fullmatch(r"(\d+)(/insights)?", rest)
    if m and m.group(1) in sb.report_runs:
        run = sb.report_runs[m.group(1)]
        if m.group(2):
            return (
                "meta.report_insights",
                run["account"],
                _guarded(sb, req, run["account"], "report_insights", lambda acc: report_results(sb, req, run, acc)),
            )
        return (
            "meta.report_status",
            run["account"],
            _guarded(sb, req, run["account"], "report_status", lambda acc: report_status(sb, req, run)),
        )
    return (
        "meta.unknown",
        None,
        error(
            400,
            100,
            f"Unsupported get request. Object with ID '{rest[:40]}' does not exist, "
            "cannot be loaded due to missing permissions, or does not support this operation",
            subcode=33,
            kind="GraphMethodException",
        ),
    )


def _endpoint_fault(sb: Sandbox, endpoint: str) -> Response | None:
    """Faults of the app-level endpoints (token exchange, debug_token): ``server_error``, ``rate_limit``, ``raw``."""
    fault = sb.take_endpoint_fault(endpoint, ("server_error", "rate_limit", "raw"))
    if fault is None:
        return None
    if fault["kind"] == "raw":
        return raw_response(fault)
    if fault["kind"] == "rate_limit":
        return error(400, int(fault.get("code", 4)), "Application request limit reached")
    return error(500, 2, "An unexpected error has occurred. Please retry your request later.", transient=True)


def caller_refused(sb: Sandbox, req: Request) -> tuple[str, Response | None]:
    """The request's access token (query or Bearer) and Meta's refusal when it is missing, invalid or its proof is wrong."""
    token = req.params.get("access_token") or _bearer(req) or ""
    if not token:
        return token, error(400, 104, "An access token is required to request this resource.")
    if token_invalid(sb, token):
        return token, error(
            400,
            190,
            "Error validating access token: The session has been invalidated because the user changed their password.",
            subcode=460,
        )
    proof = req.params.get("appsecret_proof")
    if proof is not None:
        expected = hmac.new(sb.scenario["meta_app_secret"].encode(), token.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(proof, expected):
            return token, error(400, 100, "Invalid appsecret_proof provided in the API argument", kind="GraphMethodException")
    return token, None


def _guarded(sb: Sandbox, req: Request, account_id: str, endpoint: str, answer) -> Response:
    """Token, proof, account and fault checks shared by every account endpoint, then ``answer``."""
    params = req.params
    token, refused = caller_refused(sb, req)
    if refused is not None:
        return refused
    if not set(token_scopes(sb, token)) & {"ads_read", "ads_management"}:
        return error(403, 200, "(#200) Ad account owner has NOT grant ads_management or ads_read permission")
    account = sb.account("meta", account_id)
    if account is None:
        return error(
            400,
            100,
            f"Unsupported get request. Object with ID 'act_{account_id}' does not exist, cannot be loaded due to "
            "missing permissions, or does not support this operation",
            subcode=33,
            kind="GraphMethodException",
        )
    page = int(_cursor(params.get("after"))[1]) // max(_limit(params, sb), 1) + 1 if params.get("after") else 1
    common = apply_common_faults(sb, "meta", account_id, endpoint, page=page)
    if common is not None:
        return common
    fault = sb.take_fault(
        "meta",
        account_id,
        endpoint,
        ("token_expired", "token_revoked", "rate_limit", "permission", "server_error", "page_error", "version_deprecated", "report_lag"),
        page=page,
    )
    if fault is not None:
        kind = fault["kind"]
        if kind == "version_deprecated":
            wanted = fault.get("wanted", "v26.0")
            return error(
                400, 2635, f"(#2635) You are calling a deprecated version of the Ads API. Please update to the latest version: {wanted}."
            )
        if kind == "report_lag":
            return error(
                400,
                100,
                f"Unsupported get request. Object with ID '{req.path.split('/')[2]}' does not exist, cannot be loaded due to "
                "missing permissions, or does not support this operation",
                subcode=33,
                kind="GraphMethodException",
            )
        if kind == "token_expired":
            return error(400, 190, "Error validating access token: Session has expired on Sunday, 22-Nov-26 01:00:00 PST.", subcode=463)
        if kind == "token_revoked":
            return error(400, 190, "Error validating access token: The user has not authorized application.", subcode=458)
        if kind == "rate_limit":
            code = int(fault.get("code", 17))
            eta = int(fault.get("eta_minutes", 0))
            message = {4: "Application request limit reached", 17: "User request limit reached", 613: "Calls within one hour exceeded"}.get(
                code, "There have been too many calls from this ad-account. Wait a bit and try again."
            )
            return error(400, code, message, subcode=2446079 if code >= 80000 else None, headers=_usage_headers(account_id, 100, eta))
        if kind == "permission":
            return error(400, 200, "(#200) Ad account owner has NOT grant ads_management or ads_read permission", kind="OAuthException")
        if kind in ("server_error", "page_error"):
            return error(500, 2, "An unexpected error has occurred. Please retry your request later.", transient=True)
    response = answer(account)
    if response.status == 200:
        calls = sb.next_call("meta", account_id, "usage")
        high = sb.take_fault("meta", account_id, endpoint, ("usage_high",))
        pct = float(high.get("pct", 95)) if high else float(min(5 + calls, 60))
        response.headers.update(_usage_headers(account_id, pct))
        legacy = sb.take_fault("meta", account_id, endpoint, ("legacy_throttle",))
        if legacy:  # only the older header says the app is near its limit
            throttle = {"app_id_util_pct": float(legacy.get("pct", 96)), "acc_id_util_pct": 5.0, "ads_api_access_tier": "standard_access"}
            response.headers["x-fb-ads-insights-throttle"] = json.dumps(throttle)
    return response


def _bearer(req: Request) -> str | None:
    auth = req.headers.get("authorization", "")
    return auth.split(None, 1)[1] if auth.lower().startswith(("bearer ", "oauth ")) else None


def _limit(params: dict, sb: Sandbox) -> int:
    try:
        return max(1, min(int(params.get("limit", 25)), sb.scenario["meta_max_limit"]))
    except ValueError:
        return 25


def _cursor(after: str | None) -> tuple[int, int]:
    """(version, offset) from an ``after`` cursor."""
    if not after:
        return 0, 0
    try:
        version, offset = base64.urlsafe_b64decode(after.encode() + b"==").decode().split(":")
        return int(version), int(offset)
    except ValueError:
        return 0, 0


def _encode(version: int, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{version}:{offset}".encode()).decode().rstrip("=")


def _query_error(params: dict) -> Response | None:
    fields = [f for f in params.get("fields", "").split(",") if f]
    unknown = [f for f in fields if f not in INSIGHT_FIELDS]
    if unknown:
        return error(400, 100, f"(#100) {unknown[0]} is not valid for fields param.", kind="OAuthException")
    if params.get("level", "campaign") not in ("campaign", "account", "adset", "ad"):
        return error(400, 100, "(#100) param level must be one of {ad, adset, campaign, account}")
    return None


def _range(params: dict, today: date) -> tuple[date, date] | Response:
    """The query's ``time_range``, or Meta's error for a malformed one or one older than 37 months (code 3018)."""
    try:
        spec = json.loads(params.get("time_range", ""))
        since, until = date.fromisoformat(spec["since"]), date.fromisoformat(spec["until"])
    except (ValueError, KeyError, TypeError):
        return error(400, 100, "(#100) Must be a valid json object with since and until fields: time_range")
    if since > until:
        return error(400, 100, "(#100) Invalid time range: since must be before until")
    if since < months_before(today, RETENTION_MONTHS):
        return error(400, 3018, "(#3018) The start date of the time range cannot be beyond 37 months from the current date")
    return since, until


def _statuses_asked(params: dict) -> set[str] | Response:
    """The campaign.effective_status values a query's ``filtering`` asks for (none: the default, which leaves out
    deleted and archived campaigns); an invalid value is Meta's error 100/1487561."""
    raw = params.get("filtering")
    if not raw:
        return set()
    try:
        rules = json.loads(raw)
    except ValueError:
        return error(400, 100, "(#100) param filtering must be an array.")
    asked: set[str] = set()
    for rule in rules if isinstance(rules, list) else []:
        if isinstance(rule, dict) and rule.get("field") == "campaign.effective_status":
            value = rule.get("value")
            values: list = value if isinstance(value, list) else []
            bad = [v for v in values if v not in CAMPAIGN_STATUSES]
            if bad:
                return error(
                    400,
                    100,
                    f"(#100) Filtering field campaign.effective_status with operation in with value {bad[0]} not supported",
                    subcode=1487561,
                )
            asked.update(values)
    return asked


def insights(sb: Sandbox, req: Request, account_id: str, account: dict) -> Response:
    params = req.params
    problem = _query_error(params)
    if problem:
        return problem
    asked = _statuses_asked(params)
    if isinstance(asked, Response):
        return asked
    if req.method == "POST":
        return start_report(sb, req, account_id, account)
    span = _range(params, sb.today(account["timezone"]))
    if isinstance(span, Response):
        return span
    if params.get("time_increment") != "1":
        return error(400, 100, "(#100) emsync sandbox only serves time_increment=1")
    if not params.get("after"):
        sb.wait_if_held(span[0])
    if sb.take_fault("meta", account_id, "insights", ("reduce_data",)) or _too_much(sb, account_id, account, span):
        return error(500, 1, "Please reduce the amount of data you're asking for, then retry your request")
    return _page(sb, req, account_id, account, params, span)


def _too_much(sb: Sandbox, account_id: str, account: dict, span: tuple[date, date]) -> bool:
    """A synchronous query over more rows than the account's ``max_sync_rows``: a large account's long range."""
    limit = account.get("max_sync_rows")
    if limit is None:
        return False
    today = sb.today(account["timezone"])
    return len(day_stats(sb.scenario["seed"], "meta", account_id, int(account["campaigns"]), span[0], span[1], today=today)) > int(limit)


def _page(sb: Sandbox, req: Request, account_id: str, account: dict, params: dict, span: tuple[date, date]) -> Response:
    version, offset = _cursor(params.get("after"))
    if not params.get("after") and account.get("restate"):
        version = sb.next_call("meta", account_id, "restate")
    limit = _limit(params, sb)
    today = sb.today(account["timezone"])
    stats = day_stats(sb.scenario["seed"], "meta", account_id, int(account["campaigns"]), span[0], span[1], today=today, version=version)
    asked = _statuses_asked(params)
    hidden = {cid for cid, state in (account.get("campaign_states") or {}).items() if state in ("DELETED", "ARCHIVED")}
    if hidden:  # left out of account-level insights unless the query asks for their status
        states = account["campaign_states"]
        stats = [s for s in stats if s.campaign_id not in hidden or (isinstance(asked, set) and states[s.campaign_id] in asked)]
    fields = [f for f in params.get("fields", "").split(",") if f] or ["spend", "impressions"]
    attribution = _attribution_asked(params)
    page = stats[offset : offset + limit]
    if not page and offset and stats and sb.take_fault("meta", account_id, "insights", ("endless_pages",)):
        page = stats[-limit:]  # a buggy chain: the last rows again, under ever new cursors
    rows = [_row(s, fields, account, account_id, attribution) for s in page]
    if offset == 0 and sb.take_fault("meta", account_id, "insights", ("multi_day_row",)) and stats:
        rows.append(
            {
                **_row(stats[0], fields, account, account_id, attribution),
                "date_start": span[0].isoformat(),
                "date_stop": span[1].isoformat(),
            }
        )
    if offset == 0 and sb.take_fault("meta", account_id, "insights", ("row_outside_window",)) and stats:
        early = (span[0] - timedelta(days=5)).isoformat()
        rows.append({**_row(stats[0], fields, account, account_id, attribution), "date_start": early, "date_stop": early})
    body: dict = {"data": rows}
    if not rows and offset and sb.take_fault("meta", account_id, "insights", ("empty_pages",)):
        # a buggy chain: empty pages whose next link never goes away
        query = {k: v for k, v in req.query.items() if k != "after"}
        query["after"] = _encode(version, offset + limit)
        body["paging"] = {
            "cursors": {"before": _encode(version, offset), "after": query["after"]},
            "next": f"{req.base_url}{req.path}?{urlencode(query)}",
        }
    if rows:
        body["paging"] = {"cursors": {"before": _encode(version, offset), "after": _encode(version, offset + len(rows))}}
        more = offset + limit < len(stats)
        if not more and sb.take_fault("meta", account_id, "insights", ("empty_pages", "endless_pages")):
            more = True  # the last page with rows still links to a next one
        if sb.take_fault("meta", account_id, "insights", ("bad_cursor_loop",)):
            more, offset, limit = True, offset - limit, limit  # a buggy server repeating its cursor
        if more:
            query = {k: v for k, v in req.query.items() if k != "after"}
            query.setdefault("limit", str(limit))
            query["after"] = _encode(version, offset + limit)
            body["paging"]["next"] = f"{req.base_url}{req.path}?{urlencode(query)}"
    return Response(200, body)


def _row(s, fields: list[str], account: dict, account_id: str = "", attribution: tuple[str, ...] | str = "default") -> dict:
    style = account.get("conversions", "standard")
    row: dict = {}
    if "account_id" in fields:
        row["account_id"] = account_id
    if "account_name" in fields:
        row["account_name"] = account["name"]
    if "campaign_id" in fields:
        row["campaign_id"] = s.campaign_id
    if "campaign_name" in fields:
        row["campaign_name"] = (account.get("campaign_names") or {}).get(s.campaign_id, s.campaign_name)
    if "account_currency" in fields:
        row["account_currency"] = account["currency"]
    if "spend" in fields:
        row["spend"] = f"{s.spend_cents / 100:.2f}"
    if "impressions" in fields:
        row["impressions"] = str(s.impressions)
    if "clicks" in fields and s.clicks:
        row["clicks"] = str(s.clicks)
    if "inline_link_clicks" in fields and s.clicks * 3 // 4:
        row["inline_link_clicks"] = str(s.clicks * 3 // 4)  # link clicks: a part of all clicks
    actions, values = [], []
    if s.clicks:
        actions.append({"action_type": "link_click", "value": str(s.clicks)})
        actions.append({"action_type": "landing_page_view", "value": str(s.clicks * 4 // 5)})
    if s.purchases and style != "none":
        types = ("offsite_conversion.fb_pixel_purchase",) if style == "pixel_only" else PURCHASE_TYPES
        counts = _attributed(s.purchases, account)
        cents_each = s.purchase_value_cents / s.purchases
        for t in types:
            actions.append(_action(t, s.purchases, counts, attribution, str))
            values.append(_action(t, s.purchases, counts, attribution, lambda n, each=cents_each: f"{n * each / 100:.2f}"))
    if "actions" in fields and actions:
        row["actions"] = actions
    if "action_values" in fields and values:
        row["action_values"] = values
    row["date_start"] = row["date_stop"] = s.day.isoformat()
    return row


def ad_account(req: Request, account_id: str, account: dict) -> Response:
    fields = [f for f in req.params.get("fields", "").split(",") if f]
    state = int(account.get("account_status", 1))  # 2 disabled, 101 closed, 3/7/8/9/100 other states
    full = {"currency": account["currency"], "timezone_name": account["timezone"], "name": account["name"], "account_status": state}
    body = {k: v for k, v in full.items() if k in fields}
    body["id"] = f"act_{account_id}"
    return Response(200, body)


def start_report(sb: Sandbox, req: Request, account_id: str, account: dict) -> Response:
    span = _range(req.params, sb.today(account["timezone"]))
    if isinstance(span, Response):
        return span
    sb.wait_if_held(span[0])
    run_id = str(6_000_000_000_000 + len(sb.report_runs) * 7919 + int(time.time()) % 1000)
    sb.report_runs[run_id] = {
        "id": run_id,
        "account": account_id,
        "params": dict(req.params),
        "span": span,
        "polls": 0,
        "needed": int(sb.scenario["async_polls"]),
    }
    return Response(200, {"report_run_id": run_id})


def report_status(sb: Sandbox, req: Request, run: dict) -> Response:
    run["polls"] += 1
    done = run["polls"] > run["needed"]
    if done and not run.get("judged"):
        run["judged"] = True
        run["failed"] = sb.take_fault("meta", run["account"], "report_status", ("report_failed",)) is not None
    if run.get("failed"):
        # v25.0+: the reason fields; a query naming its fields gets only those it names
        asked = set(req.params.get("fields", "").split(","))
        reason = {
            "error_code": -2,
            "error_subcode": 2490547,
            "error_message": "Report Failed",
            "error_user_title": "Report failed",
            "error_user_msg": "The report could not be generated. Try again later.",
        }
        body = {"id": run["id"], "async_status": "Job Failed", "async_percent_completion": 0}
        body.update({k: v for k, v in reason.items() if k in asked or not req.params.get("fields")})
        return Response(200, body)
    return Response(
        200,
        {
            "id": run["id"],
            "account_id": run["account"],
            "async_status": "Job Completed" if done else ("Job Not Started" if run["polls"] == 1 else "Job Running"),
            "async_percent_completion": 100 if done else min(99, 40 * run["polls"]),
            "date_start": run["span"][0].isoformat(),
            "date_stop": run["span"][1].isoformat(),
        },
    )


def report_results(sb: Sandbox, req: Request, run: dict, account: dict) -> Response:
    if run["polls"] <= run["needed"]:
        return error(400, 100, "(#100) The report is not ready yet", kind="GraphMethodException")
    params = {**run["params"], **{k: v for k, v in req.params.items() if k in ("after", "limit")}}
    return _page(sb, req, run["account"], account, params, run["span"])


def exchange(sb: Sandbox, req: Request) -> Response:
    p = req.params
    if p.get("grant_type") != "fb_exchange_token":
        return error(400, 100, "(#100) Invalid grant_type")
    if p.get("client_id") != sb.scenario["meta_app_id"] or p.get("client_secret") != sb.scenario["meta_app_secret"]:
        return error(400, 1, "Error validating client secret.")
    old = p.get("fb_exchange_token", "")
    if not old or token_invalid(sb, old):
        return error(400, 190, "Error validating access token: The session has been invalidated.", subcode=460)
    token = "EAAS" + new_id() + new_id()
    sb.meta_tokens_issued[token] = time.time() + 5183944
    sb.meta_token_parent[token] = old  # the long-lived token belongs to the same user, with the same permissions
    return Response(200, {"access_token": token, "token_type": "bearer", "expires_in": 5183944})
