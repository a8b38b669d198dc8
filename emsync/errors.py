"""One exception tree, grouped by what the caller should do next.

* ``UserError`` and its children: the person (or cron line) asked for something
  wrong; the CLI prints one line and exits 2, having written nothing.
* ``ApiError`` and its children: a platform answered badly during a sync; the
  engine records it on the integration and moves on to the next one.
"""

from __future__ import annotations

from datetime import datetime


class EmsyncError(Exception):
    """Base of every error emsync raises on purpose."""

    exit_code = 1


class UserError(EmsyncError):
    """Bad input: malformed arguments, unknown email, duplicate rows."""

    exit_code = 2


class UnknownUser(UserError):
    """No user has that email."""


class ConfigError(UserError):
    """A setting is missing or invalid; the message names the setting."""


class DatabaseError(UserError):
    """The database cannot be reached, or its schema is missing or outdated."""


class ApiError(EmsyncError):
    """A platform API refused or failed a request.

    ``request_id`` is the platform's trace id (Meta ``fbtrace_id``, Google
    ``requestId``), kept because support asks for it.
    """

    status = "error"

    def __init__(self, message: str, *, request_id: str | None = None):
        if request_id:
            message = f"{message} (request id {request_id})"
        super().__init__(message)
        self.request_id = request_id


class RetryableError(ApiError):
    """Worth another attempt: 5xx, timeouts, dropped connections, short rate limits.

    ``wait`` is what the server asked for, in seconds, when it said;
    ``rate_limit`` marks a rate limit, which becomes ``RateLimited`` when the
    attempts run out.
    """

    def __init__(self, message: str, *, wait: float | None = None, rate_limit: bool = False, request_id: str | None = None):
        super().__init__(message, request_id=request_id)
        self.wait = wait
        self.rate_limit = rate_limit


class RateLimited(ApiError):
    """The platform asked us to come back later than we are willing to wait.

    ``scope`` is whose quota ran out when the platform says so: Google's
    ``quotaErrorDetails.rateScope`` (``ACCOUNT``, ``DEVELOPER``, ``PROJECT``).
    """

    status = "rate_limited"

    def __init__(self, message: str, *, retry_at: datetime, request_id: str | None = None, scope: str | None = None):
        super().__init__(message, request_id=request_id)
        self.retry_at = retry_at
        self.scope = scope


class NeedsReauth(ApiError):
    """The token is expired or revoked; only the user reconnecting helps."""

    status = "needs_reauth"


class FatalApiError(ApiError):
    """A request the platform will never accept as sent (bad parameter, wrong setting, unanswerable row)."""


class AccountClosed(ApiError):
    """The account is closed or disabled at the platform: status stays ``error``, tried again at ``retry_at`` (a day later)."""

    def __init__(self, message: str, *, retry_at: datetime, request_id: str | None = None):
        super().__init__(message, request_id=request_id)
        self.retry_at = retry_at


class NeedsAsyncReport(ApiError):
    """Meta asked for less data per synchronous request: use an async report run."""


def short_message(text: str | None, limit: int = 300) -> str:
    """An error's first line, shortened in the middle (at spaces) when longer than ``limit`` characters: emsync's
    messages end with what to do (``run 'emsync integrations update 3 ...'``, ``reconnect ...``), so the end is kept."""
    if not text:
        return ""
    line = text.splitlines()[0]
    if len(line) <= limit:
        return line
    head, tail = line[: limit // 3], line[-(limit - limit // 3) :]
    head = head.rsplit(" ", 1)[0] if " " in head else head
    tail = tail.split(" ", 1)[1] if " " in tail else tail
    return f"{head} … {tail}"
