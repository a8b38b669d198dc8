"""Admin commands: init, users and integrations."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ..errors import UserError
from .app import JsonOpt, app, console, integrations_app, print_json, state, users_app

# ---------------------------------------------------------------- init


@app.command()
def init(
    typer_ctx: typer.Context,
    env_file: Annotated[
        str | None, typer.Option("--env-file", help="The env file to create or complete (same as the global --env-file).")
    ] = None,
) -> None:
    """Create or upgrade the database schema; generate a secret key when none is configured.

    With an env file (--env-file, EMSYNC_ENV_FILE, or one that exists), init creates it (mode 0600) when
    missing and writes EMSYNC_DATABASE_URL into it (an absolute path for SQLite), so cron, systemd and a
    shell in any directory use the same database.

    Safe to run again: it only applies migrations that are missing and never deletes data.

    Example: [bold]emsync init --env-file /opt/emsync/.env[/bold]
    """
    from .. import db
    from ..config import user_env_file
    from ..keys import check_key_before_upgrade, ensure_secret_key

    ctx = state(typer_ctx)
    _use_env_file(ctx, env_file)
    settings = ctx.settings
    engine = ctx.engine(check=False, create=True)
    check_key_before_upgrade(engine, settings)
    before, after = db.upgrade(engine, settings.database_url)
    where = db.describe_url(settings.database_url)
    if before == after:
        print(f"Database {where} is up to date (schema {after}).")
    elif before is None:
        print(f"Created the emsync schema ({after}) in {where}.")
    else:
        print(f"Upgraded the schema of {where} from {before} to {after}.")
    if before in db.REVISIONS and db.REVISIONS.index(before) < db.REVISIONS.index("0004") and settings.secret_key:
        from .. import store

        with ctx.transaction() as conn:
            merged = store.merge_identical_credentials(conn, ctx.box())
        if merged:
            print(f"Integrations holding the same token now share one credential ({merged} duplicate credentials merged).")
    written = ensure_secret_key(settings, settings.env_file or user_env_file())
    if written:
        print(f"Generated EMSYNC_SECRET_KEY and wrote it to {written} (mode 0600). Keep a copy: tokens cannot be decrypted without it.")
    _pin_database_url(settings, settings.env_file or user_env_file(), explicit=ctx.env_file is not None)


def _use_env_file(ctx, env_file: str | None) -> None:
    """`init --env-file PATH` is the global --env-file; either may name a file init is about to create."""
    if env_file is not None:
        ctx.env_file = env_file
        ctx.check_env_files()
    ctx.env_file_may_be_missing = True


def _pin_database_url(settings, env_file, *, explicit: bool) -> None:
    """Write the database init just used into the env file (created 0600 when named and missing), unless it
    names one already: every reader of that file then finds this database, whatever its working directory,
    $HOME or $XDG_DATA_HOME (the default SQLite path depends on them)."""
    from pathlib import Path

    from .. import db, envfile

    env_file = Path(env_file)
    if not (explicit or env_file.exists()):
        return  # settings come from the environment alone: no file to keep them in
    url = _absolute_database_url(settings.database_url)
    if envfile.set_value(env_file, "EMSYNC_DATABASE_URL", url, comment="The database every emsync run reading this file uses."):
        print(f"Wrote EMSYNC_DATABASE_URL={db.describe_url(url)} to {env_file} (mode 0600).")
    elif url != settings.database_url:
        print(
            f"Note: EMSYNC_DATABASE_URL ({settings.origin('EMSYNC_DATABASE_URL')}) is a relative path, read from the working "
            f"directory: cron and systemd may open another database. Set it to {db.describe_url(url)} instead."
        )


def _absolute_database_url(url: str) -> str:
    """``url`` with a relative SQLite path made absolute (against the working directory, as SQLite reads it)."""
    from sqlalchemy.engine import make_url

    from .. import db

    path = db.sqlite_path(url)
    if path is None or path.is_absolute():
        return url
    return make_url(url).set(database=str(path.resolve())).render_as_string(hide_password=False)


# ---------------------------------------------------------------- users


@users_app.command("add")
def users_add(
    typer_ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The user's email (stored lower-cased).")],
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
) -> None:
    """Add a user.

    Example: [bold]emsync users add anna@example.com --name "Anna Nowak"[/bold]
    """
    from .. import store

    with state(typer_ctx).transaction() as conn:
        user = store.add_user(conn, email, name)
    print(f"Added user {user['id']}: {user['email']}")


@users_app.command("list")
def users_list(typer_ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List users with their number of integrations.

    Example: [bold]emsync users list --json[/bold]
    """
    from .. import store

    with state(typer_ctx).transaction(write=False) as conn:
        users = store.list_users(conn)
    if json_out:
        print_json(users)
        return
    from .render import print_users

    print_users(console(), users)


@users_app.command("remove")
def users_remove(
    typer_ctx: typer.Context,
    email: Annotated[str, typer.Argument(help="The user's email.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a user with all their integrations and metric rows, in one transaction.

    Credentials stay: 'emsync credentials remove ID' revokes and deletes a login no integration uses any more.

    Example: [bold]emsync users remove anna@example.com --yes[/bold]
    """
    from .. import store, validate

    ctx = state(typer_ctx)
    address = validate.email(email)
    with ctx.transaction(write=False) as conn:
        store.user_id_for(conn, address)
        owned = store.list_integrations(conn, email=address)
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("refusing to remove a user without confirmation: pass --yes")
        if not typer.confirm(f"Remove user {address}, their {len(owned)} integrations and all their rows?"):
            raise UserError("not removed")
    with ctx.transaction() as conn:
        removed = store.remove_user(conn, address)
    rows = sum(removed["integrations"].values())
    listed = ", ".join(map(str, removed["integrations"])) or "none"
    print(f"Removed user {address}, integrations {listed} and {rows} metric rows")
    for credential_id in removed["unused_credentials"]:
        print(f"Credential {credential_id} is no longer used: 'emsync credentials remove {credential_id}' revokes and deletes it")


# ---------------------------------------------------------------- integrations


def _expiry(value: str | None):
    from .. import validate

    return None if value is None else validate.expiry(value)


@integrations_app.command("add")
def integrations_add(
    typer_ctx: typer.Context,
    email: Annotated[str, typer.Option(help="Owner's email.")],
    platform: Annotated[str, typer.Option(help="meta or google.")],
    account_id: Annotated[str, typer.Option(help="Meta: act_<digits> or <digits>; Google: 123-456-7890.")],
    access_token: Annotated[str | None, typer.Option(help="Meta long-lived or system-user token.")] = None,
    token_expires_at: Annotated[str | None, typer.Option(help="Meta token expiry, ISO-8601.")] = None,
    refresh_token: Annotated[str | None, typer.Option(help="Google OAuth refresh token.")] = None,
    login_customer_id: Annotated[str | None, typer.Option(help="Google manager (MCC) id, when reached through one.")] = None,
) -> None:
    """Add a Meta ad account or a Google Ads customer for a user.

    Examples:
      [bold]emsync integrations add --email anna@example.com --platform meta --account-id act_123456 --access-token EAAB...[/bold]
      [bold]emsync integrations add --email anna@example.com --platform google --account-id 123-456-7890 --refresh-token 1//0g... --login-customer-id 111-222-3333[/bold]
    """
    from .. import store

    ctx = state(typer_ctx)
    expires = _expiry(token_expires_at)
    box = ctx.box()
    with ctx.transaction() as conn:
        row = store.add_integration(
            conn,
            box,
            email=email,
            platform=platform,
            account_id=account_id,
            access_token=access_token,
            token_expires_at=expires,
            refresh_token=refresh_token,
            login_customer_id=login_customer_id,
        )
    from ..domain import account_label

    print(f"Added {row['platform']} integration {row['id']} for {row['email']} ({account_label(row['platform'], row['account_id'])})")


@integrations_app.command("list")
def integrations_list(typer_ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """List integrations (never a token).

    Example: [bold]emsync integrations list[/bold]
    """
    from .. import store
    from ..report import integration_json
    from .render import print_integration_list

    with state(typer_ctx).transaction(write=False) as conn:
        rows = store.list_integrations(conn)
    if json_out:
        print_json([integration_json(r) for r in rows])
        return
    print_integration_list(console(), rows)


@integrations_app.command("update")
def integrations_update(
    typer_ctx: typer.Context,
    integration_id: Annotated[int, typer.Argument(metavar="ID", help="Integration id (see 'integrations list').")],
    access_token: Annotated[str | None, typer.Option(help="New Meta token.")] = None,
    token_expires_at: Annotated[str | None, typer.Option(help="Its expiry, ISO-8601.")] = None,
    refresh_token: Annotated[str | None, typer.Option(help="New Google refresh token.")] = None,
    login_customer_id: Annotated[str | None, typer.Option(help="Google manager (MCC) id.")] = None,
) -> None:
    """Replace credentials after a user reconnects; clears needs_reauth.

    A new token replaces the integration's credential, so every integration sharing it gets it (each is listed).

    Example: [bold]emsync integrations update 3 --access-token EAAB... --token-expires-at 2027-01-28[/bold]
    """
    from .. import store, validate

    ctx = state(typer_ctx)
    validate.integration_id(integration_id)
    expires = _expiry(token_expires_at)
    box = ctx.box()
    with ctx.transaction() as conn:
        rows = store.update_credentials(
            conn,
            box,
            integration_id,
            access_token=access_token,
            token_expires_at=expires,
            refresh_token=refresh_token,
            login_customer_id=login_customer_id,
        )
    from ..domain import account_label

    for row in rows:
        shared = "" if row["id"] == integration_id else f", shares credential {row['credential_id']}"
        label = account_label(row["platform"], row["account_id"])
        print(f"Updated integration {row['id']} ({row['platform']} {label}, {row['email']}{shared}); status {row['status']}")


@integrations_app.command("reset")
def integrations_reset(typer_ctx: typer.Context, integration_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Clear rate_limited, error or needs_reauth so the next run tries the integration (status never_synced until then).

    Example: [bold]emsync integrations reset 3[/bold]
    """
    from .. import store, validate
    from ..domain import account_label

    validate.integration_id(integration_id)
    with state(typer_ctx).transaction() as conn:
        before, after = store.reset_integration(conn, integration_id)
    who = f"Integration {after['id']} ({after['platform']} {account_label(after['platform'], after['account_id'])}, {after['email']})"
    if before["status"] == after["status"]:
        print(f"{who} is {after['status']}: nothing to reset")
    else:
        print(f"{who} was {before['status']}, now {after['status']}: the next run tries it")


def _set_active(typer_ctx: typer.Context, integration_id: int, active: bool) -> None:
    from .. import store, validate

    validate.integration_id(integration_id)
    with state(typer_ctx).transaction() as conn:
        row = store.set_active(conn, integration_id, active)
    print(f"Integration {row['id']} ({row['platform']}, {row['email']}) is {'enabled' if active else 'disabled'}")


@integrations_app.command("disable")
def integrations_disable(typer_ctx: typer.Context, integration_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Stop syncing an integration; its rows stay.

    Example: [bold]emsync integrations disable 3[/bold]
    """
    _set_active(typer_ctx, integration_id, False)


@integrations_app.command("enable")
def integrations_enable(typer_ctx: typer.Context, integration_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Sync a disabled integration again.

    Example: [bold]emsync integrations enable 3[/bold]
    """
    _set_active(typer_ctx, integration_id, True)


@integrations_app.command("remove")
def integrations_remove(
    typer_ctx: typer.Context,
    integration_id: Annotated[int, typer.Argument(metavar="ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an integration and all its metric rows, in one transaction.

    Example: [bold]emsync integrations remove 3 --yes[/bold]
    """
    from .. import store, validate

    ctx = state(typer_ctx)
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
