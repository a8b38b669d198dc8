"""Rich tables and the progress display. Only the CLI layer calls this module."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from ..domain import account_label

RUN_STYLE = {"ok": "[green]ok[/]", "failed": "[red]failed[/]", "died": "[red]died[/]", "running": "[cyan]running[/]"}
STATUS_STYLE = {
    "ok": "green",
    "never_synced": "dim",
    "error": "red",
    "needs_reauth": "bold red",
    "rate_limited": "yellow",
    "skipped": "dim",
}


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    delta = datetime.now(UTC) - value
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return value.strftime("%Y-%m-%d %H:%M")
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 5400:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return value.strftime("%Y-%m-%d %H:%M")


def _status(value: str) -> str:
    return f"[{STATUS_STYLE.get(value, 'white')}]{value}[/]"


def _one_line(text: str | None, width: int = 70) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def failure_text(text: str | None, limit: int = 300) -> str:
    """An error's first line, the end (what to do) kept: ``errors.short_message``."""
    from ..errors import short_message

    return short_message(text, limit)


# ---------------------------------------------------------------- tables that fit the terminal


@dataclass(frozen=True)
class Col:
    """A table column. ``give_up``: 0 always shown; the highest goes first when the table is too wide for the terminal.
    ``no_wrap``: its values (emails, account ids) are never broken. ``into``: given up by moving its value to a second
    line of that column instead of dropping it (a row's "HEADER/folded" value, when present, is what it shows there)."""

    header: str
    give_up: int = 0
    no_wrap: bool = False
    into: str | None = None
    justify: str = "left"


def fit_table(console: Console, title: str, cols: list[Col], rows: list[dict[str, str]]) -> tuple[Table, set[str]]:
    """A table of ``rows`` (header → cell markup) as wide as ``console`` allows: columns are given up in ``give_up``
    order (dropped, or folded into another column's cell) until the narrowest rendering fits, so a no-wrap value is
    never broken mid-word. Returns the table and the headers dropped."""
    shown = list(cols)
    folded: dict[str, list[str]] = {}
    dropped: set[str] = set()
    while True:
        table = _table(title, shown, folded, rows)
        candidates = [c for c in shown if c.give_up]
        # Measured without the terminal's limit (a measurement is clamped to it), then compared with it.
        if not candidates or console.measure(table, options=console.options.update_width(10**6)).minimum <= console.width:
            return table, dropped
        victim = max(candidates, key=lambda c: c.give_up)
        shown.remove(victim)
        if victim.into:  # its value, and whatever had been folded into it, go under the other column's
            folded.setdefault(victim.into, []).extend([victim.header, *folded.pop(victim.header, [])])
        else:
            dropped.add(victim.header)


def _table(title: str, cols: list[Col], folded: dict[str, list[str]], rows: list[dict[str, str]]) -> Table:
    table = Table(title=title)
    for col in cols:
        header = "\n".join([col.header, *folded.get(col.header, [])])
        overflow = "ellipsis" if col.no_wrap else "fold"
        table.add_column(header, no_wrap=col.no_wrap, overflow=overflow, justify=col.justify)  # type: ignore[arg-type]
    for row in rows:
        # A folded column's value under the cell's own; "HEADER/folded" in a row, when present, is what it shows folded.
        cells = ((row[c.header], *(row.get(f"{e}/folded", row[e]) for e in folded.get(c.header, []))) for c in cols)
        table.add_row(*("\n".join(v for v in values if v) for values in cells))
    return table


def print_failures(console: Console, items: list[dict]) -> None:
    """What failed and what to do, one paragraph per integration (when the table had no room for the error)."""
    for i in items:
        account = i.get("account") or account_label(i["platform"], i["account_id"])
        console.print(f"[red]{i['id']}[/] {i['email']} {account}: {_status(i['status'])}: {failure_text(i['last_error'])}", highlight=False)


USER_COLS = [
    Col("id", no_wrap=True, justify="right"),
    Col("email", no_wrap=True),
    Col("name"),
    Col("integrations", 2, justify="right"),
    Col("created", 3),
]


def print_users(console: Console, users: list[dict]) -> None:
    """``users list``: id, email (never broken), name, integrations, created; the last two go first on a narrow terminal."""
    rows = [
        {
            "id": str(u["id"]),
            "email": u["email"],
            "name": u["name"] or "",
            "integrations": str(u["integrations"]),
            "created": u["created_at"].strftime("%Y-%m-%d"),
        }
        for u in users
    ]
    console.print(fit_table(console, "Users", USER_COLS, rows)[0])


# Which integration a row is: the id and the email are never given up; the account folds under the email.
WHO_COLS = [
    Col("id", no_wrap=True, justify="right"),
    Col("user", no_wrap=True),
    Col("account", 2, no_wrap=True, into="user"),
]

INTEGRATION_COLS = [
    *WHO_COLS,
    Col("platform", 5),
    Col("cred", 8),
    Col("active", 7, into="status"),
    Col("status", 1, no_wrap=True, into="user"),  # the last resort: under the email
    Col("last sync", 3, into="status"),
    Col("token expires", 6),
    Col("last error", 9),
]


def print_integration_list(console: Console, rows: list[dict]) -> None:
    """``integrations list``: the table, then what failed and what to do when the error column did not fit."""
    cells = [
        {
            "id": str(r["id"]),
            "user": r["email"],
            "platform": r["platform"],
            "account": account_label(r["platform"], r["account_id"])
            + (f"\nvia {account_label('google', r['login_customer_id'])}" if r.get("login_customer_id") else ""),
            "cred": str(r["credential_id"]),
            "active": "yes" if r["is_active"] else "no",
            "active/folded": "" if r["is_active"] else "[dim]disabled[/]",
            "status": _status(r["status"]),
            "last sync": _when(r["last_synced_at"]),
            "token expires": r["token_expires_at"].strftime("%Y-%m-%d") if r["token_expires_at"] else "—",
            "last error": failure_text(r["last_error"]),
        }
        for r in rows
    ]
    table, dropped = fit_table(console, "Integrations", INTEGRATION_COLS, cells)
    console.print(table)
    if "last error" in dropped:
        print_failures(console, [r for r in rows if r["last_error"]])


SUMMARY_ABOVE = 200  # integrations: above this, `status` summarises unless --all
PROBLEMS_LISTED = 50


def needs_attention(item: dict) -> bool:
    """An active integration whose last attempt did not end well: what a status summary lists."""
    return bool(item["is_active"]) and item["status"] not in ("ok", "never_synced")


def print_status(console: Console, report: dict, *, show_all: bool = False) -> None:
    integrations = report["integrations"]
    if len(integrations) > SUMMARY_ABOVE and not show_all:
        _print_summary(console, report)
    else:
        _print_integrations(console, report["database"], integrations)
    _print_runs_and_warnings(console, report)


def _print_summary(console: Console, report: dict) -> None:
    """Counts by platform and status, the integrations that need attention, the oldest success."""
    integrations = report["integrations"]
    active = [i for i in integrations if i["is_active"]]
    counts: dict[tuple[str, str], int] = {}
    for i in integrations:
        key = (i["platform"], i["status"] if i["is_active"] else "disabled")
        counts[key] = counts.get(key, 0) + 1
    statuses = sorted({status for _, status in counts})
    table = Table(title=f"{len(integrations)} integrations — {report['database']}")
    table.add_column("platform")
    for status in statuses:
        table.add_column(_status(status) if status != "disabled" else "[dim]disabled[/]", justify="right")
    for platform in sorted({p for p, _ in counts}):
        table.add_row(platform, *(str(counts.get((platform, s), 0)) for s in statuses))
    console.print(table)
    problems = [i for i in active if needs_attention(i)]
    if problems:
        _print_integrations(console, f"{len(problems)} need attention", problems[:PROBLEMS_LISTED])
        if len(problems) > PROBLEMS_LISTED:
            console.print(f"… and {len(problems) - PROBLEMS_LISTED} more (emsync status --json has them all)")
    synced = [i for i in active if i["last_synced_at"]]
    if synced:
        oldest = min(synced, key=lambda i: i["last_synced_at"])
        console.print(f"Oldest last success: integration {oldest['id']} ({oldest['account']}), {_when(oldest['last_synced_at'])}")
    never = sum(1 for i in active if not i["last_synced_at"])
    if never:
        console.print(f"{never} active integrations have never synced")
    console.print(f"[dim]A summary above {SUMMARY_ABOVE} integrations: 'emsync status --all' lists every one.[/]")


STATUS_COLS = [
    *WHO_COLS,
    Col("platform", 6),
    Col("cred", 8),
    Col("status", 1, no_wrap=True, into="user"),  # the last resort: under the email
    Col("last success", 3, into="status"),
    Col("rows in window", 7, justify="right"),
    Col("token expires", 4),
    Col("next attempt", 5),
    Col("last error", 9),
]


def _print_integrations(console: Console, title: str, integrations: list[dict]) -> None:
    """The status table, as wide as the terminal allows (``fit_table``); errors below it when their column did not fit."""
    rows = []
    for i in integrations:
        expires = i["token_expires_at"]
        expiry = "—" if expires is None else (f"[bold red]{expires:%Y-%m-%d}[/]" if i["token_expires_soon"] else f"{expires:%Y-%m-%d}")
        limited = "—"
        if i["rate_limited_until"] and i["status"] == "rate_limited":
            limited = i["rate_limited_until"].strftime("%Y-%m-%d %H:%M")
        elif i.get("next_attempt_at") and i["status"] == "error":
            limited = i["next_attempt_at"].strftime("%Y-%m-%d %H:%M") + " (daily)"
        rows.append(
            {
                "id": str(i["id"]),
                "user": i["email"],
                "platform": i["platform"],
                "account": i["account"],
                "cred": str(i["credential_id"]),
                "status": _status(i["status"]) if i["is_active"] else "[dim]disabled[/]",
                "last success": _when(i["last_synced_at"]),
                "rows in window": str(i["rows_in_window"]),
                "token expires": expiry,
                "next attempt": limited,
                "last error": failure_text(i["last_error"]),
            }
        )
    table, dropped = fit_table(console, f"Integrations — {title}", STATUS_COLS, rows)
    console.print(table)
    if "last error" in dropped:
        print_failures(console, [i for i in integrations if i["last_error"]])


def _print_runs_and_warnings(console: Console, report: dict) -> None:
    runs = Table(title="Last runs")
    for col in ("id", "started", "trigger", "host", "duration", "status", "ok", "failed", "skipped", "rows"):
        runs.add_column(col)
    for r in report["runs"]:
        runs.add_row(
            str(r["id"]),
            _when(r["started_at"]),
            r["trigger"],
            r["host"],
            f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "—",
            RUN_STYLE.get(r["status"], r["status"]),
            str(r["succeeded"]),
            str(r["failed"]),
            str(r["skipped"]),
            str(r["rows"]),
        )
    console.print(runs)
    _print_backfills(console, report.get("backfills") or [])
    google = report.get("google_operations")
    if google and google["google_integrations"]:
        today = google["today"]
        by_source = ", ".join(f"{source} {n}" for source, n in today["by_source"].items()) or "none yet"
        console.print(
            f"Google Ads operations today ({today['day']}, Pacific time): {today['used']} of {google['daily_operations']} "
            f"({by_source}); each Google integration synced every {google['effective_interval_minutes']:g} minutes; "
            f"backfills may spend {google['backfill_share']} a day",
            highlight=False,
        )
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")


BACKFILL_COLS = [
    *WHO_COLS,
    Col("platform", 6),
    Col("range", 3, into="status"),
    Col("status", 1, no_wrap=True, into="user"),  # the last resort: under the email
    Col("chunks", 4, justify="right"),
    Col("rows", 7, justify="right"),
    Col("next chunk", 8),
    Col("resume after", 5),
    Col("last error", 9),
]


def _print_backfills(console: Console, backfills: list[dict]) -> None:
    """Backfills not finished (in progress, paused, failed, died), as wide as the terminal allows."""
    open_ = [b for b in backfills if b["status"] != "done"]
    if not open_:
        return
    rows = []
    for b in open_:
        following = b["next_chunk"]
        rows.append(
            {
                "id": str(b["id"]),
                "user": b["email"],
                "platform": b["platform"],
                "account": b["account"],
                "range": f"{b['since']}..{b['until']}",
                "status": b["status"],
                "chunks": f"{b['chunks_done']}/{b['chunks_total']}",
                "rows": str(b["rows"]),
                "next chunk": f"{following['since']}..{following['until']}" if following else "—",
                "resume after": b["resume_after"].strftime("%Y-%m-%d %H:%M") if b["resume_after"] else "—",
                "last error": failure_text(b["last_error"]),
            }
        )
    table, dropped = fit_table(console, "Backfills in progress", BACKFILL_COLS, rows)
    console.print(table)
    if "last error" in dropped:
        for b in open_:
            if b["last_error"]:
                console.print(f"backfill {b['id']} {b['email']} {b['account']}: {failure_text(b['last_error'])}", highlight=False)


class SyncProgress:
    """A progress bar on stderr with one line per finished integration above it."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]Syncing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console, transient=True
        )
        self.task = None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("sync", total=total)
        self.progress.start()

    def advance(self, result) -> None:
        label = result.label
        if result.status == "ok":
            line = f"[green]✓[/] {result.platform} {result.email} {label}: {result.rows} rows, {result.api_requests} requests, {result.duration_s:.1f}s"
            if result.warnings:
                line += f" [yellow]warning: {_one_line('; '.join(result.warnings), 100)}[/]"
        elif result.status == "skipped":
            line = f"[dim]- {result.platform} {result.email} {label}: skipped ({result.error})[/]"
        elif result.status == "interrupted":
            line = f"[yellow]-[/] {result.platform} {result.email} {label}: {_one_line(result.error, 100)}"
        else:
            line = f"[red]✗[/] {result.platform} {result.email} {label}: {_status(result.status)} {failure_text(result.error)}"
        self.progress.console.print(line, highlight=False)
        if self.task is not None:
            self.progress.advance(self.task)

    def stop(self) -> None:
        self.progress.stop()

    def log_handler(self, verbose: bool) -> logging.Handler:
        from rich.logging import RichHandler

        handler = RichHandler(console=self.console, show_path=False, markup=False)
        handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
        # Per-integration results are shown as progress lines already.
        handler.addFilter(lambda record: not getattr(record, "integration_result", False))
        return handler


def print_run(result) -> None:
    console = Console()
    style = "yellow" if result.interrupted else "green" if not result.failed else "red"
    console.print(f"[{style}]{result.summary()}[/]")


# ---------------------------------------------------------------- backfill


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA —"
    seconds = int(seconds)
    return f"ETA {seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class BackfillProgress:
    """One progress bar per integration on stderr: chunks done of total, rows, ETA."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"), console=self.console
        )
        self.tasks: dict[int, object] = {}
        self.progress.start()

    def update(self, item) -> None:
        detail = f"{item.rows:,} rows  {_eta(item.eta_s)}" if item.status == "running" else f"{item.rows:,} rows  {item.status}"
        task = self.tasks.get(item.integration_id)
        if task is None:
            task = self.tasks[item.integration_id] = self.progress.add_task(
                f"{item.platform} {item.label} {item.email}", total=item.chunks_total or None, detail=detail
            )
        self.progress.update(task, total=item.chunks_total or None, completed=item.chunks_done, detail=detail)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.progress.stop()

    def log_handler(self, verbose: bool) -> logging.Handler:
        from rich.logging import RichHandler

        handler = RichHandler(console=self.console, show_path=False, markup=False)
        handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
        return handler


def print_backfill_plan(result) -> None:
    """The dry run: each integration's chunks, what they would cost."""
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print("[bold]Backfill plan[/] (dry run: nothing fetched, nothing written)", highlight=False)
    for item in result.integrations:
        to_fetch = [c for c in item.chunks if c["state"] != "done"]
        line = f"{item.platform} {item.label} {item.email}: "
        if item.since is None or item.until is None or item.since > item.until:
            console.print(line + "nothing before the regular window in that range", highlight=False)
        else:
            line += (
                f"{item.since}..{item.until}, {len(item.chunks)} chunks ({len(to_fetch)} to fetch, {len(item.chunks) - len(to_fetch)} done)"
            )
            line += f": at least {item.expected_requests} requests"
            if item.platform == "google":
                line += f", {item.expected_operations} Google Ads operations"
            console.print(line, highlight=False)
        for warning in item.warnings:
            console.print(f"  [yellow]warning:[/] {warning}", highlight=False)
        for chunk in item.chunks:
            console.print(f"  {chunk['since']}..{chunk['until']}  {chunk['state']}", highlight=False)
    console.print(result.summary(), highlight=False)


def print_backfill(result) -> None:
    """After a run: one line per integration that did not simply finish, then the summary."""
    console = Console() if sys.stdout.isatty() else Console(width=200)
    for item in result.integrations:
        for warning in item.warnings:
            console.print(f"[yellow]warning:[/] {item.platform} {item.label}: {warning}", highlight=False)
        if item.status == "failed":
            console.print(f"[red]✗[/] {item.platform} {item.label} {item.email}: failed: {failure_text(item.error)}", highlight=False)
        elif item.status not in ("done",):
            when = f"; resume after {item.resume_after:%Y-%m-%d %H:%M} UTC" if item.resume_after else ""
            console.print(f"[yellow]-[/] {item.platform} {item.label} {item.email}: {item.status}: {item.reason}{when}", highlight=False)
    style = "red" if result.failed else ("green" if result.complete else "yellow")
    console.print(f"[{style}]{result.summary()}[/]", highlight=False)
