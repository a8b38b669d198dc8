"""From a login to integrations: what `emsync connect` decides and writes, after the person signed in.

The CLI gets the login (Google's browser sign-in in ``oauth``, a pasted Meta
token) and asks which accounts; this module discovers the accounts the login
reaches (``discovery``), checks the choice, and writes the credential, the
user when missing and the integrations in ONE transaction: an error leaves
nothing behind.

A login is one credential (``credentials.platform_user``: the Google user's
email, the Meta user id). Connecting it again replaces its tokens; accounts
that already have an integration for that user are re-pointed to it, leave
``needs_reauth`` and are reported as updated — that is how a person fixes an
expired or revoked login. The others are created, Google customers with the
``login-customer-id`` of the manager through which discovery found them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from . import discovery, store, validate
from .clock import SYSTEM_CLOCK, Clock
from .config import Settings
from .crypto import TokenBox
from .domain import Account, Credentials, account_label
from .errors import ApiError, ConfigError, UserError
from .http import HttpClient, new_session
from .oauth import GoogleGrant, OAuthClient

META_RENEW_WITHIN = timedelta(days=7)  # a token closer to its expiry than this is exchanged for a long-lived one


@dataclass(frozen=True)
class FoundAccount:
    """An account a login reaches, in one shape for both platforms.

    ``status``: Google's customer status (ENABLED, CANCELED, ..., or the error a customer answered
    with, CUSTOMER_NOT_ENABLED) or Meta's account status name (ACTIVE, DISABLED, CLOSED, ...).
    ``login_customer_id``: the Google manager to send as ``login-customer-id`` (None: the customer
    itself). ``via``: how it was found, for people.
    """

    platform: str
    account_id: str
    name: str | None
    status: str
    manager: bool
    selectable: bool
    currency: str | None
    time_zone: str | None
    login_customer_id: str | None
    via: str

    @property
    def label(self) -> str:
        return account_label(self.platform, self.account_id)


@dataclass(frozen=True)
class Login:
    """A signed-in Google user or a checked Meta token, and the accounts it reaches. Tokens never in ``repr``."""

    platform: str
    platform_user: str | None
    token_type: str | None
    scopes: tuple[str, ...]
    token_expires_at: datetime | None
    accounts: tuple[FoundAccount, ...]
    notes: tuple[str, ...] = ()
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    cached_access_token: str | None = field(default=None, repr=False)
    cached_access_token_expires_at: datetime | None = None


@dataclass
class Connected:
    """What ``save`` wrote: the credential, whether the user and the credential are new, the integrations."""

    credential_id: int
    credential_created: bool
    user_created: bool
    created: list[dict] = field(default_factory=list)
    updated: list[dict] = field(default_factory=list)


def http_client(settings: Settings) -> HttpClient:
    """An HTTP client with the configured timeout and retry policy, for one command."""
    return HttpClient(new_session(2), timeout=settings.http_timeout, attempts=settings.retry_attempts, max_wait=settings.retry_max_wait)


def ads_api(settings: Settings, access_token: str) -> discovery.GoogleAdsApi:
    """The configured Google Ads API, called with ``access_token``."""
    s = settings
    return discovery.GoogleAdsApi(s.google_ads_api_url, s.google_ads_api_version, access_token, s.google_ads_developer_token)


def graph_api(settings: Settings, access_token: str) -> discovery.GraphApi:
    """The configured Graph API (with the app, when set), called with ``access_token``."""
    s = settings
    return discovery.GraphApi(s.meta_graph_url, s.meta_api_version, access_token, s.meta_app_id, s.meta_app_secret)


def google_client(settings: Settings) -> OAuthClient:
    """The configured Google OAuth client and endpoints.

    Raises:
        ConfigError: GOOGLE_OAUTH_CLIENT_ID or GOOGLE_OAUTH_CLIENT_SECRET is not set.
    """
    if not (settings.google_oauth_client_id and settings.google_oauth_client_secret):
        raise ConfigError(
            "GOOGLE_OAUTH_CLIENT_ID and GOOGLE_OAUTH_CLIENT_SECRET must be set to connect Google: create an OAuth client "
            "of type 'Desktop app' (README, 'Connecting real accounts')"
        )
    return OAuthClient(
        client_id=settings.google_oauth_client_id,
        client_secret=settings.google_oauth_client_secret,
        auth_url=settings.google_oauth_auth_url,
        token_url=settings.google_oauth_token_url,
    )


def google_login(settings: Settings, grant: GoogleGrant, http: HttpClient | None = None) -> Login:
    """The customers a freshly signed-in Google user reaches, directly or through managers (two levels).

    Raises:
        UserError: NOT_ADS_USER, or Google Ads refused or failed the listing (nothing is written then).
    """
    try:
        found = discovery.discover_google(http or http_client(settings), ads_api(settings, grant.access_token))
    except ApiError as exc:
        raise UserError(f"could not list the Google Ads accounts of this login: {exc}") from None
    accounts = tuple(
        FoundAccount(
            platform="google",
            account_id=c.customer_id,
            name=c.name,
            status=c.status,
            manager=c.manager,
            selectable=c.selectable,
            currency=c.currency,
            time_zone=c.time_zone,
            login_customer_id=None if c.login_customer_id == c.customer_id else c.login_customer_id,
            via="direct" if c.login_customer_id == c.customer_id else f"manager {account_label('google', c.login_customer_id)}",
        )
        for c in found.customers
    )
    return Login(
        platform="google",
        platform_user=grant.email,
        token_type=None,
        scopes=grant.scopes,
        token_expires_at=None,  # Google does not say; a Testing app's refresh tokens last 7 days
        accounts=accounts,
        notes=(f"{found.operations} Google Ads API operations used to list them",),
        refresh_token=grant.refresh_token,
        cached_access_token=grant.access_token,
        cached_access_token_expires_at=grant.expiry,
    )


def meta_login(settings: Settings, token: str, http: HttpClient | None = None, clock: Clock = SYSTEM_CLOCK) -> Login:
    """Check a Meta user or system-user token and list the ad accounts it reaches.

    The token must be valid and carry ``ads_read`` or ``ads_management``. A user token close to
    its expiry (a short-lived one from the Graph API Explorer: hours) is exchanged for a long-lived
    one (about 60 days) when META_APP_ID and META_APP_SECRET are set. Businesses' accounts are
    listed only with ``business_management``.

    Raises:
        UserError: invalid token, missing permission, or Meta refused or failed the listing.
    """
    from .connectors.meta import MetaConnector

    token = validate.token(token, "the Meta access token")
    http = http or http_client(settings)
    notes: list[str] = []
    try:
        first = discovery.debug_token(http, graph_api(settings, token))
        discovery.require_ads_scopes(first)
        if first.token_type == "USER" and first.expires_at is not None and first.expires_at - clock.now() < META_RENEW_WITHIN:
            if settings.meta_app_id and settings.meta_app_secret:
                creds = Credentials(access_token=token, token_expires_at=first.expires_at)
                MetaConnector(settings, http, clock).renew(Account("meta", "me"), creds)  # fb_exchange_token, as a sync renews
                token = creds.access_token or token
                notes.append("exchanged the short-lived token for a long-lived one")
            else:
                notes.append(
                    f"the token expires {first.expires_at:%Y-%m-%d %H:%M} UTC: set META_APP_ID and META_APP_SECRET "
                    "and connect again to store a long-lived token instead"
                )
        found = discovery.discover_meta(http, graph_api(settings, token))
    except ApiError as exc:
        raise UserError(f"could not list the Meta ad accounts of this token: {exc}") from None
    accounts = tuple(
        FoundAccount(
            platform="meta",
            account_id=a.account_id,
            name=a.name,
            status=a.status_name,
            manager=False,
            selectable=a.selectable,
            currency=a.currency,
            time_zone=a.time_zone,
            login_customer_id=None,
            via=a.found_via,
        )
        for a in found.accounts
    )
    return Login(
        platform="meta",
        platform_user=found.token.user_id,
        token_type=found.token.token_type,
        scopes=found.token.scopes,
        token_expires_at=found.token.expires_at,
        accounts=accounts,
        notes=(*notes, *found.problems),
        access_token=token,
    )


def meta_token_expiry(settings: Settings, token: str, http: HttpClient | None = None) -> datetime | None:
    """When a Meta token expires, as Meta's ``debug_token`` says (None: it does not expire).

    Raises:
        UserError: Meta says the token is not valid.
        ApiError: Meta could not be asked (network, server error).
    """
    return discovery.debug_token(http or http_client(settings), graph_api(settings, token)).expires_at


def account_ids(platform: str, values: list[str]) -> list[str]:
    """``--account-id`` values normalised (act_ and dashes removed), checked before anyone signs in."""
    return [validate.account_id(platform, v) for v in values]


def choose(login: Login, *, chosen_ids: list[str], every: bool) -> list[FoundAccount]:
    """The accounts to add: ``chosen_ids`` (normalised) and, with ``every``, each selectable one.

    Raises:
        UserError: an id the login does not reach, or a manager account (it has no campaigns).
    """
    by_id = {a.account_id: a for a in login.accounts}
    unknown = [account_label(login.platform, i) for i in chosen_ids if i not in by_id]
    if unknown:
        raise UserError(f"this login does not reach {', '.join(unknown)}: choose among the accounts listed")
    managers = [by_id[i].label for i in chosen_ids if by_id[i].manager]
    if managers:
        raise UserError(f"{', '.join(managers)} is a manager account, which has no campaigns: choose its client accounts")
    picked = [a for a in login.accounts if (every and a.selectable) or a.account_id in chosen_ids]
    return picked


def parse_numbers(text: str, count: int) -> list[int]:
    """Zero-based positions from what a person typed at the numbered prompt: ``1,3-5``; empty: none.

    Raises:
        UserError: not numbers, or outside 1..count.
    """
    positions: list[int] = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise UserError(f"not a number or a range of numbers: {part[:20]!r}")
        low, high = int(first), int(last or first)
        if not 1 <= low <= high <= count:
            raise UserError(f"choose numbers between 1 and {count}, got {part[:20]!r}")
        positions.extend(n - 1 for n in range(low, high + 1) if n - 1 not in positions)
    return positions


def save(conn, box: TokenBox, *, email: str, login: Login, accounts: list[FoundAccount]) -> Connected:
    """Write the login's credential, the user when missing, and an integration per account, in the caller's transaction.

    Accounts the user already has are re-pointed to the credential (with the ``login-customer-id``
    discovery found) and reported as updated; the others are created with the currency, time zone
    and name discovery already knows.
    """
    user_id, user_created = store.ensure_user(conn, email)
    credential_id, credential_created = store.save_connected_credential(
        conn,
        box,
        platform=login.platform,
        platform_user=login.platform_user,
        access_token=login.access_token,
        refresh_token=login.refresh_token,
        token_expires_at=login.token_expires_at,
        token_type=login.token_type,
        scopes=login.scopes,
        cached_access_token=login.cached_access_token,
        cached_access_token_expires_at=login.cached_access_token_expires_at,
    )
    result = Connected(credential_id, credential_created, user_created)
    for account in accounts:
        known = dict(account_name=account.name, currency=account.currency, time_zone=account.time_zone)
        created, row = _put(conn, user_id, login.platform, account.account_id, credential_id, account.login_customer_id, **known)
        # an account already there gets the new tokens even when it used this credential: it is "updated"
        (result.created if created == "created" else result.updated).append(row)
    return result


def _put(conn, user_id: int, platform: str, account_id: str, credential_id: int, login: str | None, **known) -> tuple[str, dict]:
    """Create the user's integration of the account, or point the existing one at ``credential_id`` and ``login``.

    Returns ("created" | "updated" | "unchanged", the integration). ``known``: name, currency, time zone for a new one.
    """
    existing = store.find_integration(conn, user_id, platform, account_id)
    if existing is None:
        new_id = store.insert_integration(
            conn, user_id=user_id, platform=platform, account_id=account_id, credential_id=credential_id, login_customer_id=login, **known
        )
        return "created", store.get_integration(conn, new_id)
    current = store.get_integration(conn, existing)
    if (current["credential_id"], current["login_customer_id"]) == (credential_id, login):
        return "unchanged", current
    store.repoint_integration(conn, existing, credential_id, login_customer_id=login)
    return "updated", store.get_integration(conn, existing)


# ---------------------------------------------------------------- integrations import FILE

IMPORT_COLUMNS = ("email", "platform", "account_id", "login_customer_id", "credential_id")
_REQUIRED = ("email", "platform", "account_id", "credential_id")


class ImportRefused(UserError):
    """Some lines of an import file are wrong; ``problems`` has one line each ("line 3: ..."). Nothing was written."""

    def __init__(self, path: str, problems: list[str]):
        super().__init__(f"{len(problems)} bad {'entry' if len(problems) == 1 else 'entries'} in {path}; nothing imported")
        self.problems = problems


@dataclass
class Imported:
    """What ``import_integrations`` did: counts, plus the integrations created or re-pointed."""

    users_created: int = 0
    created: list[dict] = field(default_factory=list)
    updated: list[dict] = field(default_factory=list)
    unchanged: int = 0


@dataclass(frozen=True)
class _Wanted:
    where: str  # "line 3" (CSV) or "entry 3" (JSON)
    email: str
    platform: str
    account_id: str
    login_customer_id: str | None
    credential_id: int


def read_import_file(path: str) -> list[tuple[str, object]]:
    """(where, raw fields) per entry of a CSV file with a header line, or of a JSON array of objects.

    JSON is recognised by the ``.json`` suffix or a first character ``[``; CSV lines are numbered
    as in the file (the header is line 1), JSON entries from 1.

    Raises:
        UserError: unreadable, not UTF-8, not the expected shape, or no entries.
    """
    import csv
    import io
    import json

    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    entries: list[tuple[str, object]] = []
    if path.lower().endswith(".json") or text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise UserError(f"{path} must hold a JSON array of objects with the keys {', '.join(IMPORT_COLUMNS)}")
        entries = [(f"entry {n}", item) for n, item in enumerate(items, start=1)]
    else:
        reader = csv.DictReader(io.StringIO(text))
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in _REQUIRED if c not in header]
        unknown = [c for c in header if c not in IMPORT_COLUMNS]
        if missing or unknown:
            what = f"missing {', '.join(missing)}" if missing else f"unknown column {', '.join(unknown)}"
            raise UserError(f"{path}: the header line must name the columns {', '.join(IMPORT_COLUMNS)} ({what})")
        reader.fieldnames = header
        for row in reader:
            if any((v or "").strip() for k, v in row.items() if k is not None):
                entries.append((f"line {reader.line_num}", row))
    if not entries:
        raise UserError(f"{path} holds no integrations")
    return entries


def _wanted(where: str, raw: object, credentials: dict[int, str]) -> _Wanted:
    """One entry validated; raises UserError with the entry's place in front."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be an object with the keys {', '.join(IMPORT_COLUMNS)}")
    unknown = [k for k in raw if k not in IMPORT_COLUMNS]
    if unknown:
        raise UserError(f"{where}: unknown field {str(unknown[0])[:30]!r}")

    def text(key: str) -> str:
        value = raw.get(key)
        return "" if value is None else str(value).strip()

    try:
        missing = [k for k in _REQUIRED if not text(k)]
        if missing:
            raise UserError(f"{', '.join(missing)} missing")
        email = validate.email(text("email"))
        platform = validate.platform(text("platform"))
        account_id = validate.account_id(platform, text("account_id"))
        login = text("login_customer_id") or None
        if login is not None:
            if platform != "google":
                raise UserError("login_customer_id is for Google customers only")
            login = validate.google_customer_id(login, "login customer id")
        if not text("credential_id").isdigit():
            raise UserError(f"credential_id must be a number, got {text('credential_id')[:20]!r}")
        credential_id = int(text("credential_id"))
        if credentials.get(credential_id) is None:
            raise UserError(f"no credential {credential_id} (see 'emsync credentials list')")
        if credentials[credential_id] != platform:
            raise UserError(f"credential {credential_id} is a {credentials[credential_id]} credential, not {platform}")
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return _Wanted(where, email, platform, account_id, login, credential_id)


def import_integrations(conn, path: str) -> Imported:
    """Create (or re-point) the integrations an import file lists, users as needed, in the caller's transaction.

    All or nothing: every entry is checked first; any bad one raises ``ImportRefused`` listing
    them all. Idempotent: an entry matching an existing integration (same credential and
    ``login_customer_id``) changes nothing; one with another credential re-points it, as
    ``connect`` does.

    Raises:
        UserError: the file cannot be read; ImportRefused: bad entries.
    """
    from sqlalchemy import select

    from .models import credentials_t

    credentials = dict(conn.execute(select(credentials_t.c.id, credentials_t.c.platform)).all())
    wanted: list[_Wanted] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, str], str] = {}
    for where, raw in read_import_file(path):
        try:
            entry = _wanted(where, raw, credentials)
        except UserError as exc:
            problems.append(str(exc))
            continue
        key = (entry.email, entry.platform, entry.account_id)
        if key in seen:
            problems.append(f"{where}: {entry.email} {account_label(entry.platform, entry.account_id)} is already listed at {seen[key]}")
            continue
        seen[key] = where
        wanted.append(entry)
    if problems:
        raise ImportRefused(path, problems)
    result = Imported()
    for entry in wanted:
        user_id, user_created = store.ensure_user(conn, entry.email)
        result.users_created += user_created
        done, row = _put(conn, user_id, entry.platform, entry.account_id, entry.credential_id, entry.login_customer_id)
        if done == "unchanged":
            result.unchanged += 1
        else:
            (result.created if done == "created" else result.updated).append(row)
    return result
