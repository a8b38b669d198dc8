"""The sync engine: pick due integrations, claim each, fetch through its connector, replace its window.

Each integration is independent: its own claim, its own transaction, its own
error. A failure is recorded on that integration and the run moves on.
"""
from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import runs, store
from .config import Settings
from .connectors.base import Account, Credentials, SyncWindow, account_label
from .crypto import TokenBox
from .errors import ApiError, EmsyncError, RateLimited
from .http import HttpClient, new_session, redact, register_secret
from .db import write_transaction
from .locks import locker_for

log = logging.getLogger("emsync")


@dataclass(frozen=True)
class SyncOptions:
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


def window_for(state: dict, settings: Settings, *, force_full: bool, now: datetime) -> SyncWindow:
    """The dates to fetch: today in the account's time zone and the days before it."""
    try:
        tz = ZoneInfo(state["time_zone"]) if state.get("time_zone") else timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        tz = timezone.utc
    today = now.astimezone(tz).date()
    last_full = state.get("last_full_sync_at")
    full = force_full or last_full is None or now - last_full >= timedelta(hours=settings.full_sync_hours)
    days = settings.lookback_days if full else min(settings.recent_days, settings.lookback_days)
    return SyncWindow(since=today - timedelta(days=days - 1), until=today, full=full)


def make_connector(platform: str, settings: Settings, api: HttpClient):
    if platform == "meta":
        from .connectors.meta import MetaConnector

        return MetaConnector(settings, api)
    from .connectors.google import GoogleConnector

    return GoogleConnector(settings, api)


class Engine:
    def __init__(self, settings: Settings, engine, *, on_result: Callable[[IntegrationResult], None] | None = None,
                 on_start: Callable[[int], None] | None = None):
        self.settings = settings
        self.engine = engine
        self.box = TokenBox(settings.require_secret_key())
        self.on_result = on_result or (lambda result: None)
        self.on_start = on_start or (lambda due: None)
        self.host = socket.gethostname()
        register_secret(*settings.secrets())

    def open_run(self, options: SyncOptions) -> RunResult:
        """Check the key and the user, bury dead runs, record the new run. Nothing is synced yet.

        Raises:
            UserError: unknown email; ConfigError: a key that cannot decrypt the stored tokens.
        """
        scope = ", ".join(p for p in (options.email and f"user {options.email}", options.platform and f"platform {options.platform}") if p) or None
        with self.engine.begin() as conn:
            if options.email is not None:
                store.user_id_for(conn, options.email)
            sample = store.any_encrypted_token(conn)
        if sample is not None:
            self.box.decrypt(sample)  # a wrong key is a configuration error: fail before writing anything
        with write_transaction(self.engine) as conn:
            runs.bury_dead_runs(conn, self.host)
            run_id, started_at = runs.start_run(conn, trigger=options.trigger, host=self.host, scope=scope, full=options.full)
        return RunResult(run_id=run_id, started_at=started_at)

    def run(self, options: SyncOptions, opened: RunResult | None = None) -> RunResult:
        """One invocation of sync-all / sync-user (``opened``: a run already recorded by ``open_run``)."""
        clock = time.monotonic()
        result = opened or self.open_run(options)
        try:
            with self.engine.begin() as conn:
                due = runs.due_integrations(
                    conn, email=options.email, platform=options.platform, include_reauth=options.email is not None, now=result.started_at
                )
            result.due = len(due)
            log.info("Found %d active integrations%s", len(due), f" for {options.email}" if options.email else "")
            self.on_start(len(due))
            locker = locker_for(self.engine, self.settings.database_url)
            session = new_session(self.settings.concurrency)
            with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="sync") as pool:
                futures = [pool.submit(self._sync_one, item, result.run_id, result.started_at, options, locker, session) for item in due]
                for future in as_completed(futures):
                    item_result = future.result()
                    result.results.append(item_result)
                    self.on_result(item_result)
            session.close()
        finally:
            result.duration_s = time.monotonic() - clock
            with write_transaction(self.engine) as conn:
                runs.finish_run(conn, result.run_id, total=result.due, succeeded=result.succeeded, failed=result.failed,
                                skipped=result.skipped, rows=result.rows)
        result.results.sort(key=lambda r: r.integration_id)
        log.info(result.summary())
        return result

    def _sync_one(self, item: dict, run_id: int, run_started: datetime, options: SyncOptions, locker, session) -> IntegrationResult:
        label = account_label(item["platform"], item["account_id"])
        result = IntegrationResult(item["id"], item["platform"], item["email"], item["account_id"], status="skipped")
        claim = locker.try_claim(item["id"])
        if claim is None:
            result.error = "another run is syncing it"
            log.info("Skipping %s for %s (%s): another run is syncing it", item["platform"], item["email"], label)
            return result
        with claim:
            with self.engine.begin() as conn:
                state = runs.sync_state(conn, item["id"])
            if state is None or not state["is_active"]:
                result.error = "removed or disabled meanwhile"
                return result
            if state["last_attempt_at"] is not None and state["last_attempt_at"] >= run_started:
                result.error = "already synced by another run"
                log.info("Skipping %s for %s (%s): already synced by another run", item["platform"], item["email"], label)
                return result
            log.info("Syncing %s for %s (%s)...", item["platform"], item["email"], label)
            return self._attempt(state, result, run_id, options, session, label)

    def _attempt(self, state: dict, result: IntegrationResult, run_id: int, options: SyncOptions, session, label: str) -> IntegrationResult:
        started = datetime.now(timezone.utc)
        clock = time.monotonic()
        s = self.settings
        api = HttpClient(session, timeout=s.http_timeout, attempts=s.retry_attempts, max_wait=s.retry_max_wait)
        creds = Credentials(token_expires_at=state["token_expires_at"], cached_access_token_expires_at=state["cached_access_token_expires_at"])
        connector = make_connector(state["platform"], s, api)
        account = Account(state["platform"], state["account_id"], state["login_customer_id"], state["time_zone"])
        window, info = None, None
        try:
            creds.access_token = self.box.decrypt(state["access_token_enc"])
            creds.refresh_token = self.box.decrypt(state["refresh_token_enc"])
            creds.cached_access_token = self.box.decrypt(state["cached_access_token_enc"])
            register_secret(*creds.secrets())
            connector.prepare(creds)
            if state["currency"] is None and state["time_zone"] is None:
                info = connector.account_info(account, creds)
                state = {**state, "currency": info.currency, "time_zone": info.time_zone}
            window = window_for(state, s, force_full=options.full, now=started)
            result.window = window
            rows = connector.fetch(account, window, creds)
            # One write transaction per integration: what the connector learnt, the window, the status.
            with write_transaction(self.engine) as conn:
                self._remember(conn, state["id"], creds, info)
                result.rows = store.replace_window(conn, state["id"], window, rows, state["currency"], started)
                finished = runs.record_attempt(conn, run_id=run_id, integration_id=state["id"], window=window, started_at=started,
                                               status="ok", rows=result.rows, api_requests=api.requests, error=None)
                runs.mark_success(conn, state["id"], finished_at=finished, full=window.full)
            result.status = "ok"
        except Exception as exc:  # noqa: BLE001 - one integration's failure must never stop the others
            result.status = exc.status if isinstance(exc, ApiError) else "error"
            result.error = redact(str(exc) if isinstance(exc, EmsyncError) else f"{type(exc).__name__}: {exc}")
            result.retry_at = exc.retry_at if isinstance(exc, RateLimited) else None
            if not isinstance(exc, EmsyncError):
                log.debug("unexpected failure syncing %s", label, exc_info=True)
            with write_transaction(self.engine) as conn:
                self._remember(conn, state["id"], creds, info)  # a renewed token must survive the failure
                finished = runs.record_attempt(conn, run_id=run_id, integration_id=state["id"], window=window, started_at=started,
                                               status=result.status, rows=0, api_requests=api.requests, error=result.error)
                runs.mark_failure(conn, state["id"], finished_at=finished, status=result.status, error=result.error, retry_at=result.retry_at)
        result.api_requests = api.requests
        result.duration_s = time.monotonic() - clock
        fields = {"integration_result": True, "integration_id": result.integration_id, "platform": result.platform,
                  "email": result.email, "status": result.status, "rows": result.rows, "run_id": run_id}
        if result.status == "ok":
            log.info("Successfully synced %s for %s (%s): %d rows, %d requests, %.1fs",
                     result.platform, result.email, label, result.rows, result.api_requests, result.duration_s, extra=fields)
        else:
            log.error("Failed to sync %s for %s (%s): %s: %s", result.platform, result.email, label, result.status, result.error, extra=fields)
        return result

    def _remember(self, conn, integration_id: int, creds: Credentials, info) -> None:
        """Persist renewed tokens and first-sync account metadata, inside the caller's transaction."""
        if creds.changed:
            store.save_tokens(
                conn, integration_id,
                access_token_enc=self.box.encrypt(creds.access_token),
                token_expires_at=creds.token_expires_at,
                cached_access_token_enc=self.box.encrypt(creds.cached_access_token),
                cached_access_token_expires_at=creds.cached_access_token_expires_at,
            )
        if info is not None:
            store.save_account_info(conn, integration_id, currency=info.currency, time_zone=info.time_zone, name=info.name)
