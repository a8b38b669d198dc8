"""Key commands: keys check, keys rotate."""

from __future__ import annotations

import typer

from .app import JsonOpt, app, print_json, state

keys_app = typer.Typer(no_args_is_help=True, help="The key that encrypts stored tokens (EMSYNC_SECRET_KEY): check it, rotate it.")
app.add_typer(keys_app, name="keys")


@keys_app.command("check")
def keys_check(typer_ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Say whether every stored token decrypts with EMSYNC_SECRET_KEY, and when an older key of 'new,old' can be removed.

    Exits 0 when every token decrypts, 1 when some do not (each is named with its fix), 2 when no key is set.

    Example: [bold]emsync keys check[/bold]
    """
    from ..keys import key_report

    ctx = state(typer_ctx)
    box = ctx.box()
    with ctx.transaction(write=False) as conn:
        report = key_report(conn, box)
    if json_out:
        print_json(report.as_dict())
    else:
        _print_report(report, ctx.settings.origin("EMSYNC_SECRET_KEY"))
    if not report.ok:
        raise typer.Exit(1)


def _print_report(report, origin: str | None) -> None:
    keys = "one key" if report.keys == 1 else f"{report.keys} keys (the first encrypts)"
    keys += f", set in {origin}" if origin else ""
    readable = report.tokens - len(report.unreadable)
    stored = f"{readable} of {_count(report.tokens, 'stored token')} ({_count(report.credentials, 'credential')})"
    print(f"EMSYNC_SECRET_KEY holds {keys}; {stored} decrypt.")
    for problem in report.unreadable:
        print(f"problem: {problem.message}")
    if report.under_older_key:
        # Which key is the newer one cannot be told from the order here: another host may have rotated to this
        # host's second key. Rotating from here would move the tokens back; say both cases.
        print(
            f"{_count(report.under_older_key, 'token')} encrypted with a key of EMSYNC_SECRET_KEY other than the first. "
            "Keep every key. If that key is the new one (another host ran 'emsync keys rotate'), put it first here; "
            "if it is the old one, run 'emsync keys rotate' (on one host)."
        )
    elif report.older_keys_removable:
        print(
            "Every token is encrypted with the first key: the other keys can be removed from EMSYNC_SECRET_KEY "
            "(keep only the first key, on every host using this database)."
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@keys_app.command("rotate")
def keys_rotate(typer_ctx: typer.Context) -> None:
    """Re-encrypt every stored token with a new key, in one transaction.

    With one key in an env file emsync read: a new key is made and written first, as 'new,old', to that file (the old key stays until 'emsync keys check' says it can go), then every token is re-encrypted. With 'new,old' already configured (every host given it first, so they all keep working): every token is re-encrypted with the first key. With one key from the environment: prints the value to set, then run it again.

    Examples: [bold]emsync keys rotate[/bold]   [bold]EMSYNC_SECRET_KEY=NEW,OLD emsync keys rotate[/bold]
    """
    from ..crypto import TokenBox, new_key, split_keys
    from ..keys import key_file, rotate, verify_box, write_key

    ctx = state(typer_ctx)
    box = ctx.box()
    with ctx.transaction(write=False) as conn:
        verify_box(conn, box)  # never write a new key beside a wrong one
    configured = split_keys(ctx.settings.secret_key or "")
    if len(configured) == 1:
        path = key_file(ctx.settings)
        new = new_key()
        if path is None:
            print(
                "EMSYNC_SECRET_KEY comes from the environment, which emsync cannot change. Set it to this new key, a comma "
                "and the current key, wherever it is configured (on every host using this database):\n\n"
                f"  EMSYNC_SECRET_KEY={new},<the current key>\n\nthen run 'emsync keys rotate' again."
            )
            return
        value = f"{new},{configured[0]}"
        write_key(path, value)  # before the tokens change: a crash after this leaves a key that reads them all
        print(f"Wrote EMSYNC_SECRET_KEY=<new key>,<old key> to {path}.")
        box = TokenBox(value)
    done = rotate(ctx.engine(), box)
    print(f"Re-encrypted {done.rotated} tokens with the first key in one transaction ({done.current} already were).")
    if done.cleared:
        print(f"Dropped {done.cleared} cached access tokens no key decrypts (the next sync gets new ones).")
    for problem in done.unreadable:
        print(f"problem: {problem}")
    print(
        "Every host using this database needs the same EMSYNC_SECRET_KEY before its next run. "
        "'emsync keys check' then says when the old key can be removed."
    )
    if done.unreadable:
        raise typer.Exit(1)
