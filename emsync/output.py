"""How a sync run looks: progress bar on a terminal, plain log lines for cron, JSON for machines, quiet for cron mail."""
from __future__ import annotations

import json
import logging
import sys

from . import logs

log = logging.getLogger("emsync")


class _Buffer(logging.Handler):
    """Holds formatted lines until we know whether the run failed (``--quiet``)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def result_json(result) -> dict:
    return {
        "run_id": result.run_id,
        "started_at": result.started_at.isoformat(),
        "duration_s": round(result.duration_s, 3),
        "due": result.due,
        "succeeded": result.succeeded,
        "failed": result.failed,
        "skipped": result.skipped,
        "rows": result.rows,
        "integrations": [
            {
                "id": r.integration_id, "platform": r.platform, "email": r.email, "account_id": r.account_id,
                "status": r.status, "rows": r.rows, "api_requests": r.api_requests, "duration_s": round(r.duration_s, 3),
                "window": None if r.window is None else {"since": r.window.since.isoformat(), "until": r.window.until.isoformat(), "full": r.window.full},
                "error": r.error, "retry_at": r.retry_at.isoformat() if r.retry_at else None,
            }
            for r in result.results
        ],
    }


def run_with_output(settings, engine, *, verbose: bool, email=None, platform=None, full=False, json_out=False, quiet=False,
                    trigger=None) -> int:
    """Run the engine with the output mode the invocation asked for; returns the exit code."""
    from .healthcheck import Healthcheck
    from .sync import Engine, SyncOptions

    interactive = sys.stderr.isatty() and not json_out and not quiet
    trigger = trigger or ("manual" if sys.stdin.isatty() else "cron")

    buffer = None
    if quiet:
        buffer = _Buffer()
        buffer.setFormatter(logs.formatter(settings.log_format))
        console = buffer
    elif interactive:
        console = None  # the progress display shows results; warnings still reach stderr below
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logs.formatter(settings.log_format))
    handlers = logs.configure(log_format=settings.log_format, log_file=settings.log_file, console=console, verbose=verbose)

    ping = Healthcheck(settings.healthcheck_url) if email is None else None
    if ping:
        ping.start()
    progress = None
    try:
        if interactive:
            from .render import SyncProgress

            progress = SyncProgress()
            handlers += logs.configure(log_format="text", log_file=None, console=progress.log_handler(verbose=verbose), verbose=verbose)
            sync_engine = Engine(settings, engine, on_start=progress.start, on_result=progress.advance)
        else:
            sync_engine = Engine(settings, engine)
        try:
            result = sync_engine.run(SyncOptions(email=email, platform=platform, full=full, trigger=trigger))
        finally:
            if progress:
                progress.stop()
    except BaseException as exc:
        if ping:
            ping.finish(False, f"emsync run crashed: {type(exc).__name__}")
        raise
    finally:
        logs.detach(handlers)

    if ping:
        ping.finish(result.failed == 0, result.summary())
    if buffer is not None and result.failed:
        sys.stderr.write("\n".join(buffer.lines) + "\n")
    if json_out:
        print(json.dumps(result_json(result), indent=2))
    elif interactive:
        from .render import print_run

        print_run(result)
    return result.exit_code
