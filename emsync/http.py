"""The HTTP layer both connectors share: session, timeouts, retries (redaction of what it logs: ``redaction``).

Connectors never sleep or loop on errors themselves. They hand ``send`` a
``classify`` function that turns a response into parsed JSON or raises one of
the ``errors`` classes; ``send`` retries ``RetryableError`` with tenacity
(waiting what the server asked for, else exponential backoff with jitter) and
lets every other error through at once.

Every classifier starts with ``read_body`` and ends with ``undescribed``: the
HTTP status decides first (a 2xx whose body is cut is a truncation; 404/410
is a wrong URL; 429 and 5xx are worth retrying whatever their body), and only
then the platform's own error object refines it. ``HttpClient.rate_limited``
turns what the server asked for (``retryDelay``, ``Retry-After``, Meta's
``estimated_time_to_regain_access``) into a wait or a ``rate_limited`` state.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from .clock import SYSTEM_CLOCK, Clock
from .errors import ApiError, FatalApiError, RateLimited, RetryableError
from .interrupts import CancelToken
from .redaction import RedactingFilter, redact, register_secret

log = logging.getLogger("emsync")


def new_session(pool_size: int, cancel: CancelToken | None = None):
    """A requests session for up to ``pool_size`` concurrent requests. With ``cancel``, setting the token aborts
    every request in flight on this session (its sockets are shut down, see ``interrupts``)."""
    from requests.adapters import HTTPAdapter

    session = _session_class()()
    maxsize = max(pool_size, 4)
    if cancel is None:
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=maxsize, max_retries=0)
    else:
        adapter = _cancellable_adapter(cancel, pool_connections=4, pool_maxsize=maxsize, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "emsync/0.1 (+https://pypi.org/project/emsync)"
    return session


@functools.cache
def _session_class() -> type:
    """Built on first use, so that importing http.py does not import requests."""
    import requests

    class Session(requests.Session):
        """requests reads the environment's proxy settings and CA bundle (``HTTPS_PROXY``, ``NO_PROXY``,
        ``REQUESTS_CA_BUNDLE``…) again on every request, walking all of ``os.environ`` twice: in a run of thousands
        of requests that was about a seventh of emsync's CPU. The environment does not change during a run, so what
        it says is kept per scheme and host (``NO_PROXY`` decides per host); a caller's own proxies bypass the cache.
        """

        def __init__(self) -> None:
            super().__init__()
            self._environment: dict[tuple, dict[str, Any]] = {}

        def merge_environment_settings(self, url, proxies, stream, verify, cert):
            if proxies or not self.trust_env:
                return super().merge_environment_settings(url, proxies, stream, verify, cert)
            parts = urlsplit(url)
            key = (parts.scheme, parts.netloc, stream, verify, cert)
            settings = self._environment.get(key)
            if settings is None:
                settings = super().merge_environment_settings(url, {}, stream, verify, cert)
                self._environment[key] = settings
            return {**settings, "proxies": dict(settings["proxies"])}

    return Session


def _cancellable_adapter(cancel: CancelToken, **sizes):
    """An HTTPAdapter whose connections register with ``cancel`` once connected (and leave it when closed)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def tracked(base: type) -> type:
        class Tracked(base):
            def connect(self) -> None:
                super().connect()
                cancel.track(self)

            def close(self) -> None:
                cancel.untrack(self)
                super().close()

        return Tracked

    class HttpPool(HTTPConnectionPool):
        ConnectionCls = tracked(HTTPConnection)

    class HttpsPool(HTTPSConnectionPool):
        ConnectionCls = tracked(HTTPSConnection)

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HttpPool, "https": HttpsPool}

    return Adapter(**sizes)


class HttpClient:
    """One integration's view of the shared session: counts its requests, owns its retry policy.

    ``requests`` counts every request sent (retries included); ``operations`` those sent with
    ``operation=True``, the calls a platform charges against a daily quota (Google Ads
    operations); ``last_headers`` are the headers of the latest response (Meta's usage headers).
    ``cancel``: the run's token; once set, ``send`` and ``pause`` raise ``Interrupted`` instead of sending,
    retrying or waiting, and a request in flight (on a session made with that token) is aborted.
    """

    # Tests replace this to avoid real waiting; everything that waits goes through it.
    sleep: Callable[[float], None] = staticmethod(time.sleep)

    def __init__(
        self, session, *, timeout: float, attempts: int, max_wait: float, clock: Clock = SYSTEM_CLOCK, cancel: CancelToken | None = None
    ):
        self.session = session
        self.cancel = cancel
        self.clock = clock
        self.timeout = timeout
        self.attempts = attempts
        self.max_wait = max_wait
        self.requests = 0
        self.operations = 0
        self.last_headers: Any = {}

    def pause(self, seconds: float, reason: str) -> None:
        """Wait ``seconds`` (a back-off, a report's polling interval). Raises ``Interrupted`` once the run's token is set."""
        if seconds > 0:
            log.info("pausing %.1fs: %s", seconds, reason)
            self._sleep(seconds)

    def _sleep(self, seconds: float) -> None:
        sleep = type(self).sleep
        if self.cancel is None:
            sleep(seconds)
            return
        if sleep is time.sleep:  # the real clock: wake as soon as the run is stopped
            self.cancel.wait(seconds)
        else:  # tests replace ``sleep`` to count the waits instead of sleeping them
            self.cancel.check()
            sleep(seconds)
        self.cancel.check()

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
            sleep=self._sleep,
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

    def rate_limited(
        self,
        label: str,
        delay: float | None,
        *,
        request_id: str | None = None,
        unknown: timedelta | None = None,
        scope: str | None = None,
    ) -> ApiError:
        """The error for a rate limit, decided by what the server asked for, not by the error's name.

        ``delay`` (seconds) up to ``EMSYNC_RETRY_MAX_WAIT``: wait that long and
        retry; longer: ``RateLimited`` until then, without waiting. No delay:
        retry with backoff, or, when ``unknown`` is given (a daily quota that
        named no time), ``RateLimited`` for that long. ``scope``: the quota's
        scope when the platform named it (Google ``rateScope``: ACCOUNT,
        DEVELOPER, PROJECT), carried on ``RateLimited``.
        """
        if delay is None:
            if unknown is not None:
                return RateLimited(label, retry_at=self.clock.now() + unknown, request_id=request_id, scope=scope)
            return RetryableError(label, rate_limit=True, request_id=request_id)
        if delay <= self.max_wait:
            return RetryableError(label, wait=delay, rate_limit=True, request_id=request_id)
        return RateLimited(
            f"{label} (asked to wait {_duration(delay)}, longer than EMSYNC_RETRY_MAX_WAIT={self.max_wait:g}s)",
            retry_at=self.clock.now() + timedelta(seconds=delay),
            request_id=request_id,
            scope=scope,
        )

    def retry_after(self, response) -> float | None:
        """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date, RFC 9110 section 10.2.3); None when absent."""
        raw = (response.headers.get("Retry-After") or "").strip()
        if not raw:
            return None
        if raw.isdigit():
            return float(raw)
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return max((when - self.clock.now()).total_seconds(), 0.0)

    def undescribed(self, response, service: Service, *, unauthorized: ApiError | None = None) -> ApiError:
        """The error for a non-2xx answer the platform did not describe (no error object, or no JSON at all).

        401 → ``unauthorized`` (what 401 means depends on the endpoint); 429 →
        a rate limit honouring ``Retry-After``; 5xx → retry (``Retry-After``
        when given); any other status → permanent.
        """
        status = response.status_code
        label = f"{service.name} answered HTTP {status}{_reason_phrase(response)}"
        if status == 401 and unauthorized is not None:
            return unauthorized
        if status == 429:
            return self.rate_limited(label, self.retry_after(response))
        if status >= 500:
            wait = self.retry_after(response)  # a server that says when to come back is a rate limit
            return RetryableError(label) if wait is None else self.rate_limited(label, wait)
        return FatalApiError(f"{label} without an error description{_snippet(response)}")

    def _attempt(self, method: str, url: str, classify, kwargs, operation: bool) -> Any:
        import requests

        self._check_cancelled()
        self.requests += 1
        self.operations += operation
        try:
            response = self.session.request(method, url, timeout=(self.timeout, self.timeout), **kwargs)
        except requests.Timeout:
            self._check_cancelled()
            raise RetryableError(f"no answer within {self.timeout:g}s from {_host(url)}") from None
        except requests.exceptions.ProxyError as exc:  # before ConnectionError, its base: name the proxy, not the API
            self._check_cancelled()
            raise RetryableError(
                f"the proxy for {_host(url)} failed: {_reason(exc)} (check HTTPS_PROXY / HTTP_PROXY, or NO_PROXY)"
            ) from None
        except requests.ConnectionError as exc:
            self._check_cancelled()  # the run's token aborted it: not a network failure to retry
            raise RetryableError(f"connection to {_host(url)} failed: {_reason(exc)}") from None
        except requests.RequestException as exc:
            self._check_cancelled()
            raise RetryableError(f"request to {_host(url)} failed: {_reason(exc)}") from None
        self.last_headers = response.headers
        try:
            return classify(response)
        except requests.RequestException as exc:  # body cut off while reading
            self._check_cancelled()
            raise RetryableError(f"response from {_host(url)} was cut off: {_reason(exc)}") from None

    def _check_cancelled(self) -> None:
        """Raises ``Interrupted`` once the run's token is set."""
        if self.cancel is not None:
            self.cancel.check()


@dataclass(frozen=True)
class Service:
    """Who answered, for messages: its name and the settings that say where emsync sends the requests."""

    name: str  # "Meta", "Google Ads", "Google's token endpoint"
    settings: str  # e.g. "GOOGLE_ADS_API_URL and GOOGLE_ADS_API_VERSION"


def read_body(response, service: Service) -> Any:
    """The body as JSON, the HTTP status deciding first.

    Returns the parsed body, or None when a non-2xx body is not JSON (an HTML
    error page, "Not Found"): the caller then decides by the status alone
    (``HttpClient.undescribed``).

    Raises:
        RetryableError: a 2xx whose body is empty, cut or not JSON (truncated in transit).
        FatalApiError: 404 or 410: the URL does not exist, usually a wrong base
            URL or an API version the platform has retired; names the URL (no
            query) and the settings to check.
    """
    status = response.status_code
    if status in (404, 410):
        where = redact(_short(str(getattr(response, "url", "") or "")))
        raise FatalApiError(
            f"{service.name} answered HTTP {status}{_reason_phrase(response)} for {where}: the URL does not exist; "
            f"check {service.settings} (a version the platform has retired answers like this){_snippet(response)}"
        )
    try:
        return response.json()
    except ValueError:
        if 200 <= status < 300:
            raise RetryableError(
                f"{service.name} answered HTTP {status} with a body that is not complete JSON ({len(response.content)} bytes)"
            ) from None
        return None


def _reason_phrase(response) -> str:
    reason = getattr(response, "reason", None)
    return f" {reason}" if isinstance(reason, str) and reason else ""


def _snippet(response) -> str:
    """The start of a short plain-text body ("Service Unavailable"), never HTML markup nor a repeat of
    the reason phrase; '' otherwise."""
    try:
        text = response.text.strip()
    except (AttributeError, ValueError):
        return ""
    if not text or text.startswith(("<", "{", "[")):
        return ""
    line = text.splitlines()[0][:120]
    return "" if line == getattr(response, "reason", None) else f" ({redact(line)})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
__all__ = ["ApiError", "HttpClient", "RedactingFilter", "Service", "new_session", "read_body", "redact", "register_secret"]
