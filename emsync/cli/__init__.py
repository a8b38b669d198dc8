"""The `emsync` command line: parse, call the library, render. Nothing else lives here.

``app`` (Typer) is assembled from ``admin`` (init, users, integrations),
``connect`` (connect google|meta, integrations import), ``credentials``
(credentials list|remove, integrations check), ``keys`` (keys check|rotate), ``sync`` (sync-all, sync-user
and their output), ``backfill`` (backfill and its output) and ``ops`` (status, sandbox, serve, secret, demo); ``main`` is the console script and the one place that
turns errors into a line on stderr and an exit code.
"""

from __future__ import annotations

import sys

import typer

from ..errors import EmsyncError
from . import admin, backfill, connect, credentials, keys, ops, sync  # noqa: F401  (register the commands, in the order --help lists them)
from .app import app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every error becomes one line on stderr and an exit code.

    A reader that goes away (``emsync status | head``) ends the command quietly with exit 0, as other Unix tools
    do: no traceback, no "Exception ignored" at exit.
    """
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:
        if _stdout_closed():
            return _reader_gone()
        raise
    except SystemExit as exc:
        if isinstance(exc.__context__, BrokenPipeError):  # rich's Console turns a closed pipe into SystemExit(1)
            return _reader_gone()
        raise


def _stdout_closed() -> bool:
    """Whether stdout is a pipe nobody reads any more (the poll reports an error on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError):  # no file descriptor (a captured stdout)
        return False


def _reader_gone() -> int:
    """stdout's reader closed the pipe: point stdout at /dev/null so nothing more (the exit's flush) writes to it."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


def _main(args: list[str]) -> int:
    command = typer.main.get_command(app)
    verbose = "--verbose" in args or "-v" in args
    if _is_status_check(args):
        return _as_check(command, args, verbose)
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
    except BrokenPipeError:
        raise  # main's: a reader that went away is not an error
    except Exception as exc:  # noqa: BLE001 - the one place that turns surprises into a line
        from sqlalchemy.exc import SQLAlchemyError

        if verbose:
            import traceback

            traceback.print_exc()
        if isinstance(exc, SQLAlchemyError):
            from ..db import describe_error
            from ..redaction import redact

            print(f"emsync: database error: {redact(describe_error(exc))}", file=sys.stderr)
            return 2
        print(f"emsync: internal error: {type(exc).__name__}: {_redacted(exc)} (run with --verbose for details)", file=sys.stderr)
        return 1


def _is_status_check(args: list[str]) -> bool:
    """``emsync [global options] status ... --check``: a monitoring plugin, whose errors are UNKNOWN (exit 3)."""
    rest = iter(args)
    for arg in rest:
        if arg == "--env-file":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg == "status" and "--check" in args
    return False


def _as_check(command, args: list[str], verbose: bool) -> int:
    """Run ``status --check``; anything that keeps it from judging — a usage error, a bad setting, the database
    unreachable, a surprise — is one ``EMSYNC UNKNOWN - reason`` line on stdout and exit 3."""
    try:
        result = command.main(args=args, prog_name="emsync", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:
        reason = f"{exc.format_message()} (see 'emsync status --help')"
    except KeyboardInterrupt:
        reason = "interrupted"
    except BrokenPipeError:
        raise  # main's: a reader that went away is not an error
    except Exception as exc:  # noqa: BLE001 - a plugin reports every failure as UNKNOWN
        from sqlalchemy.exc import SQLAlchemyError

        if verbose:
            import traceback

            traceback.print_exc()
        if isinstance(exc, SQLAlchemyError):
            from ..db import describe_error
            from ..redaction import redact

            reason = f"database error: {redact(describe_error(exc))}"
        else:
            reason = _redacted(exc) if isinstance(exc, EmsyncError) else f"{type(exc).__name__}: {_redacted(exc)}"
    print("EMSYNC UNKNOWN - " + " ".join(reason.split()).replace("|", "/"))
    return 3


def _redacted(exc: Exception) -> str:
    from ..redaction import redact

    return redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
