"""The sync engine: pick due integrations, claim each, fetch through its connector, save the window.

The path of one integration, top to bottom in ``Syncer``:

    _sync_one      claim it (locks.py: a lease or a flock) and read its IntegrationState (store.py);
                   skip it if another run just synced it (start-time rule, freshness)
    _attempt       then
      _fetch         _prepare → account_info (first sync; Meta: every full sync) → fetch(window)
        _prepare       (access.py) under the credential's lock: re-read the credential (store.py), decrypt its
                       Credentials, connector.prepare (refresh or renew; Meta: debug_token once a
                       day), save what changed at once
      _save_success  one write transaction: the window (campaign_rows.py), its Google operations
                     (ledger.py), then in one statement on PostgreSQL the attempt record, the integration's
                     status and warning, and the lease released if still ours (the fence; store.py)
      _save_failure  one write transaction: the claim fenced, the attempt, its operations, the failing status

Integrations share credentials (one Google login, one Meta user): a Google
access token is refreshed once per credential and cached on it for every
integration (threads of one process wait on a per-credential lock and find it
cached), a Meta token is renewed once per credential, and a credential Google
or Meta refused is not tried again in the same run.

While a run lasts, its heartbeat (heartbeat.py) renews the leases and the run
row every 30 s; attempts never write the run row, and the run's counts are
written once, at the end.

A side step (token renewal, debug_token, re-reading account metadata already
stored) that fails never fails a sync that can succeed: the connector or the
engine turns it into a warning, and warnings end on ``last_warning``.

Which integrations a run takes is ``runs.due_integrations``; a sync-all then
lets Google integrations take turns when the day's operations cannot cover
every run (``budget.take_turns``), and no Google integration is tried once a
429 said the project's operations for the day are gone (``ledger``).

Each integration is independent: its own claim, its own transaction, its own
error. Whatever goes wrong for one integration — claim, fetch, write, even
recording the failure — becomes its ``IntegrationResult`` and the run moves on.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import access, budget, campaign_rows, keys, ledger, runs, store
from .clock import SYSTEM_CLOCK, Clock
from .collector import fewer_collections
from .config import Settings
from .connectors.base import side_step_warning
from .db import describe_error, make_engine, write_transaction
from .domain import AccountInfo, Credentials, Fetched, IntegrationState, SyncWindow, account_label
from .errors import AccountClosed, ApiError, EmsyncError, NeedsReauth, RateLimited
from .healthcheck import Healthcheck
from .heartbeat import Heartbeat
from .http import HttpClient, new_session
from .interrupts import CancelToken, Interrupted
from .locks import Claim, LeaseLost, Locker, locker_for
from .redaction import redact, register_secret
from .runs import DueIntegration

log = logging.getLogger("emsync")


@dataclass(frozen=True)
class SyncOptions:
    """What a run was asked to do: ``email`` limits it to one user (sync-user), ``full`` re-fetches the whole window,
    ``force`` syncs even integrations another run just synced."""

    email: str | None = None
    platform: str | None = None
    full: bool = False
    trigger: str = "manual"
    force: bool = False  # ignore freshness and the start-time rule

    @property
    def ignores_freshness(self) -> bool:
        """A person pressing "Sync Data" (sync-user), --full and --force sync even a freshly synced integration."""
        return self.force or self.full or self.email is not None


@dataclass
class IntegrationResult:
    integration_id: int
    platform: str
    email: str
    account_id: str
    status: str  # ok | error | needs_reauth | rate_limited | skipped | interrupted (stopped mid-fetch) | not_started
    rows: int = 0
    api_requests: int = 0
    duration_s: float = 0.0
    error: str | None = None
    window: SyncWindow | None = None
    retry_at: datetime | None = None
    warnings: list[str] = field(default_factory=list)
    # Why a skipped one was skipped, in one word (SKIP_KINDS); ``error`` holds the reason in words.
    skip_kind: str | None = None

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "skipped", *UNFINISHED)

    @property
    def label(self) -> str:
        return account_label(self.platform, self.account_id)

    def as_dict(self) -> dict:
        window = self.window
        return {
            "id": self.integration_id,
            "platform": self.platform,
            "email": self.email,
            "account_id": self.account_id,
            "status": self.status,
            "rows": self.rows,
            "api_requests": self.api_requests,
            "duration_s": round(self.duration_s, 3),
            "window": None
            if window is None
            else {"since": window.since.isoformat(), "until": window.until.isoformat(), "full": window.full},
            "error": self.error,
            "retry_at": self.retry_at.isoformat() if self.retry_at else None,
            "warnings": list(self.warnings),
            "skip_reason": self.skip_kind,
        }


# An interrupted run's integrations that never finished: stopped in flight (nothing written) or never begun.
UNFINISHED = ("interrupted", "not_started")
# Why a run skipped an integration: its ``IntegrationResult.skip_kind``, counted in the run's summary and JSON.
SKIP_KINDS = (
    "rate_limited",  # its retry time has not come
    "needs_reauth",  # sync-all leaves it until new credentials (sync-user tries it)
    "closed_upstream",  # an account closed or disabled upstream, before its daily attempt
    "leased_elsewhere",  # another run is syncing it
    "already_synced",  # another run attempted it after this one started
    "fresh",  # synced successfully less than EMSYNC_MIN_INTERVAL_MINUTES ago
    "budget_turn",  # a Google integration whose turn under the operations budget has not come
    "google_quota",  # Google's operations for the day are used up
    "disabled",  # removed or disabled meanwhile
)


@dataclass
class RunResult:
    run_id: int
    started_at: datetime
    due: int = 0
    held_back: int = 0  # active integrations not due (rate_limited, needs_reauth, closed upstream), reported as skipped
    results: list[IntegrationResult] = field(default_factory=list)
    duration_s: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM (``interrupts``)
    status: str = "running"  # as recorded on the run's row at its end: ok | failed | interrupted

    @property
    def succeeded(self) -> int:
        return sum(r.status == "ok" for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.failed for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.results)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.results)

    @property
    def finished(self) -> int:
        """Integrations whose attempt ended and was recorded, successful or not."""
        return self.succeeded + self.failed

    @property
    def stopped(self) -> int:
        """Integrations an interrupt stopped mid-fetch (nothing written)."""
        return sum(r.status == "interrupted" for r in self.results)

    @property
    def not_started(self) -> int:
        return sum(r.status == "not_started" for r in self.results)

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """How many were skipped for each reason (``SKIP_KINDS``), in that order."""
        kinds = [r.skip_kind or "other" for r in self.results if r.status == "skipped"]
        return {kind: kinds.count(kind) for kind in (*SKIP_KINDS, "other") if kind in kinds}

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        if self.interrupted:
            return self.interrupted_line()
        text = f"Sync completed: {self.succeeded} success, {self.failed} failed"
        if self.skipped:
            reasons = ", ".join(f"{n} {kind}" for kind, n in self.skipped_by_reason.items())
            text += f", {self.skipped} skipped ({reasons})"
        return f"{text}, {self.rows} rows in {self.duration_s:.1f}s"

    def interrupted_line(self) -> str:
        """``interrupted: 2 finished, 4 not started; previous rows kept`` (plus those stopped mid-fetch and skipped, when any)."""
        parts = [f"{self.finished} finished"]
        if self.stopped:
            parts.append(f"{self.stopped} stopped mid-fetch")
        parts.append(f"{self.not_started} not started")
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return f"interrupted: {', '.join(parts)}; previous rows kept"

    def as_dict(self) -> dict:
        """The shape of ``sync-all --json``."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "interrupted": self.interrupted,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "due": self.due,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "stopped": self.stopped,
            "not_started": self.not_started,
            "skipped_by_reason": self.skipped_by_reason,
            "rows": self.rows,
            "integrations": [r.as_dict() for r in self.results],
        }


def full_window_due(integration_id: int, last_full: datetime | None, period_hours: int, now: datetime) -> bool:
    """Whether the whole lookback window is due: never fetched, or its own time of day has come again.

    Each integration's full refresh falls at its own phase of the period (a
    hash of its id), so a run at 03:00 does not re-fetch every account's 30 days
    at once. It is due when that phase passed since the last full sync, and at
    least half a period after it (so a first sync just before its phase does
    not fetch the window twice in a row).
    """
    if last_full is None or period_hours <= 0:
        return True
    period = period_hours * 3600
    phase = (integration_id * 2654435761) % period  # Knuth's multiplicative hash: neighbouring ids spread apart
    now_s, last_s = now.timestamp(), last_full.timestamp()
    latest_phase = now_s - ((now_s - phase) % period)
    return last_s < latest_phase and now_s - last_s >= period / 2


def needs_full_window(state: IntegrationState, settings: Settings, *, force_full: bool, now: datetime) -> bool:
    """The whole lookback window on the first sync, with ``force_full``, or once every
    ``EMSYNC_FULL_SYNC_HOURS`` at the integration's own time of day (``full_window_due``); else the recent days."""
    return force_full or full_window_due(state.id, state.last_full_sync_at, settings.full_sync_hours, now)


def window_for(state: IntegrationState, settings: Settings, *, force_full: bool, now: datetime) -> SyncWindow:
    """The dates to fetch: today in the account's time zone and the days before it (see ``needs_full_window``)."""
    try:
        tz = ZoneInfo(state.time_zone) if state.time_zone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    today = now.astimezone(tz).date()
    full = needs_full_window(state, settings, force_full=force_full, now=now)
    days = settings.lookback_days if full else min(settings.recent_days, settings.lookback_days)
    return SyncWindow(since=today - timedelta(days=days - 1), until=today, full=full)


def describe_failure(exc: BaseException) -> str:
    """One redacted line for ``last_error``: emsync's own message, or the type and text of a surprise."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, EmsyncError):
        text = str(exc)
    elif isinstance(exc, SQLAlchemyError):
        text = "database error: " + describe_error(exc)  # "disk full", "database connection lost": words, not a class name
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text)


@dataclass
class _Fetch:
    """One attempt's claim and what ``_fetch`` learnt, kept for the save steps (success or failure)."""

    claim: Claim
    creds: Credentials
    window: SyncWindow | None = None
    info: AccountInfo | None = None
    fetched: Fetched | None = None
    warnings: list[str] = field(default_factory=list)


class Syncer:
    """Runs sync-all / sync-user for one process: a thread per integration, up to ``EMSYNC_CONCURRENCY`` at once.

    ``on_start(due)`` and ``on_result(result)`` let a front end show progress;
    ``clock`` supplies every timestamp (tests pass a ``ManualClock``); ``cancel`` stops the run
    (``interrupts``: set by the CLI's or the server's signal handlers).
    """

    def __init__(
        self,
        settings: Settings,
        db_engine,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_result: Callable[[IntegrationResult], None] | None = None,
        on_start: Callable[[int], None] | None = None,
        cancel: CancelToken | None = None,
    ):
        self.settings = settings
        self.cancel = cancel or CancelToken()
        self.db = db_engine
        self.clock = clock
        self.box = keys.require_box(settings, db_engine)
        self.on_result = on_result or (lambda result: None)
        self.on_start = on_start or (lambda due: None)
        self.host = socket.gethostname()
        self.google_exhausted: datetime | None = None  # set when a 429 says the project's operations for the day are gone
        self._google_lock = threading.Lock()
        register_secret(*settings.secrets())
        self.access = access.CredentialAccess(db_engine, self.box)

    # ---------------------------------------------------------------- a run

    def open_run(self, options: SyncOptions) -> RunResult:
        """Check the key and the user, bury dead runs, record the new run. Nothing is synced yet.

        Raises:
            UserError: unknown email; ConfigError: a key that decrypts none of the stored tokens (one that some
            decrypt runs: a token no key decrypts fails only its integrations).
        """
        parts = (options.email and f"user {options.email}", options.platform and f"platform {options.platform}")
        scope = ", ".join(p for p in parts if p) or None
        with self.db.begin() as conn:
            if options.email is not None:
                store.user_id_for(conn, options.email)
            keys.verify_box(conn, self.box)  # a key that decrypts no stored token: fail before writing anything
        now = self.clock.now()
        with write_transaction(self.db) as conn:
            runs.bury_dead_runs(conn, self.host, now)
            run_id = runs.start_run(conn, trigger=options.trigger, host=self.host, scope=scope, full=options.full, now=now)
        return RunResult(run_id=run_id, started_at=now)

    def run(self, options: SyncOptions, opened: RunResult | None = None) -> RunResult:
        """One invocation of sync-all / sync-user (``opened``: a run already recorded by ``open_run``).

        A sync-all (no ``email``) pings ``EMSYNC_HEALTHCHECK_URL`` at its start and end,
        whoever started it (cron, the CLI, ``emsync serve``).
        """
        ping = Healthcheck(self.settings.healthcheck_url if options.email is None else None)
        ping.start()
        try:
            result = self._run(options, opened)
        except BaseException as exc:
            ping.finish(False, f"emsync run crashed: {describe_failure(exc) if isinstance(exc, Exception) else type(exc).__name__}")
            raise
        ping.finish(result.status == "ok", result.summary())
        self._housekeeping(options, prune=not result.interrupted)  # an interrupted run ends quickly: no pruning
        return result

    def _housekeeping(self, options: SyncOptions, *, prune: bool = True) -> None:
        """After a run, interrupted ones included: write EMSYNC_METRICS_FILE; prune old history (``prune``, sync-all
        only). Never fails the run."""
        from . import history, metrics

        if prune and options.email is None:
            history.prune(self.db, self.settings, now=self.clock.now())
        metrics.write_after_run(self.db, self.settings, now=self.clock.now())

    def _run(self, options: SyncOptions, opened: RunResult | None) -> RunResult:
        clock = time.monotonic()
        result = opened or self.open_run(options)
        self.access.new_run()
        try:
            fresh_after = self._fresh_after(options, result.started_at)
            with self.db.begin() as conn:
                due = runs.due_integrations(
                    conn, email=options.email, platform=options.platform, include_reauth=options.email is not None, now=result.started_at
                )
                plan = budget.google_budget(self.settings, budget.active_google(conn))
                self.google_exhausted = ledger.exhausted_until(conn, result.started_at)
                held = runs.held_back(
                    conn, email=options.email, platform=options.platform, include_reauth=options.email is not None, now=result.started_at
                )
            result.due, result.held_back = len(due), len(held)
            found = len(due) + len(held)  # the held-back ones are reported below, each with its reason
            log.info("Found %d active integration%s%s", found, "" if found == 1 else "s", f" for {options.email}" if options.email else "")
            self.on_start(len(due) + len(held))
            self._report_held_back(held, result)
            waiting: list[tuple[DueIntegration, datetime]] = []
            if options.email is None:  # sync-user is a person pressing "Sync Data": no turns for them
                due, waiting = budget.take_turns(due, plan, result.started_at)
            if waiting:
                log.info(
                    "%d Google integrations wait for their turn (%d syncs a day each fit the budget)", len(waiting), plan.syncs_per_day
                )
            for item, turn in waiting:
                skipped = IntegrationResult(item.id, item.platform, item.email, item.account_id, status="skipped", retry_at=turn)
                reason = f"Google Ads operations budget: {plan.cadence}; next turn {turn:%Y-%m-%d %H:%M} UTC"
                result.results.append(self._skip(skipped, reason, quiet=True, kind="budget_turn"))
                log.debug("Skipping %s (%s): %s", item.email, skipped.label, reason)
                self.on_result(skipped)
            fresh = [item for item in due if _is_fresh(item.last_sync_started_at, fresh_after)]
            for item in fresh:  # judged from the selection: no claim, no round trip
                skipped = IntegrationResult(item.id, item.platform, item.email, item.account_id, status="skipped")
                result.results.append(self._skip(skipped, _fresh_reason(item.last_sync_started_at), quiet=True, kind="fresh"))
                self.on_result(skipped)
            if fresh:
                log.info("Skipping %d integrations synced less than %d minutes ago", len(fresh), self.settings.min_interval_minutes)
                due = [item for item in due if not _is_fresh(item.last_sync_started_at, fresh_after)]
            locker = locker_for(self.db, self.settings.database_url, host=self.host)
            locker.prepare()
            session = new_session(self.settings.concurrency, cancel=self.cancel)
            with (
                self._heartbeat_engine() as beat_db,
                Heartbeat(beat_db, result.run_id, locker, self.clock),
                fewer_collections(),
                ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="sync") as pool,
            ):
                futures = [pool.submit(self._sync_one, item, result, options, locker, session, fresh_after) for item in due]
                self._collect(futures, result)
            session.close()
        except BaseException:
            self._finish_run(result, clock, crashed=True)
            raise
        self._finish_run(result, clock, crashed=False)
        result.results.sort(key=lambda r: r.integration_id)
        log.info(result.summary())
        return result

    def _collect(self, futures: list, result: RunResult) -> None:
        """Each integration's result as it comes. Once the run is stopped, workers still queued return ``not_started``
        at once and those fetching are aborted, so this ends soon after; writes already begun finish first."""
        pending = set(futures)
        while pending:
            try:
                for future in as_completed(pending):
                    pending.discard(future)
                    item_result = future.result()
                    result.results.append(item_result)
                    if item_result.status != "not_started":
                        self.on_result(item_result)
            except KeyboardInterrupt:  # no signal handler installed (a library caller): stop as the CLI's Ctrl-C does
                self.cancel.set(signal.SIGINT)

    def _finish_run(self, result: RunResult, clock: float, *, crashed: bool) -> None:
        """Record the run's end on its row: ``interrupted`` once the token was set, ``failed`` when an integration
        failed or the run itself broke off (a database error, a bug: never ``ok``), else ``ok``.

        After a crash the row is written when the database still allows it, and the crash is what the caller sees.
        Raises the database's error otherwise.
        """
        from sqlalchemy.exc import DBAPIError

        result.duration_s = time.monotonic() - clock
        result.interrupted = self.cancel.is_set()
        result.status = "interrupted" if result.interrupted else "failed" if crashed or result.failed else "ok"
        for attempt in (1, 2):
            try:
                with write_transaction(self.db) as conn:
                    runs.finish_run(
                        conn,
                        result.run_id,
                        now=self.clock.now(),
                        total=result.due + result.held_back,
                        succeeded=result.succeeded,
                        failed=result.failed,
                        skipped=result.skipped,
                        rows=result.rows,
                        status=result.status,
                    )
                return
            except Exception as exc:
                if attempt == 1 and isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    continue  # the connection died (a database restart): the pool has been emptied, a new one may work
                if not crashed:
                    raise
                log.error("could not record the end of run %s: %s", result.run_id, describe_failure(exc))
                return

    def _fresh_after(self, options: SyncOptions, started: datetime) -> datetime | None:
        """Integrations whose last successful sync started at or after this are fresh enough to skip (None: take all)."""
        minutes = self.settings.min_interval_minutes
        return None if options.ignores_freshness or minutes <= 0 else started - timedelta(minutes=minutes)

    @contextmanager
    def _heartbeat_engine(self) -> Iterator:
        """PostgreSQL: a one-connection engine of its own (the "+1" of the budget), so leases are renewed even
        while every pooled connection is busy. SQLite: the same engine (its writes queue on one lock anyway)."""
        if self.db.dialect.name != "postgresql":
            yield self.db
            return
        beat = make_engine(self.settings.database_url, pool_size=1)
        try:
            yield beat
        finally:
            beat.dispose()

    # ---------------------------------------------------------------- one integration

    def _sync_one(
        self, item: DueIntegration, run: RunResult, options: SyncOptions, locker: Locker, session, fresh_after: datetime | None
    ) -> IntegrationResult:
        """Claim, read, attempt. Never raises: anything that goes wrong is this integration's result."""
        result = IntegrationResult(item.id, item.platform, item.email, item.account_id, status="skipped")
        if self.cancel.is_set():  # the run was stopped before this one's turn
            result.status = "not_started"
            return result
        try:
            claim = locker.try_claim(item.id)
            if claim is None:
                return self._skip(result, "another run is syncing it", kind="leased_elsewhere")
            with claim:  # released on the way out, whatever happens (an interrupt included)
                if self.cancel.is_set():
                    result.status = "not_started"
                    return result
                state = claim.state
                if state is None:
                    with self.db.begin() as conn:
                        state = store.integration_state(conn, item.id)
                if state is None or not state.is_active:
                    return self._skip(result, "removed or disabled meanwhile", quiet=True, kind="disabled")
                if not options.force and state.last_attempt_at is not None and state.last_attempt_at >= run.started_at:
                    return self._skip(result, "already synced by another run", kind="already_synced")
                if _is_fresh(state.last_sync_started_at, fresh_after):  # another host synced it since the selection
                    return self._skip(result, _fresh_reason(state.last_sync_started_at), kind="fresh")
                if state.platform == "google" and self.google_exhausted is not None:
                    result.retry_at = self.google_exhausted
                    return self._skip(
                        result,
                        f"Google Ads operations for today are used up; next try after {self.google_exhausted:%Y-%m-%d %H:%M} UTC",
                        kind="google_quota",
                    )
                log.info("Syncing %s for %s (%s)...", item.platform, item.email, result.label)
                self._attempt(state, claim, result, run.run_id, options, session)
        except Exception as exc:
            result.status, result.error = "error", describe_failure(exc)
            log.debug("could not sync or record integration %s", item.id, exc_info=True)
        self._log_result(result, run.run_id)
        return result

    def _report_held_back(self, held: list[tuple[DueIntegration, str, str, datetime | None]], result: RunResult) -> None:
        """Active integrations the run does not take (rate_limited, needs_reauth, closed upstream): skipped, with why."""
        for item, kind, reason, retry_at in held:
            skipped = IntegrationResult(item.id, item.platform, item.email, item.account_id, status="skipped", retry_at=retry_at)
            result.results.append(self._skip(skipped, reason, kind=kind))
            self.on_result(skipped)

    def _skip(self, result: IntegrationResult, reason: str, *, quiet: bool = False, kind: str | None = None) -> IntegrationResult:
        result.error = reason
        result.skip_kind = kind
        if not quiet:
            log.info("Skipping %s for %s (%s): %s", result.platform, result.email, result.label, reason)
        return result

    def _attempt(
        self, state: IntegrationState, claim: Claim, result: IntegrationResult, run_id: int, options: SyncOptions, session
    ) -> None:
        s = self.settings
        started = self.clock.now()
        clock = time.monotonic()
        api = HttpClient(
            session, timeout=s.http_timeout, attempts=s.retry_attempts, max_wait=s.retry_max_wait, clock=self.clock, cancel=self.cancel
        )
        work = _Fetch(claim, Credentials())
        try:
            self._fetch(state, work, api, force_full=options.full, now=started)
            result.window = work.window
            self.cancel.check()  # stopped while fetching: roll back (write nothing); a write already begun is finished
            result.rows = self._save_success(state, work, run_id, started, api)
            result.status = "ok"
        except Interrupted as exc:  # the run was stopped while this one fetched: nothing of it is written
            result.window = work.window
            self._abandon(state, result, api, exc)
        except Exception as exc:
            result.window = work.window
            result.status = exc.status if isinstance(exc, ApiError) else "error"
            result.error = describe_failure(exc)
            if work.fetched is not None and not isinstance(exc, EmsyncError):  # fetched, then the write failed
                result.error = f"fetched {len(work.fetched.rows)} rows but could not store them ({result.error}); previous rows kept"
            result.retry_at = exc.retry_at if isinstance(exc, (RateLimited, AccountClosed)) else None
            if not isinstance(exc, EmsyncError):
                log.debug("unexpected failure syncing %s", state.label, exc_info=True)
            if isinstance(exc, ApiError) and work.fetched is None:
                # The side steps' warnings said the sync went on; it did not, and the failure says what to do.
                # They are tried again next run.
                work.warnings = []
            if not isinstance(exc, LeaseLost):  # the integration is another process's now: record nothing on it
                try:
                    scope = exc.scope if isinstance(exc, RateLimited) and state.platform == "google" else None
                    self._save_failure(state, work, result, run_id, started, api, quota_scope=scope)
                except Exception as again:  # noqa: BLE001 - e.g. the database is gone: say so, never drop the result
                    result.error = f"{result.error} (not recorded: {describe_failure(again)})"
        result.warnings = work.warnings
        result.api_requests = api.requests
        result.duration_s = time.monotonic() - clock

    def _abandon(self, state: IntegrationState, result: IntegrationResult, api: HttpClient, exc: Interrupted) -> None:
        """An attempt the run's interrupt stopped: nothing of it is written — no rows, no attempt, no status — except the
        Google Ads operations it already spent (the ledger counts what was sent). The claim is released by the caller."""
        result.status = "interrupted"
        result.error = str(exc)
        if api.operations:
            try:
                with write_transaction(self.db) as conn:
                    ledger.record(conn, operations=api.operations, source="sync", now=self.clock.now(), integration_id=state.id)
            except Exception:  # the run is stopping; a lost count is corrected by the next 429
                log.debug("could not record the operations of an interrupted attempt", exc_info=True)

    def _fetch(self, state: IntegrationState, work: _Fetch, api: HttpClient, *, force_full: bool, now: datetime) -> None:
        """Decrypt, prepare the credentials, learn the account (once; Meta: on every full-window sync), read the
        window. Fills ``work`` as it goes; side steps that fail become ``work.warnings``."""
        creds = work.creds
        connector = access.make_connector(state.platform, self.settings, api, self.clock)
        work.warnings.extend(self.access.prepare(state, connector, creds))
        known = state.currency is not None or state.time_zone is not None
        full = needs_full_window(state, self.settings, force_full=force_full, now=now)
        if not known or (full and connector.reads_account_on_full_sync):
            try:
                work.info = connector.account_info(state.account, creds)
            except (NeedsReauth, AccountClosed):
                raise
            except ApiError as exc:
                if not known:
                    raise
                consequence = "synced with the currency and time zone already stored"
                work.warnings.append(side_step_warning("reading the account's metadata and state", exc, consequence))
            else:
                work.warnings.extend(work.info.warnings)
                state = _with_info(state, work.info)
        work.window = window_for(state, self.settings, force_full=force_full, now=now)
        work.fetched = connector.fetch(state.account, work.window, creds)
        work.warnings.extend(work.fetched.warnings)

    def _save_success(self, state: IntegrationState, work: _Fetch, run_id: int, started: datetime, api: HttpClient) -> int:
        """One write transaction: what the connector learnt, the window, the attempt and its operations, the status.
        Returns rows written."""
        assert work.window is not None and work.fetched is not None
        currency = work.info.currency if work.info else state.currency
        link_ratios = state.platform == "meta" and self.settings.meta_clicks == "link"
        with write_transaction(self.db) as conn:
            self.access.save(conn, state, work.creds)  # a token refreshed during the fetch (a Google 401)
            written = campaign_rows.replace_window(conn, state.id, work.window, work.fetched, currency, started, link_ratios=link_ratios)
            rows = written.rows
            warnings = [*work.warnings, *written.warnings]
            finished = self.clock.now()
            ledger.record(conn, operations=api.operations, source="sync", now=finished, integration_id=state.id)
            attempt = runs.attempt_row(
                run_id=run_id,
                integration_id=state.id,
                window=work.window,
                started_at=started,
                finished_at=finished,
                status="ok",
                rows=rows,
                api_requests=api.requests,
                error=None,
            )
            # The attempt, the status and the lease's release in one statement, made only while the lease is still
            # ours (the fence): else everything above rolls back.
            held = store.record_success(
                conn,
                state.id,
                attempt=attempt,
                started_at=started,
                finished_at=finished,
                full=work.window.full,
                warning=_joined(warnings),
                lease_token=work.claim.token,
                account=None if work.info is None else store.account_values(work.info, self.clock.now()),
            )
            if not held:
                raise work.claim.lost()
            work.claim.released_by_write()
        work.warnings = warnings
        return rows

    def _save_failure(
        self,
        state: IntegrationState,
        work: _Fetch,
        result: IntegrationResult,
        run_id: int,
        started: datetime,
        api: HttpClient,
        *,
        quota_scope: str | None = None,
    ) -> None:
        """One write transaction: a renewed token must survive the failure; the attempt, its operations, the failing status.

        A Google 429 naming the developer token's or the project's quota (``quota_scope``) also marks the day
        exhausted in the ledger, and this run tries no other Google integration.
        """
        error = result.error or result.status
        with write_transaction(self.db) as conn:
            try:
                work.claim.fence(conn)
            except LeaseLost as exc:
                result.error = f"{error} (not recorded: {exc})"
                return
            self._remember(conn, state, work)
            finished = self.clock.now()
            runs.record_attempt(
                conn,
                run_id=run_id,
                integration_id=state.id,
                window=work.window,
                started_at=started,
                finished_at=finished,
                status=result.status,
                rows=0,
                api_requests=api.requests,
                error=error,
            )
            ledger.record(conn, operations=api.operations, source="sync", now=finished, integration_id=state.id)
            if quota_scope and ledger.mark_exhausted(conn, scope=quota_scope, source="sync", now=finished, integration_id=state.id):
                with self._google_lock:
                    self.google_exhausted = ledger.next_day_start(finished)
            closed = result.retry_at if result.status == "error" else None  # an account closed upstream: back off a day
            store.mark_failure(
                conn,
                state.id,
                finished_at=finished,
                status=result.status,
                error=error,
                retry_at=result.retry_at if result.status == "rate_limited" else None,
                next_attempt_at=closed,
                warning=_joined(work.warnings),
            )

    def _remember(self, conn, state: IntegrationState, work: _Fetch) -> None:
        """Persist a token refreshed during the fetch (a Google 401) and first-sync account metadata, inside the caller's transaction."""
        self.access.save(conn, state, work.creds)
        if work.info is not None:
            store.save_account_info(conn, state.id, work.info, self.clock.now())

    def _log_result(self, result: IntegrationResult, run_id: int) -> None:
        if result.status in ("skipped", "not_started"):
            return
        if result.status == "interrupted":
            log.info("Stopped syncing %s for %s (%s): %s", result.platform, result.email, result.label, result.error)
            return
        fields = {
            "integration_result": True,
            "integration_id": result.integration_id,
            "platform": result.platform,
            "email": result.email,
            "status": result.status,
            "rows": result.rows,
            "run_id": run_id,
        }
        if result.status == "ok":
            log.info(
                "Successfully synced %s for %s (%s): %d rows, %d requests, %.1fs",
                result.platform,
                result.email,
                result.label,
                result.rows,
                result.api_requests,
                result.duration_s,
                extra=fields,
            )
            if result.warnings:
                log.warning(
                    "%s for %s (%s) synced with a warning: %s", result.platform, result.email, result.label, _joined(result.warnings)
                )
        else:
            log.error(
                "Failed to sync %s for %s (%s): %s: %s",
                result.platform,
                result.email,
                result.label,
                result.status,
                result.error,
                extra=fields,
            )


def _is_fresh(last_started: datetime | None, fresh_after: datetime | None) -> bool:
    return fresh_after is not None and last_started is not None and last_started >= fresh_after


def _fresh_reason(last_started: datetime | None) -> str:
    return f"synced recently (started {last_started:%Y-%m-%d %H:%M:%S} UTC; EMSYNC_MIN_INTERVAL_MINUTES)"


def _with_info(state: IntegrationState, info: AccountInfo) -> IntegrationState:
    return replace(state, currency=info.currency, time_zone=info.time_zone)


def _joined(warnings: list[str]) -> str | None:
    """One ``last_warning`` from a sync's warnings (each redacted), None when there were none."""
    unique = list(dict.fromkeys(redact(w) for w in warnings if w))
    return "; ".join(unique) if unique else None
