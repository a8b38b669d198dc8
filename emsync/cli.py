"""The `emsync` command line: parse, call the library, render. Nothing else lives here."""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Annotated, Optional

import typer

from .errors import EmsyncError, UserError

app = typer.Typer(
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Keep an advertising dashboard's database fresh with Meta Ads and Google Ads campaign metrics.",
)
users_app = typer.Typer(no_args_is_help=True, help="Manage users.")
integrations_app = typer.Typer(no_args_is_help=True, help="Manage ad-account integrations.")
app.add_typer(users_app, name="users")
app.add_typer(integrations_app, name="integrations")


class Context:
    """Per-invocation state, built lazily so `--help` never touches a database."""

    def __init__(self, verbose: bool, env_file: str | None):
        self.verbose = verbose
        self.env_file = env_file
        self._settings = None
        self._engine = None

    @property
    def settings(self):
        if self._settings is None:
            from .config import load_settings

            self._settings = load_settings(self.env_file)
        return self._settings

    def engine(self, *, check: bool = True):
        if self._engine is None:
            from . import db

            self._engine = db.make_engine(self.settings.database_url, pool_size=self.settings.concurrency)
            if check:
                db.check_schema(self._engine, self.settings.database_url)
        return self._engine

    def box(self):
        from .crypto import TokenBox

        return TokenBox(self.settings.require_secret_key())

    @contextmanager
    def transaction(self, write: bool = True):
        from sqlalchemy.exc import SQLAlchemyError

        from . import db

        try:
            with (db.write_transaction(self.engine()) if write else self.engine().begin()) as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise db.explain(exc, self.settings.database_url) from None

    def close(self):
        if self._engine is not None:
            self._engine.dispose()


_current: ContextVar[Context] = ContextVar("emsync_context")


def _ctx() -> Context:
    return _current.get()


def _out(obj) -> None:
    print(json.dumps(obj, default=_json_default, indent=2))


def _json_default(value):
    from datetime import date, datetime
    from decimal import Decimal

    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(type(value).__name__)


def _console():
    from rich.console import Console

    # Not a terminal (cron mail, a pipe): wide enough that tables do not fold every cell.
    return Console() if sys.stdout.isatty() else Console(width=200)


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and full tracebacks.")] = False,
    env_file: Annotated[
        Optional[str], typer.Option("--env-file", envvar="EMSYNC_ENV_FILE", help="Read settings from this env file.")
    ] = None,
) -> None:
    ctx.obj = Context(verbose, env_file)
    _current.set(ctx.obj)
    ctx.call_on_close(ctx.obj.close)


# ---------------------------------------------------------------- init


@app.command()
def init() -> None:
    """Create or upgrade the database schema; generate a secret key when none is configured.

    Safe to run again: it only applies migrations that are missing and never deletes data.

    Example: [bold]emsync init[/bold]
    """
    from . import db
    from .config import user_env_file
    from .keys import ensure_secret_key

    ctx = _ctx()
    settings = ctx.settings
    engine = db.make_engine(settings.database_url, create=True)
    ctx._engine = engine
    before, after = db.upgrade(engine, settings.database_url)
    where = db.describe_url(settings.database_url)
    if before == after:
        print(f"Database {where} is up to date (schema {after}).")
    elif before is None:
        print(f"Created the emsync schema ({after}) in {where}.")
    else:
        print(f"Upgraded the schema of {where} from {before} to {after}.")
    written = ensure_secret_key(settings, settings.env_file or user_env_file())
    if written:
        print(f"Generated EMSYNC_SECRET_KEY and wrote it to {written} (mode 0600). Keep a copy: tokens cannot be decrypted without it.")


# ---------------------------------------------------------------- users


@users_app.command("add")
def users_add(
    email: Annotated[str, typer.Argument(help="The user's email (stored lower-cased).")],
    name: Annotated[Optional[str], typer.Option(help="Display name.")] = None,
) -> None:
    """Add a user.

    Example: [bold]emsync users add anna@example.com --name "Anna Nowak"[/bold]
    """
    from . import store

    with _ctx().transaction() as conn:
        user = store.add_user(conn, email, name)
    print(f"Added user {user['id']}: {user['email']}")


@users_app.command("list")
def users_list(json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False) -> None:
    """List users with their number of integrations.

    Example: [bold]emsync users list --json[/bold]
    """
    from . import store

    with _ctx().transaction(write=False) as conn:
        users = store.list_users(conn)
    if json_out:
        _out(users)
        return
    from .render import users_table

    _console().print(users_table(users))


# ---------------------------------------------------------------- integrations


def _expiry(value: Optional[str]):
    from . import validate

    return None if value is None else validate.expiry(value)


@integrations_app.command("add")
def integrations_add(
    email: Annotated[str, typer.Option(help="Owner's email.")],
    platform: Annotated[str, typer.Option(help="meta or google.")],
    account_id: Annotated[str, typer.Option(help="Meta: act_<digits> or <digits>; Google: 123-456-7890.")],
    access_token: Annotated[Optional[str], typer.Option(help="Meta long-lived or system-user token.")] = None,
    token_expires_at: Annotated[Optional[str], typer.Option(help="Meta token expiry, ISO-8601.")] = None,
    refresh_token: Annotated[Optional[str], typer.Option(help="Google OAuth refresh token.")] = None,
    login_customer_id: Annotated[Optional[str], typer.Option(help="Google manager (MCC) id, when reached through one.")] = None,
) -> None:
    """Add a Meta ad account or a Google Ads customer for a user.

    Examples:
      [bold]emsync integrations add --email anna@example.com --platform meta --account-id act_123456 --access-token EAAB...[/bold]
      [bold]emsync integrations add --email anna@example.com --platform google --account-id 123-456-7890 --refresh-token 1//0g... --login-customer-id 111-222-3333[/bold]
    """
    from . import store

    ctx = _ctx()
    expires = _expiry(token_expires_at)
    box = ctx.box()
    with ctx.transaction() as conn:
        row = store.add_integration(
            conn, box, email=email, platform=platform, account_id=account_id, access_token=access_token,
            token_expires_at=expires, refresh_token=refresh_token, login_customer_id=login_customer_id,
        )
    from .render import account_label

    print(f"Added {row['platform']} integration {row['id']} for {row['email']} ({account_label(row)})")


@integrations_app.command("list")
def integrations_list(json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False) -> None:
    """List integrations (never a token).

    Example: [bold]emsync integrations list[/bold]
    """
    from . import store
    from .render import integrations_table
    from .report import integration_json

    with _ctx().transaction(write=False) as conn:
        rows = store.list_integrations(conn)
    if json_out:
        _out([integration_json(r) for r in rows])
        return
    _console().print(integrations_table(rows))


@integrations_app.command("update")
def integrations_update(
    integration_id: Annotated[int, typer.Argument(metavar="ID", help="Integration id (see 'integrations list').")],
    access_token: Annotated[Optional[str], typer.Option(help="New Meta token.")] = None,
    token_expires_at: Annotated[Optional[str], typer.Option(help="Its expiry, ISO-8601.")] = None,
    refresh_token: Annotated[Optional[str], typer.Option(help="New Google refresh token.")] = None,
    login_customer_id: Annotated[Optional[str], typer.Option(help="Google manager (MCC) id.")] = None,
) -> None:
    """Replace credentials after a user reconnects; clears needs_reauth.

    Example: [bold]emsync integrations update 3 --access-token EAAB... --token-expires-at 2027-01-28[/bold]
    """
    from . import store, validate

    ctx = _ctx()
    validate.integration_id(integration_id)
    expires = _expiry(token_expires_at)
    box = ctx.box()
    with ctx.transaction() as conn:
        row = store.update_credentials(
            conn, box, integration_id, access_token=access_token, token_expires_at=expires,
            refresh_token=refresh_token, login_customer_id=login_customer_id,
        )
    print(f"Updated integration {row['id']} ({row['platform']}, {row['email']}); status {row['status']}")


def _set_active(integration_id: int, active: bool) -> None:
    from . import store, validate

    validate.integration_id(integration_id)
    with _ctx().transaction() as conn:
        row = store.set_active(conn, integration_id, active)
    print(f"Integration {row['id']} ({row['platform']}, {row['email']}) is {'enabled' if active else 'disabled'}")


@integrations_app.command("disable")
def integrations_disable(integration_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Stop syncing an integration; its rows stay.

    Example: [bold]emsync integrations disable 3[/bold]
    """
    _set_active(integration_id, False)


@integrations_app.command("enable")
def integrations_enable(integration_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Sync a disabled integration again.

    Example: [bold]emsync integrations enable 3[/bold]
    """
    _set_active(integration_id, True)


@integrations_app.command("remove")
def integrations_remove(
    integration_id: Annotated[int, typer.Argument(metavar="ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an integration and all its metric rows, in one transaction.

    Example: [bold]emsync integrations remove 3 --yes[/bold]
    """
    from . import store, validate

    ctx = _ctx()
    validate.integration_id(integration_id)
    with ctx.transaction(write=False) as conn:
        row = store.get_integration(conn, integration_id)
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("refusing to remove an integration without confirmation: pass --yes")
        if not typer.confirm(f"Remove integration {row['id']} ({row['platform']}, {row['email']}) and all its rows?"):
            raise UserError("not removed")
    with ctx.transaction() as conn:
        deleted = store.remove_integration(conn, integration_id)
    print(f"Removed integration {integration_id} and {deleted} metric rows")


# ---------------------------------------------------------------- sync


def _platform(value: Optional[str]) -> Optional[str]:
    from . import validate

    return None if value is None else validate.platform(value)


PlatformOpt = Annotated[Optional[str], typer.Option("--platform", help="Only meta or only google.")]
FullOpt = Annotated[bool, typer.Option("--full", help="Re-fetch the whole lookback window.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing unless something failed (for cron).")]
TriggerOpt = Annotated[
    Optional[str], typer.Option("--trigger", help="Recorded on the run: cron, manual (default: cron without a terminal).")
]


def _run_sync(email: Optional[str], platform: Optional[str], full: bool, json_out: bool, quiet: bool, trigger: Optional[str]) -> None:
    from .output import run_with_output

    ctx = _ctx()
    code = run_with_output(ctx.settings, ctx.engine(), verbose=ctx.verbose, email=email, platform=_platform(platform), full=full,
                           json_out=json_out, quiet=quiet, trigger=trigger)
    raise typer.Exit(code)


@app.command("sync-all")
def sync_all(
    platform: PlatformOpt = None, full: FullOpt = False, json_out: JsonOpt = False, quiet: QuietOpt = False, trigger: TriggerOpt = None
) -> None:
    """Sync every active integration (what cron runs every 30 minutes).

    Exit code 0: all synced (or nothing due); 1: some integration failed (the others were saved); 2: bad input or configuration.

    Example: [bold]emsync sync-all --quiet[/bold]
    """
    if trigger not in (None, "cron", "manual"):
        raise UserError(f"--trigger must be cron or manual, got {trigger[:20]!r}")
    _run_sync(None, platform, full, json_out, quiet, trigger)


@app.command("sync-user")
def sync_user(
    email: Annotated[str, typer.Argument(help="The user's email.")],
    platform: PlatformOpt = None, full: FullOpt = False, json_out: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Sync one user's integrations now (the dashboard's "Sync Data" button); also retries those needing re-auth.

    Example: [bold]emsync sync-user anna@example.com --platform meta[/bold]
    """
    from . import validate

    _run_sync(validate.email(email), platform, full, json_out, quiet, "user")


@app.command()
def status(
    json_out: JsonOpt = False,
    check: Annotated[bool, typer.Option("--check", help="Exit 1 with a one-line reason when something needs attention.")] = False,
) -> None:
    """What was synced when, what failed and why, token expiry, recent runs.

    Examples: [bold]emsync status[/bold]   [bold]emsync status --check[/bold]   [bold]emsync status --json[/bold]
    """
    from .report import build_status, check_problems

    ctx = _ctx()
    with ctx.transaction(write=False) as conn:
        report = build_status(conn, ctx.settings)
    if check:
        problems = check_problems(report, ctx.settings)
        if problems:
            print(f"CRITICAL: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
            raise typer.Exit(1)
        print(f"OK: {len(report['integrations'])} integrations healthy")
        return
    if json_out:
        _out(report)
        return
    from .render import print_status

    print_status(_console(), report)


@app.command()
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 0,
    scenario: Annotated[Optional[str], typer.Option(help="A JSON scenario file (accounts, campaigns, faults).")] = None,
    latency_ms: Annotated[int, typer.Option(help="Added latency per request, milliseconds.")] = 0,
) -> None:
    """Run the bundled fake Meta and Google Ads APIs until Ctrl-C, and print the settings that point emsync at them.

    Example: [bold]emsync sandbox --port 8700[/bold]
    """
    from .sandbox.cli import serve_forever

    serve_forever(port=port, scenario_file=scenario, latency_ms=latency_ms)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default; put a TLS proxy in front for anything else).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8787,
) -> None:
    """Serve the HTTP trigger: POST /api/cron/sync-all, POST /api/sync/user, GET /api/status, GET /api/runs/ID, GET /healthz.

    Needs the server extra (pip install 'emsync[server]') and CRON_SECRET of at least 32 characters.

    Example: [bold]emsync serve --port 8787[/bold]
    """
    try:
        from .server import check_secret, serve as run_server
    except ImportError:
        raise UserError("emsync serve needs the server extra: pip install 'emsync[server]'") from None
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    ctx = _ctx()
    check_secret(ctx.settings)
    run_server(ctx.settings, ctx.engine(), host=host, port=port)


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


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error becomes one line on stderr and an exit code."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in args or "-v" in args
    try:
        result = command.main(args=args, prog_name="emsync", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("emsync: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:  # usage errors from the argument parser
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message())
            return 2
        print(f"emsync: {exc.format_message()} (see 'emsync --help')", file=sys.stderr)
        return 2
    except EmsyncError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        print(f"emsync: {_redacted(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("emsync: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a line
        from sqlalchemy.exc import SQLAlchemyError

        if verbose:
            import traceback

            traceback.print_exc()
        if isinstance(exc, SQLAlchemyError):
            print(f"emsync: database error: {_redacted(exc)}", file=sys.stderr)
            return 2
        print(f"emsync: internal error: {type(exc).__name__}: {_redacted(exc)} (run with --verbose for details)", file=sys.stderr)
        return 1


def _redacted(exc: Exception) -> str:
    from .http import redact

    return redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
