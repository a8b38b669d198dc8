"""The values a sync passes between the engine, the connectors and the store: plain data, no database or HTTP types.

The path of one sync, in these names: the engine reads an ``IntegrationState``,
decrypts its credential's ``CredentialState`` into ``Credentials``, asks a ``Connector`` to prepare them, for
``AccountInfo`` (first sync; Meta: every full-window sync) and for the
``Fetched`` rows of a ``SyncWindow``, and the store replaces that window with
them. Warnings (a failed side step, an answer emsync could not take as whole)
travel in the return values and end on the integration's ``last_warning``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Protocol

import msgspec


class InsightRow(msgspec.Struct, frozen=True, gc=False):
    """One campaign on one day. Natural key: (campaign_id, date).

    ``spend`` and ``revenue`` are in the account's currency units (not micros);
    ``conversions`` may be fractional (Google's attributed conversions).
    ``clicks`` are all clicks (Meta's "clicks (all)"); ``link_clicks`` the
    clicks that lead to the ad's destination (Meta ``inline_link_clicks``;
    Google's clicks are its link clicks), None when unknown.

    A frozen msgspec struct rather than a dataclass: a full run makes a quarter of a million of them, and its
    constructor costs a tenth of a frozen dataclass's (0.09 against 0.74 µs); it holds no containers, so the
    garbage collector need not track it.
    """

    campaign_id: str
    date: date
    campaign_name: str | None
    spend: Decimal
    impressions: int
    clicks: int
    conversions: Decimal
    revenue: Decimal
    link_clicks: int | None = None


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """What the platform says about an account: ISO 4217 currency, IANA time zone, display name,
    and ``warnings`` about its state (e.g. a Meta account in grace period) that do not stop a sync."""

    currency: str | None
    time_zone: str | None
    name: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SyncWindow:
    """The dates to fetch, both ends included, in the account's time zone; ``full`` when it is the whole lookback window."""

    since: date
    until: date
    full: bool

    @property
    def days(self) -> int:
        return (self.until - self.since).days + 1


@dataclass(frozen=True, slots=True)
class Fetched:
    """What a connector read for a window.

    ``complete`` is true when the platform itself said the answer was whole
    (Meta: a paging chain that ended without ``next``; Google: the stream
    ended): only then may the store delete rows the answer lacks. A chain
    emsync ended by its own rule (empty pages, the page cap) is not complete:
    its rows are upserted and nothing is deleted.
    ``warnings`` are shown on the integration without failing it.
    ``statuses`` maps campaign id to the platform's status of the campaign
    when the answer carried it (Google ``campaign.status``; Meta: never).
    """

    rows: list[InsightRow]
    complete: bool = True
    warnings: tuple[str, ...] = ()
    statuses: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Credentials:
    """A credential's tokens, decrypted for the duration of one sync (or one check).

    A connector that renews a Meta token, caches a Google access token or asks
    Meta's ``debug_token`` changes them here and sets ``changed``; the engine then
    stores them on the credential, for every integration using it. Never printed:
    see ``__repr__``.
    """

    access_token: str | None = None
    token_expires_at: datetime | None = None
    refresh_token: str | None = None
    cached_access_token: str | None = None
    cached_access_token_expires_at: datetime | None = None
    data_access_expires_at: datetime | None = None
    token_checked_at: datetime | None = None
    changed: bool = field(default=False)

    def __repr__(self) -> str:
        return f"Credentials(token_expires_at={self.token_expires_at!r}, changed={self.changed})"

    def secrets(self) -> list[str]:
        return [s for s in (self.access_token, self.refresh_token, self.cached_access_token) if s]


@dataclass(frozen=True, slots=True)
class Account:
    """Which account to read, and what is known about it (``login_customer_id``: Google manager account, 10 digits).

    ``integration_id`` is emsync's id of the integration, for the commands a message tells the user to run.
    """

    platform: str
    account_id: str
    login_customer_id: str | None = None
    time_zone: str | None = None
    integration_id: int | None = None

    @property
    def label(self) -> str:
        return account_label(self.platform, self.account_id)

    @property
    def update_command(self) -> str:
        """``emsync integrations update <id>``, with the real id when known."""
        return f"emsync integrations update {self.integration_id if self.integration_id is not None else '<integration id>'}"


@dataclass(frozen=True, slots=True)
class IntegrationState:
    """One integration as the engine reads it before an attempt; its tokens live on credential ``credential_id``."""

    id: int
    platform: str
    account_id: str
    login_customer_id: str | None
    is_active: bool
    status: str
    currency: str | None
    time_zone: str | None
    last_attempt_at: datetime | None
    last_full_sync_at: datetime | None
    credential_id: int
    last_sync_started_at: datetime | None

    @property
    def account(self) -> Account:
        return Account(self.platform, self.account_id, self.login_customer_id, self.time_zone, self.id)

    @property
    def label(self) -> str:
        return account_label(self.platform, self.account_id)


@dataclass(frozen=True, slots=True)
class CredentialState:
    """A stored credential as the engine reads it: tokens still Fernet ciphertexts, expiries in UTC."""

    id: int
    platform: str
    token_expires_at: datetime | None
    cached_access_token_expires_at: datetime | None
    access_token_enc: str | None = field(default=None, repr=False)
    refresh_token_enc: str | None = field(default=None, repr=False)
    cached_access_token_enc: str | None = field(default=None, repr=False)
    data_access_expires_at: datetime | None = None
    token_checked_at: datetime | None = None


class Connector(Protocol):
    """What the engine asks of a platform. Connectors know their API, never the database.

    Every method raises an ``errors.ApiError`` subclass saying what to do
    next (retry later, re-authorise, rate-limited until, fatal).
    """

    platform: str
    #: the account is read on every full-window sync (Meta: its account_status), not only the first
    reads_account_on_full_sync: bool

    def prepare(self, account: Account, creds: Credentials) -> tuple[str, ...]:
        """Make the credentials usable (renew or refresh tokens), changing ``creds`` in place.

        Returns warnings: a side step that failed while the current token still works.
        """

    def account_info(self, account: Account, creds: Credentials) -> AccountInfo:
        """Currency, time zone and name of the account (one request; the engine stores the answer).

        Raises ``errors.AccountClosed`` when the platform says the account is closed or disabled.
        """

    def fetch(self, account: Account, window: SyncWindow, creds: Credentials) -> Fetched:
        """Every campaign's daily metrics for the window's dates."""


def account_label(platform: str, account_id: str) -> str:
    """How people write the id: act_123 for Meta, 123-456-7890 for Google."""
    if platform == "meta":
        return f"act_{account_id}"
    return f"{account_id[:3]}-{account_id[3:6]}-{account_id[6:]}" if len(account_id) == 10 else account_id
