"""Many hosts, thousands of accounts, one PostgreSQL: the figures of the README's "Several hosts" section.

    python bench/many_hosts.py cycle   [--integrations 10000] [--processes 3] [--stagger 30] [--role-limit 30]
    python bench/many_hosts.py kill    [--integrations 3000]                     # kill -9 one of three mid-run
    python bench/many_hosts.py steady  [--integrations 2000] [--repeat 3]        # concurrency 8 vs 32, same connections
    python bench/many_hosts.py status  [--integrations 10000]                    # `emsync status` at size

Every process is `python -m emsync sync-all --json`, exactly what cron runs, as a PostgreSQL role with a
CONNECTION LIMIT (limits do not apply to superusers), against the bundled sandbox in its own process
(30 ms latency, 5 campaigns per account). Connections are counted by polling pg_stat_activity for the
role every 50 ms; what was fetched is counted at the sandbox's request log. Results go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sync_bench as bench

CAMPAIGNS = 5
LATENCY_MS = 30
METRIC_KINDS = ("meta.insights", "google.search_stream")


class Setup:
    """A sandbox process, a fresh database with N integrations whose account metadata is known, and a limited role."""

    def __init__(self, tmp: Path, n: int, role_limit: int):
        from emsync.crypto import new_key

        self.n = n
        self.key = new_key()
        self.sandbox, self.url, self.sandbox_env = bench.start_sandbox(tmp, n, LATENCY_MS, campaigns=CAMPAIGNS)
        self.admin_url, self.drop_db = bench.make_database("postgres", tmp)
        bench.populate(self.admin_url, self.key, n)
        self._known_accounts()
        self.role = f"emsync_bench_{uuid.uuid4().hex[:8]}"
        self._make_role(role_limit)

    def _known_accounts(self) -> None:
        # As after a first sync: currency and time zone stored, so each run's requests are the metric queries
        # (and one Google token per customer), which is what "fetched exactly once" counts.
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE integrations SET currency = 'USD', time_zone = 'UTC'"))
        engine.dispose()

    def _make_role(self, limit: int) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        database = make_url(self.admin_url).database
        with engine.connect() as conn:
            conn.execute(text(f"CREATE ROLE {self.role} LOGIN NOSUPERUSER PASSWORD 'bench' CONNECTION LIMIT {limit}"))
            conn.execute(text(f'GRANT ALL ON DATABASE "{database}" TO {self.role}'))
            conn.execute(text(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {self.role}"))
            conn.execute(text(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {self.role}"))
        engine.dispose()
        self.url_for_role = make_url(self.admin_url).set(username=self.role, password="bench").render_as_string(hide_password=False)

    def env(self, **extra: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EMSYNC_", "META_", "GOOGLE_"))}
        env.update(self.sandbox_env)
        env.update(
            {
                "EMSYNC_DATABASE_URL": self.url_for_role,
                "EMSYNC_SECRET_KEY": self.key,
                "EMSYNC_HTTP_TIMEOUT": "120",
                # Standard access: thousands of Google customers every 30 minutes fit (Basic's 15,000 a day would
                # make them take turns, and a steady run would then sync only the Meta half).
                "GOOGLE_ADS_DAILY_OPERATIONS": str(10**9),
                "HOME": tempfile.gettempdir(),
                "XDG_CONFIG_HOME": str(Path(tempfile.gettempdir()) / "emsync-bench-cfg"),
            }
        )
        env.update(extra)
        return env

    def reset_log(self) -> None:
        requests.post(f"{self.url}/__sandbox/reset", timeout=60)

    def fetches(self) -> dict[str, int]:
        """Metric queries per account (Meta insights calls, Google searchStreams)."""
        counts: dict[str, int] = {}
        for entry in bench.request_log(self.url):
            if entry["kind"] in METRIC_KINDS:
                counts[entry["account"]] = counts.get(entry["account"], 0) + 1
        return counts

    def accounts(self) -> list[str]:
        meta, google = bench.accounts(self.n)
        return meta + google

    def close(self) -> None:
        from sqlalchemy import create_engine, text

        self.sandbox.terminate()
        self.sandbox.wait(timeout=30)
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"), {"r": self.role})
            conn.execute(text(f"DROP OWNED BY {self.role}"))
        engine.dispose()
        self.drop_db()
        engine = create_engine(
            bench.DEFAULT_PG if "EMSYNC_TEST_POSTGRES_URL" not in os.environ else os.environ["EMSYNC_TEST_POSTGRES_URL"],
            isolation_level="AUTOCOMMIT",
        )
        with engine.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {self.role}"))
        engine.dispose()


class ConnectionWatch:
    """The most connections the role held at once, polled every 50 ms from a superuser connection."""

    def __init__(self, admin_url: str, role: str):
        self.admin_url, self.role = admin_url, role
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            while not self._stop.is_set():
                count = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE usename = :r"), {"r": self.role}).scalar()
                self.most = max(self.most, count)
                time.sleep(0.05)
        engine.dispose()


def start_sync(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "emsync", "sync-all", "--json", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen, started: float) -> dict:
    out, err = proc.communicate()
    report = json.loads(out) if out.strip() else {}
    return {
        "exit": proc.returncode,
        "wall_s": round(time.perf_counter() - started, 2),
        "succeeded": report.get("succeeded"),
        "failed": report.get("failed"),
        "skipped": report.get("skipped"),
        "stderr_tail": err.decode(errors="replace").strip().splitlines()[-1:] if proc.returncode not in (0, 1) else [],
    }


def staggered(setup: Setup, processes: int, stagger: float, env: dict, *, kill_after: float | None = None) -> list[dict]:
    """Start ``processes`` sync-alls ``stagger`` seconds apart; optionally kill -9 the first after ``kill_after`` seconds."""
    procs: list[tuple[subprocess.Popen, float]] = []
    killed = None
    t0 = time.perf_counter()
    for i in range(processes):
        while time.perf_counter() - t0 < i * stagger:
            if kill_after is not None and killed is None and time.perf_counter() - t0 >= kill_after:
                procs[0][0].send_signal(signal.SIGKILL)
                killed = 0
            time.sleep(0.05)
        procs.append((start_sync(env), time.perf_counter()))
    if kill_after is not None and killed is None:
        while time.perf_counter() - t0 < kill_after:
            time.sleep(0.05)
        procs[0][0].send_signal(signal.SIGKILL)
    return [finish(p, started) | {"started_after_s": round(started - t0, 1)} for p, started in procs]


def cycle(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="emsync-hosts-") as tmp:
        setup = Setup(Path(tmp), args.integrations, args.role_limit)
        try:
            env = setup.env(EMSYNC_CONCURRENCY=str(args.concurrency), EMSYNC_DB_POOL_SIZE=str(args.pool))
            with ConnectionWatch(setup.admin_url, setup.role) as watch:
                results = staggered(setup, args.processes, args.stagger, env)
            fetched = setup.fetches()
            counts = [fetched.get(a, 0) for a in setup.accounts()]
            return {
                "what": "cycle",
                "integrations": args.integrations,
                "processes": results,
                "role_connection_limit": args.role_limit,
                "pool": args.pool,
                "concurrency": args.concurrency,
                "most_connections": watch.most,
                "fetched_exactly_once": sum(1 for c in counts if c == 1),
                "fetched_twice_or_more": sum(1 for c in counts if c > 1),
                "never_fetched": sum(1 for c in counts if c == 0),
            }
        finally:
            setup.close()


def kill(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="emsync-hosts-") as tmp:
        setup = Setup(Path(tmp), args.integrations, args.role_limit)
        try:
            env = setup.env(EMSYNC_CONCURRENCY=str(args.concurrency), EMSYNC_DB_POOL_SIZE=str(args.pool))
            results = staggered(setup, 3, 2.0, env, kill_after=args.kill_after)
            survivors = setup.fetches()
            t0 = time.perf_counter()
            after = finish(start_sync(env), t0)  # the next run (same host: the dead pid's leases are broken at once)
            from sqlalchemy import create_engine, text

            engine = create_engine(setup.admin_url)
            with engine.connect() as conn:
                never = conn.execute(text("SELECT count(*) FROM integrations WHERE last_synced_at IS NULL")).scalar()
                rows = conn.execute(text("SELECT count(*) FROM campaign_metrics")).scalar()
                keys = conn.execute(
                    text("SELECT count(*) FROM (SELECT DISTINCT integration_id, campaign_id, date FROM campaign_metrics) k")
                ).scalar()
                stale = conn.execute(text("SELECT count(*) FROM integrations WHERE lease_token IS NOT NULL")).scalar()
            engine.dispose()
            return {
                "what": "kill -9 one of three, then the next run",
                "integrations": args.integrations,
                "processes": results,
                "next_run": after,
                "fetched_before_next_run": len(survivors),
                "integrations_never_synced_after_next_run": never,
                "rows": rows,
                "duplicate_rows": rows - keys,
                "leases_left": stale,
            }
        finally:
            setup.close()


def steady(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="emsync-hosts-") as tmp:
        setup = Setup(Path(tmp), args.integrations, args.role_limit)
        try:
            first = finish(start_sync(setup.env(EMSYNC_CONCURRENCY="32")), time.perf_counter())
            out = {"what": "steady run", "integrations": args.integrations, "first_run": first, "by_concurrency": {}}
            # Each concurrency ``--repeat`` times, interleaved (8, 32, 64, 8, 32, 64, …) so that a slow spell of a
            # shared machine does not fall on one concurrency only; the median and every wall time are kept.
            for _ in range(args.repeat):
                for concurrency in (8, 32, 64):
                    env = setup.env(
                        EMSYNC_CONCURRENCY=str(concurrency), EMSYNC_MIN_INTERVAL_MINUTES="0", EMSYNC_DB_POOL_SIZE=str(args.pool)
                    )
                    setup.reset_log()
                    with ConnectionWatch(setup.admin_url, setup.role) as watch:
                        result = finish(start_sync(env), time.perf_counter())
                    requests_made = len(bench.request_log(setup.url))
                    entry = out["by_concurrency"].setdefault(concurrency, {"runs": []})
                    entry["runs"].append(
                        result
                        | {
                            "most_connections": watch.most,
                            "requests": requests_made,
                            "network_bound_s": round(requests_made * LATENCY_MS / 1000 / concurrency, 2),
                        }
                    )
            for entry in out["by_concurrency"].values():
                walls = sorted(r["wall_s"] for r in entry["runs"])
                entry["median_wall_s"] = walls[len(walls) // 2]
                entry["best_wall_s"] = walls[0]
                entry["most_connections"] = max(r["most_connections"] for r in entry["runs"])
            return out
        finally:
            setup.close()


def status(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="emsync-hosts-") as tmp:
        setup = Setup(Path(tmp), args.integrations, args.role_limit)
        try:
            env = setup.env(EMSYNC_CONCURRENCY="32")
            finish(start_sync(env), time.perf_counter())  # a synced installation: rows in the window, runs, attempts
            out = {"what": "emsync status", "integrations": args.integrations}
            for label, extra in (("status", []), ("status --json", ["--json"]), ("status --all", ["--all"])):
                best = None
                for _ in range(3):
                    t0 = time.perf_counter()
                    done = subprocess.run([sys.executable, "-m", "emsync", "status", *extra], env=env, capture_output=True)
                    wall = time.perf_counter() - t0
                    best = wall if best is None else min(best, wall)
                    assert done.returncode == 0, done.stderr[-500:]
                out[label] = {"best_wall_s": round(best, 3), "output_kb": round(len(done.stdout) / 1024, 1)}
            return out
        finally:
            setup.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cycle", "kill", "steady", "status"))
    parser.add_argument("--integrations", type=int)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--stagger", type=float, default=30.0, help="seconds between process starts (cycle)")
    parser.add_argument("--kill-after", type=float, default=20.0, help="seconds before the first process is killed (kill)")
    parser.add_argument("--role-limit", type=int, default=30, help="CONNECTION LIMIT of emsync's role")
    parser.add_argument("--pool", type=int, default=4, help="EMSYNC_DB_POOL_SIZE")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs per concurrency (steady): the median is reported")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    defaults = {"cycle": 10000, "kill": 3000, "steady": 2000, "status": 10000}
    args.integrations = args.integrations or defaults[args.what]
    result = {"cycle": cycle, "kill": kill, "steady": steady, "status": status}[args.what](args)
    result |= {"machine": bench.machine(), "when": datetime.now(UTC).isoformat(timespec="seconds")}
    print(json.dumps(result, indent=2))
    if not args.no_save:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        (bench.RESULTS / f"many-hosts-{args.what}-{args.integrations}-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
