"""The benchmark script runs, reports what the README's table needs, and counts requests as promised."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT

KEYS = {"wall_s", "network_bound_s", "write_bound_s", "ratio", "rows", "requests", "peak_rss_mb", "cpu_s"}


def _bench(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sync_bench.py"), "--no-save", "--json", "--latency-ms", "0", "--concurrency", "4", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_full_run_reports_every_figure():
    report = _bench("--scenario", "small", "--integrations", "6")
    assert KEYS <= set(report)
    assert (report["succeeded"], report["failed"]) == (6, 0)
    # first sync: Meta account + insights pages (20 campaigns x 30 days ~ 530 rows: 2 pages of 500) + the daily
    # debug_token per account; Google token + customer query + metrics query per customer
    assert report["requests_by_kind"] == {
        "meta.account": 3,
        "meta.insights": 6,
        "meta.debug_token": 3,
        "google.token": 3,
        "google.search_stream": 6,
    }
    assert report["rows"] > 1000 and report["write_bound_s"] > 0 and report["peak_rss_mb"] > 20


def test_steady_run_is_one_request_per_integration():
    report = _bench("--scenario", "steady", "--integrations", "6")
    assert report["requests_by_kind"] == {"meta.insights": 3, "google.search_stream": 3}
    assert report["google_search_streams_per_customer"] == 1.0
    # the steady run re-reads the recent days only (rows, not seconds: speed is measured in bench/, never asserted here)
    assert 0 < report["rows"] < report["full_run_rows"] / 5
    assert "steady_over_full" in report


def test_worker_processes_split_the_integrations_between_them():
    """--processes 2: two sync-all processes at once share the work through their claims, each integration once."""
    report = _bench("--scenario", "small", "--integrations", "6", "--processes", "2")
    assert report["processes"] == 2 and (report["succeeded"], report["failed"]) == (6, 0)
    assert report["requests_by_kind"]["meta.insights"] == 6 and report["requests_by_kind"]["google.search_stream"] == 6
    assert report["rows"] > 1000


def test_backfill_bench_reports_requests_operations_and_a_free_rerun():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "backfill_bench.py"),
            *("--no-save", "--json", "--latency-ms", "0", "--concurrency", "2", "--integrations", "2", "--months", "4"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["complete"] and report["rows"] > 1000 and report["wall_s"] > 0
    kinds = report["requests_by_kind"]
    assert report["google_operations"] == kinds["google.search_stream"], "the ledger agrees with the sandbox"
    assert kinds["meta.insights"] >= 4 and kinds["google.search_stream"] >= 3, "a month per Meta query, a quarter per Google one"
    assert report["rerun_requests"] == report["rerun_chunks"] == 0, "a finished backfill costs no request"


def _bench_args(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sync_bench.py"), "--no-save", *args], capture_output=True, text=True, timeout=60
    )


def test_peer_options_are_refused_before_anything_runs():
    for args, says in (
        (("--peer-configs", "w20-keys"), "--peer-configs needs --peer dlt"),
        (("--peer", "dlt", "--peer-configs", "w20-keys,w99-bogus"), "unknown --peer-configs w99-bogus"),
        (("--peer", "dlt", "--scenario", "steady"), "use --scenario agency or small"),
        (("--processes", "0"), "--processes must be between 1 and --concurrency"),
        (("--processes", "2", "--peer", "dlt"), "--processes measures emsync alone"),
        (("--processes", "2", "--scenario", "steady"), "--processes measures a first sync"),
        (("--integrations", "0"), "--integrations must be >= 1"),
        (("--integrations", "-3"), "--integrations must be >= 1"),
    ):
        result = _bench_args(*args)
        assert result.returncode == 2, args
        assert says in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_peer_sweep_sets_what_dlt_reads(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import peer_dlt

    swept = {(c.extract_workers, c.primary_keys): c for c in peer_dlt.sweep()}
    assert set(swept) == {(20, False), (20, True), (32, False), (32, True)}
    env = swept[(32, True)].env()
    # 32 workers are idle unless dlt lets 32 items be in flight (its default is 20)
    assert (env["EXTRACT__WORKERS"], env["EXTRACT__MAX_PARALLEL_ITEMS"]) == ("32", "32")
    assert (env["NORMALIZE__WORKERS"], env["LOAD__WORKERS"]) == ("2", "1") and "DATA_WRITER__FILE_MAX_ITEMS" in env
    assert peer_dlt.DEFAULT.env() == {} and not peer_dlt.DEFAULT.parallelized and not peer_dlt.DEFAULT.primary_keys
    assert set(peer_dlt.CONFIGS) == {c.name for c in [*swept.values(), peer_dlt.DEFAULT]}
