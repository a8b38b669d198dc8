"""Keeping run history bounded: ``EMSYNC_HISTORY_DAYS`` of ``sync_runs`` and ``sync_attempts``.

48 runs a day × 500 integrations is 8.8 million attempt rows a year. At the
end of each sync-all, runs that started more than ``EMSYNC_HISTORY_DAYS`` ago
are deleted with their attempts, a few runs per write transaction (about
``ATTEMPTS_PER_BATCH`` attempt rows), so a concurrent run's writes wait at most
one small batch (SQLite has one writer).
A run prunes at most ``MAX_BATCHES`` batches or ``TIME_BUDGET_S`` seconds: a
backlog (a first upgrade with a year of history) is worked off over the next
runs. Pruning that fails is logged and never fails the sync.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import runs
from .config import Settings
from .db import write_transaction

log = logging.getLogger("emsync")

RUNS_PER_BATCH = 20
ATTEMPTS_PER_BATCH = 5000  # by the runs' own counts; a single run bigger than this is one batch
MAX_BATCHES = 200
TIME_BUDGET_S = 10.0


@dataclass(frozen=True)
class Pruned:
    runs: int = 0
    attempts: int = 0
    complete: bool = True  # False: stopped at MAX_BATCHES or TIME_BUDGET_S with more left


def prune_history(engine, *, before: datetime, max_batches: int | None = None) -> Pruned:
    """Delete runs that started before ``before`` (and their attempts), in batches (``RUNS_PER_BATCH`` runs, about
    ``ATTEMPTS_PER_BATCH`` attempts), one write transaction each, for at most ``max_batches`` (default
    ``MAX_BATCHES``) batches or ``TIME_BUDGET_S``. Raises whatever the database raises (``prune`` never does)."""
    deadline = time.monotonic() + TIME_BUDGET_S
    total_runs = total_attempts = 0
    for _ in range(MAX_BATCHES if max_batches is None else max_batches):
        with write_transaction(engine) as conn:
            pruned_runs, pruned_attempts = runs.prune_batch(
                conn, before=before, runs_per_batch=RUNS_PER_BATCH, attempts_per_batch=ATTEMPTS_PER_BATCH
            )
        total_runs, total_attempts = total_runs + pruned_runs, total_attempts + pruned_attempts
        if pruned_runs == 0:
            return Pruned(total_runs, total_attempts, complete=True)
        if time.monotonic() > deadline:
            break
    return Pruned(total_runs, total_attempts, complete=False)


def prune(engine, settings: Settings, *, now: datetime) -> Pruned | None:
    """The end-of-sync-all step: prune history older than ``EMSYNC_HISTORY_DAYS`` (0: keep all). Never raises:
    a failure is logged as a warning and the next sync-all tries again. Returns what was pruned, None on failure."""
    if settings.history_days <= 0:
        return Pruned()
    try:
        pruned = prune_history(engine, before=now - timedelta(days=settings.history_days))
    except Exception as exc:  # housekeeping must never fail a sync
        from .sync import describe_failure

        log.warning(
            "could not prune run history older than %d days (EMSYNC_HISTORY_DAYS): %s", settings.history_days, describe_failure(exc)
        )
        log.debug("pruning failed", exc_info=True)
        return None
    if pruned.runs:
        more = "" if pruned.complete else "; more next run"
        log.info("Pruned %d runs and %d attempts older than %d days%s", pruned.runs, pruned.attempts, settings.history_days, more)
    return pruned
