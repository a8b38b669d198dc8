"""A cron process on a manual clock, for the simulated-day test (tests/test_budget.py).

Reads ISO 8601 instants on stdin, one per line; at each runs one sync-all with
the clock set to it, and prints one JSON line: the ids synced and skipped.
Settings come from the environment, as for `emsync sync-all`.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime


def main() -> int:
    from emsync import db
    from emsync.clock import ManualClock
    from emsync.config import load_settings
    from emsync.sync import Syncer, SyncOptions

    settings = load_settings()
    engine = db.make_engine(settings.database_url, pool_size=settings.concurrency)
    clock: ManualClock | None = None
    for line in sys.stdin:
        moment = datetime.fromisoformat(line.strip())
        if clock is None:
            clock = ManualClock(moment)
        clock.set(moment)
        result = Syncer(settings, engine, clock=clock).run(SyncOptions(trigger="cron"))
        report = {
            "ok": [r.integration_id for r in result.results if r.status == "ok"],
            "failed": [r.integration_id for r in result.results if r.failed],
            "waiting": [r.integration_id for r in result.results if r.status == "skipped" and r.error and "next turn" in r.error],
        }
        print(json.dumps(report), flush=True)
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
