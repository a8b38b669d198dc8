"""Settings: read once from the environment and env files, validated, frozen.

Precedence, highest first: the process environment, the env file named by
``--env-file`` / ``EMSYNC_ENV_FILE`` (or else ``.env`` in the working
directory), then the per-user file ``$XDG_CONFIG_HOME/emsync/emsync.env``
that ``emsync init`` writes when no other env file exists, so that cron finds
the secret key whatever its working directory. Env files are read strictly
(``envfile.read``: a line that is not ``NAME=value`` is an error naming the file
and the line) and every value remembers where it came from (``Settings.origin``).

Each setting is declared once, as one field of ``Settings`` made by
``_setting()``: attribute, type, environment name, default, parser (with its
bounds), whether it is a secret, and what it means. ``SETTINGS``,
``SETTING_NAMES``, ``load_settings``, ``Settings.secrets()`` and the ``repr``
are derived from those fields; tests/test_config.py checks README.md's
Configuration table and ``.env.example`` against them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError


def data_dir() -> Path:
    """Where the default SQLite database lives (XDG data directory)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "emsync"


def user_env_file() -> Path:
    """The per-user env file, used when there is no ``.env`` in the working directory."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "emsync" / "emsync.env"


# ---------------------------------------------------------------- parsers
# Each takes (name in the environment, stripped raw value) and returns the
# typed value or raises ConfigError naming the setting.


def _int(minimum: int, maximum: int):
    def parse(name: str, raw: str) -> int:
        try:
            if not raw.isascii():  # int() would accept other scripts' digits ("８")
                raise ValueError
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw[:40]!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    return parse


def _float(minimum: float, maximum: float):
    def parse(name: str, raw: str) -> float:
        try:
            if not raw.isascii():
                raise ValueError
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw[:40]!r}") from None
        if not minimum <= value <= maximum:  # also false for nan
            raise ConfigError(f"{name} must be a number between {minimum:g} and {maximum:g}, got {raw[:40]!r}")
        return value

    return parse


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL")
    return raw.rstrip("/")


def _text(name: str, raw: str) -> str:
    return raw


def _choice(*allowed: str):
    def parse(name: str, raw: str) -> str:
        if raw not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
        return raw

    return parse


def _database_url(name: str, raw: str) -> str:
    from sqlalchemy.engine import make_url  # lazy: keeps `emsync --help` fast
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(f"{name} is not a valid database URL") from None
    except ValueError:  # SQLAlchemy parses the port as it reads the URL
        raise ConfigError(f"{name} is not a valid database URL: the port must be a number") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"{name} must be a sqlite:// or postgresql+psycopg:// URL")
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        raw = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return raw


def _fernet_key(name: str, raw: str) -> str:
    """One Fernet key, or several separated by commas during a rotation (``new,old``: the first encrypts)."""
    import base64
    import binascii

    keys = [k.strip() for k in raw.split(",")]
    for n, key in enumerate(keys, start=1):
        try:
            decoded = base64.urlsafe_b64decode(key.encode())
        except (binascii.Error, ValueError):
            decoded = b""
        if len(decoded) != 32:
            which = f"key {n} of {len(keys)} in {name}" if len(keys) > 1 else name
            raise ConfigError(
                f"{which} is not a valid key (32 url-safe base64-encoded bytes): restore the key the stored tokens were "
                "encrypted with (see the key's backup); a new installation gets one from 'emsync init'"
            )
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{name} names the same key twice")
    return ",".join(keys)


def _version(prefix: str):
    def parse(name: str, raw: str) -> str:
        body = raw[1:] if raw.startswith("v") else ""
        if not body or not body.replace(".", "").isdigit():
            raise ConfigError(f"{name} must look like {prefix}, got {raw!r}")
        return raw

    return parse


def _action_types(name: str, raw: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in raw.split(",") if t.strip())
    if not types:
        raise ConfigError(f"{name} must list at least one action type")
    return types


# Meta's attribution windows for action_attribution_windows (Ads Action Stats). 7d_view and 28d_view
# were deprecated by Meta in 2026: asking for them fails every query, so they are refused at start.
ATTRIBUTION_WINDOWS = ("1d_click", "7d_click", "28d_click", "1d_view", "1d_ev")
DEPRECATED_WINDOWS = ("7d_view", "28d_view")


def _attribution(name: str, raw: str) -> str:
    """``unified`` (each ad set's own attribution setting, as in Ads Manager) or a list of windows."""
    if raw == "unified":
        return raw
    windows = [w.strip() for w in raw.split(",") if w.strip()]
    if not windows:
        raise ConfigError(f"{name} must be 'unified' or a list of attribution windows such as 7d_click,1d_view")
    for window in windows:
        if window in DEPRECATED_WINDOWS:
            raise ConfigError(f"{name}: {window} was deprecated by Meta in 2026; use {', '.join(ATTRIBUTION_WINDOWS)} or 'unified'")
        if window not in ATTRIBUTION_WINDOWS:
            raise ConfigError(f"{name}: unknown attribution window {window!r}; use 'unified' or some of {', '.join(ATTRIBUTION_WINDOWS)}")
    return ",".join(dict.fromkeys(windows))


# ---------------------------------------------------------------- the table

Parser = Callable[[str, str], Any]
REQUIRED: Any = MISSING  # a Settings field with no default (load_settings computes it when unset)
_KEY = "emsync.setting"  # where _setting() leaves its part of the record in the field's metadata


@dataclass(frozen=True)
class Setting:
    """One row of the table: a setting as the environment names it and as ``Settings`` holds it."""

    env: str  # name in the environment and in env files
    attr: str  # attribute of Settings
    parse: Parser  # (env, raw) -> value, raising ConfigError with the bounds
    default: Any  # value when unset (None: unset stays None; REQUIRED: computed by load_settings)
    secret: bool  # hidden from repr, handed to the redaction layer by Settings.secrets()
    help: str  # what it means, one line

    @property
    def default_text(self) -> str:
        """The default as written in an env file; '' when there is none to write."""
        if self.default is None or self.default is REQUIRED:
            return ""
        if isinstance(self.default, tuple):
            return ",".join(self.default)
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)


def _setting(env: str, default: Any, parse: Parser, *, help: str, secret: bool = False) -> Any:
    """A ``Settings`` field that is also a row of the table (its attribute is the field's name)."""
    return field(default=default, repr=not secret, metadata={_KEY: dict(env=env, parse=parse, secret=secret, help=help)})


@dataclass(frozen=True)
class Settings:
    # Every field but env_file is a setting: one _setting() each, in the order .env.example lists them.
    database_url: str = _setting(
        "EMSYNC_DATABASE_URL",
        REQUIRED,
        _database_url,
        help="sqlite:// or postgresql+psycopg:// URL; unset: SQLite file emsync.db in the XDG data directory",
    )
    env_file: Path | None = None  # which env file was read (not a setting: where settings come from)
    # setting name -> "the environment" or "PATH line N", for messages about a value (not a setting either)
    origins: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    secret_key: str | None = _setting(
        "EMSYNC_SECRET_KEY",
        None,
        _fernet_key,
        secret=True,
        help="Fernet key that encrypts tokens at rest ('new,old' during a rotation); 'emsync init' makes one",
    )
    # Meta refuses data older than 37 months, so a longer window could never succeed.
    lookback_days: int = _setting(
        "EMSYNC_LOOKBACK_DAYS", 30, _int(1, 1100), help="the window: today in the account's time zone and the days before it"
    )
    recent_days: int = _setting(
        "EMSYNC_RECENT_DAYS", 3, _int(1, 1100), help="days re-fetched on an ordinary run once a recent full sync exists"
    )
    full_sync_hours: int = _setting(
        "EMSYNC_FULL_SYNC_HOURS", 24, _int(0, 24 * 366), help="how often the whole window is re-fetched (restatements, late conversions)"
    )
    concurrency: int = _setting("EMSYNC_CONCURRENCY", 8, _int(1, 256), help="integrations synced at once by one process")
    min_interval_minutes: int = _setting(
        "EMSYNC_MIN_INTERVAL_MINUTES",
        10,
        _int(0, 10**6),
        help="`sync-all` skips an integration whose last successful sync started less than this long ago (0: never)",
    )
    db_pool_size: int = _setting(
        "EMSYNC_DB_POOL_SIZE",
        4,
        _int(1, 64),
        help="PostgreSQL connections one process uses for its work, whatever the concurrency (plus one for leases)",
    )
    http_timeout: float = _setting("EMSYNC_HTTP_TIMEOUT", 60.0, _float(0.1, 3600), help="seconds per HTTP request (connect and read)")
    retry_attempts: int = _setting("EMSYNC_RETRY_ATTEMPTS", 5, _int(1, 100), help="attempts per request for retryable failures")
    retry_max_wait: float = _setting(
        "EMSYNC_RETRY_MAX_WAIT",
        60.0,
        _float(0, 86400),
        help="longest single wait (s); a server asking for longer marks the integration rate_limited",
    )
    stale_after_minutes: int = _setting(
        "EMSYNC_STALE_AFTER_MINUTES",
        90,
        _int(1, 10**7),
        help="`status --check`: WARNING when an active integration has not synced for this long, CRITICAL beyond twice",
    )
    log_format: str = _setting(
        "EMSYNC_LOG_FORMAT", "text", _choice("text", "json"), help="text (timestamped lines) or json (one object per line)"
    )
    log_file: str | None = _setting("EMSYNC_LOG_FILE", None, _text, help="also append logs to this file, rotated at 10 MB, 5 files kept")
    healthcheck_url: str | None = _setting(
        "EMSYNC_HEALTHCHECK_URL", None, _http_url, help="dead-man's switch: URL/start, then URL or URL/fail after each sync-all"
    )
    metrics_file: str | None = _setting(
        "EMSYNC_METRICS_FILE",
        None,
        _text,
        help="after each run, write Prometheus metrics here (node_exporter textfile collector: a *.prom file), mode 0644",
    )
    history_days: int = _setting(
        "EMSYNC_HISTORY_DAYS",
        90,
        _int(0, 100000),
        help="days of sync_runs/sync_attempts kept; older ones are pruned at the end of each sync-all (0: keep all)",
    )
    meta_graph_url: str = _setting("META_GRAPH_URL", "https://graph.facebook.com", _http_url, help="Meta Graph API base URL")
    meta_api_version: str = _setting("META_API_VERSION", "v25.0", _version("v25.0"), help="Meta Marketing API version")
    meta_app_id: str | None = _setting("META_APP_ID", None, _text, help="Meta app id: token renewal (fb_exchange_token)")
    meta_app_secret: str | None = _setting(
        "META_APP_SECRET", None, _text, secret=True, help="Meta app secret: token renewal and appsecret_proof on every call"
    )
    meta_conversion_action_types: tuple[str, ...] = _setting(
        "META_CONVERSION_ACTION_TYPES",
        ("omni_purchase", "purchase", "offsite_conversion.fb_pixel_purchase"),
        _action_types,
        help="priority list: the first type present in a row's actions is its conversions, its value the revenue",
    )
    meta_attribution: str = _setting(
        "META_ATTRIBUTION",
        "unified",
        _attribution,
        help="unified (each ad set's attribution setting, as Ads Manager) or windows to sum, e.g. 7d_click,1d_view",
    )
    meta_clicks: str = _setting(
        "META_CLICKS", "all", _choice("all", "link"), help="which Meta clicks CTR and CPC divide by: all (clicks) or link (link_clicks)"
    )
    google_ads_api_url: str = _setting(
        "GOOGLE_ADS_API_URL", "https://googleads.googleapis.com", _http_url, help="Google Ads API (REST) base URL"
    )
    google_ads_api_version: str = _setting("GOOGLE_ADS_API_VERSION", "v26", _version("v26"), help="Google Ads API version")
    google_ads_developer_token: str | None = _setting(
        "GOOGLE_ADS_DEVELOPER_TOKEN", None, _text, secret=True, help="Google Ads developer token, sent when set"
    )
    google_oauth_client_id: str | None = _setting(
        "GOOGLE_OAUTH_CLIENT_ID", None, _text, help="OAuth client (type Desktop app): `emsync connect google` and the refresh-token grant"
    )
    google_oauth_client_secret: str | None = _setting(
        "GOOGLE_OAUTH_CLIENT_SECRET", None, _text, secret=True, help="OAuth client secret for the refresh-token grant"
    )
    google_oauth_token_url: str = _setting(
        "GOOGLE_OAUTH_TOKEN_URL", "https://oauth2.googleapis.com/token", _http_url, help="OAuth token endpoint"
    )
    google_oauth_auth_url: str = _setting(
        "GOOGLE_OAUTH_AUTH_URL",
        "https://accounts.google.com/o/oauth2/v2/auth",
        _http_url,
        help="OAuth authorization endpoint, where `emsync connect google` sends the browser",
    )
    google_oauth_revoke_url: str = _setting(
        "GOOGLE_OAUTH_REVOKE_URL",
        "https://oauth2.googleapis.com/revoke",
        _http_url,
        help="OAuth revocation endpoint, used by `emsync credentials remove`",
    )
    google_ads_daily_operations: int = _setting(
        "GOOGLE_ADS_DAILY_OPERATIONS",
        15000,
        _int(1, 10**9),
        help="your project's daily operations quota; when the schedule cannot fit, Google integrations take turns",
    )
    backfill_google_ops: int | None = _setting(
        "EMSYNC_BACKFILL_GOOGLE_OPS",
        None,
        _int(0, 10**9),
        help="Google Ads operations backfills may spend a day; unset: half of what the schedule leaves of the daily quota",
    )
    cron_secret: str | None = _setting(
        "CRON_SECRET", None, _text, secret=True, help="bearer secret of the optional HTTP trigger (`emsync serve`); at least 32 characters"
    )

    def secrets(self) -> list[str]:
        """Every configured secret value (each setting marked secret), for the redaction layer."""
        found = [value for s in SETTINGS if s.secret and (value := getattr(self, s.attr))]
        if self.secret_key and "," in self.secret_key:  # during a rotation each key is a secret on its own too
            found += self.secret_key.split(",")
        return found

    @property
    def meta_attribution_windows(self) -> tuple[str, ...]:
        """The windows META_ATTRIBUTION lists; () for ``unified``."""
        return () if self.meta_attribution == "unified" else tuple(self.meta_attribution.split(","))

    def origin(self, name: str) -> str:
        """Where setting ``name``'s value came from: "the environment", "PATH line N" or "the default"."""
        return self.origins.get(name, "the default")

    def require_secret_key(self) -> str:
        if not self.secret_key:
            raise ConfigError(
                "EMSYNC_SECRET_KEY is not set: run 'emsync init' to generate one, or set it in the environment or the env file"
            )
        return self.secret_key


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(attr=f.name, default=f.default, **f.metadata[_KEY]) for f in fields(Settings) if _KEY in f.metadata
)
SETTING_NAMES = tuple(s.env for s in SETTINGS)


ENV_FILE_VARIABLE = "EMSYNC_ENV_FILE"  # read from the process environment only: which env file to read
_PREFIXES = tuple(sorted({name.split("_", 1)[0] + "_" for name in SETTING_NAMES}))  # EMSYNC_, META_, GOOGLE_, CRON_


def env_files(env_file: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None, *, missing_ok: bool = False) -> list:
    """The env files settings come from, lowest precedence first, each read strictly (``envfile.EnvFile``).

    The per-user file, then the explicit one (``env_file``, else ``EMSYNC_ENV_FILE``) or else ``.env``
    in the working directory. A ``.env`` directory there is not an env file (``python -m venv .env``
    makes one) and is passed over. ``missing_ok`` lets an explicit file be missing (``init`` creates it).

    Raises:
        ConfigError: an env file is missing (explicit), a directory, not UTF-8 or has a line that is
            not NAME=value; the message names the file and the line.
    """
    from . import envfile

    environ = os.environ if environ is None else environ
    explicit = env_file if env_file is not None else environ.get(ENV_FILE_VARIABLE) or None
    files = []
    fallback = user_env_file()
    if fallback.exists():
        files.append(envfile.read(fallback))
    if explicit:
        path = Path(explicit).expanduser()
        if path.exists() or not missing_ok:
            files.append(envfile.read(path))
    elif (Path.cwd() / ".env").is_file():
        files.append(envfile.read(Path.cwd() / ".env"))
    return files


def env_file_warnings(files: list) -> list[str]:
    """What is probably a mistake in these env files: a name set twice in one file, and a name that
    looks like a setting (EMSYNC_, META_, GOOGLE_, CRON_) but is none, with the closest setting."""
    import difflib

    warnings: list[str] = []
    for file in files:
        warnings += file.warnings
        for name, line in file.lines.items():
            if name in SETTING_NAMES or not name.startswith(_PREFIXES):
                continue
            if name == ENV_FILE_VARIABLE:
                warnings.append(f"{file.path} line {line}: {name} is read from the environment only; ignored here")
                continue
            # Compared without the prefix they share, or EMSYNC_FOO would be "close" to every EMSYNC_ setting.
            prefix = name.split("_", 1)[0] + "_"
            same_prefix = {s.removeprefix(prefix): s for s in SETTING_NAMES if s.startswith(prefix)}
            close = [same_prefix[m] for m in difflib.get_close_matches(name.removeprefix(prefix), same_prefix, n=1, cutoff=0.6)]
            close = close or difflib.get_close_matches(name, SETTING_NAMES, n=1, cutoff=0.85)
            hint = f"did you mean {close[0]}?" if close else "see .env.example for the settings"
            warnings.append(f"{file.path} line {line}: unknown setting {name} ({hint}); ignored")
    return warnings


def load_settings(
    env_file: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None, *, missing_ok: bool = False
) -> Settings:
    """Read and validate every setting once.

    ``missing_ok``: an explicit env file that does not exist yet is not an error (``init`` creates
    it); ``Settings.env_file`` still names it.

    Raises:
        ConfigError: an env file that cannot be read (see ``env_files``), or the first invalid
            setting, named with where its value came from.
    """
    environ = dict(os.environ if environ is None else environ)
    files = env_files(env_file, environ, missing_ok=missing_ok)
    explicit = env_file if env_file is not None else environ.get(ENV_FILE_VARIABLE) or None

    merged: dict[str, str] = {}
    origins: dict[str, str] = {}
    for file in files:
        for name, value in file.values.items():
            merged[name] = value
            origins[name] = f"{file.path} line {file.lines.get(name, '?')}"
    for name in SETTING_NAMES:
        if name in environ:
            merged[name], origins[name] = environ[name], "the environment"

    chosen = Path(explicit).expanduser() if explicit else (files[-1].path if files else None)
    values: dict[str, object] = {"env_file": chosen, "origins": origins}
    for setting in SETTINGS:
        raw = merged.get(setting.env)
        if raw is None or raw.strip() == "":
            continue
        try:
            values[setting.attr] = setting.parse(setting.env, raw.strip())
        except ConfigError as exc:
            raise ConfigError(f"{exc} (set in {origins[setting.env]})") from None
    if "database_url" not in values:  # the one default that depends on the environment (REQUIRED in the table)
        values["database_url"] = f"sqlite:///{data_dir() / 'emsync.db'}"
    return Settings(**values)  # type: ignore[arg-type]
