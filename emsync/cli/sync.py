"""`sync-all` and `sync-user`, and how a run looks: a progress bar on a terminal, plain log lines for cron,
JSON for machines, nothing but failures with ``--quiet``."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from .. import logs
from ..errors import UserError
from .app import JsonOpt, app, print_json, state

log = logging.getLogger("emsync")

PlatformOpt = Annotated[str | None, typer.Option("--platform", help="Only meta or only google.")]
FullOpt = Annotated[bool, typer.Option("--full", help="Re-fetch the whole lookback window.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing unless something failed (for cron).")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Sync even integrations another run synced moments ago (ignores EMSYNC_MIN_INTERVAL_MINUTES).")
]
TriggerOpt = Annotated[str | None, typer.Option("--trigger", help="Recorded on the run: cron, manual (default: cron without a terminal).")]


@app.command("sync-all")
def sync_all(
    typer_ctx: typer.Context,
    platform: PlatformOpt = None,
    full: FullOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    trigger: TriggerOpt = None,
    force: ForceOpt = False,
) -> None:
    """Sync every active integration (what cron runs every 30 minutes).

    Skips integrations whose last successful sync started less than EMSYNC_MIN_INTERVAL_MINUTES ago
    (another host or cron line just did them); --full and --force do not.

    Exit code 0: all synced (or nothing due); 1: some integration failed (the others were saved); 2: bad input or configuration;
    130/143: stopped by Ctrl-C/SIGTERM (recorded as interrupted; finished integrations kept, the rest keep their previous rows).

    Example: [bold]emsync sync-all --quiet[/bold]
    """
    if trigger not in (None, "cron", "manual"):
        raise UserError(f"--trigger must be cron or manual, got {trigger[:20]!r}")
    _run(typer_ctx, None, platform, full, json_out, quiet, trigger, force=force)


@app.command("sync-user")
def sync_user(
    typer_ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The user's email.")],
    platform: PlatformOpt = None,
    full: FullOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sync one user's integrations now (the dashboard's "Sync Data" button); also retries those needing re-auth.

    Example: [bold]emsync sync-user anna@example.com --platform meta[/bold]
    """
    from .. import validate

    _run(typer_ctx, validate.email(email), platform, full, json_out, quiet, "user")


def _run(typer_ctx: typer.Context, email, platform, full: bool, json_out: bool, quiet: bool, trigger, *, force: bool = False) -> None:
    from .. import validate

    ctx = state(typer_ctx)
    platform = None if platform is None else validate.platform(platform)
    code = run_with_output(
        ctx.settings,
        ctx.engine(),
        verbose=ctx.verbose,
        email=email,
        platform=platform,
        full=full,
        json_out=json_out,
        quiet=quiet,
        trigger=trigger,
        force=force,
    )
    raise typer.Exit(code)


class _Buffer(logging.Handler):
    """Holds formatted lines until we know whether the run failed (``--quiet``)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def run_with_output(
    settings, engine, *, verbose: bool, email=None, platform=None, full=False, json_out=False, quiet=False, trigger=None, force=False
) -> int:
    """Run the engine with the output mode the invocation asked for; returns the exit code (130/143 when a signal
    stopped the run: see ``interrupts``)."""
    from ..interrupts import CancelToken, stop_on_signals
    from ..sync import Syncer, SyncOptions

    interactive = sys.stderr.isatty() and not json_out and not quiet
    trigger = trigger or ("manual" if sys.stdin.isatty() else "cron")

    buffer = None
    console: logging.Handler | None
    if quiet:
        buffer = _Buffer()
        buffer.setFormatter(logs.formatter(settings.log_format))
        console = buffer
    elif interactive:
        console = None  # the progress display shows results; warnings still reach stderr below
    else:
        console = logs.stderr_handler(settings.log_format)
    handlers = logs.configure_for(settings, console=console, verbose=verbose)

    progress = None
    cancel = CancelToken()
    try:
        if interactive:
            from .render import SyncProgress

            progress = SyncProgress()
            handlers += logs.configure(log_format="text", log_file=None, console=progress.log_handler(verbose=verbose), verbose=verbose)
            syncer = Syncer(settings, engine, on_start=progress.start, on_result=progress.advance, cancel=cancel)
        else:
            syncer = Syncer(settings, engine, cancel=cancel)
        notice = "no new integration starts, fetches in flight are abandoned, writes already begun finish"
        try:
            with stop_on_signals(cancel, notice, log_format=settings.log_format):
                result = syncer.run(SyncOptions(email=email, platform=platform, full=full, trigger=trigger, force=force))
        finally:
            if progress:
                progress.stop()
    finally:
        logs.detach(handlers)

    if buffer is not None and result.interrupted:
        sys.stderr.write(result.summary() + "\n")  # --quiet: the one line, whatever else happened
    elif buffer is not None and result.failed:
        sys.stderr.write("\n".join(buffer.lines) + "\n")
    if json_out:
        print_json(result.as_dict())
    elif interactive:
        from .render import print_run

        print_run(result)
    return cancel.exit_code if result.interrupted else result.exit_code
