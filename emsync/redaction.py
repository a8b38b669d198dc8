"""Secrets never leave emsync in clear text: a registry of secret values plus patterns for secret-shaped text.

``register_secret`` is called for every token, key and client secret as soon
as emsync holds it; ``redact`` masks them (longest first) together with secret
query parameters and bearer tokens; ``RedactingFilter`` sits on every log
handler. The registry is indexed by each secret's first six characters, so a log line costs one pass over
its own characters whatever the number of secrets (a run over 10,000 integrations holds tens of thousands of
tokens: scanning each line for every one of them made logging quadratic).
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
# First MIN_SECRET_LENGTH characters -> the secrets starting so, longest first. Replaced, never mutated, under
# _lock; readers take it without the lock (one dict lookup is atomic).
_by_prefix: dict[str, tuple[str, ...]] = {}


def register_secret(*values: str | None) -> None:
    """Remember secret values so that ``redact`` masks them wherever they appear (shorter than 6 characters: ignored)."""
    fresh = [v for v in values if v and len(v) >= MIN_SECRET_LENGTH and v not in _known]
    if not fresh:
        return
    with _lock:
        for value in fresh:
            if value in _known:
                continue
            _known.add(value)
            key = value[:MIN_SECRET_LENGTH]
            _by_prefix[key] = tuple(sorted((*_by_prefix.get(key, ()), value), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with secret query parameters, bearer tokens and every registered secret replaced by ``***``.

    Every character that belongs to an occurrence of a registered secret is masked, overlapping occurrences
    included (they become one ``***``).
    """
    text = _PARAM_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} ***", text)
    return _mask_registered(text) if _by_prefix else text


def _mask_registered(text: str) -> str:
    get = _by_prefix.get
    width = MIN_SECRET_LENGTH
    spans: list[list[int]] = []
    for i in range(len(text) - width + 1):
        candidates = get(text[i : i + width])
        if candidates is None:
            continue
        for secret in candidates:  # longest first: the first that matches covers the others here
            if text.startswith(secret, i):
                end = i + len(secret)
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = max(spans[-1][1], end)
                else:
                    spans.append([i, end])
                break
    if not spans:
        return text
    parts, last = [], 0
    for start, end in spans:
        parts.append(text[last:start])
        parts.append("***")
        last = end
    parts.append(text[last:])
    return "".join(parts)


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
