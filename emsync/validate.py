"""Validation of everything a person types, before anything is written.

Each function returns the normalised value or raises ``UserError`` with one
line that says what was wrong (never echoing a token back).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from .errors import UserError

_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_META_ACCOUNT = re.compile(r"^(?:act_)?([0-9]{1,20})$")
_GOOGLE_CUSTOMER = re.compile(r"^[0-9]{3}-?[0-9]{3}-?[0-9]{4}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def email(value: str) -> str:
    value = value.strip()
    if len(value) > 254 or not _EMAIL.match(value) or ".." in value:
        raise UserError(f"not a valid email address: {value[:80]!r}")
    return value.lower()


def name(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > 200:
        raise UserError("name is too long (200 characters at most)")
    if _CONTROL.search(value):
        raise UserError("name must not contain control characters")
    return value or None


def platform(value: str) -> str:
    value = value.strip().lower()
    if value not in ("meta", "google"):
        raise UserError(f"platform must be 'meta' or 'google', got {value[:20]!r}")
    return value


def meta_account_id(value: str) -> str:
    match = _META_ACCOUNT.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise UserError(f"not a Meta ad account id (act_<digits> or <digits>): {value[:40]!r}")
    return match.group(1)


def google_customer_id(value: str, what: str = "Google Ads customer id") -> str:
    value = value.strip()
    if not _GOOGLE_CUSTOMER.match(value):
        raise UserError(f"not a {what} (10 digits, dashes allowed: 123-456-7890): {value[:40]!r}")
    return value.replace("-", "")


def account_id(platform_name: str, value: str) -> str:
    return meta_account_id(value) if platform_name == "meta" else google_customer_id(value)


def token(value: str, option: str) -> str:
    """A token must be one printable word; its value is never echoed."""
    value = value.strip()
    if not value:
        raise UserError(f"{option} must not be empty")
    if len(value) > 4096:
        raise UserError(f"{option} is too long to be a token")
    if any(c.isspace() for c in value) or _CONTROL.search(value) or not value.isascii():
        raise UserError(f"{option} must be a single word of printable ASCII characters")
    return value


def platform_options(platform_name: str, *, access_token, token_expires_at, refresh_token, login_customer_id) -> None:
    """Refuse the other platform's token options (values unchecked: only whether they were given)."""
    if platform_name == "meta" and (refresh_token is not None or login_customer_id is not None):
        raise UserError("--refresh-token and --login-customer-id are for Google integrations")
    if platform_name == "google" and (access_token is not None or token_expires_at is not None):
        raise UserError("--access-token and --token-expires-at are for Meta integrations")


def expiry(value: str) -> datetime:
    """An ISO-8601 date or date-time; naive values are taken as UTC."""
    raw = value.strip()
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--token-expires-at must be an ISO-8601 date or date-time, got {raw[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def integration_id(value: int) -> int:
    if value < 1 or value > 2**31 - 1:
        raise UserError(f"integration id must be a number from 1 to {2**31 - 1}, got {value}")
    return value
