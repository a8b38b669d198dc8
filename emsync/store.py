"""Users, integrations and credentials: every read and write of those tables, including the state a sync leaves behind.

How writes are made: each function takes a SQLAlchemy ``Connection`` inside a
transaction the caller owns. Callers that write open it with
``db.write_transaction(engine)`` (on SQLite that queues this process's writers
and takes the write lock up front with ``BEGIN IMMEDIATE``); readers use
``engine.begin()``. So an integration's rows (``campaign_rows``), its status
here and its attempt record (``runs``) commit together or not at all. Every
value reaches SQL as a bound parameter. Tokens are stored only as Fernet
ciphertexts (``crypto.TokenBox``), on ``credentials`` rows that many
integrations may share; ``ENCRYPTED_COLUMNS`` lists every such column.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlmodel import SQLModel

from . import statements, validate
from .clock import utcnow
from .crypto import TokenBox
from .domain import AccountInfo, Credentials, CredentialState, IntegrationState
from .errors import ConfigError, UnknownUser, UserError
from .models import attempts_t, campaigns_t, credentials_t, integrations_t, metrics_t, users_t

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


def ensure_user(conn, email: str) -> tuple[int, bool]:
    """(id, created): the user with that email, added when missing."""
    try:
        return user_id_for(conn, email), False
    except UnknownUser:
        return add_user(conn, email)["id"], True


def user_id_for(conn, email: str) -> int:
    email = validate.email(email)
    found = conn.execute(select(users_t.c.id).where(users_t.c.email == email)).scalar()
    if found is None:
        raise UnknownUser(f"no user with email {email}: add it with 'emsync users add {email}'")
    return found


def remove_user(conn, email: str) -> dict:
    """Delete a user with every integration of theirs (each with its rows, campaigns and attempt records).

    Credentials stay (another user's integrations may share one; a Google login is revoked by
    ``credentials remove``). Returns ``{"id", "email", "integrations": {id: rows deleted}, "unused_credentials": [ids]}``.

    Raises:
        UnknownUser: no user with that email.
    """
    user_id = user_id_for(conn, email)
    query = select(integrations_t.c.id, integrations_t.c.credential_id).where(integrations_t.c.user_id == user_id)
    found = conn.execute(query.order_by(integrations_t.c.id)).all()
    removed = {row.id: remove_integration(conn, row.id) for row in found}
    conn.execute(delete(users_t).where(users_t.c.id == user_id))
    credentials = sorted({row.credential_id for row in found})
    unused = [c for c in credentials if not integrations_using(conn, c)]
    return {"id": user_id, "email": validate.email(email), "integrations": removed, "unused_credentials": unused}


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
    """Validate and insert one integration with a typed-in token.

    The token goes to a new credential, or to the one the same user's integrations already use when
    it holds the identical token (a newer ``token_expires_at`` then updates it for all of them).

    Raises:
        UserError: unknown user, malformed id, missing or misplaced token, duplicate.
    """
    platform = validate.platform(platform)
    account_id = validate.account_id(platform, account_id)
    given = dict(access_token=access_token, token_expires_at=token_expires_at, refresh_token=refresh_token)
    validate.platform_options(platform, login_customer_id=login_customer_id, **given)
    if platform == "meta":
        if access_token is None:
            raise UserError("a Meta integration needs --access-token")
        access_token = validate.token(access_token, "--access-token")
    else:
        if refresh_token is None:
            raise UserError("a Google integration needs --refresh-token")
        refresh_token = validate.token(refresh_token, "--refresh-token")
        if login_customer_id is not None:
            login_customer_id = validate.google_customer_id(login_customer_id, "login customer id")
    user_id = user_id_for(conn, email)
    duplicate = find_integration(conn, user_id, platform, account_id)
    if duplicate is not None:
        raise UserError(f"{email} already has {platform} account {account_id} (integration {duplicate})")
    credential_id = credential_for_token(conn, box, user_id=user_id, platform=platform, token=access_token or refresh_token)
    if credential_id is None:
        credential_id = add_credential(
            conn, box, platform=platform, access_token=access_token, refresh_token=refresh_token, token_expires_at=token_expires_at
        )
    elif token_expires_at is not None:
        _set_credential(conn, credential_id, token_expires_at=token_expires_at)
    new_id = insert_integration(
        conn, user_id=user_id, platform=platform, account_id=account_id, credential_id=credential_id, login_customer_id=login_customer_id
    )
    return get_integration(conn, new_id)


def find_integration(conn, user_id: int, platform: str, account_id: str) -> int | None:
    """The id of a user's integration of that account (normalised id), or None."""
    return conn.execute(
        select(integrations_t.c.id).where(
            integrations_t.c.user_id == user_id,
            integrations_t.c.platform == platform,
            integrations_t.c.account_id == account_id,
        )
    ).scalar()


def insert_integration(
    conn,
    *,
    user_id: int,
    platform: str,
    account_id: str,
    credential_id: int,
    login_customer_id: str | None = None,
    account_name: str | None = None,
    currency: str | None = None,
    time_zone: str | None = None,
) -> int:
    """Insert an integration whose values are already validated; returns its id.

    With ``currency`` or ``time_zone`` known (from discovery), the first sync does not ask for them.
    """
    now = utcnow()
    values = {
        "user_id": user_id,
        "platform": platform,
        "account_id": account_id,
        "login_customer_id": login_customer_id,
        "account_name": account_name,
        "currency": currency,
        "time_zone": time_zone,
        "is_active": True,
        "status": "never_synced",
        "token_expires_at": _expiry(conn, credential_id),
        "credential_id": credential_id,
        "created_at": now,
        "updated_at": now,
    }
    return conn.execute(insert(integrations_t).values(**values)).inserted_primary_key[0]


def repoint_integration(conn, integration_id: int, credential_id: int, *, login_customer_id: str | None) -> None:
    """Use another credential (a reconnect); a failing integration gets another chance (``never_synced``)."""
    conn.execute(
        update(integrations_t)
        .where(integrations_t.c.id == integration_id)
        .values(
            credential_id=credential_id,
            login_customer_id=login_customer_id,
            token_expires_at=_expiry(conn, credential_id),
            updated_at=utcnow(),
        )
    )
    _give_another_chance(conn, integrations_t.c.id == integration_id)


def _expiry(conn, credential_id: int) -> datetime | None:
    return conn.execute(select(credentials_t.c.token_expires_at).where(credentials_t.c.id == credential_id)).scalar()


def _give_another_chance(conn, where) -> None:
    """New credentials end needs_reauth, error and rate_limited: back to never_synced until the next sync."""
    conn.execute(
        update(integrations_t)
        .where(where, integrations_t.c.status.in_(("needs_reauth", "error", "rate_limited")))
        .values(status="never_synced", last_error=None, rate_limited_until=None, next_attempt_at=None)
    )


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
    "currency",
    "time_zone",
    "created_at",
    "updated_at",
    "credential_id",
)


def _integration_query():
    cols = [integrations_t.c[name] for name in _PUBLIC_COLUMNS]
    return (
        select(*cols, integrations_t.c.user_id, users_t.c.email, credentials_t.c.data_access_expires_at)
        .join(users_t, users_t.c.id == integrations_t.c.user_id)
        .join(credentials_t, credentials_t.c.id == integrations_t.c.credential_id)
    )


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
) -> list[dict]:
    """New tokens after a user reconnects, on the integration's credential: so for every integration using it.

    ``login_customer_id`` changes this integration only (``""`` removes it). Each integration whose credential
    changed leaves needs_reauth, error or rate_limited for never_synced. A Meta token given again as it is
    keeps its known expiry; a new one without ``token_expires_at`` has an unknown expiry. Returns the
    integrations changed, in id order (this one and those sharing its credential).

    Raises:
        UserError: unknown id, nothing to update, the other platform's options, a malformed value.
    """
    current = get_integration(conn, integration_id)
    given = dict(access_token=access_token, token_expires_at=token_expires_at, refresh_token=refresh_token)
    validate.platform_options(current["platform"], login_customer_id=login_customer_id, **given)
    if all(v is None for v in (*given.values(), login_customer_id)):
        raise UserError("nothing to update: give --access-token, --token-expires-at, --refresh-token or --login-customer-id")
    changed = [integration_id]
    if login_customer_id is not None:
        login = validate.google_customer_id(login_customer_id, "login customer id") if login_customer_id.strip() else None
        conn.execute(
            update(integrations_t).where(integrations_t.c.id == integration_id).values(login_customer_id=login, updated_at=utcnow())
        )
        _give_another_chance(conn, integrations_t.c.id == integration_id)
    credential_id = current["credential_id"]
    if access_token is not None:
        token = validate.token(access_token, "--access-token")
        stored = conn.execute(select(credentials_t.c.access_token_enc).where(credentials_t.c.id == credential_id)).scalar()
        if not _holds(box, stored, token):  # a new token without a date has an unknown expiry
            _set_credential(conn, credential_id, access_token_enc=box.encrypt(token), token_expires_at=token_expires_at)
        elif token_expires_at is not None:  # the same token: its known expiry stays unless a date is given
            _set_credential(conn, credential_id, token_expires_at=token_expires_at)
    elif token_expires_at is not None:
        _set_credential(conn, credential_id, token_expires_at=token_expires_at)
    if refresh_token is not None:
        token = validate.token(refresh_token, "--refresh-token")
        _set_credential(
            conn, credential_id, refresh_token_enc=box.encrypt(token), cached_access_token_enc=None, cached_access_token_expires_at=None
        )
    if any(v is not None for v in given.values()):
        _give_another_chance(conn, integrations_t.c.credential_id == credential_id)
        changed = integrations_using(conn, credential_id)
    return [get_integration(conn, i) for i in sorted(set(changed))]


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


RESETTABLE = ("rate_limited", "error", "needs_reauth")


def reset_integration(conn, integration_id: int) -> tuple[dict, dict]:
    """Clear ``rate_limited``, ``error`` or ``needs_reauth`` (and the retry time, the daily back-off of an account
    closed upstream, the Google budget's turn) so the next run tries the integration: status ``never_synced``
    until then, as after new credentials. Returns (before, after); an integration in another status is unchanged.

    Raises:
        UserError: no integration with that id.
    """
    before = get_integration(conn, integration_id)
    if before["status"] in RESETTABLE:
        conn.execute(
            update(integrations_t)
            .where(integrations_t.c.id == integration_id)
            .values(
                status="never_synced",
                last_error=None,
                rate_limited_until=None,
                next_attempt_at=None,
                last_attempt_at=None,
                updated_at=utcnow(),
            )
        )
    return before, get_integration(conn, integration_id)


def account_values(info: AccountInfo, now: datetime) -> dict:
    """The integration's columns for what the platform says about its account."""
    return dict(currency=info.currency, time_zone=info.time_zone, account_name=info.name, updated_at=now)


def save_account_info(conn, integration_id: int, info: AccountInfo, now: datetime) -> None:
    statements.update_by_id(conn, integrations_t, integration_id, account_values(info, now))


# ---------------------------------------------------------------- credentials

# Every stored Fernet ciphertext, as (table, key column, token column): key checks and key rotation
# enumerate tokens through this list only.
ENCRYPTED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("credentials", "id", "access_token_enc"),
    ("credentials", "id", "refresh_token_enc"),
    ("credentials", "id", "cached_access_token_enc"),
)
_CREDENTIAL_COLUMNS = ("id", "platform", "platform_user", "token_type", "scopes", "token_expires_at", "created_at", "updated_at")


def encrypted_tokens(conn) -> Iterator[tuple[str, str, int, str]]:
    """Every stored ciphertext as (table, token column, key, ciphertext), in ``ENCRYPTED_COLUMNS`` order then key order."""
    for table_name, key_name, column_name in ENCRYPTED_COLUMNS:
        table = SQLModel.metadata.tables[table_name]
        column, key = table.c[column_name], table.c[key_name]
        for row_key, blob in conn.execute(select(key, column).where(column.is_not(None)).order_by(key)):
            yield table_name, column_name, row_key, blob


def _token_values(
    box: TokenBox,
    *,
    access_token: str | None = None,
    refresh_token: str | None = None,
    token_expires_at: datetime | None = None,
    token_type: str | None = None,
    scopes: tuple[str, ...] = (),
    cached_access_token: str | None = None,
    cached_access_token_expires_at: datetime | None = None,
) -> dict:
    """A credential's token columns: tokens encrypted, scopes space-separated."""
    return dict(
        token_type=token_type,
        scopes=" ".join(scopes) or None,
        token_expires_at=token_expires_at,
        access_token_enc=box.encrypt(access_token),
        refresh_token_enc=box.encrypt(refresh_token),
        cached_access_token_enc=box.encrypt(cached_access_token),
        cached_access_token_expires_at=cached_access_token_expires_at,
    )


def add_credential(conn, box: TokenBox, *, platform: str, platform_user: str | None = None, **tokens) -> int:
    """Insert a credential; ``tokens`` are ``_token_values``' keywords (clear text, encrypted here). Returns its id."""
    now = utcnow()
    values = dict(platform=platform, platform_user=platform_user, created_at=now, updated_at=now, **_token_values(box, **tokens))
    return conn.execute(insert(credentials_t).values(**values)).inserted_primary_key[0]


def save_connected_credential(conn, box: TokenBox, *, platform: str, platform_user: str | None, **tokens) -> tuple[int, bool]:
    """The credential of a login just connected: the Google user's or Meta user's row, given the new tokens
    (one credential per login; its integrations leave needs_reauth), else a new one. Returns (id, created)."""
    existing = None
    if platform_user is not None:
        existing = conn.execute(
            select(credentials_t.c.id).where(credentials_t.c.platform == platform, credentials_t.c.platform_user == platform_user)
        ).scalar()
    if existing is None:
        return add_credential(conn, box, platform=platform, platform_user=platform_user, **tokens), True
    _set_credential(conn, existing, **_token_values(box, **tokens))
    _give_another_chance(conn, integrations_t.c.credential_id == existing)
    return existing, False


def _set_credential(conn, credential_id: int, **values) -> None:
    """Change a credential's columns; a new ``token_expires_at`` is copied to its integrations."""
    conn.execute(update(credentials_t).where(credentials_t.c.id == credential_id).values(**values, updated_at=utcnow()))
    if "token_expires_at" in values:
        conn.execute(
            update(integrations_t)
            .where(integrations_t.c.credential_id == credential_id)
            .values(token_expires_at=values["token_expires_at"])
        )


def credential_for_token(conn, box: TokenBox, *, user_id: int, platform: str, token: str | None) -> int | None:
    """The credential of the user's integrations on ``platform`` that holds exactly ``token`` (Meta access
    token, Google refresh token), or None. Decrypts to compare: Fernet ciphertexts of one token differ."""
    if token is None:
        return None
    column = credentials_t.c.access_token_enc if platform == "meta" else credentials_t.c.refresh_token_enc
    candidates = conn.execute(
        select(credentials_t.c.id, column)
        .where(
            credentials_t.c.platform == platform,
            credentials_t.c.id.in_(select(integrations_t.c.credential_id).where(integrations_t.c.user_id == user_id)),
        )
        .order_by(credentials_t.c.id)
    )
    return next((credential_id for credential_id, blob in candidates if _holds(box, blob, token)), None)


def _holds(box: TokenBox, blob: str | None, token: str | None) -> bool:
    """Whether the ciphertext ``blob`` is ``token`` (both None: yes; a ciphertext no key decrypts: no)."""
    if blob is None or token is None:
        return blob is None and token is None
    return box.readable(blob) and box.decrypt(blob) == token


def current_token(conn, box: TokenBox, integration_id: int) -> str | None:
    """The token an integration's credential holds (Meta access token, Google refresh token); None when it holds
    none or no configured key decrypts it."""
    row = get_integration(conn, integration_id)
    column = credentials_t.c.access_token_enc if row["platform"] == "meta" else credentials_t.c.refresh_token_enc
    blob = conn.execute(select(column).where(credentials_t.c.id == row["credential_id"])).scalar()
    return box.decrypt(blob) if blob is not None and box.readable(blob) else None


def integrations_using(conn, credential_id: int) -> list[int]:
    query = select(integrations_t.c.id).where(integrations_t.c.credential_id == credential_id).order_by(integrations_t.c.id)
    return list(conn.execute(query).scalars())


def list_credentials(conn) -> list[dict]:
    """Credentials without tokens, in id order, each with ``integrations`` (ids) and ``emails`` (their users)."""
    rows = [dict(r._mapping) for r in conn.execute(select(*(credentials_t.c[c] for c in _CREDENTIAL_COLUMNS)).order_by(credentials_t.c.id))]
    used = conn.execute(
        select(integrations_t.c.credential_id, integrations_t.c.id, users_t.c.email)
        .join(users_t, users_t.c.id == integrations_t.c.user_id)
        .order_by(integrations_t.c.id)
    ).all()
    for row in rows:
        row["integrations"] = [i for c, i, _ in used if c == row["id"]]
        row["emails"] = sorted({e for c, _, e in used if c == row["id"]})
    return rows


def get_credential(conn, credential_id: int) -> dict:
    found = next((c for c in list_credentials(conn) if c["id"] == credential_id), None)
    if found is None:
        raise UserError(f"no credential with id {credential_id}: see 'emsync credentials list'")
    return found


def removable_credential(conn, credential_id: int, *, with_integrations: bool) -> dict:
    """The credential (as ``list_credentials`` shows it) when it may be removed.

    Raises:
        UserError: unknown id, or integrations use it and ``with_integrations`` is false.
    """
    credential = get_credential(conn, credential_id)
    if credential["integrations"] and not with_integrations:
        listed = ", ".join(map(str, credential["integrations"]))
        raise UserError(f"credential {credential_id} is used by integrations {listed}: remove them first, or pass --with-integrations")
    return credential


def remove_credential(conn, credential_id: int, *, with_integrations: bool = False) -> dict[int, int]:
    """Delete a credential; with ``with_integrations`` first the integrations using it, with their rows.

    Returns {integration id: metric rows deleted}. Raises what ``removable_credential`` raises.
    """
    using = removable_credential(conn, credential_id, with_integrations=with_integrations)["integrations"]
    removed = {integration_id: remove_integration(conn, integration_id) for integration_id in using}
    conn.execute(delete(credentials_t).where(credentials_t.c.id == credential_id))
    return removed


def merge_identical_credentials(conn, box: TokenBox) -> int:
    """Let integrations whose credentials hold the same token share one credential; returns how many were merged away.

    Migration 0004 gives every integration a credential of its own (it cannot decrypt). With the key
    this finds equal tokens. The kept credential is the connected one (with a ``platform_user``) or
    the oldest; it takes the earliest known expiry and the freshest cached access token. Tokens the
    key cannot decrypt are left alone.
    """
    groups: dict[tuple[str, str], list] = {}
    for row in conn.execute(select(credentials_t).order_by(credentials_t.c.id)):
        try:
            token = box.decrypt(row.access_token_enc if row.platform == "meta" else row.refresh_token_enc)
        except ConfigError:
            continue
        if token:
            groups.setdefault((row.platform, token), []).append(row)
    merged = 0
    for rows in groups.values():
        if len(rows) < 2:
            continue
        keep = next((r for r in rows if r.platform_user), rows[0])
        others = [r.id for r in rows if r.id != keep.id]
        expiries = [r.token_expires_at for r in rows if r.token_expires_at is not None]
        cached = max(rows, key=lambda r: r.cached_access_token_expires_at or datetime.min.replace(tzinfo=UTC))
        conn.execute(update(integrations_t).where(integrations_t.c.credential_id.in_(others)).values(credential_id=keep.id))
        conn.execute(delete(credentials_t).where(credentials_t.c.id.in_(others)))
        _set_credential(
            conn,
            keep.id,
            token_expires_at=min(expiries) if expiries else None,
            cached_access_token_enc=cached.cached_access_token_enc,
            cached_access_token_expires_at=cached.cached_access_token_expires_at,
        )
        merged += len(others)
    return merged


# ---------------------------------------------------------------- what a sync reads and leaves behind


def integration_state(conn, integration_id: int) -> IntegrationState | None:
    """The integration as an attempt starts from (tokens still encrypted); None when it was removed."""
    row = conn.execute(statements.select_by_id(integrations_t), {"row_id": integration_id}).first()
    return None if row is None else state_from_row(row._mapping)


def state_from_row(mapping) -> IntegrationState:
    """An ``IntegrationState`` from a full ``integrations`` row (e.g. one a lease's UPDATE … RETURNING gave back)."""
    fields = IntegrationState.__dataclass_fields__
    return IntegrationState(**{k: v for k, v in mapping.items() if k in fields})


def credential_state(conn, credential_id: int) -> CredentialState | None:
    """A credential as the engine reads it before refreshing (tokens still encrypted); None when it was removed."""
    row = conn.execute(statements.select_by_id(credentials_t), {"row_id": credential_id}).first()
    if row is None:
        return None
    fields = CredentialState.__dataclass_fields__
    return CredentialState(**{k: v for k, v in row._mapping.items() if k in fields})


def save_tokens(conn, box: TokenBox, credential_id: int, creds: Credentials) -> None:
    """Persist what a connector renewed (a Meta token, a cached Google access token), encrypted, for every
    integration using the credential, with what Meta's debug_token said and when; ``creds.changed`` is cleared.

    Only a token that changed is encrypted again: during a key rotation a host with ``new,old`` then never
    re-encrypts, with the new key, a token that a host still holding only ``old`` must read.
    """
    c = credentials_t.c
    stored = conn.execute(select(c.access_token_enc, c.cached_access_token_enc, c.token_expires_at).where(c.id == credential_id)).first()
    values: dict = dict(
        cached_access_token_expires_at=creds.cached_access_token_expires_at,
        data_access_expires_at=creds.data_access_expires_at,
        token_checked_at=creds.token_checked_at,
    )
    if stored is None or stored.token_expires_at != creds.token_expires_at:
        values["token_expires_at"] = creds.token_expires_at  # copied to the integrations only when it changed
    for column, token in (("access_token_enc", creds.access_token), ("cached_access_token_enc", creds.cached_access_token)):
        if stored is None or not _holds(box, stored._mapping[column], token):
            values[column] = box.encrypt(token)
    _set_credential(conn, credential_id, **values)
    creds.changed = False


def mark_success(conn, integration_id: int, *, started_at: datetime, finished_at: datetime, full: bool, warning: str | None = None) -> None:
    """``ok``; ``warning`` (what the sync warned about without failing) replaces ``last_warning``: None clears it."""
    statements.update_by_id(conn, integrations_t, integration_id, _success_values(started_at, finished_at, full, warning))


def record_success(
    conn,
    integration_id: int,
    *,
    attempt: dict,
    started_at: datetime,
    finished_at: datetime,
    full: bool,
    warning: str | None = None,
    lease_token: str | None = None,
    account: dict | None = None,
) -> bool:
    """A successful attempt's last step inside its write transaction: its ``sync_attempts`` row (``attempt``: that
    table's columns), the integration ``ok`` as ``mark_success`` leaves it and, with ``lease_token``, its lease
    released — the update made only while the lease is still that token's (the fence: a process that stalled past
    the lease's expiry must not overwrite a newer window). ``account``: ``account_values`` learnt by this attempt,
    set by the same update.

    PostgreSQL: one statement (``WITH attempt AS (INSERT …) UPDATE integrations …``), one round trip instead of
    three; elsewhere two. Returns False when ``lease_token`` no longer holds the lease: nothing is updated and the
    caller must roll back (the attempt row goes with it).
    """
    values = _success_values(started_at, finished_at, full, warning)
    if account is not None:
        values.update(account)
    if lease_token is not None:
        values.update(lease_host=None, lease_pid=None, lease_token=None, lease_until=None)
    params = statements.update_params(integration_id, values, fence=lease_token)
    fenced_on = None if lease_token is None else "lease_token"
    if conn.dialect.name == "postgresql":
        params.update({f"a_{c}": v for c, v in attempt.items()})
        return conn.execute(_success_with_attempt(tuple(values), tuple(attempt), fenced_on), params).rowcount == 1
    conn.execute(statements.insert_into(attempts_t), attempt)
    return conn.execute(statements.update_statement(integrations_t, tuple(values), fenced_on), params).rowcount == 1


def _success_values(started_at: datetime, finished_at: datetime, full: bool, warning: str | None) -> dict:
    values = dict(
        status="ok",
        last_sync_started_at=started_at,
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
    return values


@functools.cache
def _success_with_attempt(columns: tuple[str, ...], attempt_columns: tuple[str, ...], fenced_on: str | None):
    """PostgreSQL: the attempt's INSERT as a data-modifying WITH of the success UPDATE."""
    attempt = insert(attempts_t).values({c: bindparam(f"a_{c}") for c in attempt_columns}).cte("attempt")
    return statements.update_statement(integrations_t, columns, fenced_on).add_cte(attempt)


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
    statements.update_by_id(conn, integrations_t, integration_id, values)
