"""The peer: the same sandbox scenario loaded by dlt's declarative rest_api source into SQLite, configured as its experts would.

A bench-only dependency (`pip install "dlt[sqlalchemy]"`), never a runtime one.
The source follows dlt's documentation: a json_link paginator on Meta's
`paging.next`, a data selector over Google's searchStream batches, `merge` on
(account, campaign, date). Google access tokens are obtained before the run
(rest_api has no refresh-token grant), which saves the peer one request per
customer.

The peer is run in several configurations (issue 18, "The peer, fairly"), each
a fresh pipeline and database on the same sandbox:

* the sweep, following dlt's performance guide: `parallelized=True` resources
  with 20 and 32 extract workers (EXTRACT__WORKERS, EXTRACT__MAX_PARALLEL_ITEMS),
  `create_primary_keys` off and on, NORMALIZE__WORKERS=2 over rotated extract
  files, LOAD__WORKERS=1 (SQLite has one writer);
* dlt's defaults, reported as a second row.

The best full run is reported; the re-run (same window again, a merge into
what is loaded) only for the best configuration with primary keys: without
them dlt's delete-insert merge compares every loaded row with every new one
and did not finish in 22 minutes.

    python bench/peer_dlt.py SPEC.json     # run once, print one JSON line (used by sync_bench.py --peer dlt)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
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
            "resource_defaults": {"write_disposition": "merge", "parallelized": spec.get("parallelized", True)},
            "resources": resources,
        },
        name="ads",
    )


@dataclass(frozen=True)
class PeerConfig:
    """One way to configure the dlt peer; ``None`` leaves dlt's own default in place."""

    name: str
    extract_workers: int | None = None
    parallelized: bool = False
    primary_keys: bool = False
    normalize_workers: int | None = None
    load_workers: int | None = None
    file_max_items: int | None = None

    def env(self) -> dict[str, str]:
        """dlt's settings as the environment variables its configuration reads."""
        out = {}
        if self.extract_workers is not None:
            out["EXTRACT__WORKERS"] = str(self.extract_workers)
            # at most max_parallel_items futures are in flight (default 20): raise it with the workers
            out["EXTRACT__MAX_PARALLEL_ITEMS"] = str(max(self.extract_workers, 20))
        if self.normalize_workers is not None:
            out["NORMALIZE__WORKERS"] = str(self.normalize_workers)
        if self.load_workers is not None:
            out["LOAD__WORKERS"] = str(self.load_workers)
        if self.file_max_items is not None:
            # rotate the extract files: normalize hands one file to each worker process
            out["DATA_WRITER__FILE_MAX_ITEMS"] = str(self.file_max_items)
        return out

    def describe(self) -> str:
        """One line naming every setting, as the README quotes it."""
        if self.extract_workers is None and not self.parallelized:
            return "dlt defaults: resources not parallelized, 5 extract workers, 1 normalize worker, 20 load workers, no PRIMARY KEY"
        return (
            f"parallelized=True, EXTRACT__WORKERS={self.extract_workers}, NORMALIZE__WORKERS={self.normalize_workers} "
            f"(extract files rotated every {self.file_max_items:,} items), LOAD__WORKERS={self.load_workers}, "
            f"create_primary_keys={self.primary_keys}"
        )


SWEEP_WORKERS = (20, 32)
DEFAULT = PeerConfig("default")


def sweep() -> list[PeerConfig]:
    """What a dlt expert tries on this 2-core machine (issue 18, bounded): 20 and 32 extract workers, keys on and off.

    Normalize gets both cores (the sandbox is idle by then) and rotated extract files to share between them;
    SQLite takes one writer at a time, so one load worker.
    """
    return [
        PeerConfig(
            f"w{workers}-{'keys' if keys else 'nokeys'}",
            extract_workers=workers,
            parallelized=True,
            primary_keys=keys,
            normalize_workers=2,
            load_workers=1,
            file_max_items=20_000,
        )
        for workers in SWEEP_WORKERS
        for keys in (False, True)
    ]


CONFIGS = {c.name: c for c in [*sweep(), DEFAULT]}


def _summary(exc: BaseException) -> str:
    """The exception's first line and, for a message carrying a traceback, its last line (the reason)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [""]
    # the line naming the exception that ended the traceback, else the last one
    reasons = [line for line in lines[1:] if re.match(r"[\w.]+(Error|Exception): ", line)] or lines[1:]
    tail = f" ... {reasons[-1][:300]}" if reasons else ""
    return f"{type(exc).__name__}: {lines[0][:300]}{tail}"


def run_once(spec: dict) -> dict:
    import dlt

    config = CONFIGS[spec["config"]]
    os.environ.update(config.env())
    os.environ["RUNTIME__LOG_LEVEL"] = "WARNING"
    pipeline = dlt.pipeline(
        pipeline_name="ads_peer",
        destination=dlt.destinations.sqlalchemy(f"sqlite:///{spec['db']}", create_primary_keys=config.primary_keys),
        dataset_name="ads",
        pipelines_dir=spec["pipelines_dir"],
    )
    started = time.perf_counter()
    error = None
    try:
        pipeline.run(build_source({**spec, "parallelized": config.parallelized}))
    except Exception as exc:  # noqa: BLE001 - reported, like a cron job would see it
        error = _summary(exc)
        # dlt wraps the failure of a step: name the exception underneath too
        if cause := getattr(exc, "exception", None) or exc.__cause__:
            error += f" <- {_summary(cause)}"
        # a load job that failed for good leaves its traceback beside the package: its last line is the reason
        for failed in sorted(Path(spec["pipelines_dir"]).rglob("*.exception")):
            if lines := failed.read_text(errors="replace").strip().splitlines():
                error += f" <- {lines[-1][:300]}"
                break
    return {"wall_s": time.perf_counter() - started, "error": error}


PEER_TIMEOUT_S = 1200


def measured(spec: dict) -> dict:
    """One peer run in a child process: wall, peak RSS and CPU of that process and its workers (stopped after PEER_TIMEOUT_S).

    The child leads its own process group, so a stop also reaches dlt's normalize worker processes.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, fh.name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    timer = threading.Timer(PEER_TIMEOUT_S, os.killpg, (proc.pid, signal.SIGKILL))
    timer.start()
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    wall = time.perf_counter() - started
    if timed_out := wall >= PEER_TIMEOUT_S:
        out = json.dumps({"error": f"did not finish within {PEER_TIMEOUT_S} s (stopped)"}).encode()
    os.unlink(fh.name)
    inner = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {"error": "no output"}
    return {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "error": inner.get("error"),
        "exit": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
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


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def compare(n: int, latency_ms: int, emsync: dict, emsync_next: dict | None = None, configs: list[str] | None = None) -> dict:
    """Run the peer's configurations on one fresh sandbox with the same scenario, each into its own fresh database.

    ``emsync`` is emsync's full run from the same invocation (``wall_s``, ``peak_rss_mb``, ``requests``),
    ``emsync_next`` its next run (the recent window) if measured; ``configs`` names a subset of CONFIGS
    (default: all). Returns every full run, the best one, the re-run of the best configuration with
    primary keys, the default configuration's run, and the ratios to emsync (peer / emsync: > 1 = emsync faster).
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sync_bench as bench

    chosen = [CONFIGS[name] for name in (configs or list(CONFIGS))]
    meta, google = bench.accounts(n)
    runs: dict[str, dict] = {}
    rerun = None
    with tempfile.TemporaryDirectory(prefix="emsync-peer-") as tmp_name:
        tmp = Path(tmp_name)
        sandbox, url, env = bench.start_sandbox(tmp, n, latency_ms)
        try:
            today = date.today()
            base = {
                "url": url,
                "meta_accounts": meta,
                "google_customers": google,
                "since": str(today - timedelta(days=29)),
                "until": str(today),
                "meta_tokens": {a: f"EAABbench{a}" for a in meta},
                "google_tokens": _tokens(url, google, env),
            }

            def spec_for(config: PeerConfig) -> dict:
                home = tmp / config.name
                home.mkdir(exist_ok=True)
                return {**base, "config": config.name, "db": str(home / "peer.db"), "pipelines_dir": str(home / "pipelines")}

            for config in chosen:
                requests.post(f"{url}/__sandbox/reset", timeout=30)
                full = measured(spec_for(config))
                full["requests"] = len(bench.request_log(url))
                loaded = _rows(tmp / config.name / "peer__ads.db")  # dlt attaches each dataset as its own SQLite file
                full["rows_loaded"] = sum(v for k, v in loaded["tables"].items() if k in ("meta_insights", "google_campaigns"))
                runs[config.name] = {"configuration": config.describe(), "full": full, **loaded}
            finished = [c for c in chosen if runs[c.name]["full"]["error"] is None and not runs[c.name]["full"]["timed_out"]]
            with_keys = [c for c in finished if c.primary_keys]
            if with_keys:
                best_keys = min(with_keys, key=lambda c: runs[c.name]["full"]["wall_s"])
                requests.post(f"{url}/__sandbox/reset", timeout=30)
                rerun = measured(spec_for(best_keys))
                rerun["requests"] = len(bench.request_log(url))
                rerun["config"] = best_keys.name
                rerun["configuration"] = best_keys.describe()
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=30)
    swept = [name for name in runs if name != DEFAULT.name and runs[name]["full"]["error"] is None]
    best = min(swept, key=lambda name: runs[name]["full"]["wall_s"]) if swept else None
    result: dict = {"runs": runs, "best_full": best, "rerun": rerun}
    if best:
        full = runs[best]["full"]
        result["best_full_over_emsync"] = _ratio(full["wall_s"], emsync["wall_s"])
        result["best_rss_over_emsync"] = _ratio(full["peak_rss_mb"], emsync["peak_rss_mb"])
        result["best_requests_over_emsync"] = _ratio(full["requests"], emsync["requests"])
    if DEFAULT.name in runs and runs[DEFAULT.name]["full"]["error"] is None:
        result["default_full_over_emsync"] = _ratio(runs[DEFAULT.name]["full"]["wall_s"], emsync["wall_s"])
    if rerun and emsync_next and rerun["error"] is None and not rerun["timed_out"]:
        result["rerun_over_emsync_next"] = _ratio(rerun["wall_s"], emsync_next["wall_s"])
    return result


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(run_once(spec)))
