"""The Typer application, its sub-apps, and the per-invocation state every command reaches through ``ctx.obj``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ..config import Settings

_ARGS = "emsync.args"  # ctx.meta key: the command line as the root group received it


class _RootGroup(TyperGroup):
    """Keeps the whole command line in ``ctx.meta``: the root callback runs before a subcommand parses ``--help``."""

    def parse_args(self, ctx, args):
        ctx.meta[_ARGS] = tuple(args)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_RootGroup,
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    help="Keep an advertising dashboard's database fresh with Meta Ads and Google Ads campaign metrics.",
)
users_app = typer.Typer(no_args_is_help=True, help="Manage users.")
integrations_app = typer.Typer(no_args_is_help=True, help="Manage ad-account integrations.")
app.add_typer(users_app, name="users")
app.add_typer(integrations_app, name="integrations")


class AppContext:
    """Per-invocation state, built lazily so `--help` never touches a database."""

    def __init__(self, verbose: bool, env_file: str | None):
        self.verbose = verbose
        self.env_file = env_file
        self.env_file_may_be_missing = False  # `init` creates the env file it is given
        self._settings: Settings | None = None
        self._engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from ..config import load_settings

            self._settings = load_settings(self.env_file, missing_ok=self.env_file_may_be_missing)
        return self._settings

    def check_env_files(self) -> None:
        """Read the env files now, whatever the command: a bad line is exit 2 naming the file and the line,
        and a misspelt setting a warning on stderr naming the closest one."""
        from ..config import env_file_warnings, env_files

        for warning in env_file_warnings(env_files(self.env_file, missing_ok=True)):
            print(f"emsync: warning: {warning}", file=sys.stderr)

    def engine(self, *, check: bool = True, create: bool = False) -> Engine:
        """The database engine; ``check`` refuses a missing or outdated schema (see ``db.check_schema``)."""
        if self._engine is None:
            from .. import db

            self._engine = db.engine_for(self.settings, create=create)
            if check:
                db.check_schema(self._engine, self.settings.database_url)
        return self._engine

    def box(self):
        """The configured key (``keys.require_box``: a missing key with tokens stored says to restore it)."""
        from ..keys import require_box

        return require_box(self.settings, self.engine())

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator:
        """A connection in a transaction; driver errors become one ``DatabaseError`` line that names the database."""
        from sqlalchemy.exc import SQLAlchemyError

        from .. import db

        try:
            with db.write_transaction(self.engine()) if write else self.engine().begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise db.explain(exc, self.settings.database_url) from None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("emsync")
        except PackageNotFoundError:  # running from a source tree that was not installed
            from .. import __version__ as number
        print(f"emsync {number}")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, expose_value=True, help="Print emsync's version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs and full tracebacks.")] = False,
    env_file: Annotated[str | None, typer.Option("--env-file", envvar="EMSYNC_ENV_FILE", help="Read settings from this env file.")] = None,
) -> None:
    ctx.obj = AppContext(verbose, env_file)
    ctx.call_on_close(ctx.obj.close)
    if not _asks_for_help(ctx):
        ctx.obj.check_env_files()


def _asks_for_help(ctx: typer.Context) -> bool:
    """True when the subcommand will only print its help (the root callback runs before it parses ``--help``)."""
    return ctx.resilient_parsing or "--help" in ctx.meta.get(_ARGS, ())


def state(ctx: typer.Context) -> AppContext:
    """The invocation's ``AppContext`` (set by the root callback on ``ctx.obj``)."""
    return ctx.find_root().obj


def print_json(obj) -> None:
    from ..serialize import to_json

    print(to_json(obj, indent=2))


def console():
    from rich.console import Console

    # Not a terminal (cron mail, a pipe): wide enough that tables do not fold every cell.
    return Console() if sys.stdout.isatty() else Console(width=200)


JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
