"""What both connectors share beyond the HTTP layer."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..errors import FatalApiError
from ..http import HttpClient
from ..redaction import register_secret


class HttpConnector:
    """What every connector holds: the settings, one integration's ``HttpClient`` and the clock."""

    platform: str

    def __init__(self, settings: Settings, api: HttpClient, clock: Clock = SYSTEM_CLOCK):
        self.settings = settings
        self.api = api
        self.clock = clock


def issued_token(body: object, who: str, now: datetime) -> tuple[str, datetime | None]:
    """The access token (registered for redaction at once) and its expiry from an OAuth-style answer
    (``{"access_token", "expires_in": seconds}``, RFC 6749 section 5.1).

    Raises:
        FatalApiError: the answer carries no token.
    """
    token = body.get("access_token") if isinstance(body, dict) else None
    if not token or not isinstance(body, dict):
        raise FatalApiError(f"{who} answered without an access_token")
    register_secret(token)
    expires_in = body.get("expires_in")
    return token, now + timedelta(seconds=int(expires_in)) if expires_in else None
