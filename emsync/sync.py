"""The sync engine: pick due integrations, claim each, fetch through its connector, save the window.

The path of one integration, top to bottom in ``Syncer``:

    _sync_one      claim it (locks.py) and read its IntegrationState (store.py)
    _attempt       decrypt Credentials, then
      _fetch         connector.prepare → account_info (first sync) → fetch(window)
      _save_success  one write transaction: renewed tokens, the window (campaign_rows.py),
                     the attempt record (runs.py), its Google operations (ledger.py),
                     the integration's status (store.py)
      _save_failure  one write transaction: renewed tokens, the attempt, its operations, the failing status

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
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import access, budget, campaign_rows, ledger, runs, store
from .clock import SYSTEM_CLOCK, Clock
from .config import Settings
from .crypto import TokenBox
from .db import write_transaction
from .domain import AccountInfo, Credentials, Fetched, IntegrationState, SyncWindow, account_label
from .errors import ApiError, EmsyncError, RateLimited
from .healthcheck import Healthcheck
from .http import HttpClient, new_session
from .locks import locker_for
from .redaction import redact, register_secret
from .runs import DueIntegration

log = logging.getLogger("emsync")


@dataclass(frozen=True)
class SyncOptions:
    """What a run was asked to do: ``email`` limits it to one user (sync-user), ``full`` re-fetches the whole window."""

    email: str | None = None
    platform: str | None = None
    full: bool = False
    trigger: str = "manual"


@dataclass
class IntegrationResult:
    integration_id: int
    platform: str
    email: str
    account_id: str
    status: str  # ok | error | needs_reauth | rate_limited | skipped
    rows: int = 0
    api_requests: int = 0
    duration_s: float = 0.0
    error: str | None = None
    window: SyncWindow | None = None
    retry_at: datetime | None = None

    @property
    def failed(self) -> bool:
        return self.status not in ("ok", "skipped")

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
        }


@dataclass
class RunResult:
    run_id: int
    started_at: datetime
    due: int = 0
    results: list[IntegrationResult] = field(default_factory=list)
    duration_s: float = 0.0

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
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        text = f"Sync completed: {self.succeeded} success, {self.failed} failed"
        if self.skipped:
            text += f", {self.skipped} skipped"
        return f"{text}, {self.rows} rows in {self.duration_s:.1f}s"

    def as_dict(self) -> dict:
        """The shape of ``sync-all --json``."""
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "due": self.due,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "rows": self.rows,
            "integrations": [r.as_dict() for r in self.results],
        }


def window_for(state: IntegrationState, settings: Settings, *, force_full: bool, now: datetime) -> SyncWindow:
    """The dates to fetch: today in the account's time zone and the days before it.

    The whole lookback window on the first sync, with ``force_full``, or when
    the last full sync is ``EMSYNC_FULL_SYNC_HOURS`` old; else the recent days.
    """
    try:
        tz = ZoneInfo(state.time_zone) if state.time_zone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    today = now.astimezone(tz).date()
    last_full = state.last_full_sync_at
    full = force_full or last_full is None or now - last_full >= timedelta(hours=settings.full_sync_hours)
    days = settings.lookback_days if full else min(settings.recent_days, settings.lookback_days)
    return SyncWindow(since=today - timedelta(days=days - 1), until=today, full=full)


def describe_failure(exc: BaseException) -> str:
    """One redacted line for ``last_error``: emsync's own message, or the type and text of a surprise."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, EmsyncError):
        text = str(exc)
    elif isinstance(exc, SQLAlchemyError):
        text = "database error: " + (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact(text)


@dataclass
class _Fetch:
    """What ``_fetch`` learnt, kept for the save steps (success or failure)."""

    creds: Credentials
    window: SyncWindow | None = None
    info: AccountInfo | None = None
    fetched: Fetched | None = None


class Syncer:
    """Runs sync-all / sync-user for one process: a thread per integration, up to ``EMSYNC_CONCURRENCY`` at once.

    ``on_start(due)`` and ``on_result(result)`` let a front end show progress;
    ``clock`` supplies every timestamp (tests pass a ``ManualClock``).
    """

    def __init__(
        self,
        settings: Settings,
        db_engine,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_result: Callable[[IntegrationResult], None] | None = None,
        on_start: Callable[[int], None] | None = None,
    ):
        self.settings = settings
        self.db = db_engine
        self.clock = clock
        self.box = TokenBox(settings.require_secret_key())
        self.on_result = on_result or (lambda result: None)
        self.on_start = on_start or (lambda due: None)
        self.host = socket.gethostname()
        self.google_exhausted: datetime | None = None  # set when a 429 says the project's operations for the day are gone
        self._google_lock = threading.Lock()
        register_secret(*settings.secrets())

    # ---------------------------------------------------------------- a run

    def open_run(self, options: SyncOptions) -> RunResult:
        """Check the key and the user, bury dead runs, record the new run. Nothing is synced yet.

        Raises:
            UserError: unknown email; ConfigError: a key that cannot decrypt the stored tokens.
        """
        parts = (options.email and f"user {options.email}", options.platform and f"platform {options.platform}")
        scope = ", ".join(p for p in parts if p) or None
        with self.db.begin() as conn:
            if options.email is not None:
                store.user_id_for(conn, options.email)
            sample = store.any_encrypted_token(conn)
        if sample is not None:
            self.box.decrypt(sample)  # a wrong key is a configuration error: fail before writing anything
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
            ping.finish(False, f"emsync run crashed: {type(exc).__name__}")
            raise
        ping.finish(result.failed == 0, result.summary())
        return result

    def _run(self, options: SyncOptions, opened: RunResult | None) -> RunResult:
        clock = time.monotonic()
        result = opened or self.open_run(options)
        try:
            with self.db.begin() as conn:
                due = runs.due_integrations(
                    conn, email=options.email, platform=options.platform, include_reauth=options.email is not None, now=result.started_at
                )
                plan = budget.google_budget(self.settings, budget.active_google(conn))
                self.google_exhausted = ledger.exhausted_until(conn, result.started_at)
            result.due = len(due)
            log.info("Found %d active integrations%s", len(due), f" for {options.email}" if options.email else "")
            self.on_start(len(due))
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
                result.results.append(self._skip(skipped, reason, quiet=True))
                log.debug("Skipping %s (%s): %s", item.email, skipped.label, reason)
                self.on_result(skipped)
            locker = locker_for(self.db, self.settings.database_url)
            session = new_session(self.settings.concurrency)
            with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="sync") as pool:
                futures = [pool.submit(self._sync_one, item, result, options, locker, session) for item in due]
                for future in as_completed(futures):
                    item_result = future.result()
                    result.results.append(item_result)
                    self.on_result(item_result)
            session.close()
        finally:
            result.duration_s = time.monotonic() - clock
            with write_transaction(self.db) as conn:
                runs.finish_run(
                    conn,
                    result.run_id,
                    now=self.clock.now(),
                    total=result.due,
                    succeeded=result.succeeded,
                    failed=result.failed,
                    skipped=result.skipped,
                    rows=result.rows,
                )
        result.results.sort(key=lambda r: r.integration_id)
        log.info(result.summary())
        return result

    # ---------------------------------------------------------------- one integration

    def _sync_one(self, item: DueIntegration, run: RunResult, options: SyncOptions, locker, session) -> IntegrationResult:
        """Claim, read, attempt. Never raises: anything that goes wrong is this integration's result."""
        result = IntegrationResult(item.id, item.platform, item.email, item.account_id, status="skipped")
        try:
            claim = locker.try_claim(item.id)
            if claim is None:
                return self._skip(result, "another run is syncing it")
            with claim:
                with self.db.begin() as conn:
                    state = store.integration_state(conn, item.id)
                if state is None or not state.is_active:
                    return self._skip(result, "removed or disabled meanwhile", quiet=True)
                if state.last_attempt_at is not None and state.last_attempt_at >= run.started_at:
                    return self._skip(result, "already synced by another run")
                if state.platform == "google" and self.google_exhausted is not None:
                    result.retry_at = self.google_exhausted
                    return self._skip(
                        result, f"Google Ads operations for today are used up; next try after {self.google_exhausted:%Y-%m-%d %H:%M} UTC"
                    )
                log.info("Syncing %s for %s (%s)...", item.platform, item.email, result.label)
                self._attempt(state, result, run.run_id, options, session)
        except Exception as exc:
            result.status, result.error = "error", describe_failure(exc)
            log.debug("could not sync or record integration %s", item.id, exc_info=True)
        self._log_result(result, run.run_id)
        return result

    def _skip(self, result: IntegrationResult, reason: str, *, quiet: bool = False) -> IntegrationResult:
        result.error = reason
        if not quiet:
            log.info("Skipping %s for %s (%s): %s", result.platform, result.email, result.label, reason)
        return result

    def _attempt(self, state: IntegrationState, result: IntegrationResult, run_id: int, options: SyncOptions, session) -> None:
        s = self.settings
        started = self.clock.now()
        clock = time.monotonic()
        api = HttpClient(session, timeout=s.http_timeout, attempts=s.retry_attempts, max_wait=s.retry_max_wait, clock=self.clock)
        work = _Fetch(Credentials())
        try:
            self._fetch(state, work, api, force_full=options.full, now=started)
            result.window = work.window
            result.rows = self._save_success(state, work, run_id, started, api)
            result.status = "ok"
        except Exception as exc:
            result.window = work.window
            result.status = exc.status if isinstance(exc, ApiError) else "error"
            result.error = describe_failure(exc)
            result.retry_at = exc.retry_at if isinstance(exc, RateLimited) else None
            if not isinstance(exc, EmsyncError):
                log.debug("unexpected failure syncing %s", state.label, exc_info=True)
            scope = exc.scope if isinstance(exc, RateLimited) and state.platform == "google" else None
            self._save_failure(state, work, result, run_id, started, api, quota_scope=scope)
        result.api_requests = api.requests
        result.duration_s = time.monotonic() - clock

    def _fetch(self, state: IntegrationState, work: _Fetch, api: HttpClient, *, force_full: bool, now: datetime) -> None:
        """Decrypt, prepare the credentials, learn the account once, read the window. Fills ``work`` as it goes."""
        creds = work.creds = access.decrypt_credentials(self.box, state)
        connector = access.open_connector(self.settings, state, creds, api, self.clock)
        if state.currency is None and state.time_zone is None:
            work.info = connector.account_info(state.account, creds)
            state = _with_info(state, work.info)
        work.window = window_for(state, self.settings, force_full=force_full, now=now)
        work.fetched = connector.fetch(state.account, work.window, creds)

    def _save_success(self, state: IntegrationState, work: _Fetch, run_id: int, started: datetime, api: HttpClient) -> int:
        """One write transaction: what the connector learnt, the window, the attempt and its operations, the status.
        Returns rows written."""
        assert work.window is not None and work.fetched is not None
        currency = work.info.currency if work.info else state.currency
        with write_transaction(self.db) as conn:
            self._remember(conn, state.id, work)
            rows = campaign_rows.replace_window(conn, state.id, work.window, work.fetched.rows, currency, started)
            finished = self.clock.now()
            runs.record_attempt(
                conn,
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
            ledger.record(conn, operations=api.operations, source="sync", now=finished, integration_id=state.id)
            store.mark_success(conn, state.id, finished_at=finished, full=work.window.full)
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
            self._remember(conn, state.id, work)
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
            store.mark_failure(conn, state.id, finished_at=finished, status=result.status, error=error, retry_at=result.retry_at)

    def _remember(self, conn, integration_id: int, work: _Fetch) -> None:
        """Persist renewed tokens and first-sync account metadata, inside the caller's transaction."""
        access.save_credentials(conn, self.box, integration_id, work.creds)
        if work.info is not None:
            store.save_account_info(
                conn, integration_id, currency=work.info.currency, time_zone=work.info.time_zone, name=work.info.name, now=self.clock.now()
            )

    def _log_result(self, result: IntegrationResult, run_id: int) -> None:
        if result.status == "skipped":
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


def _with_info(state: IntegrationState, info: AccountInfo) -> IntegrationState:
    return replace(state, currency=info.currency, time_zone=info.time_zone)
