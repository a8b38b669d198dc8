"""Generating the token-encryption key on first `emsync init`."""

from __future__ import annotations

import os
from pathlib import Path

from .config import Settings
from .crypto import new_key
from .errors import ConfigError


def ensure_secret_key(settings: Settings, env_file: Path) -> Path | None:
    """Append a new EMSYNC_SECRET_KEY to ``env_file`` (mode 0600) unless one is configured.

    Returns the file written, or None when a key was already there.
    """
    if settings.secret_key:
        return None
    env_file = Path(env_file)
    try:
        env_file.parent.mkdir(parents=True, exist_ok=True)
        existing = env_file.read_text() if env_file.exists() else ""
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            if existing and not existing.endswith("\n"):
                fh.write("\n")
            fh.write("# Encrypts tokens at rest. Losing it means re-adding every token.\n")
            fh.write(f"EMSYNC_SECRET_KEY={new_key()}\n")
        os.chmod(env_file, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write the secret key to {env_file}: {exc.strerror}") from None
    return env_file
