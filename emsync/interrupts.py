"""Stopping a run on request (Ctrl-C, SIGTERM from systemd or ``timeout``): one cancel token for the whole run.

The first signal sets the run's ``CancelToken``:

* no new integration (or backfill chunk) is started;
* every HTTP request in flight is aborted at once: the token holds the sockets
  of the run's HTTP session (``http.new_session``) and shuts them down, so a
  worker blocked in a read returns immediately; waits (retry back-offs, a Meta
  async report's polling) end at once too. Nothing fetched that way is written.
  (A connection still being opened — name lookup, TCP or TLS handshake — has no
  socket to shut down yet: it ends within ``EMSYNC_HTTP_TIMEOUT`` and is then
  abandoned the same way);
* a write transaction already begun is finished (signals never reach the
  worker threads that write; the token only closes HTTP sockets);
* the run is recorded as ``interrupted`` with its true counts, and the CLI
  exits 130 (SIGINT) or 143 (SIGTERM), as a shell reports a process killed by
  that signal.

A second signal exits at once with ``os._exit`` (a thread pool's workers would
otherwise be joined): no traceback, nothing more written; the database keeps
the previous rows, and what the first signal left running dies with the process
(a flock is dropped by the kernel, a lease of a dead pid is broken by the next
run on the host).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import EmsyncError

EXIT_CODES: dict[int, int] = {signal.SIGINT.value: 130, signal.SIGTERM.value: 143}


class Interrupted(EmsyncError):
    """The run was asked to stop (Ctrl-C, SIGTERM) while this step was waiting or fetching; nothing of it is written."""

    exit_code = 130


class CancelToken:
    """Set once to stop a run; shared by the engine, its worker threads and its HTTP session.

    Behaves like a ``threading.Event`` (``set``, ``is_set``, ``wait``), so code that
    only needs "stop between steps" can take either. ``signum`` is the signal that set
    it (None when set by code). ``track``/``untrack`` are for the HTTP layer: objects
    with a ``sock`` attribute (http.client connections) whose socket ``set`` shuts down.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.RLock()  # re-entrant: ``set`` may run in a signal handler on a thread that holds it
        self._live: weakref.WeakSet = weakref.WeakSet()
        self.signum: int | None = None

    def set(self, signum: int | None = None) -> None:
        """Stop: remember ``signum`` (the first one wins), wake every waiter, abort every tracked connection."""
        if signum is not None and self.signum is None:
            self.signum = signum
        self._event.set()
        with self._lock:
            live = list(self._live)
        for conn in live:
            _abort(conn)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds or until set; True when set."""
        return self._event.wait(timeout)

    def check(self) -> None:
        """Raises:
        Interrupted: once the token is set."""
        if self._event.is_set():
            raise Interrupted(self.reason())

    def reason(self) -> str:
        names = {signal.SIGINT.value: "Ctrl-C (SIGINT)", signal.SIGTERM.value: "SIGTERM"}
        name = names.get(self.signum or 0, "a request to stop")
        return f"stopped by {name}; nothing of it was written"

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 143 after SIGTERM (128 + the signal's number, as shells report it)."""
        signum = self.signum or signal.SIGINT.value
        return EXIT_CODES.get(signum, 128 + signum)

    def track(self, conn) -> None:
        """Abort ``conn`` (its ``sock``) when the token is set; at once when it already is."""
        with self._lock:
            self._live.add(conn)
        if self._event.is_set():  # set between the connect and here: the snapshot in ``set`` may have missed it
            _abort(conn)

    def untrack(self, conn) -> None:
        with self._lock:
            self._live.discard(conn)


def _say(line: str) -> None:
    """One line on stderr from a signal handler: straight to the file descriptor (the main thread may be inside a
    buffered write to stderr, and re-entering it raises)."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass  # stderr gone (a closed pipe): stopping matters more than saying so


def _abort(conn) -> None:
    """Wake whoever reads or writes on the connection's socket (shutdown, never close: the fd is another thread's)."""
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected


@contextmanager
def stop_on_signals(token: CancelToken, notice: str, *, log_format: str = "text") -> Iterator[CancelToken]:
    """While the block runs, the first SIGINT or SIGTERM sets ``token`` and prints ``emsync: stopping: NOTICE`` (a JSON
    object with ``log_format="json"``);
    a second one (or any, once the token is already set) exits at once (``os._exit``: 130 or 143). Outside the main
    thread (no signals there) it does nothing. The previous handlers come back when the block ends.

    The signals are acted on by a watcher thread reading the interpreter's wakeup pipe (``signal.set_wakeup_fd``:
    the C-level handler writes each signal's number there at once), not by a Python handler in the main thread: that
    one runs only between bytecodes, and the main thread may be waiting inside the database driver (a SQLite busy
    wait, a PostgreSQL round trip) for many seconds. The Python handlers only keep ``KeyboardInterrupt`` away.
    """
    if threading.current_thread() is not threading.main_thread():
        yield token
        return
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous = {sig: signal.signal(sig, _noted) for sig in EXIT_CODES}
    previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(wake_r, token, notice, log_format), name="emsync-signals", daemon=True)
    watcher.start()
    try:
        yield token
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, old in previous.items():
            signal.signal(sig, old)
        os.close(wake_w)  # the watcher reads the end of the pipe and returns
        watcher.join()
        os.close(wake_r)


def _noted(signum, frame) -> None:
    """The Python-level handler: nothing to do (the watcher thread acts), but no ``KeyboardInterrupt`` either."""


def _watch(wake_r: int, token: CancelToken, notice: str, log_format: str) -> None:
    while True:
        try:
            data = os.read(wake_r, 64)
        except InterruptedError:
            continue
        if not data:
            return
        for signum in data:
            if signum not in EXIT_CODES:
                continue
            if token.is_set():
                _say(_line("emsync: stopped at once", log_format))
                os._exit(EXIT_CODES[signum])
            token.set(signum)
            _say(_line(f"emsync: stopping: {notice} (Ctrl-C again quits at once)", log_format))


def _line(text: str, log_format: str) -> str:
    """``text`` as a line of the log format: as is, or one JSON object (EMSYNC_LOG_FORMAT=json: every line is JSON)."""
    if log_format != "json":
        return text
    import json
    from datetime import UTC, datetime

    return json.dumps({"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "level": "warning", "message": text})
