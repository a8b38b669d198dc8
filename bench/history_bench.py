"""A year of run history: `emsync status` and pruning at 1 million attempt rows, on SQLite and PostgreSQL.

    python bench/history_bench.py --db sqlite
    python bench/history_bench.py --db postgres --json
    python bench/history_bench.py --db sqlite --integrations 50 --runs 200    # a smaller run

Builds a database with N integrations (default 500) and R runs (default 2,000) spread evenly over the last
365 days, each with one attempt per integration (R × N = 1,000,000 attempt rows), then measures:

- status: ``report.build_status`` (what `emsync status` and `GET /api/status` compute), `status --check`'s
  judgement (problems and every credential's tokens tried), and the metrics file's snapshot (``metrics.snapshot``);
  the median of 5, in-process, so the figures are the database work and not Python's start-up;
- pruning to EMSYNC_HISTORY_DAYS (90): every batch (``history.RUNS_PER_BATCH`` runs, about
  ``history.ATTEMPTS_PER_BATCH`` attempts) timed from BEGIN to COMMIT (how long a concurrent run's write may wait), the total, and what one sync-all's bounded ``history.prune`` does;
- the plans: every statement status and the metrics snapshot send that reads sync_runs or sync_attempts, and the
  pruning statements, are EXPLAINed; the script fails (exit 1) when one scans either table instead of using an index.

Results go to bench/results/history-<db>-<stamp>.json (and stdout with --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync_bench as bench

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY_TABLES = ("sync_runs", "sync_attempts")


def generate(engine, runs: int, now: datetime) -> int:
    """``runs`` finished runs over the last 365 days, one attempt per integration each; returns the attempts made."""
    from sqlalchemy import insert, select, text

    from emsync.db import write_transaction
    from emsync.models import integrations_t, runs_t

    step = timedelta(days=365) / runs
    with write_transaction(engine) as conn:
        integrations = conn.execute(select(integrations_t.c.id)).scalars().all()
        rows = []
        for n in range(runs):
            started = now - timedelta(days=365) + step * n
            rows.append(
                dict(
                    trigger="cron",
                    host="bench",
                    pid=1,
                    full_window=False,
                    started_at=started,
                    heartbeat_at=started,
                    finished_at=started + timedelta(seconds=30),
                    status="ok",
                    integrations_total=len(integrations),
                    succeeded=len(integrations),
                    failed=0,
                    skipped=0,
                    rows=100 * len(integrations),
                )
            )
        conn.execute(insert(runs_t), rows)
        # Server-side: a cross join writes the million rows without a million round trips.
        made = conn.execute(
            text(
                "INSERT INTO sync_attempts (run_id, integration_id, window_start, window_end, full_window, started_at, "
                "finished_at, status, rows, api_requests, duration_s) "
                "SELECT r.id, i.id, NULL, NULL, false, r.started_at, r.finished_at, 'ok', 100, 1, 1.5 "
                "FROM sync_runs r CROSS JOIN integrations i"
            )
        ).rowcount
        last = conn.execute(select(runs_t.c.finished_at).order_by(runs_t.c.id.desc()).limit(1)).scalar()
        conn.execute(integrations_t.update().values(status="ok", last_synced_at=last, last_attempt_at=last, last_sync_started_at=last))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE sync_runs")
            conn.exec_driver_sql("VACUUM ANALYZE sync_attempts")
            conn.exec_driver_sql("ANALYZE integrations")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    return made


class Statements:
    """The statements an engine sends while this is active (with their parameters), to EXPLAIN afterwards."""

    def __init__(self, engine):
        from sqlalchemy import event

        self.engine, self.seen, self._event = engine, [], event

    def __enter__(self):
        self._event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc):
        self._event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        if any(table in statement for table in HISTORY_TABLES) and (statement, parameters) not in self.seen:
            self.seen.append((statement, parameters))


def explain(engine, statement: str, parameters) -> list[str]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return [str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
        return [r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters)]


def scans_history(plan: list[str], statement: str) -> bool:
    """Whether a plan reads sync_runs or sync_attempts without an index (a full table scan)."""
    for line in plan:
        for table in HISTORY_TABLES:
            if f"Seq Scan on {table}" in line:  # PostgreSQL
                return True
            if line.startswith(f"SCAN {table}") and "USING" not in line:  # SQLite
                # A rowid-ordered scan with a LIMIT is the primary key's b-tree read from one end: indexed.
                if not (table == "sync_runs" and "ORDER BY sync_runs.id DESC" in statement and "LIMIT" in statement):
                    return True
    return False


def median_s(fn, times: int = 5) -> float:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples), 4)


def measure(db_kind: str, integrations: int, runs: int) -> dict:
    from sqlalchemy import func, select

    from emsync import db, history, metrics, report
    from emsync import runs as runs_module
    from emsync.config import load_settings
    from emsync.crypto import new_key
    from emsync.models import attempts_t, runs_t

    now = datetime.now(UTC)
    key = new_key()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        url, drop = bench.make_database(db_kind, tmp)
        try:
            bench.populate(url, key, integrations)
            engine = db.make_engine(url)
            started = time.perf_counter()
            attempts = generate(engine, runs, now)
            generate_s = time.perf_counter() - started
            settings = load_settings(environ={"EMSYNC_DATABASE_URL": url, "EMSYNC_SECRET_KEY": key})

            def status():
                with engine.begin() as conn:
                    return report.build_status(conn, settings)

            def check():
                with engine.begin() as conn:
                    built = report.build_status(conn, settings)
                    ids = {i["credential_id"] for i in built["integrations"]}
                    bad = report.undecryptable_credentials(conn, settings, ids)
                return report.check_line(built, report.check_problems(built, settings, undecryptable=bad), settings)

            def snapshot():
                with engine.begin() as conn:
                    return metrics.snapshot(conn)

            with Statements(engine) as seen:
                status(), check(), snapshot()
            figures = {
                "status_s": median_s(status),
                "status_check_s": median_s(check),
                "metrics_snapshot_s": median_s(snapshot),
            }
            before = now - timedelta(days=90)
            prune_sql = str(runs_module.prune_candidates(before, history.RUNS_PER_BATCH).compile(engine))
            with engine.connect() as conn:
                candidates = conn.execute(runs_module.prune_candidates(before, history.RUNS_PER_BATCH)).scalars().all()
            delete_sql = str(
                attempts_t.delete().where(attempts_t.c.run_id.in_(candidates)).compile(engine, compile_kwargs={"literal_binds": True})
            )
            seen.seen.append((prune_sql, _params(engine, before, history.RUNS_PER_BATCH)))
            seen.seen.append((delete_sql, {} if engine.dialect.name == "postgresql" else ()))
            plans = []
            for statement, parameters in seen.seen:
                plan = explain(engine, statement, parameters)
                plans.append({"statement": " ".join(statement.split())[:300], "plan": plan, "full_scan": scans_history(plan, statement)})

            # Every batch timed from BEGIN to COMMIT (how long a concurrent writer may wait): history's own transactions.
            batches: list[float] = []
            plain = history.write_transaction

            @contextlib.contextmanager
            def timed(engine_):
                started = time.perf_counter()
                with plain(engine_) as conn:
                    yield conn
                batches.append(time.perf_counter() - started)

            history.write_transaction = timed
            try:
                # One sync-all's end-of-run step (bounded by history.MAX_BATCHES and TIME_BUDGET_S), then the next ones.
                started = time.perf_counter()
                first = history.prune_history(engine, before=before)
                one_call_s = time.perf_counter() - started
                pruned_runs, pruned_attempts, calls, done = first.runs, first.attempts, 1, first
                while not done.complete:
                    done = history.prune_history(engine, before=before)
                    pruned_runs, pruned_attempts, calls = pruned_runs + done.runs, pruned_attempts + done.attempts, calls + 1
            finally:
                history.write_transaction = plain
            with engine.connect() as conn:
                left_runs = conn.execute(select(func.count()).select_from(runs_t)).scalar()
                left_attempts = conn.execute(select(func.count()).select_from(attempts_t)).scalar()
            figures.update(
                {
                    "first_sync_all_prune": {
                        "runs": first.runs,
                        "attempts": first.attempts,
                        "complete": first.complete,
                        "s": round(one_call_s, 3),
                    },
                    "sync_alls_to_prune_all": calls,
                    "pruned_runs": pruned_runs,
                    "pruned_attempts": pruned_attempts,
                    "batches": len(batches),
                    "batch_ms_median": round(statistics.median(batches) * 1000, 1),
                    "batch_ms_max": round(max(batches) * 1000, 1),
                    "attempts_left": left_attempts,
                    "runs_left": left_runs,
                    "status_after_prune_s": median_s(status),
                }
            )
            engine.dispose()
        finally:
            drop()
    return {
        "bench": "history",
        "db": db_kind,
        "machine": bench.machine(),
        "recorded_at": now.isoformat(timespec="seconds"),
        "integrations": integrations,
        "runs": runs,
        "attempts": attempts,
        "generate_s": round(generate_s, 1),
        **figures,
        "runs_per_batch": history.RUNS_PER_BATCH,
        "attempts_per_batch": history.ATTEMPTS_PER_BATCH,
        "plans": plans,
        "every_plan_uses_an_index": not any(p["full_scan"] for p in plans),
    }


def _params(engine, before: datetime, limit: int):
    """The prune query's parameters in the driver's style (SQLite positional, psycopg named)."""
    from emsync import runs as runs_module

    compiled = runs_module.prune_candidates(before, limit).compile(engine)
    values = compiled.construct_params()
    if engine.dialect.name == "sqlite":
        processors = compiled._bind_processors
        return tuple(processors[name](values[name]) if name in processors else values[name] for name in compiled.positiontup)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--integrations", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    result = measure(args.db, args.integrations, args.runs)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        (RESULTS / f"history-{args.db}-{args.runs * args.integrations}-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        shown = {k: v for k, v in result.items() if k not in ("plans", "machine")}
        print(json.dumps(shown, indent=2))
        for plan in result["plans"]:
            print(("FULL SCAN  " if plan["full_scan"] else "indexed    ") + plan["statement"][:120])
            for line in plan["plan"]:
                print("    " + line)
    return 0 if result["every_plan_uses_an_index"] else 1


if __name__ == "__main__":
    sys.exit(main())
