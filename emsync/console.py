"""The console script: ``main`` imports the command line itself, so a Ctrl-C that arrives while Python is still
importing or building the command line (its first tenth of a second) ends with exit 130 and no traceback, as one during a run does."""

from __future__ import annotations


def main() -> int:
    """Run ``emsync.cli.main``; a KeyboardInterrupt it did not turn into its own exit (one during the import, or while
    the command line is being built) is exit 130."""
    try:
        from .cli import main as run

        return run()
    except KeyboardInterrupt:
        return 130
