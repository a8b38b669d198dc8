"""``EMSYNC_METRICS_FILE``: Prometheus metrics for node_exporter's textfile collector, written after each run.

The file is built from the database, not from the run that just ended: every
active integration has its series after any run (a sync-user, or a run that
found most integrations held by another host, drops nothing). The text comes
from ``prometheus_client`` (a collector in its own ``CollectorRegistry``,
``generate_latest``); the file is written as the textfile collector expects:
a temporary file in the same directory (a name not ending in ``.prom``), then
``rename`` over the target, so node_exporter never reads half a file. Mode 0644
whatever the umask: node_exporter runs as its own user.

Series (labels ``id``, ``platform``, ``account``, ``email`` per integration):

- ``emsync_integration_last_success_timestamp_seconds`` (0: never synced)
- ``emsync_integration_last_attempt_timestamp_seconds`` (0: never attempted)
- ``emsync_integration_status{status=...}``: 1 for its current status, 0 for the others
- ``emsync_integration_last_rows``, ``emsync_integration_last_api_requests``,
  ``emsync_integration_last_duration_seconds``: of its last attempt
- ``emsync_integration_token_expiry_timestamp_seconds`` (only when known)
- ``emsync_integrations{platform, status}``: active integrations
- ``emsync_last_run_{start,end}_timestamp_seconds``, ``emsync_last_run_duration_seconds``,
  ``emsync_last_run_rows``, ``emsync_last_run_integrations{result=total|succeeded|failed|skipped}``,
  ``emsync_last_run_status{status=...}`` (1 for the last finished run's status)
- ``emsync_metrics_generated_timestamp_seconds``
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, select

from . import store
from .config import Settings
from .domain import account_label
from .models import STATUSES, attempts_t, integrations_t, runs_t

log = logging.getLogger("emsync")

RUN_STATUSES = ("ok", "failed", "interrupted", "died")
FILE_MODE = 0o644


def snapshot(conn) -> dict:
    """What the metrics say, read from the database: active integrations with their last attempt, and the last
    finished run. Two indexed queries besides the integrations list (attempts by (integration_id, finished_at),
    runs by primary key)."""
    integrations = [row for row in store.list_integrations(conn) if row["is_active"]]
    last = (
        select(
            attempts_t.c.integration_id,
            attempts_t.c.rows,
            attempts_t.c.api_requests,
            attempts_t.c.duration_s,
        )
        .join(
            integrations_t,
            and_(integrations_t.c.id == attempts_t.c.integration_id, integrations_t.c.last_attempt_at == attempts_t.c.finished_at),
        )
        .where(integrations_t.c.is_active.is_(True))
    )
    attempts = {r.integration_id: r._mapping for r in conn.execute(last)}
    run = conn.execute(select(runs_t).where(runs_t.c.finished_at.is_not(None)).order_by(runs_t.c.id.desc()).limit(1)).first()
    return {"integrations": integrations, "attempts": attempts, "last_run": dict(run._mapping) if run else None}


def _ts(value: datetime | None) -> float:
    return value.timestamp() if value is not None else 0.0


class _Collector:
    """Turns a ``snapshot`` into metric families (prometheus_client's custom-collector protocol)."""

    def __init__(self, snap: dict, now: datetime):
        self.snap = snap
        self.now = now

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["id", "platform", "account", "email"]
        success = GaugeMetricFamily("emsync_integration_last_success_timestamp_seconds", "Last successful sync (0: never).", labels=labels)
        attempt = GaugeMetricFamily("emsync_integration_last_attempt_timestamp_seconds", "Last attempt (0: never).", labels=labels)
        status = GaugeMetricFamily("emsync_integration_status", "1 for the integration's current status.", labels=[*labels, "status"])
        rows = GaugeMetricFamily("emsync_integration_last_rows", "Rows written by the last attempt.", labels=labels)
        requests = GaugeMetricFamily("emsync_integration_last_api_requests", "API requests of the last attempt.", labels=labels)
        duration = GaugeMetricFamily("emsync_integration_last_duration_seconds", "Duration of the last attempt.", labels=labels)
        expiry = GaugeMetricFamily("emsync_integration_token_expiry_timestamp_seconds", "When the token expires.", labels=labels)
        counts = GaugeMetricFamily("emsync_integrations", "Active integrations by platform and status.", labels=["platform", "status"])
        by_status: dict[tuple[str, str], int] = {}
        for item in self.snap["integrations"]:
            values = [str(item["id"]), item["platform"], account_label(item["platform"], item["account_id"]), item["email"]]
            success.add_metric(values, _ts(item["last_synced_at"]))
            attempt.add_metric(values, _ts(item["last_attempt_at"]))
            for name in STATUSES:
                status.add_metric([*values, name], 1.0 if item["status"] == name else 0.0)
            last = self.snap["attempts"].get(item["id"])
            rows.add_metric(values, float(last["rows"]) if last else 0.0)
            requests.add_metric(values, float(last["api_requests"]) if last else 0.0)
            duration.add_metric(values, float(last["duration_s"]) if last else 0.0)
            if item["token_expires_at"] is not None:
                expiry.add_metric(values, _ts(item["token_expires_at"]))
            key = (item["platform"], item["status"])
            by_status[key] = by_status.get(key, 0) + 1
        for (platform, state), n in sorted(by_status.items()):
            counts.add_metric([platform, state], float(n))
        yield from (success, attempt, status, rows, requests, duration, expiry, counts)
        yield from self._last_run()
        generated = GaugeMetricFamily("emsync_metrics_generated_timestamp_seconds", "When this file was written.")
        generated.add_metric([], self.now.timestamp())
        yield generated

    def _last_run(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        run = self.snap["last_run"]
        if run is None:
            return
        start = GaugeMetricFamily("emsync_last_run_start_timestamp_seconds", "When the last finished run started.")
        start.add_metric([], _ts(run["started_at"]))
        end = GaugeMetricFamily("emsync_last_run_end_timestamp_seconds", "When the last finished run ended.")
        end.add_metric([], _ts(run["finished_at"]))
        duration = GaugeMetricFamily("emsync_last_run_duration_seconds", "Duration of the last finished run.")
        duration.add_metric([], (run["finished_at"] - run["started_at"]).total_seconds())
        rows = GaugeMetricFamily("emsync_last_run_rows", "Rows written by the last finished run.")
        rows.add_metric([], float(run["rows"]))
        counts = GaugeMetricFamily("emsync_last_run_integrations", "Integrations of the last finished run by result.", labels=["result"])
        for result, column in (("total", "integrations_total"), ("succeeded", "succeeded"), ("failed", "failed"), ("skipped", "skipped")):
            counts.add_metric([result], float(run[column]))
        status = GaugeMetricFamily("emsync_last_run_status", "1 for the last finished run's status.", labels=["status"])
        for name in dict.fromkeys((*RUN_STATUSES, run["status"])):
            status.add_metric([name], 1.0 if run["status"] == name else 0.0)
        yield from (start, end, duration, rows, counts, status)


def render(snap: dict, now: datetime) -> bytes:
    """The Prometheus text exposition format (``prometheus_client.generate_latest``) of a ``snapshot``."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap, now))
    return generate_latest(registry)


def write_atomically(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to a temporary file beside ``path`` (not matching ``*.prom``), set ``mode``, then rename it over
    ``path``: readers see the old file or the new one, never a part. Raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics_file(engine, path: str | os.PathLike, *, now: datetime) -> None:
    """Read the database and write the metrics file. Raises the database's or the file system's errors."""
    with engine.begin() as conn:
        snap = snapshot(conn)
    write_atomically(Path(path), render(snap, now))


def write_after_run(engine, settings: Settings, *, now: datetime) -> None:
    """After a run: write ``EMSYNC_METRICS_FILE`` when set. Never raises: a failure is logged as a warning."""
    if not settings.metrics_file:
        return
    try:
        write_metrics_file(engine, settings.metrics_file, now=now)
    except OSError as exc:
        log.warning("could not write EMSYNC_METRICS_FILE %s: %s", settings.metrics_file, exc.strerror or exc)
    except Exception as exc:  # metrics must never fail a sync
        from .sync import describe_failure

        log.warning("could not write EMSYNC_METRICS_FILE %s: %s", settings.metrics_file, describe_failure(exc))
        log.debug("metrics failed", exc_info=True)
