"""Logging: plain timestamped lines or one JSON object per line, optional rotated file, always redacted."""

from __future__ import annotations

import json
import logging
import logging.handlers
from datetime import UTC, datetime

from .http import RedactingFilter

LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
_ATTACHED: set[str] = set()  # other libraries' loggers ``attach`` sent to emsync's handlers


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for key in ("integration_id", "platform", "email", "run_id", "status", "rows"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info and not record.exc_text:  # logger.exception(): uvicorn's and ours alike
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter()
    fmt = logging.Formatter(TEXT_FORMAT, "%Y-%m-%dT%H:%M:%S%z")
    return fmt


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A log file (and each one rotation starts) is created 0600 whatever the umask: logs name accounts and users."""

    def _open(self):
        from .files import open_private

        return open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=open_private)


def stderr_handler(log_format: str) -> logging.Handler:
    """A handler writing ``log_format`` lines to stderr (plain lines for cron, systemd and pipes)."""
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    return handler


def configure_for(settings, *, console: logging.Handler | None, verbose: bool) -> list[logging.Handler]:
    """``configure`` with the settings' format and EMSYNC_LOG_FILE (errors name where it was set)."""
    return configure(
        log_format=settings.log_format,
        log_file=settings.log_file,
        log_file_origin=settings.origin("EMSYNC_LOG_FILE"),
        console=console,
        verbose=verbose,
    )


def configure(
    *, log_format: str, log_file: str | None, console: logging.Handler | None, verbose: bool, log_file_origin: str | None = None
) -> list[logging.Handler]:
    """Attach emsync's handlers to the "emsync" logger; returns them so the caller can detach.

    Raises:
        ConfigError: ``log_file`` cannot be opened; says where EMSYNC_LOG_FILE was set when
            ``log_file_origin`` (``Settings.origin``) is given.
    """
    logger = logging.getLogger("emsync")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    handlers: list[logging.Handler] = []
    if console is not None:
        handlers.append(console)
    if log_file:
        from .errors import ConfigError

        try:
            file_handler = PrivateRotatingFileHandler(log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8")
        except OSError as exc:
            where = f" (set in {log_file_origin})" if log_file_origin else ""
            raise ConfigError(f"EMSYNC_LOG_FILE: cannot open {log_file}: {exc.strerror}{where}") from None
        file_handler.setFormatter(formatter(log_format))
        handlers.append(file_handler)
    for handler in handlers:
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
    return handlers


def attach(handlers: list[logging.Handler], name: str) -> None:
    """Send another library's logger ``name`` (e.g. uvicorn's) to emsync's ``handlers`` (format, file, redaction) at INFO,
    instead of its own configuration. ``detach`` closes the handlers; the logger keeps none of them after it."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    _ATTACHED.add(name)
    for handler in handlers:
        logger.addHandler(handler)


def detach(handlers: list[logging.Handler]) -> None:
    for name in ("emsync", *_ATTACHED):
        logger = logging.getLogger(name)
        for handler in handlers:
            if handler in logger.handlers:
                logger.removeHandler(handler)
    for handler in handlers:
        handler.close()
