"""Dead-man's-switch pings (healthchecks.io style): URL/start, then URL or URL/fail.

A ping that fails is logged and ignored: monitoring must never break the sync.
"""

from __future__ import annotations

import logging

from .http import redact

log = logging.getLogger("emsync")
PING_TIMEOUT = 10


class Healthcheck:
    """Pings for one sync-all; without a URL every ping is a no-op."""

    def __init__(self, url: str | None):
        self.url = url.rstrip("/") if url else None

    def __bool__(self) -> bool:
        return self.url is not None

    def _ping(self, suffix: str, body: str = "") -> None:
        if self.url is None:
            return
        import requests

        try:
            requests.post(self.url + suffix, data=body.encode()[:10000], timeout=PING_TIMEOUT)
        except requests.RequestException as exc:
            log.warning(
                "healthcheck ping %s failed: %s", suffix or "/", redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            )

    def start(self) -> None:
        self._ping("/start")

    def finish(self, ok: bool, summary: str) -> None:
        self._ping("" if ok else "/fail", summary)
