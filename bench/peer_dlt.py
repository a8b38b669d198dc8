"""The peer: the same sandbox scenario loaded by dlt's declarative rest_api source into SQLite.

A bench-only dependency (`pip install "dlt[sqlalchemy]"`), never a runtime one.
Configured as dlt's documentation recommends: a json_link paginator on
Meta's `paging.next`, a data selector over Google's searchStream batches,
`merge` on (account, campaign, date), parallelized resources with as many
extract workers as emsync's concurrency. Google access tokens are obtained
before the run (rest_api has no refresh-token grant), which saves the peer
one request per customer.

    python bench/peer_dlt.py SPEC.json     # run once, print one JSON line (used by sync_bench.py --peer dlt)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import requests

VERSION_META = "v25.0"
VERSION_GOOGLE = "v26"


def build_source(spec: dict):
    from dlt.sources.rest_api import rest_api_source

    since, until = spec["since"], spec["until"]
    resources = []
    for account in spec["meta_accounts"]:
        resources.append(
            {
                "name": f"meta_{account}",
                "table_name": "meta_insights",
                "primary_key": ["account_id", "campaign_id", "date_start"],
                "endpoint": {
                    "path": f"{VERSION_META}/act_{account}/insights",
                    "params": {
                        "level": "campaign",
                        "time_increment": "1",
                        "limit": 500,
                        # rest_api reads {...} in params as placeholders: literal braces are doubled
                        "time_range": json.dumps({"since": since, "until": until}).replace("{", "{{").replace("}", "}}"),
                        "fields": "account_id,campaign_id,campaign_name,spend,impressions,clicks,actions,action_values",
                        "access_token": spec["meta_tokens"][account],
                    },
                    "paginator": {"type": "json_link", "next_url_path": "paging.next"},
                    "data_selector": "data",
                },
            }
        )
    query = (
        "SELECT customer.id, campaign.id, campaign.name, segments.date, metrics.cost_micros, metrics.impressions, metrics.clicks, "
        f"metrics.conversions, metrics.conversions_value FROM campaign WHERE segments.date BETWEEN '{since}' AND '{until}'"
    )
    for customer in spec["google_customers"]:
        resources.append(
            {
                "name": f"google_{customer}",
                "table_name": "google_campaigns",
                "primary_key": ["customer__id", "campaign__id", "segments__date"],
                "endpoint": {
                    "path": f"{VERSION_GOOGLE}/customers/{customer}/googleAds:searchStream",
                    "method": "POST",
                    "json": {"query": query},
                    "headers": {"Authorization": f"Bearer {spec['google_tokens'][customer]}"},
                    "paginator": "single_page",
                    "data_selector": "[*].results[*]",
                },
            }
        )
    return rest_api_source(
        {
            "client": {"base_url": spec["url"] + "/"},
            "resource_defaults": {"write_disposition": "merge", "parallelized": True},
            "resources": resources,
        },
        name="ads",
    )


def run_once(spec: dict) -> dict:
    import dlt

    os.environ["EXTRACT__WORKERS"] = str(spec["concurrency"])
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    pipeline = dlt.pipeline(
        pipeline_name="ads_peer",
        destination=dlt.destinations.sqlalchemy(f"sqlite:///{spec['db']}"),
        dataset_name="ads",
        pipelines_dir=spec["pipelines_dir"],
    )
    started = time.perf_counter()
    error = None
    try:
        pipeline.run(build_source(spec))
    except Exception as exc:  # noqa: BLE001 - reported, like a cron job would see it
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return {"wall_s": time.perf_counter() - started, "error": error}


PEER_TIMEOUT_S = 1500


def measured(spec: dict) -> dict:
    """One peer run in a child process: wall, peak RSS and CPU of that process alone (stopped after PEER_TIMEOUT_S)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, fh.name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    timer = threading.Timer(PEER_TIMEOUT_S, proc.kill)
    timer.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    if wall_exceeded := time.perf_counter() - started >= PEER_TIMEOUT_S:
        out = json.dumps({"error": f"did not finish within {PEER_TIMEOUT_S} s (stopped)"}).encode()
    os.unlink(fh.name)
    wall = time.perf_counter() - started
    inner = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {"error": "no output"}
    return {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "error": inner.get("error"),
        "exit": os.waitstatus_to_exitcode(status),
        "timed_out": wall_exceeded,
    }


def _tokens(url: str, customers: list[str], env: dict) -> dict:
    out = {}
    for customer in customers:
        body = requests.post(
            f"{url}/token",
            data={
                "grant_type": "refresh_token",
                "client_id": env["GOOGLE_OAUTH_CLIENT_ID"],
                "client_secret": env["GOOGLE_OAUTH_CLIENT_SECRET"],
                "refresh_token": f"1//bench{customer}",
            },
            timeout=30,
        ).json()
        out[customer] = body["access_token"]
    return out


def _rows(db: Path) -> dict:
    import sqlite3

    conn = sqlite3.connect(db)
    tables = {name for (name,) in conn.execute("select name from sqlite_master where type='table'")}
    counts = {t: conn.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables if not t.startswith("_dlt")}
    overlap = None
    if "meta_insights__actions" in tables:
        # what a dashboard summing the loaded purchase actions gets, against the priority-list answer
        summed = conn.execute(
            "select coalesce(sum(cast(value as real)),0) from meta_insights__actions where action_type in "
            "('omni_purchase','purchase','offsite_conversion.fb_pixel_purchase')"
        ).fetchone()[0]
        first = conn.execute(
            "select coalesce(sum(cast(value as real)),0) from meta_insights__actions where action_type='omni_purchase'"
        ).fetchone()[0]
        overlap = {"summed_purchase_actions": summed, "omni_purchase_only": first}
    conn.close()
    return {"tables": counts, "purchase_actions": overlap}


def compare(scenario: str, n: int, campaigns: int, concurrency: int, latency_ms: int, emsync: dict) -> dict:
    """Run the peer on a fresh sandbox with the same scenario: full run, re-run, requests, RSS; then what it gets wrong."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sync_bench as bench

    meta, google = bench.accounts(n)
    with tempfile.TemporaryDirectory(prefix="emsync-peer-") as tmp_name:
        tmp = Path(tmp_name)
        sandbox, url, env = bench.start_sandbox(tmp, n, latency_ms)
        try:
            today = date.today()
            spec = {
                "url": url,
                "meta_accounts": meta,
                "google_customers": google,
                "concurrency": concurrency,
                "since": str(today - timedelta(days=29)),
                "until": str(today),
                "db": str(tmp / "peer.db"),
                "pipelines_dir": str(tmp / "pipelines"),
                "meta_tokens": {a: f"EAABbench{a}" for a in meta},
                "google_tokens": _tokens(url, google, env),
            }
            requests.post(f"{url}/__sandbox/reset", timeout=30)
            full = measured(spec)
            full_requests = len(bench.request_log(url))
            requests.post(f"{url}/__sandbox/reset", timeout=30)
            rerun = measured(spec)
            rerun_requests = len(bench.request_log(url))
            loaded = _rows(tmp / "peer__ads.db")  # dlt attaches each dataset as its own SQLite file
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    peer_rows = sum(v for k, v in loaded["tables"].items() if k in ("meta_insights", "google_campaigns"))
    result = {
        "full": {**full, "requests": full_requests},
        "rerun": {**rerun, "requests": rerun_requests},
        "rows_loaded": peer_rows,
        "tables": loaded["tables"],
        "purchase_actions": loaded["purchase_actions"],
    }
    if scenario != "steady":
        result["emsync_full_vs_peer"] = round(emsync["wall_s"] / full["wall_s"], 3)
        result["peer_full_over_emsync"] = round(full["wall_s"] / emsync["wall_s"], 2)
    else:
        result["peer_rerun_over_emsync_steady"] = round(rerun["wall_s"] / emsync["wall_s"], 2)
    result["peer_rss_over_emsync"] = round(full["peak_rss_mb"] / emsync["peak_rss_mb"], 2)
    result["peer_requests_over_emsync"] = round(full_requests / emsync["requests"], 2)
    return result


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(run_once(spec)))
