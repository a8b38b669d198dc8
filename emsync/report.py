"""`emsync status`: what was synced when, what failed and why — as data; rendering lives in render.py."""

from __future__ import annotations

import socket
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple

from . import budget, campaign_rows, ledger, runs, store
from .backfill import chunks
from .config import Settings
from .db import describe_url
from .domain import account_label
from .errors import short_message

TOKEN_WARNING = timedelta(days=7)


def integration_json(row: dict) -> dict:
    """The public shape of an integration (never a token)."""
    return {
        "id": row["id"],
        "email": row["email"],
        "platform": row["platform"],
        "account_id": row["account_id"],
        "account": account_label(row["platform"], row["account_id"]),
        "account_name": row.get("account_name"),
        "login_customer_id": row.get("login_customer_id"),
        "is_active": bool(row["is_active"]),
        "status": row["status"],
        "last_synced_at": row["last_synced_at"],
        "last_full_sync_at": row.get("last_full_sync_at"),
        "last_error": row["last_error"],
        "rate_limited_until": row.get("rate_limited_until"),
        "next_attempt_at": row.get("next_attempt_at"),
        "last_warning": row.get("last_warning"),
        "last_warning_at": row.get("last_warning_at"),
        "token_expires_at": row["token_expires_at"],
        "data_access_expires_at": row.get("data_access_expires_at"),
        "currency": row.get("currency"),
        "time_zone": row.get("time_zone"),
        "created_at": row.get("created_at"),
        "credential_id": row.get("credential_id"),
    }


def _run_json(run: dict, now: datetime, host: str) -> dict:
    state = run["status"]
    if state == "running" and runs.looks_dead(run, host, now):
        state = "died"
    finished = run["finished_at"]
    return {
        "id": run["id"],
        "trigger": run["trigger"],
        "host": run["host"],
        "pid": run["pid"],
        "scope": run["scope"],
        "full": bool(run["full_window"]),
        "started_at": run["started_at"],
        "finished_at": finished,
        "status": state,
        "duration_s": round((finished - run["started_at"]).total_seconds(), 3) if finished else None,
        "integrations": run["integrations_total"],
        "succeeded": run["succeeded"],
        "failed": run["failed"],
        "skipped": run["skipped"],
        "rows": run["rows"],
    }


def build_status(conn, settings: Settings, *, now: datetime | None = None, rows_in_window: bool = True) -> dict:
    """Everything ``emsync status`` shows (``--json`` prints it as it is). ``rows_in_window=False`` leaves each
    integration's ``rows_in_window`` out (``add_rows_in_window`` adds it for the ones a summary lists)."""
    now = now or datetime.now(UTC)
    rows = store.list_integrations(conn)
    in_window = campaign_rows.rows_since(conn, window_start(settings, now)) if rows_in_window else None
    integrations = []
    warnings = []
    for row in rows:
        item = integration_json(row)
        if in_window is not None:
            item["rows_in_window"] = in_window.get(row["id"], 0)
        expires = row["token_expires_at"]
        item["token_expires_soon"] = bool(expires and expires - now < TOKEN_WARNING)
        access = row.get("data_access_expires_at")
        item["data_access_expires_soon"] = bool(access and access - now < TOKEN_WARNING)
        who = f"integration {row['id']} ({row['email']}, {item['account']})"
        if row["is_active"] and item["token_expires_soon"]:
            verb = "expired" if expires <= now else "expires"
            warnings.append(f"{who}: Meta token {verb} {expires:%Y-%m-%d %H:%M} UTC")
        if row["is_active"] and access is not None and item["data_access_expires_soon"]:
            verb = "lost" if access <= now else "loses"
            warnings.append(
                f"{who}: the Meta token {verb} data access {access:%Y-%m-%d %H:%M} UTC (the user must log in to the app again, "
                "or reconnect the account)"
            )
        if row["is_active"] and item["next_attempt_at"] and row["status"] == "error":
            warnings.append(f"{who}: account closed or disabled upstream; next attempt {item['next_attempt_at']:%Y-%m-%d %H:%M} UTC")
        if row["is_active"] and item["last_warning"]:
            warnings.append(f"{who}: {item['last_warning']}")
        integrations.append(item)
    recent = [_run_json(r, now, socket.gethostname()) for r in runs.recent_runs(conn, 10)]
    google = _google_operations(conn, settings, rows, now, warnings)
    by_id = {row["id"]: row for row in rows}
    backfills = [_backfill_json(b, by_id[b["integration_id"]], now) for b in chunks.progress_rows(conn) if b["integration_id"] in by_id]
    return {
        "database": describe_url(settings.database_url),
        "generated_at": now,
        "integrations": integrations,
        "last_run": recent[0] if recent else None,
        "runs": recent,
        "google_operations": google,
        "backfills": backfills,
        "warnings": warnings,
    }


def window_start(settings: Settings, now: datetime) -> date:
    """The first day a sync's window covers (EMSYNC_LOOKBACK_DAYS back from ``now``)."""
    return now.date() - timedelta(days=settings.lookback_days)


def add_rows_in_window(conn, settings: Settings, report: dict, items: list[dict]) -> None:
    """Fill ``rows_in_window`` on ``items`` (some of ``report["integrations"]``), counting only their rows."""
    counts = campaign_rows.rows_since(conn, window_start(settings, report["generated_at"]), [i["id"] for i in items])
    for item in items:
        item["rows_in_window"] = counts.get(item["id"], 0)


class Problem(NamedTuple):
    """One thing ``status --check`` reports: ``level`` "critical" or "warning" (see ``check_problems``), and a
    sentence naming the integration or the setting concerned."""

    level: str
    text: str


def _google_operations(conn, settings: Settings, rows: list[dict], now: datetime, warnings: list[str]) -> dict:
    """The Google Ads budget (``budget``) and today's usage from the ledger, with warnings when the schedule cannot fit."""
    plan = budget.google_budget(settings, sum(1 for r in rows if r["platform"] == "google" and r["is_active"]))
    today = ledger.usage(conn, now)
    if plan.spread:
        warnings.append(
            f"{plan.customers} active Google integrations × {budget.RUNS_PER_DAY} runs a day = {plan.needs} operations, over the "
            f"{plan.regular} GOOGLE_ADS_DAILY_OPERATIONS leaves for regular runs: each is {plan.cadence} "
            f"(every {plan.interval.total_seconds() / 60:.0f} minutes)"
        )
    if plan.customers and plan.regular < plan.customers:
        warnings.append(f"{plan.regular} operations a day cannot sync {plan.customers} Google integrations even once: raise the quota")
    if today["exhausted_until"] is not None:
        warnings.append(
            f"Google Ads operations for today are used up; Google integrations wait until {today['exhausted_until']:%Y-%m-%d %H:%M %Z}"
        )
    return {**plan.as_dict(), "today": today}


def _backfill_json(row: dict, integration: dict, now: datetime) -> dict:
    state = row["status"]
    owner = {"host": row["host"], "pid": row["pid"], "heartbeat_at": row["updated_at"]}
    if state == "running" and row["pid"] is not None and runs.looks_dead(owner, socket.gethostname(), now):
        state = "died"
    return {
        "id": row["integration_id"],
        "platform": integration["platform"],
        "email": integration["email"],
        "account": account_label(integration["platform"], integration["account_id"]),
        "since": row["since"],
        "until": row["until"],
        "status": state,
        "chunks_done": row["chunks_done"],
        "chunks_total": row["chunks_total"],
        "next_chunk": None if row["next_since"] is None else {"since": row["next_since"], "until": row["next_until"]},
        "rows": row["rows"],
        "requests": row["requests"],
        "operations": row["operations"],
        "resume_after": row["resume_after"],
        "last_error": row["last_error"],
        "updated_at": row["updated_at"],
    }


def undecryptable_credentials(conn, settings: Settings, credential_ids: set[int]) -> list[int]:
    """The credentials among ``credential_ids`` holding a token the configured key cannot decrypt (all of them that
    hold tokens when no key is set), in id order: each stored token is tried (``keys.key_report``), not one sample."""
    from .crypto import TokenBox
    from .keys import key_report

    if not settings.secret_key:
        return sorted({key for table, _c, key, _b in store.encrypted_tokens(conn) if table == "credentials" and key in credential_ids})
    report = key_report(conn, TokenBox(settings.secret_key))
    return sorted({u.credential_id for u in report.unreadable if u.credential_id in credential_ids})


def check_problems(
    report: dict, settings: Settings, *, now: datetime | None = None, undecryptable: list[int] | tuple[int, ...] = ()
) -> list[Problem]:
    """What ``status --check`` reports, critical problems first (monitoring-plugin levels).

    Critical: an active integration failing (``error``), ``needs_reauth``, ``rate_limited`` beyond the next run,
    stale beyond twice its threshold, an expired token, a credential in ``undecryptable``. Warning: stale beyond its
    threshold, rate-limited until before the next run, a token expiring within 7 days, an account closed upstream
    (backing off to a daily attempt), a sync that warned, a Google budget that cannot fit.

    An integration's staleness threshold is EMSYNC_STALE_AFTER_MINUTES; while Google integrations take turns
    (``budget``), a Google one's is its effective interval plus that.
    """
    now = now or datetime.now(UTC)
    problems = []
    for item in report["integrations"]:
        if not item["is_active"]:
            continue
        who = f"integration {item['id']} ({item['platform']} {item['account']}, {item['email']})"
        problems.extend(_integration_problems(item, who, report, settings, now))
    for credential_id in undecryptable:
        users = [str(i["id"]) for i in report["integrations"] if i["is_active"] and i.get("credential_id") == credential_id]
        key = "EMSYNC_SECRET_KEY cannot decrypt" if settings.secret_key else "EMSYNC_SECRET_KEY is not set, so emsync cannot decrypt"
        problems.append(
            Problem(
                "critical",
                f"{key} the tokens of credential {credential_id} (integrations {', '.join(users)}): "
                "restore the key they were stored with, or reconnect the login",
            )
        )
    problems.extend(Problem("warning", text) for text in _budget_warnings(report, settings))
    return sorted(problems, key=lambda p: p.level != "critical")


def stale_threshold(item: dict, report: dict, settings: Settings) -> timedelta:
    """How long an active integration may go without a successful sync before it is stale (see ``check_problems``)."""
    stale = timedelta(minutes=settings.stale_after_minutes)
    google = report.get("google_operations") or {}
    if item["platform"] == "google" and google.get("spread"):
        return stale + timedelta(minutes=google["effective_interval_minutes"])
    return stale


def _integration_problems(item: dict, who: str, report: dict, settings: Settings, now: datetime) -> list[Problem]:
    problems = []
    reason = short_message(item["last_error"], 200)
    because = f": {reason}" if reason else ""
    status = item["status"]
    if status == "error" and item.get("next_attempt_at"):
        # An account closed or disabled upstream is not emsync failing: it backs off to one attempt a day.
        problems.append(Problem("warning", f"{who} is error (closed or disabled upstream; daily attempt){because}"))
    elif status == "rate_limited":
        until = item.get("rate_limited_until")
        if until is not None and until > now + budget.RUN_SPACING:
            problems.append(Problem("critical", f"{who} is rate_limited until {until:%Y-%m-%d %H:%M} UTC, beyond the next run{because}"))
        else:
            problems.append(Problem("warning", f"{who} is rate_limited; the next run retries it{because}"))
    elif status in ("error", "needs_reauth"):
        problems.append(Problem("critical", f"{who} is {status}{because}"))
    else:
        since = item["last_synced_at"] or item["created_at"]
        bound = stale_threshold(item, report, settings)
        if since is not None and now - since > bound:
            minutes = int((now - since).total_seconds() // 60)
            what = "has not synced successfully" if item["last_synced_at"] else "has never synced"
            level = "critical" if now - since > 2 * bound else "warning"
            limit = int(bound.total_seconds() // 60)
            problems.append(Problem(level, f"{who} {what} for {minutes} minutes (stale after {limit} minutes)"))
        if item.get("last_warning"):
            problems.append(Problem("warning", f"{who} synced with a warning: {short_message(item['last_warning'], 200)}"))
    expires = item.get("token_expires_at")
    if expires is not None and expires <= now and status != "needs_reauth":
        problems.append(Problem("critical", f"{who}: its token expired {expires:%Y-%m-%d %H:%M} UTC; reconnect the login"))
    elif expires is not None and expires - now < TOKEN_WARNING:
        problems.append(Problem("warning", f"{who}: its token expires {expires:%Y-%m-%d %H:%M} UTC"))
    return problems


def _budget_warnings(report: dict, settings: Settings) -> list[str]:
    """What ``status --check`` reports as WARNING about the Google budget: it cannot sync each Google integration even
    once a day, or it spreads syncs wider than EMSYNC_STALE_AFTER_MINUTES."""
    google = report.get("google_operations") or {}
    customers = google.get("google_integrations") or 0
    if customers and google.get("regular_budget", customers) < customers:
        return [
            f"{google['regular_budget']} Google Ads operations a day cannot sync {customers} Google integrations even once: "
            "raise GOOGLE_ADS_DAILY_OPERATIONS (a higher access level) or lower EMSYNC_BACKFILL_GOOGLE_OPS"
        ]
    minutes = google.get("effective_interval_minutes") or 0
    if google.get("spread") and minutes > settings.stale_after_minutes:
        return [
            f"the Google Ads operations budget syncs each of {customers} Google integrations every "
            f"{minutes:.0f} minutes, more than EMSYNC_STALE_AFTER_MINUTES ({settings.stale_after_minutes}): raise "
            "GOOGLE_ADS_DAILY_OPERATIONS (a higher access level) or accept the interval"
        ]
    return []


# The monitoring-plugin convention (Nagios, Icinga, Zabbix's and Checkmk's agents): exit code and first word.
CHECK_STATES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}


def check_line(report: dict, problems: list[Problem], settings: Settings, *, now: datetime | None = None) -> tuple[int, str]:
    """(exit code, the one line ``status --check`` prints): ``EMSYNC STATE - text | perfdata``."""
    now = now or datetime.now(UTC)
    critical = [p for p in problems if p.level == "critical"]
    code = 2 if critical else 1 if problems else 0
    active = [i for i in report["integrations"] if i["is_active"]]
    if problems:
        first = problems[0].text
        more = len(problems) - 1
        text = first + (f" (+{more} more: {len(critical)} critical, {len(problems) - len(critical)} warning)" if more else "")
    else:
        text = f"{len(active)} active integration{'' if len(active) == 1 else 's'} healthy"
    return code, f"EMSYNC {CHECK_STATES[code]} - {_one_line(text)} | {perfdata(report, problems, settings, now)}"


def perfdata(report: dict, problems: list[Problem], settings: Settings, now: datetime) -> str:
    """Counts for graphs: active integrations, failing ones, by status, stale ones, warnings and criticals,
    the oldest last success (seconds)."""
    active = [i for i in report["integrations"] if i["is_active"]]
    stale = 0
    for item in active:
        since = item["last_synced_at"] or item["created_at"]
        if item["status"] in ("ok", "never_synced") and since is not None and now - since > stale_threshold(item, report, settings):
            stale += 1
    synced = [i["last_synced_at"] for i in active if i["last_synced_at"]]
    oldest = int((now - min(synced)).total_seconds()) if synced else 0
    values = {
        "integrations": len(active),
        "failing": sum(i["status"] in ("error", "needs_reauth", "rate_limited") for i in active),
        "needs_reauth": sum(i["status"] == "needs_reauth" for i in active),
        "rate_limited": sum(i["status"] == "rate_limited" for i in active),
        "stale": stale,
        "critical": sum(p.level == "critical" for p in problems),
        "warning": sum(p.level == "warning" for p in problems),
    }
    return " ".join(f"{k}={v}" for k, v in values.items()) + f" oldest_success_age={max(oldest, 0)}s"


def _one_line(text: str) -> str:
    """No newline and no '|' (which starts perfdata) in a plugin's text."""
    return " ".join(text.split()).replace("|", "/")
