"""Files emsync creates: private (0600/0700) whatever the umask, written atomically where a reader may look.

Everything emsync writes holds something worth protecting (tokens in the database, the key in the env
file, account names in logs), so new files are 0600 and new directories 0700 unless a caller asks for
another mode, e.g. 0644 for a Prometheus textfile that node_exporter reads as its own user. The mode
is set with ``fchmod`` after creation, so a permissive umask (``umask 000``) cannot widen it and a
strict one (``UMask=0077``) cannot narrow a deliberate 0644.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and any missing parents with mode 0700; existing directories keep their mode.

    Returns the directory. Raises OSError (``strerror`` says why) when it cannot be created.
    """
    path = Path(path)
    missing = []
    for parent in (path, *path.parents):
        if parent.is_dir():
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return path


def create_private(path: str | os.PathLike, mode: int = PRIVATE_FILE) -> bool:
    """Create an empty file with exactly ``mode`` (0600 by default) unless it exists; its directory too (0700).

    Returns True when this call created it. Raises OSError when it cannot.
    """
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def open_private(path: str | os.PathLike, flags: int, mode: int = PRIVATE_FILE) -> int:
    """``os.open`` for ``open(..., opener=...)``: a file this call creates gets exactly ``mode`` (0600 by default).

    An existing file is opened as it is (its mode is its owner's choice).
    """
    if not flags & os.O_CREAT:
        return os.open(path, flags)
    try:
        fd = os.open(path, flags | os.O_EXCL, mode)
    except FileExistsError:
        return os.open(path, flags & ~os.O_CREAT)
    try:
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int = PRIVATE_FILE) -> Path:
    """Replace ``path`` with ``data`` in one step: a reader sees the old content or the new, never a part.

    The new file gets exactly ``mode`` (0600 by default; 0644 for a file another user reads) and,
    when it replaces a file, that file's owner and group when the process may set them (root
    rewriting a service user's env file leaves it the service user's). A symlink is followed: its
    target is replaced. Missing directories are created 0700. Returns the path written.

    Raises:
        OSError: the directory cannot be created or written (``strerror`` says why); nothing changed.
    """
    target = Path(os.path.realpath(path))
    private_dir(target.parent)
    payload = data.encode() if isinstance(data, str) else data
    try:
        owner = os.stat(target)
    except FileNotFoundError:
        owner = None
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if owner is not None and (owner.st_uid, owner.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.fchown(fh.fileno(), owner.st_uid, owner.st_gid)
                except PermissionError:
                    pass  # not root: the file becomes ours, as any editor would leave it
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is done either way
    finally:
        os.close(fd)
