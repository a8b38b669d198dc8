"""What both connectors share beyond the HTTP layer: the connector's holdings, OAuth answers, the rules rows
must follow, and how a side step that failed becomes a warning instead of a failure."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from ..clock import SYSTEM_CLOCK, Clock
from ..config import Settings
from ..domain import InsightRow, SyncWindow
from ..errors import ApiError, FatalApiError
from ..http import HttpClient
from ..redaction import redact, register_secret

log = logging.getLogger("emsync")

# An account closed or disabled upstream is tried again this much later, not every run.
CLOSED_ACCOUNT_RETRY = timedelta(days=1)


class HttpConnector:
    """What every connector holds: the settings, one integration's ``HttpClient`` and the clock."""

    platform: str
    reads_account_on_full_sync = False

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


def side_step_warning(what: str, exc: ApiError, consequence: str) -> str:
    """The warning (logged, and kept on the integration's ``last_warning``) for a side step that failed
    while the sync itself can go on: ``what`` failed, why, and what emsync does instead."""
    text = redact(f"{what} failed: {exc}; {consequence}")
    log.info("%s", text)  # the engine logs the sync's warnings together, as a warning
    return text


def campaign_id_text(value: object) -> str:
    """A row's campaign id as text (Meta ``campaign_id``, Google ``campaign.id``).

    Raises:
        ValueError: null or "": no id (never stored as the campaign "None"); the parsers refuse the row.
    """
    if value is None or value == "":
        raise ValueError("no campaign id")
    return str(value)


def refuse_unasked_rows(rows: Iterable[InsightRow], window: SyncWindow, service: str) -> None:
    """Refuse an answer with a row dated outside the requested window: it does not answer the query, so
    storing it (or deleting because of it) would be a guess.

    Raises:
        FatalApiError: naming the row's campaign and date and the window; nothing is written.
    """
    for row in rows:
        if not window.since <= row.date <= window.until:
            raise FatalApiError(
                f"{service} returned a row for campaign {row.campaign_id} dated {row.date}, outside the requested "
                f"window {window.since}..{window.until}; refused the answer, nothing was changed"
            )
