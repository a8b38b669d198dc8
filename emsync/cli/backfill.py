"""`emsync backfill`, and how it looks: progress per integration on a terminal, plain log lines otherwise, JSON for machines."""

from __future__ import annotations

import logging
import sys
from datetime import date
from typing import Annotated

import typer

from .. import logs
from ..errors import UserError
from .app import JsonOpt, app, print_json, state

log = logging.getLogger("emsync")


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise UserError(f"{option} must be a date like 2025-01-31, got {value[:20]!r}") from None


@app.command()
def backfill(
    typer_ctx: typer.Context,
    since: Annotated[str, typer.Option("--since", help="First day to fetch (YYYY-MM-DD, in each account's time zone).")],
    until: Annotated[
        str | None, typer.Option("--until", help="Last day to fetch (default: the day before the regular window starts).")
    ] = None,
    email: Annotated[str | None, typer.Option("--email", help="Only this user's integrations.")] = None,
    integration: Annotated[
        list[int] | None, typer.Option("--integration", metavar="ID", help="Only this integration; repeat for several.")
    ] = None,
    platform: Annotated[str | None, typer.Option("--platform", help="Only meta or only google.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the chunks, requests and Google Ads operations; write nothing.")
    ] = False,
    refetch: Annotated[bool, typer.Option("--refetch", help="Fetch chunks again that an earlier backfill finished.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="When stopped by a quota or rate limit, sleep until it may go on.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Fetch campaign history before the regular window, one Meta month or Google quarter per request.

    Resumable: run it again and it fetches only the chunks not finished yet. It never holds an integration, so
    cron's sync-all goes on meanwhile. Exit 0 when done or stopped by a quota or rate limit (it says when to run it
    again); 1 when an integration failed; 130/143 when interrupted (finished chunks are kept).

    Example: [bold]emsync backfill --since 2024-01-01 --email anna@example.com[/bold]
    """
    from .. import validate
    from ..backfill.results import BackfillOptions

    if email is not None and integration:
        raise UserError("give --email or --integration, not both")
    first = _day(since, "--since")
    assert first is not None
    options = BackfillOptions(
        since=first,
        until=_day(until, "--until"),
        email=None if email is None else validate.email(email),
        integration_ids=tuple(dict.fromkeys(integration or ())),
        platform=None if platform is None else validate.platform(platform),
        refetch=refetch,
        dry_run=dry_run,
        wait=wait,
    )
    ctx = state(typer_ctx)
    raise typer.Exit(run_backfill(ctx.settings, ctx.engine(), options, verbose=ctx.verbose, json_out=json_out))


def run_backfill(settings, engine, options, *, verbose: bool, json_out: bool) -> int:
    """Run (or plan) the backfill with the output the invocation asked for; returns the exit code."""
    from ..backfill.runner import Backfiller
    from ..interrupts import CancelToken, stop_on_signals

    interactive = sys.stderr.isatty() and not json_out and not options.dry_run
    console: logging.Handler | None = None
    if not interactive:
        console = logs.stderr_handler(settings.log_format)
    handlers = logs.configure_for(settings, console=console, verbose=verbose)
    progress = None
    stop = CancelToken()
    try:
        if interactive:
            from .render import BackfillProgress

            progress = BackfillProgress()
            handlers += logs.configure(log_format="text", log_file=None, console=progress.log_handler(verbose=verbose), verbose=verbose)
        backfiller = Backfiller(settings, engine, stop=stop, on_progress=progress.update if progress else None)
        with stop_on_signals(stop, "the chunk in flight is rolled back, finished chunks are kept", log_format=settings.log_format):
            try:
                result = backfiller.run(options)
            finally:
                if progress:
                    progress.stop()
    finally:
        logs.detach(handlers)
    if json_out:
        print_json(result.as_dict())
    elif options.dry_run:
        from .render import print_backfill_plan

        print_backfill_plan(result)
    else:
        from .render import print_backfill

        print_backfill(result)
    if result.interrupted:
        return stop.exit_code
    return result.exit_code
