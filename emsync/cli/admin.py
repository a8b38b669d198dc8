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
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Upgrade a PostgreSQL database holding data without asking.")] = False,
) -> None:
    """Create or upgrade the database schema; generate a secret key when none is configured and no token is stored.

    With an env file (--env-file, EMSYNC_ENV_FILE, or one that exists), init creates it (mode 0600) when
    missing and writes EMSYNC_DATABASE_URL into it (an absolute path for SQLite), so cron, systemd and a
    shell in any directory use the same database.

    Safe to run again: it only applies migrations that are missing and never deletes data. With tokens stored it checks the key first. Before upgrading a database that holds data it copies a SQLite file beside itself (emsync.db.bak-<schema>), or prints the pg_dump line to run and asks (--yes when there is no terminal).

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
    _back_up_before_upgrade(engine, settings.database_url, yes)
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
        _check_writable(env_file)
    ctx.env_file_may_be_missing = True


def _check_writable(env_file: str) -> None:
    """Refuse an env file init could not write, before it creates anything else: its directory is made (0700) now,
    as writing it would, and a file that exists must be writable."""
    import os
    from pathlib import Path

    from ..files import private_dir

    path = Path(env_file)
    if path.exists():
        if path.is_dir() or not os.access(path, os.W_OK):
            raise UserError(f"cannot write env file {env_file}: " + ("it is a directory" if path.is_dir() else "permission denied"))
        return
    try:
        private_dir(path.parent)
    except OSError as exc:
        raise UserError(f"cannot write env file {env_file}: {exc.strerror or exc}") from None


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


def _back_up_before_upgrade(engine, url: str, yes: bool) -> None:
    """A migration is about to change a database that holds data: copy a SQLite file, or have a pg_dump taken first."""
    from .. import db

    revision = db.pending_upgrade(engine, url)
    if revision is None:
        return
    if db.sqlite_path(url) is not None:
        copy = db.backup_sqlite(url, revision)
        print(f"Copied the database (schema {revision}) to {copy} before upgrading it; remove the copy once the upgrade is checked.")
        return
    print(f"The database holds data at schema {revision}. Back it up before upgrading it:\n\n  {db.pg_dump_command(url, revision)}\n")
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError("refusing to upgrade a PostgreSQL database holding data without confirmation: back it up, then pass --yes")
    if not typer.confirm("Upgrade it now?", err=True):
        raise UserError("not upgraded")


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
    """``--token-expires-at``: None when omitted; a date already past is refused."""
    from .. import validate
    from ..clock import utcnow

    if value is None:
        return None
    expires = validate.expiry(value)
    if expires <= utcnow():
        raise UserError(f"--token-expires-at {value.strip()[:40]} is in the past: give the token's real expiry, or leave it out")
    return expires


def _token(value: str | None, option: str, *, ask: str | None = None) -> str | None:
    """A token option's value: ``-`` reads standard input (a hidden prompt on a terminal), so a token need not be on
    the command line (shell history, ps); omitted, ``ask`` is the hidden prompt on a terminal, where a token is required."""
    if value == "-":
        if sys.stdin.isatty():
            return typer.prompt(ask or option.removeprefix("--").replace("-", " ").capitalize(), hide_input=True, err=True)
        return sys.stdin.read().strip()
    if value is None and ask is not None and sys.stdin.isatty():
        return typer.prompt(ask, hide_input=True, err=True)
    return value


def _one_stdin(*values: str | None) -> None:
    if sum(v == "-" for v in values) > 1:
        raise UserError("only one token can be read from standard input ('-')")


@integrations_app.command("add")
def integrations_add(
    typer_ctx: typer.Context,
    email: Annotated[str, typer.Option(help="Owner's email.")],
    platform: Annotated[str, typer.Option(help="meta or google.")],
    account_id: Annotated[str, typer.Option(help="Meta: act_<digits> or <digits>; Google: 123-456-7890.")],
    access_token: Annotated[
        str | None,
        typer.Option(help="Meta long-lived or system-user token; '-' reads it from standard input; omitted, asked for on a terminal."),
    ] = None,
    token_expires_at: Annotated[str | None, typer.Option(help="Meta token expiry, ISO-8601 (not in the past).")] = None,
    refresh_token: Annotated[
        str | None, typer.Option(help="Google OAuth refresh token; '-' reads it from standard input; omitted, asked for on a terminal.")
    ] = None,
    login_customer_id: Annotated[str | None, typer.Option(help="Google manager (MCC) id, when reached through one.")] = None,
) -> None:
    """Add a Meta ad account or a Google Ads customer for a user.

    The token is checked to be storable first: a key that decrypts none of the stored tokens is refused (exit 2, nothing written).

    Examples:
      [bold]emsync integrations add --email anna@example.com --platform meta --account-id act_123456[/bold]   (asks for the token)
      [bold]emsync integrations add --email anna@example.com --platform google --account-id 123-456-7890 --refresh-token - --login-customer-id 111-222-3333 < token.txt[/bold]
    """
    from .. import store, validate
    from ..keys import verify_box

    ctx = state(typer_ctx)
    expires = _expiry(token_expires_at)
    _one_stdin(access_token, refresh_token)
    box = ctx.box()
    with ctx.transaction(write=False) as conn:
        verify_box(conn, box)  # a wrong key is refused before anyone types a token
    kind = validate.platform(platform)
    validate.platform_options(
        kind, access_token=access_token, token_expires_at=token_expires_at, refresh_token=refresh_token, login_customer_id=login_customer_id
    )
    access_token = _token(access_token, "--access-token", ask="Meta access token" if kind == "meta" else None)
    refresh_token = _token(refresh_token, "--refresh-token", ask="Google refresh token" if kind == "google" else None)
    with ctx.transaction() as conn:
        verify_box(conn, box)
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
    """List integrations (never a token); a Google account reached through a manager shows "via" its login-customer-id.

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
    access_token: Annotated[str | None, typer.Option(help="New Meta token; '-' reads it from standard input.")] = None,
    token_expires_at: Annotated[str | None, typer.Option(help="Its expiry, ISO-8601 (not in the past).")] = None,
    refresh_token: Annotated[str | None, typer.Option(help="New Google refresh token; '-' reads it from standard input.")] = None,
    login_customer_id: Annotated[str | None, typer.Option(help="Google manager (MCC) id; '' removes it.")] = None,
) -> None:
    """Replace credentials after a user reconnects; clears needs_reauth.

    A new token replaces the integration's credential, so every integration sharing it gets it (each is listed). A Meta token without --token-expires-at: the same token keeps its known expiry; a new one's expiry is asked of Meta (debug_token) when META_APP_ID/META_APP_SECRET are set, else unknown. A key that decrypts none of the stored tokens is refused (exit 2, nothing written).

    Examples:
      [bold]emsync integrations update 3 --access-token - --token-expires-at 2027-01-28 < token.txt[/bold]
      [bold]emsync integrations update 4 --login-customer-id ''[/bold]
    """
    from .. import store, validate
    from ..keys import verify_box

    ctx = state(typer_ctx)
    validate.integration_id(integration_id)
    expires = _expiry(token_expires_at)
    _one_stdin(access_token, refresh_token)
    box = ctx.box()
    with ctx.transaction(write=False) as conn:
        verify_box(conn, box)
        current = store.get_integration(conn, integration_id)
        validate.platform_options(
            current["platform"],
            access_token=access_token,
            token_expires_at=token_expires_at,
            refresh_token=refresh_token,
            login_customer_id=login_customer_id,
        )
    access_token = _token(access_token, "--access-token")
    refresh_token = _token(refresh_token, "--refresh-token")
    if access_token is not None and expires is None:
        expires = _new_token_expiry(ctx, box, integration_id, access_token)
    with ctx.transaction() as conn:
        verify_box(conn, box)
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


def _new_token_expiry(ctx, box, integration_id: int, token: str):
    """A Meta token given without its expiry: None when it is the stored one (its expiry stays) or Meta cannot say;
    else what Meta's debug_token says (needs META_APP_ID/META_APP_SECRET)."""
    from .. import store, validate
    from ..errors import ApiError
    from ..onboarding import meta_token_expiry

    token = validate.token(token, "--access-token")
    with ctx.transaction(write=False) as conn:
        if store.current_token(conn, box, integration_id) == token:
            return None
    settings = ctx.settings
    if not (settings.meta_app_id and settings.meta_app_secret):
        print("note: the new token's expiry is unknown: give --token-expires-at, or set META_APP_ID/META_APP_SECRET so emsync asks Meta")
        return None
    try:
        expires = meta_token_expiry(settings, token)
    except ApiError as exc:
        print(f"note: could not ask Meta when the token expires ({exc}): stored with an unknown expiry")
        return None
    print(f"Meta says the token expires {expires:%Y-%m-%d %H:%M} UTC." if expires else "Meta says the token does not expire.")
    return expires


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
