"""`emsync status`: what was synced when, what failed and why — as data; rendering lives in render.py."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from . import budget, campaign_rows, ledger, runs, store
from .backfill import chunks
from .config import Settings
from .db import describe_url
from .domain import account_label

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


class Problem(NamedTuple):
    """One thing ``status --check`` reports: ``level`` "critical" (failing, stale) or "warning" (an account closed
    upstream and backing off, a sync that warned)."""

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


def check_problems(report: dict, settings: Settings, *, now: datetime | None = None) -> list[Problem]:
    """One problem per active integration that needs attention, critical ones first, then the installation's own
    (the Google budget syncing wider than EMSYNC_STALE_AFTER_MINUTES).

    While Google integrations take turns (``budget``), one is stale only when it
    missed its turn: older than the effective interval plus EMSYNC_STALE_AFTER_MINUTES.
    """
    now = now or datetime.now(UTC)
    stale = timedelta(minutes=settings.stale_after_minutes)
    google = report.get("google_operations") or {}
    google_stale = stale + timedelta(minutes=google["effective_interval_minutes"]) if google.get("spread") else stale
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
        bound = google_stale if item["platform"] == "google" else stale
        if since is not None and now - since > bound:
            minutes = int((now - since).total_seconds() // 60)
            what = "has not synced successfully" if item["last_synced_at"] else "has never synced"
            problems.append(
                Problem("critical", f"{who} {what} for {minutes} minutes (EMSYNC_STALE_AFTER_MINUTES={settings.stale_after_minutes})")
            )
        elif item.get("last_warning"):
            problems.append(Problem("warning", f"{who} synced with a warning: {item['last_warning'].splitlines()[0][:200]}"))
    problems.extend(Problem("warning", text) for text in _budget_warnings(report, settings))
    return sorted(problems, key=lambda p: p.level != "critical")


def _budget_warnings(report: dict, settings: Settings) -> list[str]:
    """What ``status --check`` reports as WARNING: the Google budget spreads syncs wider than EMSYNC_STALE_AFTER_MINUTES."""
    google = report.get("google_operations") or {}
    minutes = google.get("effective_interval_minutes") or 0
    if google.get("spread") and minutes > settings.stale_after_minutes:
        return [
            f"the Google Ads operations budget syncs each of {google['google_integrations']} Google integrations every "
            f"{minutes:.0f} minutes, more than EMSYNC_STALE_AFTER_MINUTES ({settings.stale_after_minutes}): raise "
            "GOOGLE_ADS_DAILY_OPERATIONS (a higher access level) or accept the interval"
        ]
    return []
