"""End-to-end benchmark of emsync against the bundled sandbox, reported as ratios to what the machine and APIs allow.

    python bench/sync_bench.py --scenario small|agency|steady --db sqlite|postgres [--concurrency N] [--processes N]
                                [--latency-ms N] [--json]
                                [--peer dlt [--peer-configs w20-keys,default,...]]

The sandbox runs in its own process (so emsync's RSS and CPU are its own); the
sync runs as a measured child process (`emsync sync-all`, exactly what cron
runs). Two lower bounds are measured in the same invocation:

* network bound = API requests × latency / concurrency (the sandbox serves in parallel);
* write bound   = the same rows written with one bare SQLAlchemy Core upsert per
  integration into an empty copy of the table, no emsync code.

ratio = wall / max(network bound, write bound).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCENARIOS = {"small": 50, "agency": 500, "steady": 500}
CAMPAIGNS = 20
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {cpu}, Python {platform.python_version()}"


def accounts(n: int) -> tuple[list[str], list[str]]:
    meta = [str(100000 + i) for i in range(n // 2)]
    google = [str(5000000000 + i * 7919) for i in range(n - n // 2)]
    return meta, google


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sandbox(tmp: Path, n: int, latency_ms: int, *, campaigns: int = CAMPAIGNS) -> tuple[subprocess.Popen, str, dict]:
    scenario = {"campaigns": campaigns, "auto_accounts": True}
    scenario_file = tmp / "scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "emsync", "sandbox", "--port", str(port), "--scenario", str(scenario_file), "--latency-ms", str(latency_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    env = {}
    for line in proc.stdout:
        if line.startswith("export "):
            name, value = line[7:].strip().split("=", 1)
            env[name] = value
        if line.startswith("Request log"):
            break
    return proc, f"http://127.0.0.1:{port}", env


def make_database(kind: str, tmp: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}", lambda: None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = os.environ.get("EMSYNC_TEST_POSTGRES_URL", DEFAULT_PG)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"emsync_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def populate(db_url: str, key: str, n: int) -> None:
    from emsync import db, store
    from emsync.crypto import TokenBox

    engine = db.make_engine(db_url, create=True)
    db.upgrade(engine, db_url)
    box = TokenBox(key)
    meta, google = accounts(n)
    with db.write_transaction(engine) as conn:
        for i, account in enumerate(meta):
            email = f"client{i % 50}@agency.example"
            if i < 50:
                store.add_user(conn, email)
            store.add_integration(conn, box, email=email, platform="meta", account_id=account, access_token=f"EAABbench{account}")
        for i, account in enumerate(google):
            email = f"client{i % 50}@agency.example"
            if not meta and i < 50:
                store.add_user(conn, email)
            store.add_integration(conn, box, email=email, platform="google", account_id=account, refresh_token=f"1//bench{account}")
    engine.dispose()


def child_env(sandbox_env: dict, db_url: str, key: str, concurrency: int, tmp: Path, **extra: str) -> dict:
    """The environment of the measured emsync process: none of ours, the sandbox's, the database, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMSYNC_", "META_", "GOOGLE_"))}
    env.update(sandbox_env)
    env.update(
        {
            "EMSYNC_DATABASE_URL": db_url,
            "EMSYNC_SECRET_KEY": key,
            "EMSYNC_CONCURRENCY": str(concurrency),
            "HOME": str(tmp),
            "XDG_CONFIG_HOME": str(tmp / "cfg"),
            "EMSYNC_HTTP_TIMEOUT": "120",
            **extra,
        }
    )
    return env


def run_sync(env: dict, extra: list[str], processes: int = 1) -> dict:
    """Run `emsync sync-all` as a child; wall time, its own peak RSS and CPU from wait4.

    ``processes`` > 1: that many children at once, each with EMSYNC_CONCURRENCY divided among them (the claims
    split the integrations, as between hosts): worker processes measured without building them in. Wall until
    the last exits; CPU summed; peak RSS the largest; the reports merged."""
    each = dict(env, EMSYNC_CONCURRENCY=str(max(1, int(env["EMSYNC_CONCURRENCY"]) // processes)))
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "emsync", "sync-all", "--json", *extra], env=each, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        for _ in range(processes)
    ]
    outs = [proc.stdout.read() for proc in procs]
    finished = [os.wait4(proc.pid, 0) for proc in procs]
    wall = time.perf_counter() - started
    reports = [json.loads(out) for out in outs]
    report = reports[0]
    if processes > 1:
        report = {
            "rows": sum(r["rows"] for r in reports),
            "succeeded": sum(r["succeeded"] for r in reports),
            "failed": sum(r["failed"] for r in reports),
            "integrations": [i for r in reports for i in r["integrations"] if i.get("status") != "skipped"],
        }
    return {
        "wall_s": wall,
        "exit": max(os.waitstatus_to_exitcode(status) for _, status, _ in finished),
        "peak_rss_mb": max(usage.ru_maxrss for _, _, usage in finished) / 1024,
        "cpu_s": sum(usage.ru_utime + usage.ru_stime for _, _, usage in finished),
        "report": report,
    }


def write_bound(db_url: str, tmp: Path, kind: str, run_report: dict) -> float:
    """The same rows, one bare SQLAlchemy Core upsert per integration into an empty table: no emsync code."""
    from sqlalchemy import BigInteger, Column, Date, DateTime, Integer, MetaData, Numeric, String, Table, create_engine, select

    source = create_engine(db_url)
    windows = {i["id"]: i["window"] for i in run_report["integrations"] if i["window"]}
    by_integration: dict[int, list[dict]] = {}
    stored = Table("campaign_metrics", MetaData(), autoload_with=source)  # reflected: typed values, no emsync code
    with source.connect() as conn:
        for row in conn.execute(select(stored)).mappings():
            window = windows.get(row["integration_id"])
            if window and window["since"] <= str(row["date"]) <= window["until"]:
                by_integration.setdefault(row["integration_id"], []).append(dict(row))
    source.dispose()
    if kind == "sqlite":
        target_url = f"sqlite:///{tmp / 'bound.db'}"
    else:
        target_url = db_url
    target = create_engine(target_url)
    if kind == "sqlite":
        with target.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    meta = MetaData()
    table = Table(
        "bound_metrics",
        meta,
        Column("integration_id", Integer, primary_key=True),
        Column("campaign_id", String(64), primary_key=True),
        Column("date", Date, primary_key=True),
        Column("campaign_name", String(500)),
        *[Column(c, Numeric(18, 6)) for c in ("spend", "conversions", "revenue", "ctr", "cpc", "roas")],
        Column("impressions", BigInteger),
        Column("clicks", BigInteger),
        Column("currency", String(8)),
        Column("synced_at", DateTime(timezone=True)),
    )
    meta.drop_all(target)
    meta.create_all(target)
    if kind == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    stmt = insert(table)
    keys = ("integration_id", "campaign_id", "date")
    upsert = stmt.on_conflict_do_update(
        index_elements=list(keys), set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    )
    started = time.perf_counter()
    for rows in by_integration.values():
        with target.begin() as conn:
            conn.execute(upsert, rows)
    elapsed = time.perf_counter() - started
    meta.drop_all(target)
    target.dispose()
    return elapsed


def request_log(url: str) -> list[dict]:
    return requests.get(f"{url}/__sandbox/requests", timeout=30).json()["requests"]


def measure(
    scenario: str,
    db_kind: str,
    concurrency: int,
    latency_ms: int,
    integrations: int | None = None,
    *,
    next_run: bool = False,
    processes: int = 1,
) -> dict:
    """One scenario end to end; with ``next_run`` the run after it too (the recent window), reported as ``next_run``."""
    from emsync.crypto import new_key

    load_before = os.getloadavg()

    n = integrations or SCENARIOS[scenario]
    with tempfile.TemporaryDirectory(prefix="emsync-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sandbox, url, sandbox_env = start_sandbox(tmp, n, latency_ms)
        db_url, drop = make_database(db_kind, tmp)
        try:
            key = new_key()
            populate(db_url, key, n)
            env = child_env(sandbox_env, db_url, key, concurrency, tmp, EMSYNC_MIN_INTERVAL_MINUTES="0")  # steady re-syncs on purpose
            full = None
            if scenario == "steady":
                full = run_sync(env, [])
                requests.post(f"{url}/__sandbox/reset", timeout=30)
            # Several processes split the work only if one skips what another synced moments ago: the default
            # freshness interval, not the 0 that lets the steady scenario re-sync on purpose (refused with steady).
            measured_env = env if processes == 1 else {k: v for k, v in env.items() if k != "EMSYNC_MIN_INTERVAL_MINUTES"}
            result = run_sync(measured_env, [], processes)
            log = request_log(url)
            report = result.pop("report")
            after = None
            if next_run:
                requests.post(f"{url}/__sandbox/reset", timeout=30)
                after = run_sync(env, [])
                after["requests"] = len(request_log(url))
            rows = report["rows"]
            bound_write = write_bound(db_url, tmp, db_kind, report)
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
            drop()
    per_kind: dict[str, int] = {}
    for entry in log:
        per_kind[entry["kind"]] = per_kind.get(entry["kind"], 0) + 1
    meta_ids, google_ids = accounts(n)
    bound_network = len(log) * latency_ms / 1000 / concurrency
    out = {
        "scenario": scenario,
        "db": db_kind,
        "integrations": n,
        "campaigns": CAMPAIGNS,
        "concurrency": concurrency,
        "processes": processes,
        "latency_ms": latency_ms,
        "wall_s": round(result["wall_s"], 3),
        "network_bound_s": round(bound_network, 3),
        "write_bound_s": round(bound_write, 3),
        "ratio": round(result["wall_s"] / max(bound_network, bound_write), 3),
        "rows": rows,
        "rows_per_s": round(rows / result["wall_s"], 1),
        "requests": len(log),
        "requests_per_integration": round(len(log) / n, 3),
        "requests_by_kind": per_kind,
        "google_search_streams_per_customer": round(per_kind.get("google.search_stream", 0) / len(google_ids), 3),
        "meta_insights_calls": per_kind.get("meta.insights", 0),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
        "cpu_s": round(result["cpu_s"], 2),
        "exit": result["exit"],
        "succeeded": report["succeeded"],
        "failed": report["failed"],
        "machine": machine(),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if after is not None:
        next_report = after.pop("report")
        out["next_run"] = {
            "wall_s": round(after["wall_s"], 3),
            "rows": next_report["rows"],
            "requests": after["requests"],
            "peak_rss_mb": round(after["peak_rss_mb"], 1),
            "cpu_s": round(after["cpu_s"], 2),
            "exit": after["exit"],
        }
    if full is not None:
        out["full_run_wall_s"] = round(full["wall_s"], 3)
        out["full_run_rows"] = full["report"]["rows"]
        out["steady_over_full"] = round(result["wall_s"] / full["wall_s"], 3)
    return out


def markdown(rows: list[dict]) -> str:
    columns = "scenario | db | conc. | proc. | integrations | rows | requests | wall s | network bound s | write bound s | ratio | rows/s | peak RSS MB | CPU s"
    lines = [f"| {columns} |", "|---" * (columns.count("|") + 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['db']} | {r['concurrency']} | {r.get('processes', 1)} | {r['integrations']} | {r['rows']} | "
            f"{r['requests']} | {r['wall_s']} | {r['network_bound_s']} | {r['write_bound_s']} | {r['ratio']} | {r['rows_per_s']} | "
            f"{r['peak_rss_mb']} | {r['cpu_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="small")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    parser.add_argument(
        "--peer", choices=("dlt",), help="also run the same scenario with the dlt rest_api peer, in every configuration of its sweep"
    )
    parser.add_argument("--peer-configs", help="comma-separated subset of the peer's configurations (default: all)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    parser.add_argument("--integrations", type=int, help="override the scenario's number of integrations (smoke tests)")
    parser.add_argument(
        "--processes", type=int, default=1, help="run the measured sync as N concurrent sync-all processes sharing --concurrency"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.latency_ms < 0:
        parser.error("--concurrency must be >= 1 and --latency-ms >= 0")
    if args.integrations is not None and args.integrations < 1:
        parser.error("--integrations must be >= 1")
    if not 1 <= args.processes <= args.concurrency:
        parser.error("--processes must be between 1 and --concurrency")
    if args.processes > 1 and args.peer:
        parser.error("--processes measures emsync alone: leave out --peer")
    if args.processes > 1 and args.scenario == "steady":
        parser.error("--processes measures a first sync: use --scenario agency or small")
    peer_configs = None
    if args.peer:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from peer_dlt import CONFIGS, compare

        if args.scenario == "steady":
            parser.error("--peer compares a full run and the run after it: use --scenario agency or small")
        if args.peer_configs:
            peer_configs = args.peer_configs.split(",")
            if unknown := sorted(set(peer_configs) - set(CONFIGS)):
                parser.error(f"unknown --peer-configs {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    elif args.peer_configs:
        parser.error("--peer-configs needs --peer dlt")
    result = measure(
        args.scenario, args.db, args.concurrency, args.latency_ms, args.integrations, next_run=bool(args.peer), processes=args.processes
    )
    if args.peer == "dlt":
        n = args.integrations if args.integrations is not None else SCENARIOS[args.scenario]
        result["peer"] = compare(n, args.latency_ms, result, result.get("next_run"), peer_configs)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        procs = f"-p{args.processes}" if args.processes > 1 else ""
        name = f"{args.scenario}-{args.db}-c{args.concurrency}{procs}-l{args.latency_ms}{'-dlt' if args.peer else ''}-{stamp}.json"
        (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown([result]))
    if args.json:
        print(json.dumps(result))
    return 0 if result["exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
