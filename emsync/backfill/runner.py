"""`emsync backfill`: history before the regular window, one chunk at a time, never in cron's way.

For each selected integration, a worker thread (up to ``EMSYNC_CONCURRENCY``):

    _learn_account  currency and time zone, once, when no sync learnt them yet
    _range          the dates: --since (clamped to Meta's 37 months) to --until, never into the regular window
    plan            the chunks those dates need (plan.py), recorded (chunks.py)
    _next_chunk     lease the newest pending chunk (stop on quota, usage or Ctrl-C first), then
      _call           the connector's ``fetch`` for the chunk's dates, the lease kept alive meanwhile
      _save_chunk     one write transaction: the lease re-checked, the dates replaced exactly
                      (``campaign_rows.replace_window``), renewed tokens, the operations (ledger.py)

Stopping for a quota, a rate limit or Meta usage above 75 % is not a failure:
the integration is ``paused`` with the time it may resume (``--wait`` sleeps
until then on the clock's sleeper). ``stop`` (the cancel token set on Ctrl-C
or SIGTERM, see ``interrupts``) is checked between chunks and before a chunk
is saved, and aborts the chunk's fetch in flight: the chunk in flight is rolled
back, every finished chunk stays.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import access, campaign_rows, keys, ledger, store
from ..clock import SYSTEM_CLOCK, Clock
from ..collector import fewer_collections
from ..config import Settings
from ..crypto import TokenBox
from ..db import write_transaction
from ..domain import Connector, Credentials, IntegrationState, SyncWindow
from ..errors import RateLimited, UserError
from ..http import HttpClient, new_session
from ..interrupts import CancelToken, Interrupted
from ..sync import describe_failure, window_for
from . import chunks
from .allowance import GoogleAllowance
from .plan import ONE_DAY, first_available, plan_chunks
from .results import BackfillOptions, BackfillResult, IntegrationBackfill

OLDEST_SINCE = date(2000, 1, 1)

log = logging.getLogger("emsync")

USAGE_PAUSE_PCT = 75.0  # Meta usage above this pauses a backfill (cron runs go on up to Meta's own limits)
USAGE_PAUSE = timedelta(minutes=10)  # how long, when Meta names no time to regain access


class _Stop(Exception):
    """The integration's backfill stops here: ``status`` says why (paused, failed, interrupted)."""

    def __init__(self, status: str, reason: str, resume_after: datetime | None = None):
        super().__init__(reason)
        self.status, self.reason, self.resume_after = status, reason, resume_after


class Backfiller:
    """Runs one ``backfill`` invocation. ``stop``: set it to stop; the chunk in flight is aborted and rolled back.

    ``on_progress(item)`` is called whenever an integration's numbers change; ``clock`` supplies every
    timestamp and the sleeper ``--wait`` uses (tests pass a ``ManualClock``).
    """

    def __init__(self, settings: Settings, engine, *, clock: Clock = SYSTEM_CLOCK, stop: CancelToken | None = None, on_progress=None):
        self.settings = settings
        self.db = engine
        self.clock = clock
        self.stop = stop or CancelToken()
        self.on_progress = on_progress or (lambda item: None)
        self.google = GoogleAllowance(engine, settings, clock)
        self._box: TokenBox | None = None
        self._access: access.CredentialAccess | None = None

    # ---------------------------------------------------------------- the invocation

    def run(self, options: BackfillOptions) -> BackfillResult:
        """Plan (``dry_run``) or run the backfill of every selected integration.

        Raises:
            UserError: unknown email or integration id, a disabled integration named by id, --since after --until.
            ConfigError: no secret key, or one that decrypts none of the stored tokens (checked before anything is written).
        """
        started = time.monotonic()
        result = BackfillResult(options)
        targets, skipped = self._select(options)
        result.integrations = [item for item, _ in targets] + skipped
        if options.dry_run:
            for item, state in targets:
                self._preview(item, state, options)
            result.duration_s = time.monotonic() - started
            return result
        self._box = keys.require_box(self.settings, self.db)
        with self.db.begin() as conn:
            keys.verify_box(conn, self._box)  # a key that decrypts no stored token: fail before writing anything
        self._access = access.CredentialAccess(self.db, self._box)
        session = new_session(self.settings.concurrency, cancel=self.stop)
        try:
            todo = targets
            while todo:
                self._pass(todo, options, session)
                resume = result.resume_after
                if not (options.wait and resume) or self.stop.is_set():
                    break
                self._sleep_until(resume)
                todo = [
                    (item, state)
                    for item, state in targets
                    if item.status == "paused" and item.resume_after and item.resume_after <= self.clock.now()
                ]
        except KeyboardInterrupt:  # no signal handler installed (a library caller): same rule as Ctrl-C in the CLI
            self.stop.set(signal.SIGINT)
        finally:
            session.close()
        result.interrupted = self.stop.is_set()
        result.duration_s = time.monotonic() - started
        return result

    def _select(self, options: BackfillOptions) -> tuple[list[tuple[IntegrationBackfill, IntegrationState]], list[IntegrationBackfill]]:
        """(integrations to backfill with their state, those left out: ``needs_reauth`` ones not named by id or email)."""
        if options.until is not None and options.since > options.until:
            raise UserError(f"--since {options.since} is after --until {options.until}")
        latest_today = self.clock.now().date() + ONE_DAY  # today somewhere (UTC+14)
        if options.since > latest_today:
            raise UserError(f"--since {options.since} is in the future: give a past date")
        if options.since < OLDEST_SINCE:
            raise UserError(
                f"--since {options.since} is before {OLDEST_SINCE}: neither platform holds campaign data that old "
                "(Google Ads began in 2000, Meta keeps 37 months)"
            )
        with self.db.begin() as conn:
            if options.email is not None:
                store.user_id_for(conn, options.email)
            rows = store.list_integrations(conn, email=options.email, platform=options.platform)
            if options.integration_ids:
                known = {r["id"]: r for r in store.list_integrations(conn)}
                unknown = [i for i in options.integration_ids if i not in known]
                if unknown:
                    raise UserError(f"no integration with id {unknown[0]}: see 'emsync integrations list'")
                disabled = [i for i in options.integration_ids if not known[i]["is_active"]]
                if disabled:
                    raise UserError(f"integration {disabled[0]} is disabled: 'emsync integrations enable {disabled[0]}' first")
                rows = [r for r in rows if r["id"] in options.integration_ids]
            rows = [r for r in rows if r["is_active"]]
            states = {r["id"]: store.integration_state(conn, r["id"]) for r in rows}
        named = bool(options.integration_ids or options.email)
        targets, skipped = [], []
        for r in rows:
            item, state = IntegrationBackfill(r["id"], r["platform"], r["email"], r["account_id"]), states[r["id"]]
            if state is None:
                continue
            if r["status"] == "needs_reauth" and not named:  # as sync-all does; naming it tries it anyway
                item.status = "skipped"
                item.reason = f"needs re-authorisation first: 'emsync integrations update {r['id']}'"
                skipped.append(item)
            else:
                targets.append((item, state))
        return targets, skipped

    def _pass(self, todo, options: BackfillOptions, session) -> None:
        with fewer_collections(), ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="backfill") as pool:
            for future in [pool.submit(self._one, item, state, options, session) for item, state in todo]:
                future.result()

    def _sleep_until(self, moment: datetime) -> None:
        log.info("Waiting until %s UTC to go on (--wait)", f"{moment:%Y-%m-%d %H:%M}")
        while not self.stop.is_set():
            left = (moment - self.clock.now()).total_seconds()
            if left <= 0:
                return
            if type(self.clock) is Clock:  # the system clock: wake as soon as Ctrl-C or SIGTERM sets ``stop``
                self.stop.wait(left)
            else:
                self.clock.sleep(min(left, 5.0))

    # ---------------------------------------------------------------- one integration

    def _credentials(self) -> access.CredentialAccess:
        assert self._access is not None, "run() opens the key before any integration"
        return self._access

    def _range(self, state: IntegrationState, options: BackfillOptions, item: IntegrationBackfill) -> tuple[date, date]:
        """[since, until] for this integration, in its time zone, with a warning for each clamp."""
        item.warnings = []
        now = self.clock.now()
        try:
            today = now.astimezone(ZoneInfo(state.time_zone) if state.time_zone else UTC).date()
        except (ZoneInfoNotFoundError, ValueError):
            today = now.date()
        last_day = window_for(state, self.settings, force_full=True, now=now).since - ONE_DAY
        until = options.until or last_day
        if until > last_day:
            item.warnings.append(f"--until {until} reaches into the regular window (from {last_day + ONE_DAY}): stopping at {last_day}")
            until = last_day
        since = options.since
        item.first_available = first_available(state.platform, today)
        if item.first_available and since < item.first_available:
            item.warnings.append(
                f"Meta serves insights for the last 37 months only: starting at {item.first_available}, the first day available"
            )
            since = item.first_available
        item.since, item.until = since, until
        return since, until

    def _preview(self, item: IntegrationBackfill, state: IntegrationState, options: BackfillOptions) -> None:
        """The dry run: the chunks, the requests and operations it would take; nothing fetched, nothing written."""
        since, until = self._range(state, options, item)
        if state.time_zone is None:
            item.warnings.append("time zone unknown until the first sync or backfill: dates shown in UTC")
        with self.db.begin() as conn:
            existing = chunks.existing_chunks(conn, state.id)
            credential = store.credential_state(conn, state.credential_id)
        oldest = item.first_available
        plan = plan_chunks(state.platform, since, until, existing, refetch=options.refetch, oldest=oldest) if since <= until else None
        work = plan.work if plan else ()
        item.chunks = [{"since": lo, "until": hi, "state": "to fetch"} for lo, hi in work]
        item.chunks += [{"since": lo, "until": hi, "state": "done"} for lo, hi in plan.done] if plan else []
        item.chunks.sort(key=lambda c: c["since"], reverse=True)
        item.chunks_total, item.chunks_done = len(item.chunks), len(item.chunks) - len(work)
        first_time = 1 if work and state.currency is None and state.time_zone is None else 0  # account metadata, once
        token = credential.cached_access_token_expires_at if credential else None
        refresh = state.platform == "google" and bool(work) and (token is None or token - self.clock.now() < timedelta(minutes=5))
        item.expected_requests = len(work) + first_time + refresh
        if state.platform == "google":
            item.expected_operations = len(work) + first_time
        item.status = "planned" if work else "done"

    def _one(self, item: IntegrationBackfill, state: IntegrationState, options: BackfillOptions, session) -> None:
        """Backfill one integration; never raises (what went wrong is the item's status)."""
        item.status, item.reason, item.error, item.resume_after = "running", None, None, None
        started = time.monotonic()
        api = HttpClient(
            session,
            timeout=self.settings.http_timeout,
            attempts=self.settings.retry_attempts,
            max_wait=self.settings.retry_max_wait,
            clock=self.clock,
            cancel=self.stop,
        )
        try:
            with self.db.begin() as conn:  # fresh: a regular sync may have renewed a token or learnt the account meanwhile
                state = store.integration_state(conn, state.id) or state
            creds = Credentials()
            connector = access.make_connector(state.platform, self.settings, api, self.clock)
            for warning in self._credentials().prepare(state, connector, creds):  # a failed renewal: go on with the token
                log.warning("%s: %s", state.label, warning)
            state = self._learn_account(state, connector, creds, api)
            since, until = self._range(state, options, item)
            if since > until:
                item.status, item.reason = "done", "nothing before the regular window in that range"
                return
            with write_transaction(self.db) as conn:
                chunks.lock_backfill(conn, state.id, since, until, now=self.clock.now())
                existing = chunks.existing_chunks(conn, state.id)
                plan = plan_chunks(state.platform, since, until, existing, refetch=options.refetch, oldest=item.first_available)
                chunks.apply_plan(conn, state.id, plan, now=self.clock.now())
            item.chunks_total, item.chunks_done = len(plan.work) + len(plan.done), len(plan.done)
            log.info(
                "Backfilling %s %s (%s): %s..%s, %d chunks to fetch", item.platform, item.email, item.label, since, until, len(plan.work)
            )
            self.on_progress(item)
            while self._next_chunk(item, state, plan.work, connector, creds, api, started):
                pass
            with self.db.begin() as conn:
                held = chunks.pending_in(conn, state.id, since, until)
            item.status = "elsewhere" if held else "done"
            item.reason = f"{held} chunks are being fetched by another backfill" if held else None
        except _Stop as stop:
            item.stopped(stop.status, stop.reason, stop.resume_after)
        except Exception as exc:  # renewing a token, reading the database...: a rate limit pauses, the rest fails
            log.debug("backfill of %s stopped", item.label, exc_info=True)
            why = self._stop_for(exc, state)
            item.stopped(why.status, why.reason, why.resume_after)
        finally:
            item.elapsed_s = time.monotonic() - started
            item.requests += api.requests  # every request of this pass: tokens and account metadata too
            item.operations += api.operations
            self._finish(item, state)

    def _learn_account(self, state: IntegrationState, connector: Connector, creds: Credentials, api: HttpClient) -> IntegrationState:
        """The account's currency and time zone, fetched and stored once when no sync has learnt them yet."""
        if state.currency is not None or state.time_zone is not None:
            return state
        self._spend_google(state)
        before = (api.requests, api.operations)
        try:
            info = self._call(state, lambda: connector.account_info(state.account, creds), api, lease=None, spent_from=before)
        finally:
            self.google.settle(state.platform)
        with write_transaction(self.db) as conn:
            store.save_account_info(conn, state.id, info, self.clock.now())
            self._credentials().save(conn, state, creds)
            ledger.record(conn, operations=api.operations - before[1], source="backfill", now=self.clock.now(), integration_id=state.id)
        creds.changed = False
        return replace(state, currency=info.currency, time_zone=info.time_zone)

    def _spend_google(self, state: IntegrationState) -> None:
        """Reserve one Google Ads operation of the backfill's share, or stop (paused) until it may spend again."""
        if state.platform != "google":
            return
        resume, reason = self.google.take()
        if resume is not None:
            raise _Stop("paused", reason, resume)

    def _next_chunk(self, item, state, work, connector, creds, api, started: float) -> bool:
        """Lease, fetch and save one chunk; False when there is none left for this process."""
        if self.stop.is_set():
            raise _Stop("interrupted", "stopped on request; finished chunks are kept")
        self._spend_google(state)
        try:
            with write_transaction(self.db) as conn:
                lease = chunks.take_lease(conn, state.id, work, clock=self.clock)
            if lease is None:
                return False
            before = (api.requests, api.operations)
            assert item.since is not None and item.until is not None
            # A pending chunk of an earlier request may reach beyond this one's range: fetch only this range's days.
            window = SyncWindow(since=max(lease.since, item.since), until=min(lease.until, item.until), full=False)
            fetched = self._call(state, lambda: connector.fetch(state.account, window, creds), api, lease=lease, spent_from=before)
            if self.stop.is_set():  # stopped while fetching: this chunk is rolled back, never written
                self._abandon(lease, state, api, before, None)
                raise _Stop("interrupted", "stopped on request; the chunk in flight was rolled back, finished chunks are kept")
            item.warnings += [w for w in fetched.warnings if w not in item.warnings]
            try:
                rows = self._save_chunk(lease, state, window, fetched, creds, api, before)
            except Exception:
                self._abandon(lease, state, api, before, "could not save the chunk")
                raise
        finally:
            self.google.settle(state.platform)
        if rows is not None:
            item.chunks_fetched += 1
            item.chunks_done += 1
            item.rows += rows
            item.elapsed_s = time.monotonic() - started
            log.info(
                "Backfill %s %s (%s): %s..%s saved, %d rows (%d of %d chunks)",
                *(item.platform, item.email, item.label, window.since, window.until, rows, item.chunks_done, item.chunks_total),
            )
            self.on_progress(item)
        if state.platform == "meta":
            self._check_meta_usage(api)
        return True

    def _call(self, state: IntegrationState, fetch, api: HttpClient, *, lease: chunks.Lease | None, spent_from=None):
        """Run one connector call with the lease kept alive; an API error stops the integration (paused or failed)."""
        with _Heartbeat(self.db, lease, self.clock):
            try:
                return fetch()
            except Exception as exc:
                interrupted = isinstance(exc, Interrupted) or self.stop.is_set()  # aborted: the chunk is simply given back
                self._abandon(lease, state, api, spent_from, None if interrupted else describe_failure(exc))
                raise self._stop_for(exc, state) from exc

    def _stop_for(self, exc: Exception, state: IntegrationState) -> _Stop:
        """A rate limit or quota pauses; an interrupt (the fetch aborted by ``stop``) interrupts; anything else fails."""
        if isinstance(exc, Interrupted) or self.stop.is_set():
            return _Stop("interrupted", "stopped on request; the chunk in flight was rolled back, finished chunks are kept")
        if not isinstance(exc, RateLimited):
            return _Stop("failed", describe_failure(exc))
        if state.platform == "google" and exc.scope in ledger.PROJECT_SCOPES:
            now = self.clock.now()
            with write_transaction(self.db) as conn:
                ledger.mark_exhausted(conn, scope=exc.scope, source="backfill", now=now, integration_id=state.id)
            resume = ledger.next_day_start(now)
            self.google.exhausted(resume)
            return _Stop("paused", f"Google Ads operations for today are used up ({exc.scope} quota)", resume)
        return _Stop("paused", f"rate limited: {describe_failure(exc)}", exc.retry_at)

    def _abandon(self, lease: chunks.Lease | None, state: IntegrationState, api: HttpClient, before, error: str | None) -> None:
        """Give the chunk back unwritten (``lease`` None: no chunk), keeping count of what the call spent."""
        requests, operations = api.requests - before[0], api.operations - before[1]
        with write_transaction(self.db) as conn:
            if lease is not None:
                chunks.release(conn, lease, error=error)
                chunks.spend(conn, lease, requests=requests, operations=operations)
            ledger.record(conn, operations=operations, source="backfill", now=self.clock.now(), integration_id=state.id)

    def _save_chunk(
        self, lease: chunks.Lease, state: IntegrationState, window: SyncWindow, fetched, creds: Credentials, api: HttpClient, before
    ) -> int | None:
        """One write transaction: the lease checked, the chunk's dates replaced exactly, tokens, operations, progress.

        Returns the rows written, or None when the lease was lost (another process has the chunk now).
        """
        now = self.clock.now()
        requests, operations = api.requests - before[0], api.operations - before[1]
        try:
            with write_transaction(self.db) as conn:
                chunks.fence(conn, lease)
                link_ratios = state.platform == "meta" and self.settings.meta_clicks == "link"
                written = campaign_rows.replace_window(conn, state.id, window, fetched, state.currency, now, link_ratios=link_ratios)
                rows = written.rows
                chunks.finish(
                    conn, lease, since=window.since, until=window.until, rows=rows, requests=requests, operations=operations, now=now
                )
                self._credentials().save(conn, state, creds)
                ledger.record(conn, operations=operations, source="backfill", now=now, integration_id=state.id)
                chunks.update_progress(conn, state.id, now=now, status="running")
        except chunks.LeaseLost as lost:
            log.warning("%s: %s; another backfill has it", state.label, lost)
            with write_transaction(self.db) as conn:  # the operations were spent all the same
                ledger.record(conn, operations=operations, source="backfill", now=now, integration_id=state.id)
            return None
        creds.changed = False
        return rows

    def _check_meta_usage(self, api: HttpClient) -> None:
        from ..connectors.meta import usage

        pct, wait = usage(api.last_headers)
        if pct > USAGE_PAUSE_PCT:
            resume = self.clock.now() + max(timedelta(seconds=wait), USAGE_PAUSE)
            raise _Stop("paused", f"Meta usage at {pct:.0f}% (above {USAGE_PAUSE_PCT:.0f}%): leaving room for the regular syncs", resume)

    def _finish(self, item: IntegrationBackfill, state: IntegrationState) -> None:
        """Record how this invocation left the integration's backfill (progress is already counted per chunk)."""
        try:
            with write_transaction(self.db) as conn:
                if chunks.has_progress(conn, state.id):
                    status = "running" if item.status == "elsewhere" else item.status
                    chunks.update_progress(
                        conn, state.id, now=self.clock.now(), status=status, error=item.error or item.reason, resume_after=item.resume_after
                    )
        except Exception:  # the chunks are saved; a lost progress line is fixed by the next chunk
            log.debug("could not record the backfill progress of %s", item.label, exc_info=True)
        self.on_progress(item)
        self._log(item)

    def _log(self, item: IntegrationBackfill) -> None:
        what = f"{item.platform} {item.email} ({item.label})"
        numbers = f"{item.chunks_fetched} chunks, {item.rows} rows, {item.requests} requests"
        if item.status == "done":
            log.info("Backfilled %s: %s", what, numbers)
        elif item.status == "failed":
            log.error("Backfill of %s failed: %s (%s)", what, item.error, numbers)
        else:
            when = f"; resume after {item.resume_after:%Y-%m-%d %H:%M} UTC" if item.resume_after else ""
            log.warning("Backfill of %s %s: %s (%s)%s", what, item.status, item.reason, numbers, when)


class _Heartbeat:
    """Keeps a chunk's lease alive while its fetch runs (a Meta async report may take minutes)."""

    def __init__(self, engine, lease: chunks.Lease | None, clock: Clock):
        self.engine, self.lease, self.clock = engine, lease, clock
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="backfill-lease", daemon=True)

    def __enter__(self) -> _Heartbeat:
        if self.lease is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _beat(self) -> None:
        assert self.lease is not None
        while not self._done.wait(chunks.HEARTBEAT.total_seconds()):
            try:
                with write_transaction(self.engine) as conn:
                    if not chunks.heartbeat(conn, self.lease, clock=self.clock):
                        return  # lost: the save's fencing will roll it back
            except Exception:  # a missed beat is retried; the lease outlives a few
                log.debug("backfill lease heartbeat failed", exc_info=True)
