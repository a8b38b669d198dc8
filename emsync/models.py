"""The database schema the dashboard reads (see CONTRACT.md, "Database").

Timestamps are timezone-aware UTC (``timestamptz`` on PostgreSQL, ISO text on
SQLite). Money and conversions are NUMERIC(18, 6): exact on PostgreSQL,
and rounded to six places when read back from SQLite.
"""

from __future__ import annotations

import warnings
from datetime import date as Date
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, Table, Text, UniqueConstraint
from sqlalchemy import exc as sa_exc
from sqlmodel import Field, SQLModel

from .clock import utcnow

# SQLite has no decimal type; SQLAlchemy rounds to the column's scale on the
# way back, which is exactly the precision we promise, so the warning is noise.
warnings.filterwarnings("ignore", message=r".*does \*not\* support Decimal objects natively", category=sa_exc.SAWarning)

PLATFORMS = ("meta", "google")
STATUSES = ("never_synced", "ok", "error", "needs_reauth", "rate_limited")


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, sa_column_kwargs={"unique": True}, nullable=False)
    name: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, nullable=False)


class Credential(SQLModel, table=True):
    """One Google login (its refresh token) or one Meta user (its access token), shared by every integration using it.

    ``platform_user``: the Google account's email or the Meta user id the token belongs to; NULL when
    unknown (tokens typed in with ``integrations add``, or moved here from integrations by migration 0004).
    ``token_type``: Meta's ``debug_token`` type (``USER``, ``SYSTEM_USER``), NULL when not known.
    ``scopes``: the granted scopes, space-separated as OAuth writes them. ``token_expires_at``: when the
    stored token expires (Meta; NULL: never or unknown). The cached Google access token serves every
    integration of the credential until shortly before ``cached_access_token_expires_at``.
    """

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("platform", "platform_user", name="uq_credentials_platform_user"),)

    id: int | None = Field(default=None, primary_key=True)
    platform: str = Field(max_length=16, nullable=False)
    platform_user: str | None = Field(default=None, max_length=320)
    token_type: str | None = Field(default=None, max_length=32)
    scopes: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    token_expires_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, nullable=False)
    # Fernet ciphertexts; never clear text.
    access_token_enc: str | None = Field(default=None, repr=False, sa_column=Column(Text, nullable=True))
    refresh_token_enc: str | None = Field(default=None, repr=False, sa_column=Column(Text, nullable=True))
    cached_access_token_enc: str | None = Field(default=None, repr=False, sa_column=Column(Text, nullable=True))
    cached_access_token_expires_at: datetime | None = None
    # Meta debug_token: when a user token loses data access (~90 days without the user logging in), and when
    # emsync last asked (at most once a day per credential).
    data_access_expires_at: datetime | None = None
    token_checked_at: datetime | None = None


class Integration(SQLModel, table=True):
    __tablename__ = "integrations"
    __table_args__ = (UniqueConstraint("user_id", "platform", "account_id", name="uq_integrations_user_platform_account"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=Column(Integer, ForeignKey("users.id"), nullable=False, index=True))
    platform: str = Field(max_length=16, nullable=False)
    account_id: str = Field(max_length=32, nullable=False)
    login_customer_id: str | None = Field(default=None, max_length=32)
    account_name: str | None = Field(default=None, max_length=300)
    is_active: bool = Field(default=True, nullable=False)
    status: str = Field(default="never_synced", max_length=16, nullable=False)
    last_synced_at: datetime | None = None
    last_full_sync_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_error: str | None = None
    rate_limited_until: datetime | None = None
    # What the last sync warned about without failing (a failed token renewal, a paging chain emsync ended
    # itself, a campaign missing from the answer); cleared by the next sync without a warning.
    last_warning: str | None = None
    last_warning_at: datetime | None = None
    # An account closed or disabled upstream is tried again only from this time on (once a day).
    next_attempt_at: datetime | None = None
    token_expires_at: datetime | None = None  # a copy of its credential's, kept by store.py for the dashboard
    currency: str | None = Field(default=None, max_length=8)
    time_zone: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, nullable=False)
    credential_id: int = Field(sa_column=Column(Integer, ForeignKey("credentials.id"), nullable=False, index=True))
    # When the last successful sync started (freshness: EMSYNC_MIN_INTERVAL_MINUTES).
    last_sync_started_at: datetime | None = None
    # The lease of the process syncing it (PostgreSQL; see locks.py): who, which token, until when (database clock).
    lease_host: str | None = Field(default=None, max_length=255)
    lease_pid: int | None = None
    lease_token: str | None = Field(default=None, max_length=32)
    lease_until: datetime | None = None


class CampaignMetric(SQLModel, table=True):
    __tablename__ = "campaign_metrics"
    __table_args__ = (Index("ix_campaign_metrics_date", "date"),)

    integration_id: int = Field(sa_column=Column(Integer, ForeignKey("integrations.id"), primary_key=True))
    campaign_id: str = Field(primary_key=True, max_length=64)
    date: Date = Field(primary_key=True)
    campaign_name: str | None = Field(default=None, max_length=500)
    spend: Decimal = Field(default=Decimal(0), max_digits=18, decimal_places=6, nullable=False)
    impressions: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    clicks: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    # Clicks to the ad's destination (Meta inline_link_clicks; Google: its clicks). NULL for rows synced before 0002.
    link_clicks: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    conversions: Decimal = Field(default=Decimal(0), max_digits=18, decimal_places=6, nullable=False)
    revenue: Decimal = Field(default=Decimal(0), max_digits=18, decimal_places=6, nullable=False)
    ctr: Decimal | None = Field(default=None, max_digits=18, decimal_places=6)
    cpc: Decimal | None = Field(default=None, max_digits=18, decimal_places=6)
    roas: Decimal | None = Field(default=None, max_digits=18, decimal_places=6)
    currency: str | None = Field(default=None, max_length=8)
    synced_at: datetime = Field(default_factory=utcnow, nullable=False)


class Campaign(SQLModel, table=True):
    """One campaign of an integration: its current name and status; ``vanished`` when a whole answer lacked it
    while rows of it were stored (its rows are kept). First and last day seen: the view ``campaign_days_seen``."""

    __tablename__ = "campaigns"

    integration_id: int = Field(sa_column=Column(Integer, ForeignKey("integrations.id"), primary_key=True))
    campaign_id: str = Field(primary_key=True, max_length=64)
    name: str | None = Field(default=None, max_length=500)
    status: str | None = Field(default=None, max_length=32)  # Google campaign.status; Meta: NULL
    vanished: bool = Field(default=False, nullable=False)
    vanished_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow, nullable=False)


# 64-bit ids where rows accumulate (48 runs a day x thousands of integrations); SQLite's rowid is 64-bit already.
ID64 = BigInteger().with_variant(Integer, "sqlite")


class SyncRun(SQLModel, table=True):
    __tablename__ = "sync_runs"

    id: int | None = Field(default=None, sa_column=Column(ID64, primary_key=True))
    trigger: str = Field(max_length=16, nullable=False)  # cron | manual | user | server | demo
    host: str = Field(max_length=255, nullable=False)
    pid: int = Field(nullable=False)
    scope: str | None = Field(default=None, max_length=400)  # e.g. "user anna@example.com, platform meta"
    full_window: bool = Field(default=False, nullable=False)
    started_at: datetime = Field(default_factory=utcnow, nullable=False, index=True)
    heartbeat_at: datetime = Field(default_factory=utcnow, nullable=False)
    finished_at: datetime | None = None
    status: str = Field(default="running", max_length=16, nullable=False)  # running | ok | failed | interrupted | died
    integrations_total: int = Field(default=0, nullable=False)
    succeeded: int = Field(default=0, nullable=False)
    failed: int = Field(default=0, nullable=False)
    skipped: int = Field(default=0, nullable=False)
    rows: int = Field(default=0, nullable=False)


class SyncAttempt(SQLModel, table=True):
    __tablename__ = "sync_attempts"
    __table_args__ = (Index("ix_sync_attempts_integration_finished", "integration_id", "finished_at"),)

    id: int | None = Field(default=None, sa_column=Column(ID64, primary_key=True))
    run_id: int = Field(sa_column=Column(ID64, ForeignKey("sync_runs.id"), nullable=False, index=True))
    integration_id: int = Field(sa_column=Column(Integer, ForeignKey("integrations.id"), nullable=False))
    window_start: Date | None = None
    window_end: Date | None = None
    full_window: bool = Field(default=False, nullable=False)
    started_at: datetime = Field(default_factory=utcnow, nullable=False)
    finished_at: datetime | None = None
    status: str = Field(max_length=16, nullable=False)
    rows: int = Field(default=0, nullable=False)
    api_requests: int = Field(default=0, nullable=False)
    duration_s: float = Field(default=0.0, nullable=False)
    error: str | None = None


class Backfill(SQLModel, table=True):
    """One integration's backfill progress: what was asked for and how far it got (``backfill_chunks`` holds the truth).

    ``status``: running | paused (quota, rate limit or usage; see ``resume_after``) | failed | interrupted | done.
    The counters are recomputed from the chunks after each chunk, so several processes may work on one backfill.
    """

    __tablename__ = "backfills"

    integration_id: int = Field(sa_column=Column(Integer, ForeignKey("integrations.id", ondelete="CASCADE"), primary_key=True))
    since: Date = Field(nullable=False)  # the earliest day asked for so far
    until: Date = Field(nullable=False)  # the latest day asked for so far
    status: str = Field(default="running", max_length=16, nullable=False)
    chunks_total: int = Field(default=0, nullable=False)
    chunks_done: int = Field(default=0, nullable=False)
    next_since: Date | None = None  # the next chunk to fetch (newest first), None when none is left
    next_until: Date | None = None
    rows: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    requests: int = Field(default=0, nullable=False)
    operations: int = Field(default=0, nullable=False)  # Google Ads operations spent on it
    last_error: str | None = None
    resume_after: datetime | None = None
    host: str | None = Field(default=None, max_length=255)  # the process that last worked on it
    pid: int | None = None
    started_at: datetime = Field(default_factory=utcnow, nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, nullable=False)
    finished_at: datetime | None = None


class BackfillChunk(SQLModel, table=True):
    """One query's worth of history (a Meta month, a Google quarter), replaced in its own transaction.

    A chunk is leased by one process at a time (``lease_token`` with ``lease_host``, ``lease_pid`` and
    ``lease_until``); the transaction that saves it checks the token is still its own.
    ``status``: pending | done.
    """

    __tablename__ = "backfill_chunks"
    __table_args__ = (UniqueConstraint("integration_id", "since", name="uq_backfill_chunks_integration_since"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True))
    integration_id: int = Field(sa_column=Column(Integer, ForeignKey("integrations.id", ondelete="CASCADE"), nullable=False))
    since: Date = Field(nullable=False)
    until: Date = Field(nullable=False)
    status: str = Field(default="pending", max_length=16, nullable=False)
    rows: int = Field(default=0, nullable=False)
    requests: int = Field(default=0, nullable=False)
    operations: int = Field(default=0, nullable=False)
    attempts: int = Field(default=0, nullable=False)
    last_error: str | None = None
    lease_token: str | None = Field(default=None, max_length=64)
    lease_host: str | None = Field(default=None, max_length=255)
    lease_pid: int | None = None
    lease_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow, nullable=False)
    finished_at: datetime | None = None


class GoogleOperation(SQLModel, table=True):
    """The Google Ads operations ledger: insert-only, one row per batch of operations, summed per day.

    ``day`` is Google's (America/Los_Angeles). ``source``: sync | backfill | check | connect.
    A row with ``exhausted_scope`` set is a marker: a 429 RESOURCE_EXHAUSTED naming the developer
    token's or the project's quota (``DEVELOPER``/``PROJECT``) stops spending for the rest of ``day``.
    ``integration_id`` is kept without a foreign key: spent operations stay spent when an integration goes.
    """

    __tablename__ = "google_operations"
    __table_args__ = (Index("ix_google_operations_day", "day"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True))
    day: Date = Field(nullable=False)
    operations: int = Field(default=0, nullable=False)
    source: str = Field(max_length=16, nullable=False)
    integration_id: int | None = None
    exhausted_scope: str | None = Field(default=None, max_length=16)
    host: str = Field(max_length=255, nullable=False)
    recorded_at: datetime = Field(default_factory=utcnow, nullable=False)


# SQLAlchemy Core handles for the data-access modules (store, campaign_rows, runs).
users_t: Table = User.__table__  # type: ignore[attr-defined]
integrations_t: Table = Integration.__table__  # type: ignore[attr-defined]
credentials_t: Table = Credential.__table__  # type: ignore[attr-defined]
metrics_t: Table = CampaignMetric.__table__  # type: ignore[attr-defined]
campaigns_t: Table = Campaign.__table__  # type: ignore[attr-defined]
runs_t: Table = SyncRun.__table__  # type: ignore[attr-defined]
attempts_t: Table = SyncAttempt.__table__  # type: ignore[attr-defined]
backfills_t: Table = Backfill.__table__  # type: ignore[attr-defined]
chunks_t: Table = BackfillChunk.__table__  # type: ignore[attr-defined]
google_ops_t: Table = GoogleOperation.__table__  # type: ignore[attr-defined]
