"""What the dlt peer gets wrong on the same data: vanished rows and one failing account (small, no latency).

python bench/peer_correctness.py   # prints JSON; the recorded result is in bench/results/
"""

import json
import os
import sqlite3
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from datetime import date, timedelta
from pathlib import Path

import dlt
import peer_dlt as p
import requests

from emsync.sandbox import Sandbox


def run(sb, tmp, meta, google, name):
    today = date.today()
    tokens = {
        c: requests.post(
            f"{sb.url}/token",
            data={
                "grant_type": "refresh_token",
                "client_id": sb.scenario["google_client_id"],
                "client_secret": sb.scenario["google_client_secret"],
                "refresh_token": "1//x",
            },
        ).json()["access_token"]
        for c in google
    }
    spec = {
        "url": sb.url,
        "meta_accounts": meta,
        "google_customers": google,
        "concurrency": 4,
        "since": str(today - timedelta(days=29)),
        "until": str(today),
        "db": str(tmp / "peer.db"),
        "pipelines_dir": str(tmp / "pl"),
        "meta_tokens": {a: "EAABx" for a in meta},
        "google_tokens": tokens,
    }
    os.environ["EXTRACT__WORKERS"] = "4"
    pipe = dlt.pipeline(
        pipeline_name=name,
        destination=dlt.destinations.sqlalchemy(f"sqlite:///{spec['db']}"),
        dataset_name="ads",
        pipelines_dir=spec["pipelines_dir"],
    )
    try:
        pipe.run(p.build_source(spec))
        return None
    except Exception as e:  # noqa: BLE001 - the peer's failure is the measurement
        return type(e).__name__ + ": " + str(e).splitlines()[0][:160]


out = {}
# vanished rows: the sandbox restates one account; the second load no longer returns one row
tmp = Path(tempfile.mkdtemp())
with Sandbox({"restate": True, "campaigns": 5, "meta_accounts": {"11": {}}}) as sb:
    run(sb, tmp, ["11"], [], "v1")
    db = sqlite3.connect(tmp / "peer__ads.db")
    before = db.execute("select count(*) from meta_insights").fetchone()[0]
    db.close()
    run(sb, tmp, ["11"], [], "v1")
    db = sqlite3.connect(tmp / "peer__ads.db")
    after = db.execute("select count(*) from meta_insights").fetchone()[0]
    db.close()
    served = len(requests.get(f"{sb.url}/__sandbox/requests").json()["requests"])
out["vanished_rows"] = {"rows_first_load": before, "rows_after_restated_load": after, "api_now_returns": before - 1}
# one failing account beside three healthy ones
tmp = Path(tempfile.mkdtemp())
with Sandbox({"campaigns": 5, "meta_accounts": {"22": {"faults": [{"kind": "server_error"}]}}}) as sb:
    err = run(sb, tmp, ["21", "22", "23"], ["2100000000"], "f1")
    path = tmp / "peer__ads.db"
    loaded = 0
    if path.exists():
        db = sqlite3.connect(path)
        tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
        loaded = sum(db.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables if t in ("meta_insights", "google_campaigns"))
        db.close()
out["one_failing_account"] = {"error": err, "rows_loaded_for_the_three_healthy_accounts": loaded}
print(json.dumps(out, indent=1))
