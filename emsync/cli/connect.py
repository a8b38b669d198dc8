"""Onboarding commands: connect google, connect meta, integrations import. Sign-in and prompts here; decisions in onboarding.py."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UserError
from .app import app, console, integrations_app, state

if TYPE_CHECKING:
    from ..onboarding import Connected, Login

connect_app = typer.Typer(no_args_is_help=True, help="Connect a Google or Meta login and add the ad accounts it reaches.")
app.add_typer(connect_app, name="connect")

EmailOpt = Annotated[str, typer.Option("--email", help="The emsync user the integrations belong to (added when missing).")]
AccountOpt = Annotated[
    list[str] | None, typer.Option("--account-id", help="An account to add (repeatable); see the table the command shows.")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Add every enabled account that holds campaigns (no manager accounts).")]


def _prepare(typer_ctx: typer.Context, platform: str, email: str, ids: list[str] | None, every: bool):
    """Everything that can be refused before anyone signs in: the email, the ids, the key, the database, a way to choose."""
    from .. import validate
    from ..keys import verify_box
    from ..onboarding import account_ids

    ctx = state(typer_ctx)
    validate.email(email)
    chosen = account_ids(platform, ids or [])
    ctx.engine()  # an unreachable database or an old schema is said now, not after the sign-in
    box = ctx.box()
    with ctx.transaction(write=False) as conn:
        verify_box(conn, box)  # a key that decrypts no stored token is refused before the sign-in, nothing written
    if not chosen and not every and not sys.stdin.isatty():
        raise UserError("choose the accounts with --account-id ID (repeatable) or --all: there is no terminal to ask on")
    return ctx, box, chosen


@connect_app.command("google")
def connect_google(
    typer_ctx: typer.Context,
    email: EmailOpt,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the sign-in address and read back the address the browser ends on (SSH).")
    ] = False,
    port: Annotated[int, typer.Option(help="Loopback port for Google's redirect (0: any free port).")] = 0,
    account_id: AccountOpt = None,
    every: AllOpt = False,
) -> None:
    """Sign in with Google (OAuth for installed apps, PKCE), list the Google Ads customers it reaches, add the ones chosen.

    Needs GOOGLE_OAUTH_CLIENT_ID/SECRET of an OAuth client of type "Desktop app". Customers under a manager are added with that manager as login-customer-id. Accounts the user already has are re-pointed to the new login and leave needs_reauth.

    Examples:
      [bold]emsync connect google --email anna@example.com[/bold]
      [bold]emsync connect google --email anna@example.com --no-browser --all[/bold]
      [bold]emsync connect google --email anna@example.com --account-id 123-456-7890 --account-id 234-567-8901[/bold]
    """
    from .. import ledger, oauth
    from ..clock import SYSTEM_CLOCK
    from ..onboarding import google_client, google_login, http_client

    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    ctx, box, chosen = _prepare(typer_ctx, "google", email, account_id, every)
    client = google_client(ctx.settings)
    if no_browser:
        pending = oauth.start_manual(client, port=port or None, login_hint=email)
        print(
            f"Open this address in a browser on any machine and allow access:\n\n  {pending.url}\n\n"
            f"The browser then fails to load an address starting with {pending.redirect_uri}: that is expected.",
            file=sys.stderr,
        )
        pasted = _read_pasted_address()
        grant = oauth.finish_manual(pending, pasted)
    else:
        grant = oauth.run_loopback(client, port=port, login_hint=email)
    http = http_client(ctx.settings)
    try:
        login = google_login(ctx.settings, grant, http)
    finally:  # listing customers spends the developer token's daily operations, whatever the outcome
        ledger.record_spent(ctx.engine(), operations=http.operations, source="connect", now=SYSTEM_CLOCK.now())
    who = grant.email or "the Google user"
    _finish(ctx, box, email, login, chosen, every, f"Signed in to Google as {who}.")


def _read_pasted_address() -> str:
    """The redirected address, asked for on a terminal or read as one line of standard input (piped: no prompt)."""
    if sys.stdin.isatty():
        return typer.prompt("Paste that whole address here", prompt_suffix=": ", err=True)
    print("Paste that whole address here: ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        raise UserError("standard input ended before the address was pasted: nothing was connected")
    return line.strip()


@connect_app.command("meta")
def connect_meta(typer_ctx: typer.Context, email: EmailOpt, account_id: AccountOpt = None, every: AllOpt = False) -> None:
    """Check a Meta access token (user or system user), list the ad accounts it reaches, add the ones chosen.

    The token is read from standard input, or asked for without echo on a terminal; never an argument. It needs ads_read (or ads_management); with META_APP_ID/META_APP_SECRET a short-lived user token is exchanged for a long-lived one.

    Examples:
      [bold]emsync connect meta --email anna@example.com[/bold]   (asks for the token)
      [bold]emsync connect meta --email anna@example.com --all < token.txt[/bold]
    """
    from ..onboarding import meta_login

    ctx, box, chosen = _prepare(typer_ctx, "meta", email, account_id, every)
    if sys.stdin.isatty():
        token = typer.prompt("Meta access token", hide_input=True, err=True)
    else:
        token = sys.stdin.read()
    login = meta_login(ctx.settings, token.strip())
    kind = (login.token_type or "").lower().replace("_", " ") or "access"
    _finish(ctx, box, email, login, chosen, every, f"Meta {kind} token of user {login.platform_user} checked.")


def _finish(ctx, box, email: str, login: Login, chosen: list[str], every: bool, greeting: str) -> None:
    """Show what the login reaches, settle the choice, write it all in one transaction, say what was done."""
    from ..onboarding import choose, save

    print(greeting)
    for note in login.notes:
        print(f"note: {note}")
    if not login.accounts:
        raise UserError("this login reaches no ad accounts: nothing was connected")
    console().print(_accounts_table(login))
    if chosen or every:
        accounts = choose(login, chosen_ids=chosen, every=every)
    else:
        accounts = _ask(login)
    if not accounts:
        print("No account chosen: nothing was connected.")
        return
    with ctx.transaction() as conn:
        done = save(conn, box, email=email, login=login, accounts=accounts)
    _report(email, login, done)


def _ask(login: Login):
    from ..onboarding import choose, parse_numbers

    hint = "numbers as in 1,3-5; 'all' for every enabled account; empty for none"
    while True:
        answer = typer.prompt(f"Accounts to add ({hint})", default="", show_default=False).strip().lower()
        if answer == "all":
            return choose(login, chosen_ids=[], every=True)
        try:
            picked = [login.accounts[n].account_id for n in parse_numbers(answer, len(login.accounts))]
            return choose(login, chosen_ids=picked, every=False)
        except UserError as exc:
            print(f"{exc}; try again", file=sys.stderr)


def _accounts_table(login: Login):
    from rich.table import Table

    google = login.platform == "google"
    table = Table(title="Google Ads customers" if google else "Meta ad accounts")
    for col in ("#", "account", "name", "status", "manager" if google else "", "currency", "time zone", "found via"):
        if col:
            table.add_column(col, overflow="fold")
    for n, a in enumerate(login.accounts, start=1):
        status = a.status if a.selectable or a.manager else f"[yellow]{a.status}[/]"
        cells = [str(n), a.label, a.name or "", status, *(["yes" if a.manager else ""] if google else [])]
        table.add_row(*cells, a.currency or "", a.time_zone or "", a.via)
    return table


def _report(email: str, login: Login, done: Connected) -> None:
    from ..domain import account_label

    state_word = "new" if done.credential_created else "updated with the new tokens"
    print(f"Credential {done.credential_id} ({login.platform}, {login.platform_user or 'user unknown'}): {state_word}")
    if done.user_created:
        print(f"Added user {email.strip().lower()}")
    for verb, rows in (("Added", done.created), ("Updated", done.updated)):
        for row in rows:
            through = f" through manager {account_label('google', row['login_customer_id'])}" if row["login_customer_id"] else ""
            print(
                f"{verb} integration {row['id']}: {account_label(row['platform'], row['account_id'])} {row['account_name'] or ''}{through}"
            )
    print(f"{len(done.created)} added, {len(done.updated)} updated. Sync them now with: emsync sync-user {email.strip().lower()}")


@integrations_app.command("import")
def integrations_import(
    typer_ctx: typer.Context,
    path: Annotated[str, typer.Argument(metavar="FILE", help="CSV with a header line, or a JSON array of objects.")],
) -> None:
    """Add many integrations at once from a file naming stored credentials; users are added as needed.

    Fields: email, platform, account_id, login_customer_id (Google, optional), credential_id (see 'emsync credentials list'). All or nothing: one bad line and nothing is written (exit 2, each bad line named). Running the same file again changes nothing.

    Example: [bold]emsync integrations import clients.csv[/bold]
    """
    from ..onboarding import ImportRefused, import_integrations

    ctx = state(typer_ctx)
    try:
        with ctx.transaction() as conn:
            done = import_integrations(conn, path)
    except ImportRefused as refused:
        for line in refused.problems:
            print(f"{path}: {line}", file=sys.stderr)
        raise
    for verb, rows in (("Added", done.created), ("Updated", done.updated)):
        for row in rows:
            print(
                f"{verb} integration {row['id']} ({row['platform']} {row['account_id']}, {row['email']}, credential {row['credential_id']})"
            )
    print(f"{len(done.created)} added, {len(done.updated)} updated, {done.unchanged} unchanged, {done.users_created} users added")
