"""Credential commands: credentials list/remove and integrations check."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import ApiError, UserError
from .app import JsonOpt, app, console, integrations_app, print_json, state

credentials_app = typer.Typer(no_args_is_help=True, help="Stored logins (tokens) that integrations share.")
app.add_typer(credentials_app, name="credentials")


def _credential_json(row: dict) -> dict:
    """The public shape of a credential (never a token)."""
    return {
        "id": row["id"],
        "platform": row["platform"],
        "platform_user": row["platform_user"],
        "token_type": row["token_type"],
        "scopes": (row["scopes"] or "").split(),
        "token_expires_at": row["token_expires_at"],
        "integrations": row["integrations"],
        "emails": row["emails"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


@credentials_app.command("list")
def credentials_list(typer_ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List stored credentials: whose login, scopes, expiry, and the integrations using each (never a token).

    Example: [bold]emsync credentials list[/bold]
    """
    from rich.table import Table

    from .. import store

    with state(typer_ctx).transaction(write=False) as conn:
        rows = [_credential_json(r) for r in store.list_credentials(conn)]
    if json_out:
        print_json(rows)
        return
    table = Table(title="Credentials")
    for col in ("id", "platform", "login", "type", "scopes", "token expires", "integrations", "users"):
        table.add_column(col, overflow="fold")
    for r in rows:
        expires = r["token_expires_at"]
        table.add_row(
            str(r["id"]),
            r["platform"],
            r["platform_user"] or "—",
            r["token_type"] or "",
            " ".join(s.rsplit("/", 1)[-1] for s in r["scopes"]),
            f"{expires:%Y-%m-%d}" if expires else "—",
            ", ".join(map(str, r["integrations"])) or "none",
            ", ".join(r["emails"]),
        )
    console().print(table)


@credentials_app.command("remove")
def credentials_remove(
    typer_ctx: typer.Context,
    credential_id: Annotated[int, typer.Argument(metavar="ID", help="Credential id (see 'credentials list').")],
    with_integrations: Annotated[
        bool, typer.Option("--with-integrations", help="Also remove the integrations using it, with their metric rows.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a stored credential; a Google one is first revoked at Google (GOOGLE_OAUTH_REVOKE_URL).

    Refused while integrations use it, unless --with-integrations removes them too (in the same transaction). Revoking ends the Google user's whole grant to this OAuth client.

    Example: [bold]emsync credentials remove 4 --with-integrations --yes[/bold]
    """
    from .. import store
    from ..oauth import revoke
    from ..onboarding import http_client

    ctx = state(typer_ctx)
    if not 1 <= credential_id <= 2**31 - 1:
        raise UserError(f"credential id must be a number from 1 to {2**31 - 1}, got {credential_id}")
    with ctx.transaction(write=False) as conn:
        credential = store.removable_credential(conn, credential_id, with_integrations=with_integrations)
        tokens = store.credential_state(conn, credential_id)
    using = credential["integrations"]
    what = f"credential {credential_id} ({credential['platform']}, {credential['platform_user'] or 'user unknown'})"
    if using:
        what += f" and integrations {', '.join(map(str, using))} with all their rows"
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("refusing to remove a credential without confirmation: pass --yes")
        if not typer.confirm(f"Remove {what}?"):
            raise UserError("not removed")
    revoked = ""
    blob = tokens.refresh_token_enc if credential["platform"] == "google" and tokens is not None else None
    box = ctx.box() if blob else None
    if box is not None and blob and not box.readable(blob):  # a token under a lost key: nothing to revoke with
        revoked = "; not revoked at Google: its token does not decrypt with EMSYNC_SECRET_KEY"
    elif box is not None and blob:
        refresh_token = box.decrypt(blob)
        assert refresh_token is not None
        try:
            live = revoke(refresh_token, ctx.settings.google_oauth_revoke_url, http=http_client(ctx.settings))
        except ApiError as exc:  # the credential stays, so the person can try again
            raise UserError(f"could not revoke the login at Google ({exc}): nothing was removed") from None
        revoked = "; revoked at Google" if live else "; Google had already revoked it"
    with ctx.transaction() as conn:
        removed = store.remove_credential(conn, credential_id, with_integrations=with_integrations)
    rows = sum(removed.values())
    extra = f" and {len(removed)} integrations with {rows} metric rows" if removed else ""
    print(f"Removed credential {credential_id}{extra}{revoked}")


@integrations_app.command("check")
def integrations_check(
    typer_ctx: typer.Context,
    integration_ids: Annotated[list[int] | None, typer.Argument(metavar="[ID]...", help="Integrations to check.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Check every active integration.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Test credentials and account access without syncing: one cheap call per credential and per account.

    Shows OK or the problem with its fix; exits 1 when any check fails. Writes nothing but a refreshed (cached) Google access token.

    Examples: [bold]emsync integrations check --all[/bold]   [bold]emsync integrations check 3 4[/bold]
    """
    from ..checks import check_integrations

    if bool(integration_ids) == every:
        raise UserError("give integration ids or --all (not both)")
    ctx = state(typer_ctx)
    results = check_integrations(ctx.settings, ctx.engine(), None if every else list(integration_ids or []))
    if json_out:
        print_json([r.as_dict() for r in results])
    else:
        from rich.table import Table

        table = Table(title="Integration checks")
        for col in ("id", "user", "account", "credential", "result", "fix"):
            table.add_column(col, overflow="fold")
        for r in results:
            verdict = f"[green]OK[/] {r.detail}" if r.ok else f"[red]{r.problem}[/]"
            table.add_row(str(r.integration_id), r.email, f"{r.platform} {r.label}", str(r.credential_id), verdict, r.fix or "")
        console().print(table)
        failed = sum(not r.ok for r in results)
        print(f"{len(results) - failed} OK, {failed} with problems")
    if any(not r.ok for r in results):
        raise typer.Exit(1)
