"""What connectors hand to the engine: plain frozen values, no database types."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from ..errors import FatalApiError
from ..http import register_secret


@dataclass(frozen=True, slots=True)
class InsightRow:
    """One campaign on one day, in the account's currency. Natural key: (campaign_id, date)."""

    campaign_id: str
    date: date
    campaign_name: str | None
    spend: Decimal
    impressions: int
    clicks: int
    conversions: Decimal
    revenue: Decimal


@dataclass(frozen=True, slots=True)
class AccountInfo:
    currency: str | None
    time_zone: str | None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SyncWindow:
    since: date
    until: date
    full: bool

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1


@dataclass(slots=True)
class Credentials:
    """An integration's tokens, decrypted for the duration of one sync.

    The engine persists whatever a connector changes here (a renewed Meta
    token, a cached Google access token). Never printed: see ``__repr__``.
    """

    access_token: str | None = None
    token_expires_at: datetime | None = None
    refresh_token: str | None = None
    cached_access_token: str | None = None
    cached_access_token_expires_at: datetime | None = None
    changed: bool = field(default=False)

    def __repr__(self) -> str:
        return f"Credentials(token_expires_at={self.token_expires_at!r}, changed={self.changed})"

    def secrets(self) -> list[str]:
        return [s for s in (self.access_token, self.refresh_token, self.cached_access_token) if s]


@dataclass(frozen=True, slots=True)
class Account:
    """Which account to read, and what is known about it."""

    platform: str
    account_id: str
    login_customer_id: str | None = None
    time_zone: str | None = None


def account_label(platform: str, account_id: str) -> str:
    """How people write the id: act_123 for Meta, 123-456-7890 for Google."""
    if platform == "meta":
        return f"act_{account_id}"
    return f"{account_id[:3]}-{account_id[3:6]}-{account_id[6:]}" if len(account_id) == 10 else account_id


def issued_token(body, who: str) -> tuple[str, datetime | None]:
    """The access token (registered for redaction at once) and its expiry from an OAuth-style answer.

    Raises:
        FatalApiError: the answer carries no token.
    """
    token = body.get("access_token") if isinstance(body, dict) else None
    if not token:
        raise FatalApiError(f"{who} answered without an access_token")
    register_secret(token)
    expires_in = body.get("expires_in")
    return token, datetime.now(timezone.utc) + timedelta(seconds=int(expires_in)) if expires_in else None
