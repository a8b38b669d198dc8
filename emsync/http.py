"""The HTTP layer both connectors share: session, timeouts, retries (redaction of what it logs: ``redaction``).

Connectors never sleep or loop on errors themselves. They hand ``send`` a
``classify`` function that turns a response into parsed JSON or raises one of
the ``errors`` classes; ``send`` retries ``RetryableError`` with tenacity
(waiting what the server asked for, else exponential backoff with jitter) and
lets every other error through at once.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import ApiError, RateLimited, RetryableError
from .redaction import RedactingFilter, redact, register_secret

log = logging.getLogger("emsync")


def new_session(pool_size: int):
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 4), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "emsync/0.1 (+https://pypi.org/project/emsync)"
    return session


class HttpClient:
    """One integration's view of the shared session: counts its requests, owns its retry policy.

    ``requests`` counts every request sent (retries included); ``operations`` those sent with
    ``operation=True``, the calls a platform charges against a daily quota (Google Ads
    operations); ``last_headers`` are the headers of the latest response (Meta's usage headers).
    """

    # Tests replace this to avoid real waiting; everything that waits goes through it.
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(self, session, *, timeout: float, attempts: int, max_wait: float, clock: Clock = SYSTEM_CLOCK):
        self.session = session
        self.clock = clock
        self.timeout = timeout
        self.attempts = attempts
        self.max_wait = max_wait
        self.requests = 0
        self.operations = 0
        self.last_headers: Any = {}

    def pause(self, seconds: float, reason: str) -> None:
        if seconds > 0:
            log.info("pausing %.1fs: %s", seconds, reason)
            type(self).sleep(seconds)

    def send(self, method: str, url: str, *, classify: Callable[[Any], Any], operation: bool = False, **kwargs) -> Any:
        """Send with retries; return what ``classify`` returns. ``operation``: each attempt counts in ``operations``.

        Raises:
            ApiError: a subclass saying what to do next. A rate limit that
            outlasts the retries becomes ``RateLimited``.
        """
        from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt
        from tenacity.wait import wait_exponential_jitter

        backoff = wait_exponential_jitter(initial=1, max=max(self.max_wait, 1), jitter=1)

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            asked = getattr(exc, "wait", None)
            return min(asked, self.max_wait) if asked is not None else min(backoff(state), self.max_wait)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "retrying %s %s in %.1fs (attempt %d of %d): %s",
                method,
                redact(_short(url)),
                state.upcoming_sleep,
                state.attempt_number + 1,
                self.attempts,
                redact(str(exc)),
            )

        retrying = Retrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.attempts),
            wait=wait,
            sleep=lambda s: type(self).sleep(s),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, method, url, classify, kwargs, operation)
        except RetryableError as exc:
            if getattr(exc, "rate_limit", False):
                retry_at = self.clock.now() + timedelta(seconds=max(exc.wait or 0, 15 * 60))
                raise RateLimited(f"still rate limited after {self.attempts} attempts: {exc}", retry_at=retry_at) from None
            raise

    def _attempt(self, method: str, url: str, classify, kwargs, operation: bool) -> Any:
        import requests

        self.requests += 1
        self.operations += operation
        try:
            response = self.session.request(method, url, timeout=(self.timeout, self.timeout), **kwargs)
        except requests.Timeout:
            raise RetryableError(f"no answer within {self.timeout:g}s from {_host(url)}") from None
        except requests.ConnectionError as exc:
            raise RetryableError(f"connection to {_host(url)} failed: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise RetryableError(f"request to {_host(url)} failed: {_reason(exc)}") from None
        self.last_headers = response.headers
        try:
            return classify(response)
        except requests.RequestException as exc:  # body cut off while reading
            raise RetryableError(f"response from {_host(url)} was cut off: {_reason(exc)}") from None


def parse_json(response) -> Any:
    """The body as JSON; a truncated or non-JSON body is worth a retry."""
    try:
        return response.json()
    except ValueError:
        raise RetryableError(f"HTTP {response.status_code} with a body that is not complete JSON ({len(response.content)} bytes)") from None


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or url


def _short(url: str) -> str:
    return url.split("?", 1)[0]


_ERRNO = re.compile(r"\[Errno [^\]]+\][^'\")]*")
_CAUSE = re.compile(r"(RemoteDisconnected|ConnectionResetError|ProtocolError|IncompleteRead|SSLError)\(['\"]?([^'\")]*)")


def _reason(exc: Exception) -> str:
    """The useful part of a requests/urllib3 error ("[Errno 111] Connection refused"), not its wrapper's repr."""
    text = str(exc)
    found = _ERRNO.search(text) or _CAUSE.search(text)
    if found:
        return redact(found.group(0).replace("(", ": ", 1).strip(" '\""))
    return redact(text.splitlines()[0][:200]) if text else type(exc).__name__


# redact and register_secret are re-exported: connectors and helpers import the HTTP layer's names from here.
__all__ = ["ApiError", "HttpClient", "RedactingFilter", "new_session", "parse_json", "redact", "register_secret"]
