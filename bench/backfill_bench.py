"""A two-year backfill of the agency scenario's Meta and Google accounts: requests, operations, rows, wall time.

    python bench/backfill_bench.py [--db sqlite|postgres] [--months 24] [--concurrency 32] [--latency-ms 100] [--integrations N] [--json]

Same machinery as ``sync_bench.py``: the sandbox in its own process (100 ms per
request by default), the database populated with the scenario's integrations,
and ``emsync backfill --since <24 months ago> --json`` run as a measured child
process (wall time, its own peak RSS and CPU from ``wait4``). Then the same
command again, to show that a finished backfill costs no API request.

Google operations: the agency's 250 Google integrations need 250 × 48 = 12,000
operations a day for the schedule, so at Basic access (15,000) the default
backfill share is (15,000 − 12,000) / 2 = 1,500 a day. A two-year backfill
needs about nine per customer, more than one day's share; the benchmark sets
``EMSYNC_BACKFILL_GOOGLE_OPS`` to what the schedule leaves (3,000) so one run
finishes, and reports how many days the default share would take.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync_bench  # the scenario machinery: sandbox process, databases, population

RESULTS = sync_bench.RESULTS
BASIC_ACCESS = 15000
RUNS_PER_DAY = 48


def run_backfill(env: dict, since: str) -> dict:
    """`emsync backfill --since SINCE --json` as a child; wall time, peak RSS and CPU from wait4."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emsync", "backfill", "--since", since, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    return {
        "wall_s": time.perf_counter() - started,
        "exit": os.waitstatus_to_exitcode(status),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "report": json.loads(out),
    }


def ledger_total(db_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.connect() as conn:
        total = conn.execute(text("SELECT coalesce(sum(operations), 0) FROM google_operations")).scalar()
    engine.dispose()
    return int(total or 0)


def measure(db_kind: str, months: int, concurrency: int, latency_ms: int, integrations: int | None) -> dict:
    import requests

    from emsync.backfill.plan import add_months
    from emsync.crypto import new_key

    n = integrations or sync_bench.SCENARIOS["agency"]
    meta_ids, google_ids = sync_bench.accounts(n)
    schedule = len(google_ids) * RUNS_PER_DAY
    default_share = max(0, (BASIC_ACCESS - schedule) // 2)
    since = add_months(datetime.now(UTC).date(), -months).isoformat()
    with tempfile.TemporaryDirectory(prefix="emsync-backfill-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sandbox, url, sandbox_env = sync_bench.start_sandbox(tmp, n, latency_ms)
        db_url, drop = sync_bench.make_database(db_kind, tmp)
        try:
            key = new_key()
            sync_bench.populate(db_url, key, n)
            env = sync_bench.child_env(
                sandbox_env,
                db_url,
                key,
                concurrency,
                tmp,
                GOOGLE_ADS_DAILY_OPERATIONS=str(BASIC_ACCESS),
                EMSYNC_BACKFILL_GOOGLE_OPS=str(max(BASIC_ACCESS - schedule, 0)),
            )
            first = run_backfill(env, since)
            log = sync_bench.request_log(url)
            operations = ledger_total(db_url)
            requests.post(f"{url}/__sandbox/reset", timeout=30)
            again = run_backfill(env, since)
            again_requests = len(sync_bench.request_log(url))
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
            drop()
    per_kind = dict(Counter(entry["kind"] for entry in log))
    report = first.pop("report")
    chunks = sum(i["chunks_fetched"] for i in report["integrations"])
    return {
        "scenario": "agency-backfill",
        "db": db_kind,
        "integrations": n,
        "meta_accounts": len(meta_ids),
        "google_customers": len(google_ids),
        "campaigns": sync_bench.CAMPAIGNS,
        "months": months,
        "since": since,
        "concurrency": concurrency,
        "latency_ms": latency_ms,
        "complete": report["complete"],
        "exit": first["exit"],
        "wall_s": round(first["wall_s"], 3),
        "network_bound_s": round(len(log) * latency_ms / 1000 / concurrency, 3),
        "rows": report["rows"],
        "rows_per_s": round(report["rows"] / first["wall_s"], 1),
        "chunks": chunks,
        "requests": len(log),
        "requests_by_kind": per_kind,
        "google_operations": operations,
        "google_operations_per_customer": round(operations / max(len(google_ids), 1), 3),
        "schedule_needs_per_day": schedule,
        "default_backfill_share_per_day": default_share,
        "days_at_default_share": math.ceil(operations / default_share) if default_share else None,
        "peak_rss_mb": round(first["peak_rss_mb"], 1),
        "cpu_s": round(first["cpu_s"], 2),
        "rerun_wall_s": round(again["wall_s"], 3),
        "rerun_requests": again_requests,
        "rerun_chunks": sum(i["chunks_fetched"] for i in again["report"]["integrations"]),
        "machine": sync_bench.machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--integrations", type=int, help="fewer than the agency's 500 (smoke tests)")
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.latency_ms < 0 or not 1 <= args.months <= 37:
        parser.error("--concurrency must be >= 1, --latency-ms >= 0, --months between 1 and 37")
    result = measure(args.db, args.months, args.concurrency, args.latency_ms, args.integrations)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        name = f"backfill-{args.months}m-{args.db}-n{result['integrations']}-c{args.concurrency}-l{args.latency_ms}-{stamp}.json"
        (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{result['integrations']} integrations, {args.months} months on {args.db}: {result['rows']:,} rows, {result['requests']:,} requests, "
        f"{result['google_operations']:,} Google Ads operations, {result['wall_s']} s wall (network bound {result['network_bound_s']} s), "
        f"peak RSS {result['peak_rss_mb']} MB, CPU {result['cpu_s']} s; rerun: {result['rerun_requests']} requests"
    )
    if args.json:
        print(json.dumps(result))
    return 0 if result["exit"] == 0 and result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
