"""Env files: read strictly (a line that is not ``NAME=value`` is an error with its line), written in place.

The syntax is python-dotenv's (comments, blank lines, ``export NAME=value``, single or double
quotes, ``${VAR}`` in unquoted and double-quoted values); what python-dotenv would skip with a log
line, emsync refuses, because a silently skipped line is a setting silently left at its default.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@%+=,~-]*")  # written unquoted; anything else goes in single quotes


@dataclass(frozen=True)
class EnvFile:
    """One env file as read: its values and the line each name was (last) set on."""

    path: Path
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # names set twice, each "PATH line N: ..."


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # a BOM (Windows editors) is not part of the first name
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"env file {path} line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); save it as UTF-8 (e.g. iconv -t UTF-8)"
        ) from None


def _bindings(text: str):
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        # A binding's text starts with the blank lines before it: its own line is further down.
        leading = original[: len(original) - len(original.lstrip())]
        yield binding, binding.original.line + leading.count("\n"), leading


def _reason(line: str) -> str:
    body = line.strip()
    if body.startswith("export "):
        body = body[len("export ") :].lstrip()
    if "=" not in body:
        return "not NAME=value (no '=')"
    name, _, value = body.partition("=")
    if not name.strip():
        return "not NAME=value (nothing before '=')"
    if not _NAME.fullmatch(name.strip()):
        return f"{name.strip()[:40]!r} is not a name (letters, digits and '_', not starting with a digit)"
    value = value.strip()
    if value[:1] in ("'", '"'):
        return f"the value's opening {value[0]} is never closed"
    return "not NAME=value"


def read(path: str | Path) -> EnvFile:
    """Read one env file strictly.

    Returns an ``EnvFile``: values as python-dotenv reads them (quotes removed, ``${VAR}`` expanded).

    Raises:
        ConfigError: "env file PATH line N: reason" for a line that is not NAME=value, a file that
            is not UTF-8; "env file PATH is a directory" / "cannot read ..." for the file itself.
    """
    from dotenv import dotenv_values

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"env file {path} is a directory, not a file of NAME=value lines")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"env file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read env file {path}: {exc.strerror}") from None
    text = _decode(path, raw)
    lines: dict[str, int] = {}
    warnings: list[str] = []
    for binding, line, _ in _bindings(text):
        if binding.error:
            raise ConfigError(f"env file {path} line {line}: {_reason(binding.original.string)}")
        if binding.key is None:  # a comment or blank lines
            continue
        if not _NAME.fullmatch(binding.key) or binding.value is None:
            raise ConfigError(f"env file {path} line {line}: {_reason(binding.original.string)}")
        if binding.key in lines:
            warnings.append(f"{path} line {line}: {binding.key} is set again (first on line {lines[binding.key]}); this line wins")
        lines[binding.key] = line
    values = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
    return EnvFile(path, values, lines, tuple(warnings))


def quote(value: str) -> str:
    """``value`` as written after ``NAME=`` so that python-dotenv reads it back unchanged."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_value(path: str | Path, name: str, value: str, *, comment: str | None = None) -> bool:
    """Write ``NAME=value`` into the env file at ``path`` unless it already sets ``name`` to something.

    The file is created (mode 0600, its directory 0700) when missing. An empty ``NAME=`` line (a
    copy of ``.env.example``) is filled in place, and further empty ``NAME=`` lines are removed, so
    the file never holds the name twice; otherwise the line is appended, after ``# comment``. The
    file is replaced atomically with mode 0600, keeping its owner when the process may (in a directory
    the process cannot write, an addition at the end is appended instead).

    Returns True when the file was written, False when it already set ``name`` (left untouched).

    Raises:
        ConfigError: the file cannot be read (see ``read``) or written.
    """
    from .files import atomic_write

    path = Path(path)
    text = ""
    if path.exists():
        read(path)  # refuses what it could not rewrite faithfully
        text = _decode(path, path.read_bytes())
    parts: list[str] = []
    placed = False
    for binding, _, leading in _bindings(text):
        original = binding.original.string
        if binding.key == name:
            if binding.value:  # set (possibly to a `${VAR}` expansion): the caller's value is not wanted
                return False
            if placed:
                parts.append(leading)  # a second empty NAME= line: dropped
                continue
            original, placed = f"{leading}{name}={quote(value)}\n", True
        parts.append(original)
    if not placed:
        if parts and not parts[-1].endswith("\n"):
            parts.append("\n")
        if comment:
            parts.append(f"# {comment}\n")
        parts.append(f"{name}={quote(value)}\n")
    new_text = "".join(parts)
    try:
        atomic_write(path, new_text)
    except PermissionError as exc:
        # A writable file in a directory we may not write (the temporary file cannot be made there):
        # an addition at the end can still be appended safely; a change in place cannot.
        if not (new_text.startswith(text) and text and os.access(path, os.W_OK)):
            raise ConfigError(f"cannot write env file {path}: {exc.strerror}") from None
        _append(path, new_text[len(text) :])
    except OSError as exc:
        raise ConfigError(f"cannot write env file {path}: {exc.strerror}") from None
    return True


def _append(path: Path, addition: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(addition)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write env file {path}: {exc.strerror}") from None
