"""Users and integrations: every read and write of those two tables, including the state a sync leaves behind.

How writes are made: each function takes a SQLAlchemy ``Connection`` inside a
transaction the caller owns. Callers that write open it with
``db.write_transaction(engine)`` (on SQLite that queues this process's writers
and takes the write lock up front with ``BEGIN IMMEDIATE``); readers use
``engine.begin()``. So an integration's rows (``campaign_rows``), its status
here and its attempt record (``runs``) commit together or not at all. Every
value reaches SQL as a bound parameter. Tokens are stored only as Fernet
ciphertexts (``crypto.TokenBox``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select, update

from . import validate
from .clock import utcnow
from .crypto import TokenBox
from .domain import IntegrationState
from .errors import UnknownUser, UserError
from .models import attempts_t, campaigns_t, integrations_t, metrics_t, users_t

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
    count = select(func.count(integrations_t.c.id)).where(integrations_t.c.user_id == users_t.c.id).scalar_subquery().label("integrations")
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
    "id",
    "platform",
    "account_id",
    "login_customer_id",
    "account_name",
    "is_active",
    "status",
    "last_synced_at",
    "last_full_sync_at",
    "last_attempt_at",
    "last_error",
    "rate_limited_until",
    "last_warning",
    "last_warning_at",
    "next_attempt_at",
    "token_expires_at",
    "data_access_expires_at",
    "currency",
    "time_zone",
    "created_at",
    "updated_at",
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
        values.update(status="never_synced", last_error=None, rate_limited_until=None, next_attempt_at=None)
    values["updated_at"] = utcnow()
    conn.execute(update(integrations_t).where(integrations_t.c.id == integration_id).values(**values))
    return get_integration(conn, integration_id)


def set_active(conn, integration_id: int, active: bool) -> dict:
    get_integration(conn, integration_id)
    conn.execute(update(integrations_t).where(integrations_t.c.id == integration_id).values(is_active=active, updated_at=utcnow()))
    return get_integration(conn, integration_id)


def remove_integration(conn, integration_id: int) -> int:
    """Delete an integration with its rows and attempt records. Returns the rows deleted."""
    get_integration(conn, integration_id)
    rows = conn.execute(delete(metrics_t).where(metrics_t.c.integration_id == integration_id)).rowcount
    conn.execute(delete(campaigns_t).where(campaigns_t.c.integration_id == integration_id))
    conn.execute(delete(attempts_t).where(attempts_t.c.integration_id == integration_id))
    conn.execute(delete(integrations_t).where(integrations_t.c.id == integration_id))
    return rows


def any_encrypted_token(conn) -> str | None:
    """One stored ciphertext, to check the configured key before a run writes anything."""
    column = func.coalesce(integrations_t.c.access_token_enc, integrations_t.c.refresh_token_enc)
    return conn.execute(select(column).where(column.is_not(None)).limit(1)).scalar()


def save_tokens(conn, integration_id: int, **values) -> None:
    """Persist encrypted token columns a connector renewed, and what it learnt about the token."""
    allowed = {
        "access_token_enc",
        "token_expires_at",
        "cached_access_token_enc",
        "cached_access_token_expires_at",
        "data_access_expires_at",
        "token_checked_at",
    }
    assert set(values) <= allowed, values
    conn.execute(update(integrations_t).where(integrations_t.c.id == integration_id).values(**values))


def save_account_info(conn, integration_id: int, *, currency: str | None, time_zone: str | None, name: str | None, now: datetime) -> None:
    conn.execute(
        update(integrations_t)
        .where(integrations_t.c.id == integration_id)
        .values(currency=currency, time_zone=time_zone, account_name=name, updated_at=now)
    )


# ---------------------------------------------------------------- what a sync reads and leaves behind


def integration_state(conn, integration_id: int) -> IntegrationState | None:
    """The integration as an attempt starts from (tokens still encrypted); None when it was removed."""
    row = conn.execute(select(integrations_t).where(integrations_t.c.id == integration_id)).first()
    if row is None:
        return None
    fields = IntegrationState.__dataclass_fields__
    return IntegrationState(**{k: v for k, v in row._mapping.items() if k in fields})


def mark_success(conn, integration_id: int, *, finished_at: datetime, full: bool, warning: str | None = None) -> None:
    """``ok``; ``warning`` (what the sync warned about without failing) replaces ``last_warning``: None clears it."""
    values = dict(
        status="ok",
        last_synced_at=finished_at,
        last_attempt_at=finished_at,
        last_error=None,
        rate_limited_until=None,
        next_attempt_at=None,
        last_warning=warning[:2000] if warning else None,
        last_warning_at=finished_at if warning else None,
        updated_at=finished_at,
    )
    if full:
        values["last_full_sync_at"] = finished_at
    conn.execute(update(integrations_t).where(integrations_t.c.id == integration_id).values(**values))


def mark_failure(
    conn,
    integration_id: int,
    *,
    finished_at: datetime,
    status: str,
    error: str,
    retry_at: datetime | None,
    next_attempt_at: datetime | None = None,
    warning: str | None = None,
) -> None:
    """``status`` is one of error, needs_reauth, rate_limited; ``retry_at`` only for rate_limited;
    ``next_attempt_at`` for an account closed upstream (no run takes it before then). A ``warning`` replaces
    ``last_warning``; without one the last warning stays (only a clean sync clears it)."""
    values = dict(
        status=status,
        last_error=error[:2000],
        last_attempt_at=finished_at,
        rate_limited_until=retry_at,
        next_attempt_at=next_attempt_at,
        updated_at=finished_at,
    )
    if warning:
        values.update(last_warning=warning[:2000], last_warning_at=finished_at)
    conn.execute(update(integrations_t).where(integrations_t.c.id == integration_id).values(**values))
