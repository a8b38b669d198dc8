"""`emsync status`: what was synced when, what failed and why — as data; rendering lives in render.py."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from . import campaign_rows, runs, store
from .config import Settings
from .db import describe_url
from .domain import account_label

TOKEN_WARNING = timedelta(days=7)
CRON_RUNS_PER_DAY = 48  # */30 * * * *


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


def build_status(conn, settings: Settings, *, now: datetime | None = None) -> dict:
    now = now or datetime.now(UTC)
    rows = store.list_integrations(conn)
    in_window = campaign_rows.rows_since(conn, now.date() - timedelta(days=settings.lookback_days))
    integrations = []
    warnings = []
    for row in rows:
        item = integration_json(row)
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
    google_active = sum(1 for r in rows if r["platform"] == "google" and r["is_active"])
    needed = google_active * CRON_RUNS_PER_DAY
    if needed > settings.google_ads_daily_operations:
        warnings.append(
            f"{google_active} active Google integrations × {CRON_RUNS_PER_DAY} runs a day = {needed} operations, "
            f"over GOOGLE_ADS_DAILY_OPERATIONS ({settings.google_ads_daily_operations}): sync less often or raise the quota"
        )
    return {
        "database": describe_url(settings.database_url),
        "generated_at": now,
        "integrations": integrations,
        "last_run": recent[0] if recent else None,
        "runs": recent,
        "warnings": warnings,
    }


class Problem(NamedTuple):
    """One thing ``status --check`` reports: ``level`` "critical" (failing, stale) or "warning" (an account closed
    upstream and backing off, a sync that warned)."""

    level: str
    text: str


def check_problems(report: dict, settings: Settings, *, now: datetime | None = None) -> list[Problem]:
    """One problem per active integration that needs attention, critical ones first."""
    now = now or datetime.now(UTC)
    stale = timedelta(minutes=settings.stale_after_minutes)
    problems = []
    for item in report["integrations"]:
        if not item["is_active"]:
            continue
        who = f"integration {item['id']} ({item['platform']} {item['account']}, {item['email']})"
        if item["status"] in ("error", "needs_reauth", "rate_limited"):
            reason = (item["last_error"] or "").splitlines()[0][:200] if item["last_error"] else ""
            # An account closed or disabled upstream is not emsync failing: it backs off to one attempt a day.
            level = "warning" if item["status"] == "error" and item.get("next_attempt_at") else "critical"
            problems.append(Problem(level, f"{who} is {item['status']}" + (f": {reason}" if reason else "")))
            continue
        since = item["last_synced_at"] or item["created_at"]
        if since is not None and now - since > stale:
            minutes = int((now - since).total_seconds() // 60)
            what = "has not synced successfully" if item["last_synced_at"] else "has never synced"
            problems.append(
                Problem("critical", f"{who} {what} for {minutes} minutes (EMSYNC_STALE_AFTER_MINUTES={settings.stale_after_minutes})")
            )
        elif item.get("last_warning"):
            problems.append(Problem("warning", f"{who} synced with a warning: {item['last_warning'].splitlines()[0][:200]}"))
    return sorted(problems, key=lambda p: p.level != "critical")
