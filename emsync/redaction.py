"""Secrets never leave emsync in clear text: a registry of secret values plus patterns for secret-shaped text.

``register_secret`` is called for every token, key and client secret as soon
as emsync holds it; ``redact`` masks them (longest first) together with secret
query parameters and bearer tokens; ``RedactingFilter`` sits on every log
handler. The registry is kept sorted as it grows, so a log line costs one
pass over the prepared list and no sort.
"""

from __future__ import annotations

import logging
import re
import threading

SECRET_PARAMS = (
    "access_token",
    "client_secret",
    "refresh_token",
    "fb_exchange_token",
    "input_token",
    "appsecret_proof",
    "code",
    "password",
)
_PARAM_RE = re.compile(r"(?i)\b(" + "|".join(SECRET_PARAMS) + r")(=|%3D|\"\s*:\s*\")([^&\s\"'#]+)")
# Only the "Bearer <token>" shape (RFC 6750): masking the word after "OAuth" hid ordinary words
# ("Google OAuth rejected the client"); the token parameters above and the registry cover the rest.
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=|-]{8,}")
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_known: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first, rebuilt only when a new secret arrives


def register_secret(*values: str | None) -> None:
    """Remember secret values so that ``redact`` masks them wherever they appear (shorter than 6 characters: ignored)."""
    global _ordered
    fresh = [v for v in values if v and len(v) >= MIN_SECRET_LENGTH and v not in _known]
    if not fresh:
        return
    with _lock:
        _known.update(fresh)
        _ordered = tuple(sorted(_known, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with secret query parameters, bearer tokens and every registered secret replaced by ``***``."""
    text = _PARAM_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} ***", text)
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """Applied to every emsync log handler: no record leaves with a secret in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
