"""What both connectors share beyond the HTTP layer."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..errors import FatalApiError
from ..redaction import register_secret


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
