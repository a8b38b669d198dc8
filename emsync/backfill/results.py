"""What a backfill asked for and what it did: per integration and in total (the shape of ``backfill --json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

from ..domain import account_label


@dataclass(frozen=True)
class BackfillOptions:
    """``backfill``'s arguments: the dates (``until`` None: the day before the regular window) and which integrations."""

    since: date
    until: date | None = None
    email: str | None = None
    integration_ids: tuple[int, ...] = ()
    platform: str | None = None
    refetch: bool = False
    dry_run: bool = False
    wait: bool = False


@dataclass
class IntegrationBackfill:
    """One integration's backfill in this invocation.

    ``status``: planned (dry run) | running | done | paused (quota, rate limit or usage: see ``resume_after``) |
    failed | interrupted | elsewhere (its remaining chunks are leased by another backfill) | skipped (needs re-authorisation).
    ``chunks_total``/``chunks_done`` count the chunks of the requested range, fetched now or before;
    ``chunks_fetched``, ``rows``, ``requests`` and ``operations`` what this invocation did.
    """

    integration_id: int
    platform: str
    email: str
    account_id: str
    status: str = "running"
    since: date | None = None
    until: date | None = None
    first_available: date | None = None
    chunks_total: int = 0
    chunks_done: int = 0
    chunks_fetched: int = 0
    rows: int = 0
    requests: int = 0
    operations: int = 0
    resume_after: datetime | None = None
    reason: str | None = None  # why it paused or stopped (not a failure)
    error: str | None = None  # why it failed
    warnings: list[str] = field(default_factory=list)
    chunks: list[dict] = field(default_factory=list)  # dry run: {"since", "until", "state"}
    expected_requests: int = 0  # dry run: at least this many
    expected_operations: int = 0  # dry run
    elapsed_s: float = 0.0

    @property
    def label(self) -> str:
        return account_label(self.platform, self.account_id)

    def stopped(self, status: str, why: str, resume_after: datetime | None = None) -> None:
        """It stopped before the end: ``failed`` (``why`` is the error) or paused/interrupted (``why`` is the reason)."""
        self.status, self.resume_after = status, resume_after
        self.error, self.reason = (why, None) if status == "failed" else (None, why)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at this invocation's pace; None before the first chunk."""
        if not self.chunks_fetched:
            return None
        return self.elapsed_s / self.chunks_fetched * max(self.chunks_total - self.chunks_done, 0)

    def as_dict(self) -> dict:
        out = {
            "id": self.integration_id,
            "platform": self.platform,
            "email": self.email,
            "account_id": self.account_id,
            "account": self.label,
            "status": self.status,
            "since": self.since,
            "until": self.until,
            "first_available": self.first_available,
            "chunks_total": self.chunks_total,
            "chunks_done": self.chunks_done,
            "chunks_fetched": self.chunks_fetched,
            "rows": self.rows,
            "requests": self.requests,
            "operations": self.operations,
            "resume_after": self.resume_after,
            "reason": self.reason,
            "error": self.error,
            "warnings": self.warnings,
        }
        if self.status == "planned" or self.chunks:
            out.update(chunks=self.chunks, expected_requests=self.expected_requests, expected_operations=self.expected_operations)
        return out


@dataclass
class BackfillResult:
    options: BackfillOptions
    integrations: list[IntegrationBackfill] = field(default_factory=list)
    duration_s: float = 0.0
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        """Every selected integration's range is fetched (a dry run is complete only when nothing is left to fetch)."""
        return not self.interrupted and all(i.status == "done" for i in self.integrations)

    @property
    def resume_after(self) -> datetime | None:
        """When to run again to go on: the earliest time a paused integration may resume."""
        times = [i.resume_after for i in self.integrations if i.status == "paused" and i.resume_after]
        return min(times) if times else None

    @property
    def failed(self) -> int:
        return sum(i.status == "failed" for i in self.integrations)

    @property
    def exit_code(self) -> int:
        """1 when an integration failed; stopping for quota or rate limits is not a failure."""
        return 1 if self.failed else 0

    def total(self, name: str) -> int:
        return sum(getattr(i, name) for i in self.integrations)

    def summary(self) -> str:
        if self.options.dry_run:
            to_fetch = sum(1 for i in self.integrations for c in i.chunks if c["state"] != "done")
            return (
                f"Backfill plan: {to_fetch} chunks to fetch, at least {self.total('expected_requests')} requests, "
                f"{self.total('expected_operations')} Google Ads operations; nothing written"
            )
        state = "complete" if self.complete else ("interrupted" if self.interrupted else "not complete")
        text = (
            f"Backfill {state}: {self.total('chunks_fetched')} chunks, {self.total('rows')} rows, "
            f"{self.total('requests')} requests, {self.total('operations')} Google Ads operations in {self.duration_s:.1f}s"
        )
        if self.failed:
            text += f"; {self.failed} failed"
        if self.resume_after and not self.complete:
            text += f"; run it again after {self.resume_after:%Y-%m-%d %H:%M} UTC (or add --wait)"
        return text

    def as_dict(self) -> dict:
        return {
            "dry_run": self.options.dry_run,
            "complete": self.complete,
            "interrupted": self.interrupted,
            "resume_after": self.resume_after,
            "since": self.options.since,
            "until": self.options.until,
            "chunks_fetched": self.total("chunks_fetched"),
            "rows": self.total("rows"),
            "requests": self.total("requests"),
            "operations": self.total("operations"),
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
            "integrations": [i.as_dict() for i in self.integrations],
        }
