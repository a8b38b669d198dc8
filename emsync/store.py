"""Everything emsync reads and writes in the database.

Functions take a SQLAlchemy ``Connection`` inside a transaction the caller
owns (``with engine.begin() as conn``), so one sync's window, status and
attempt record commit together or not at all.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable

from sqlalchemy import delete, func, insert, select, update

from . import validate
from .connectors.base import InsightRow, SyncWindow
from .crypto import TokenBox
from .errors import FatalApiError, UnknownUser, UserError
from .models import CampaignMetric, Integration, SyncAttempt, SyncRun, User, utcnow

users_t = User.__table__
integrations_t = Integration.__table__
metrics_t = CampaignMetric.__table__
runs_t = SyncRun.__table__
attempts_t = SyncAttempt.__table__

SIX_PLACES = Decimal("0.000001")
NUMERIC_LIMIT = Decimal(10) ** 12  # NUMERIC(18, 6): twelve digits before the point


# ---------------------------------------------------------------- users


def add_user(conn, email: str, name: str | None = None) -> dict:
    email = validate.email(email)
    name = validate.name(name)
    exists = conn.execute(select(users_t.c.id).where(func.lower(users_t.c.email) == email)).first()
    if exists:
        raise UserError(f"a user with email {email} already exists")
    row = {"email": email, "name": name, "created_at": utcnow()}
    row["id"] = conn.execute(insert(users_t).values(**row)).inserted_primary_key[0]
    return row


def list_users(conn) -> list[dict]:
    count = (
        select(func.count(integrations_t.c.id))
        .where(integrations_t.c.user_id == users_t.c.id)
        .scalar_subquery()
        .label("integrations")
    )
    query = select(users_t.c.id, users_t.c.email, users_t.c.name, users_t.c.created_at, count).order_by(users_t.c.id)
    return [dict(r._mapping) for r in conn.execute(query)]


def user_id_for(conn, email: str) -> int:
    email = validate.email(email)
    found = conn.execute(select(users_t.c.id).where(users_t.c.email == email)).scalar()
    if found is None:
        raise UnknownUser(f"no user with email {email}: add it with 'emsync users add {email}'")
    return found


# ---------------------------------------------------------------- integrations


def add_integration(
    conn,
    box: TokenBox,
    *,
    email: str,
    platform: str,
    account_id: str,
    access_token: str | None = None,
    token_expires_at: datetime | None = None,
    refresh_token: str | None = None,
    login_customer_id: str | None = None,
) -> dict:
    """Validate and insert one integration; tokens are stored encrypted.

    Raises:
        UserError: unknown user, malformed id, missing or misplaced token, duplicate.
    """
    platform = validate.platform(platform)
    account_id = validate.account_id(platform, account_id)
    if platform == "meta":
        if access_token is None:
            raise UserError("a Meta integration needs --access-token")
        if refresh_token is not None or login_customer_id is not None:
            raise UserError("--refresh-token and --login-customer-id are for Google integrations")
        access_token = validate.token(access_token, "--access-token")
    else:
        if refresh_token is None:
            raise UserError("a Google integration needs --refresh-token")
        if access_token is not None or token_expires_at is not None:
            raise UserError("--access-token and --token-expires-at are for Meta integrations")
        refresh_token = validate.token(refresh_token, "--refresh-token")
        if login_customer_id is not None:
            login_customer_id = validate.google_customer_id(login_customer_id, "login customer id")
    user_id = user_id_for(conn, email)
    duplicate = conn.execute(
        select(integrations_t.c.id).where(
            integrations_t.c.user_id == user_id,
            integrations_t.c.platform == platform,
            integrations_t.c.account_id == account_id,
        )
    ).scalar()
    if duplicate is not None:
        raise UserError(f"{email} already has {platform} account {account_id} (integration {duplicate})")
    now = utcnow()
    values = {
        "user_id": user_id,
        "platform": platform,
        "account_id": account_id,
        "login_customer_id": login_customer_id,
        "is_active": True,
        "status": "never_synced",
        "token_expires_at": token_expires_at,
        "access_token_enc": box.encrypt(access_token),
        "refresh_token_enc": box.encrypt(refresh_token),
        "created_at": now,
        "updated_at": now,
    }
    new_id = conn.execute(insert(integrations_t).values(**values)).inserted_primary_key[0]
    return get_integration(conn, new_id)


_PUBLIC_COLUMNS = (
    "id", "platform", "account_id", "login_customer_id", "account_name", "is_active", "status",
    "last_synced_at", "last_full_sync_at", "last_attempt_at", "last_error", "rate_limited_until",
    "token_expires_at", "currency", "time_zone", "created_at", "updated_at",
)


def _integration_query():
    cols = [integrations_t.c[name] for name in _PUBLIC_COLUMNS]
    return select(*cols, integrations_t.c.user_id, users_t.c.email).join(users_t, users_t.c.id == integrations_t.c.user_id)


def list_integrations(conn, *, email: str | None = None, platform: str | None = None) -> list[dict]:
    """Integrations without any token column, in id order."""
    query = _integration_query().order_by(integrations_t.c.id)
    if email is not None:
        query = query.where(users_t.c.email == validate.email(email))
    if platform is not None:
        query = query.where(integrations_t.c.platform == platform)
    return [dict(r._mapping) for r in conn.execute(query)]


def get_integration(conn, integration_id: int) -> dict:
    row = conn.execute(_integration_query().where(integrations_t.c.id == integration_id)).first()
    if row is None:
        raise UserError(f"no integration with id {integration_id}: see 'emsync integrations list'")
    return dict(row._mapping)


def update_credentials(
    conn,
    box: TokenBox,
    integration_id: int,
    *,
    access_token: str | None = None,
    token_expires_at: datetime | None = None,
    refresh_token: str | None = None,
    login_customer_id: str | None = None,
) -> dict:
    """New credentials after a user reconnects; a `needs_reauth` integration becomes `never_synced`."""
    current = get_integration(conn, integration_id)
    meta = current["platform"] == "meta"
    if meta and (refresh_token is not None or login_customer_id is not None):
        raise UserError("--refresh-token and --login-customer-id are for Google integrations")
    if not meta and (access_token is not None or token_expires_at is not None):
        raise UserError("--access-token and --token-expires-at are for Meta integrations")
    values: dict = {}
    if access_token is not None:
        values["access_token_enc"] = box.encrypt(validate.token(access_token, "--access-token"))
        values["token_expires_at"] = token_expires_at  # a new token without a date has an unknown expiry
    elif token_expires_at is not None:
        values["token_expires_at"] = token_expires_at
    if refresh_token is not None:
        values["refresh_token_enc"] = box.encrypt(validate.token(refresh_token, "--refresh-token"))
        values["cached_access_token_enc"] = None
        values["cached_access_token_expires_at"] = None
    if login_customer_id is not None:
        values["login_customer_id"] = validate.google_customer_id(login_customer_id, "login customer id")
    if not values:
        raise UserError("nothing to update: give --access-token, --token-expires-at, --refresh-token or --login-customer-id")
    if current["status"] in ("needs_reauth", "error", "rate_limited"):
        values.update(status="never_synced", last_error=None, rate_limited_until=None)
    values["updated_at"] = utcnow()
    conn.execute(update(integrations_t).where(integrations_t.c.id == integration_id).values(**values))
    return get_integration(conn, integration_id)


def set_active(conn, integration_id: int, active: bool) -> dict:
    get_integration(conn, integration_id)
    conn.execute(
        update(integrations_t).where(integrations_t.c.id == integration_id).values(is_active=active, updated_at=utcnow())
    )
    return get_integration(conn, integration_id)


def remove_integration(conn, integration_id: int) -> int:
    """Delete an integration with its rows and attempt records. Returns the rows deleted."""
    get_integration(conn, integration_id)
    rows = conn.execute(delete(metrics_t).where(metrics_t.c.integration_id == integration_id)).rowcount
    conn.execute(delete(attempts_t).where(attempts_t.c.integration_id == integration_id))
    conn.execute(delete(integrations_t).where(integrations_t.c.id == integration_id))
    return rows


def load_secrets(conn, integration_id: int) -> dict:
    """The encrypted token columns and sync state of one integration (for the engine only)."""
    cols = [
        integrations_t.c.access_token_enc, integrations_t.c.refresh_token_enc,
        integrations_t.c.cached_access_token_enc, integrations_t.c.cached_access_token_expires_at,
        integrations_t.c.token_expires_at,
    ]
    return dict(conn.execute(select(*cols).where(integrations_t.c.id == integration_id)).one()._mapping)


def any_encrypted_token(conn) -> str | None:
    """One stored ciphertext, to check the configured key before a run writes anything."""
    column = func.coalesce(integrations_t.c.access_token_enc, integrations_t.c.refresh_token_enc)
    return conn.execute(select(column).where(column.is_not(None)).limit(1)).scalar()


def save_tokens(conn, integration_id: int, **values) -> None:
    """Persist encrypted token columns a connector renewed."""
    allowed = {"access_token_enc", "token_expires_at", "cached_access_token_enc", "cached_access_token_expires_at"}
    assert set(values) <= allowed, values
    conn.execute(update(integrations_t).where(integrations_t.c.id == integration_id).values(**values))


def save_account_info(conn, integration_id: int, *, currency, time_zone, name) -> None:
    conn.execute(
        update(integrations_t)
        .where(integrations_t.c.id == integration_id)
        .values(currency=currency, time_zone=time_zone, account_name=name, updated_at=utcnow())
    )


# ---------------------------------------------------------------- metrics


def _q(value: Decimal) -> Decimal:
    return value.quantize(SIX_PLACES, rounding=ROUND_HALF_UP)


def _ratio(numerator: Decimal, denominator: Decimal) -> Decimal | None:
    if not denominator:
        return None
    value = _q(numerator / denominator)
    return value if abs(value) < NUMERIC_LIMIT else None  # e.g. revenue over one micro of spend: not storable, not meaningful


def derived_metrics(spend: Decimal, impressions: int, clicks: int, revenue: Decimal) -> dict:
    """CTR (percent), CPC and ROAS from the stored base metrics; None when the denominator is 0
    (or the ratio is beyond what NUMERIC(18, 6) holds)."""
    return {
        "ctr": _ratio(Decimal(clicks) * 100, Decimal(impressions)),
        "cpc": _ratio(spend, Decimal(clicks)),
        "roas": _ratio(revenue, spend),
    }


_METRIC_COLUMNS = ("integration_id", "campaign_id", "date", "campaign_name", "spend", "impressions", "clicks", "conversions",
                   "revenue", "ctr", "cpc", "roas", "currency", "synced_at")
_KEY = ("integration_id", "campaign_id", "date")


def _upsert_sql(conn) -> str:
    """The dialect upsert (SQLite >= 3.24 and PostgreSQL share the ON CONFLICT syntax), in the driver's paramstyle."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    updates = ", ".join(f"{c} = excluded.{c}" for c in _METRIC_COLUMNS if c not in _KEY)
    return (f"INSERT INTO campaign_metrics ({', '.join(_METRIC_COLUMNS)}) VALUES ({', '.join([mark] * len(_METRIC_COLUMNS))}) "
            f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET {updates}")


def _driver_rows(conn, integration_id: int, rows: Iterable[InsightRow], currency: str | None, synced_at: datetime) -> list[tuple]:
    """Rows as the driver takes them, in ``_METRIC_COLUMNS`` order, built in one pass.

    Values are converted exactly as SQLAlchemy would store them (its own bind
    processors for dates and timestamps, float for NUMERIC on SQLite), but once
    per distinct date instead of once per cell: SQLAlchemy's per-row type
    machinery was most of a sync's CPU time.
    """
    dialect = conn.dialect
    native = dialect.name == "postgresql"  # psycopg adapts Decimal, date and aware datetime itself
    date_proc = None if native else metrics_t.c.date.type.dialect_impl(dialect).bind_processor(dialect)
    stamp_proc = None if native else metrics_t.c.synced_at.type.dialect_impl(dialect).bind_processor(dialect)
    stamp = stamp_proc(synced_at) if stamp_proc else synced_at
    dates: dict = {}
    out = []
    append = out.append
    for row in rows:
        spend, conversions, revenue = _q(row.spend), _q(row.conversions), _q(row.revenue)
        for name, value in (("spend", spend), ("conversions", conversions), ("revenue", revenue)):
            if abs(value) >= NUMERIC_LIMIT:
                raise FatalApiError(f"campaign {row.campaign_id} on {row.date}: {name} {value} is beyond what emsync stores (NUMERIC(18,6))")
        ctr = _ratio(Decimal(row.clicks) * 100, Decimal(row.impressions)) if row.impressions else None
        cpc = _ratio(spend, Decimal(row.clicks)) if row.clicks else None
        roas = _ratio(revenue, spend) if spend else None
        day = dates.get(row.date)
        if day is None:
            day = dates[row.date] = date_proc(row.date) if date_proc else row.date
        if native:
            append((integration_id, row.campaign_id, day, row.campaign_name, spend, row.impressions, row.clicks,
                    conversions, revenue, ctr, cpc, roas, currency, stamp))
        else:
            append((integration_id, row.campaign_id, day, row.campaign_name, float(spend), row.impressions, row.clicks,
                    float(conversions), float(revenue), None if ctr is None else float(ctr),
                    None if cpc is None else float(cpc), None if roas is None else float(roas), currency, stamp))
    return out


def replace_window(
    conn, integration_id: int, window: SyncWindow, rows: Iterable[InsightRow], currency: str | None, synced_at: datetime
) -> int:
    """Make the integration's rows for the window's dates equal ``rows``.

    One upsert for everything returned, then one delete of what the API no
    longer returns for those dates (every surviving row carries ``synced_at``).
    Returns the number of rows written.
    """
    unique: dict[tuple[str, date], InsightRow] = {}
    for row in rows:
        if window.since <= row.date <= window.until:
            unique[(row.campaign_id, row.date)] = row
    values = _driver_rows(conn, integration_id, unique.values(), currency, synced_at)
    if values:
        conn.exec_driver_sql(_upsert_sql(conn), values)
    conn.execute(
        delete(metrics_t).where(
            metrics_t.c.integration_id == integration_id,
            metrics_t.c.date >= window.since,
            metrics_t.c.date <= window.until,
            metrics_t.c.synced_at != synced_at,
        )
    )
    return len(values)


def metric_rows(conn, integration_id: int) -> list[dict]:
    query = select(metrics_t).where(metrics_t.c.integration_id == integration_id).order_by(metrics_t.c.date, metrics_t.c.campaign_id)
    return [dict(r._mapping) for r in conn.execute(query)]


def rows_since(conn, since: date) -> dict[int, int]:
    """Rows per integration dated ``since`` or later (the status table's "rows in window")."""
    query = (
        select(metrics_t.c.integration_id, func.count())
        .where(metrics_t.c.date >= since)
        .group_by(metrics_t.c.integration_id)
    )
    return {i: n for i, n in conn.execute(query)}
