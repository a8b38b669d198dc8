"""Operating commands: status, sandbox, serve, secret, demo."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import UserError
from .app import JsonOpt, app, console, print_json, state


@app.command()
def status(
    typer_ctx: typer.Context,
    json_out: JsonOpt = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="For monitoring: one line 'EMSYNC OK|WARNING|CRITICAL|UNKNOWN - ... | perfdata', exit 0, 1, 2 or 3.",
        ),
    ] = False,
    show_all: Annotated[bool, typer.Option("--all", help="List every integration even above 200 (the default is a summary).")] = False,
) -> None:
    """What was synced when, what failed and why, token expiry, recent runs, backfills, Google Ads operations today.

    Above 200 integrations the table is a summary (counts, the problems, the oldest success); --all lists every one.

    --check follows the monitoring-plugin convention: exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (database
    unreachable, bad settings or arguments), one line with perfdata.

    Examples: [bold]emsync status[/bold]   [bold]emsync status --check[/bold]   [bold]emsync status --json[/bold]
    """
    from ..report import add_rows_in_window, build_status
    from .render import SUMMARY_ABOVE, needs_attention, print_status

    ctx = state(typer_ctx)
    if check:
        raise typer.Exit(_check(ctx))
    with ctx.transaction(write=False) as conn:
        if json_out:
            print_json(build_status(conn, ctx.settings))
            return
        # Rows in the window are counted only for the integrations the table will show: a summary at 10,000
        # integrations lists only the problems, and counting all of them read the whole window.
        report = build_status(conn, ctx.settings, rows_in_window=False)
        listed = report["integrations"]
        if len(listed) > SUMMARY_ABOVE and not show_all:
            listed = [i for i in listed if needs_attention(i)]
        add_rows_in_window(conn, ctx.settings, report, listed)
    print_status(console(), report, show_all=show_all)


def _check(ctx) -> int:
    """``status --check``: print the one line, return the plugin exit code (0 OK, 1 WARNING, 2 CRITICAL).

    UNKNOWN (3) — the database unreachable, bad settings, usage errors — is ``main``'s: it turns any error raised
    here into ``EMSYNC UNKNOWN - ...``.
    """
    from ..report import build_status, check_line, check_problems, undecryptable_credentials

    with ctx.transaction(write=False) as conn:
        report = build_status(conn, ctx.settings, rows_in_window=False)  # the check judges no row counts
        credentials = {i["credential_id"] for i in report["integrations"] if i["is_active"] and i.get("credential_id") is not None}
        undecryptable = undecryptable_credentials(conn, ctx.settings, credentials)
    problems = check_problems(report, ctx.settings, undecryptable=undecryptable)
    code, line = check_line(report, problems, ctx.settings)
    print(line)
    return code


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 0,
    scenario: Annotated[str | None, typer.Option(help="A JSON scenario file (accounts, campaigns, faults).")] = None,
    latency_ms: Annotated[int, typer.Option(help="Added latency per request, milliseconds.")] = 0,
) -> None:
    """Run the bundled fake Meta and Google Ads APIs until Ctrl-C, and print the settings that point emsync at them.

    Example: [bold]emsync sandbox --port 8700[/bold]
    """
    from ..sandbox.cli import serve_forever

    serve_forever(port=port, scenario_file=scenario, latency_ms=latency_ms)


@app.command()
def serve(
    typer_ctx: typer.Context,
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback by default; put a TLS proxy in front for anything else).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8787,
) -> None:
    """Serve the HTTP trigger: POST /api/cron/sync-all, POST /api/sync/user, GET /api/status, GET /api/runs/ID, GET /healthz.

    Needs the server extra (pip install 'emsync[server]') and CRON_SECRET of at least 32 characters. A busy or
    unassignable address: exit 2. SIGTERM or Ctrl-C interrupts the runs it started (recorded as interrupted) and exits
    143 or 130.

    Example: [bold]emsync serve --port 8787[/bold]
    """
    try:
        from ..server import check_secret
        from ..server import serve as run_server
    except ImportError:
        raise UserError("emsync serve needs the server extra: pip install 'emsync[server]'") from None
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    ctx = state(typer_ctx)
    check_secret(ctx.settings)
    raise typer.Exit(run_server(ctx.settings, ctx.engine(), host=host, port=port))


@app.command()
def secret() -> None:
    """Print a new random secret, suitable for CRON_SECRET.

    Example: [bold]echo "CRON_SECRET=$(emsync secret)" >> .env[/bold]
    """
    import secrets

    print(secrets.token_urlsafe(48))


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the temporary directory and print where it is.")] = False,
) -> None:
    """Sync sample integrations from the bundled sandbox into a throwaway SQLite database and show the status.

    Touches no real API, no real database and no env file.

    Example: [bold]emsync demo[/bold]
    """
    from .demo import run_demo

    raise typer.Exit(run_demo(keep=keep))
