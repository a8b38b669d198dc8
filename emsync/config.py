"""Settings: read once from the environment and env files, validated, frozen.

Precedence, highest first: the process environment, the env file named by
``--env-file`` / ``EMSYNC_ENV_FILE`` (or else ``.env`` in the working
directory), then the per-user file ``$XDG_CONFIG_HOME/emsync/emsync.env``
that ``emsync init`` writes when no other env file exists, so that cron finds
the secret key whatever its working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_META_CONVERSION_TYPES = "omni_purchase,purchase,offsite_conversion.fb_pixel_purchase"


def data_dir() -> Path:
    """Where the default SQLite database lives (XDG data directory)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "emsync"


def user_env_file() -> Path:
    """The per-user env file, used when there is no ``.env`` in the working directory."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "emsync" / "emsync.env"


def _secret_field():
    return field(default=None, repr=False)


@dataclass(frozen=True)
class Settings:
    database_url: str
    env_file: Path | None = None
    secret_key: str | None = _secret_field()
    lookback_days: int = 30
    recent_days: int = 3
    full_sync_hours: int = 24
    concurrency: int = 8
    http_timeout: float = 60.0
    retry_attempts: int = 5
    retry_max_wait: float = 60.0
    stale_after_minutes: int = 90
    log_format: str = "text"
    log_file: str | None = None
    healthcheck_url: str | None = None
    meta_graph_url: str = "https://graph.facebook.com"
    meta_api_version: str = "v25.0"
    meta_app_id: str | None = None
    meta_app_secret: str | None = _secret_field()
    meta_conversion_action_types: tuple[str, ...] = tuple(DEFAULT_META_CONVERSION_TYPES.split(","))
    google_ads_api_url: str = "https://googleads.googleapis.com"
    google_ads_api_version: str = "v26"
    google_ads_developer_token: str | None = _secret_field()
    google_oauth_client_id: str | None = None
    google_oauth_client_secret: str | None = _secret_field()
    google_oauth_token_url: str = "https://oauth2.googleapis.com/token"
    google_ads_daily_operations: int = 15000
    cron_secret: str | None = _secret_field()

    def secrets(self) -> list[str]:
        """Every configured secret value, for the redaction layer."""
        return [
            s
            for s in (
                self.secret_key,
                self.meta_app_secret,
                self.google_ads_developer_token,
                self.google_oauth_client_secret,
                self.cron_secret,
            )
            if s
        ]

    def require_secret_key(self) -> str:
        if not self.secret_key:
            raise ConfigError(
                "EMSYNC_SECRET_KEY is not set: run 'emsync init' to generate one, or set it in the environment or the env file"
            )
        return self.secret_key


# name in the environment -> (field, parser)
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
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"{name} must be a sqlite:// or postgresql+psycopg:// URL")
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        raw = url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return raw


def _fernet_key(name: str, raw: str) -> str:
    import base64
    import binascii

    try:
        decoded = base64.urlsafe_b64decode(raw.encode())
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != 32:
        raise ConfigError(f"{name} is not a valid key (32 url-safe base64-encoded bytes); 'emsync init' makes one")
    return raw


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


_SPEC: dict[str, tuple[str, object]] = {
    "EMSYNC_DATABASE_URL": ("database_url", _database_url),
    "EMSYNC_SECRET_KEY": ("secret_key", _fernet_key),
    # Meta refuses data older than 37 months, so a longer window could never succeed.
    "EMSYNC_LOOKBACK_DAYS": ("lookback_days", _int(1, 1100)),
    "EMSYNC_RECENT_DAYS": ("recent_days", _int(1, 1100)),
    "EMSYNC_FULL_SYNC_HOURS": ("full_sync_hours", _int(0, 24 * 366)),
    "EMSYNC_CONCURRENCY": ("concurrency", _int(1, 256)),
    "EMSYNC_HTTP_TIMEOUT": ("http_timeout", _float(0.1, 3600)),
    "EMSYNC_RETRY_ATTEMPTS": ("retry_attempts", _int(1, 100)),
    "EMSYNC_RETRY_MAX_WAIT": ("retry_max_wait", _float(0, 86400)),
    "EMSYNC_STALE_AFTER_MINUTES": ("stale_after_minutes", _int(1, 10**7)),
    "EMSYNC_LOG_FORMAT": ("log_format", _choice("text", "json")),
    "EMSYNC_LOG_FILE": ("log_file", _text),
    "EMSYNC_HEALTHCHECK_URL": ("healthcheck_url", _http_url),
    "META_GRAPH_URL": ("meta_graph_url", _http_url),
    "META_API_VERSION": ("meta_api_version", _version("v25.0")),
    "META_APP_ID": ("meta_app_id", _text),
    "META_APP_SECRET": ("meta_app_secret", _text),
    "META_CONVERSION_ACTION_TYPES": ("meta_conversion_action_types", _action_types),
    "GOOGLE_ADS_API_URL": ("google_ads_api_url", _http_url),
    "GOOGLE_ADS_API_VERSION": ("google_ads_api_version", _version("v26")),
    "GOOGLE_ADS_DEVELOPER_TOKEN": ("google_ads_developer_token", _text),
    "GOOGLE_OAUTH_CLIENT_ID": ("google_oauth_client_id", _text),
    "GOOGLE_OAUTH_CLIENT_SECRET": ("google_oauth_client_secret", _text),
    "GOOGLE_OAUTH_TOKEN_URL": ("google_oauth_token_url", _http_url),
    "GOOGLE_ADS_DAILY_OPERATIONS": ("google_ads_daily_operations", _int(1, 10**9)),
    "CRON_SECRET": ("cron_secret", _text),
}

SETTING_NAMES = tuple(_SPEC)


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    try:
        values = dotenv_values(path)
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}") from None
    return {k: v for k, v in values.items() if v is not None}


def load_settings(env_file: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read and validate every setting once.

    Raises:
        ConfigError: naming the first invalid setting.
    """
    environ = dict(os.environ if environ is None else environ)
    explicit = env_file if env_file is not None else environ.get("EMSYNC_ENV_FILE") or None
    path = Path(explicit).expanduser() if explicit else None
    if path is not None and not path.is_file():
        raise ConfigError(f"env file {path} does not exist")
    if path is None and (Path.cwd() / ".env").is_file():
        path = Path.cwd() / ".env"

    merged: dict[str, str] = {}
    fallback = user_env_file()
    if fallback.is_file():
        merged.update(_read_env_file(fallback))
    if path is not None:
        merged.update(_read_env_file(path))
    merged.update({k: v for k, v in environ.items() if k in _SPEC})

    values: dict[str, object] = {"env_file": path if path is not None else (fallback if fallback.is_file() else None)}
    for name, (attr, parse) in _SPEC.items():
        raw = merged.get(name)
        if raw is None or raw.strip() == "":
            continue
        values[attr] = parse(name, raw.strip())  # type: ignore[operator]
    if "database_url" not in values:
        values["database_url"] = f"sqlite:///{data_dir() / 'emsync.db'}"
    return Settings(**values)  # type: ignore[arg-type]
