"""`emsync serve`: the original product's HTTP trigger (optional extra ``emsync[server]``).

``POST /api/cron/sync-all`` and ``POST /api/sync/user`` start a run in a
background thread through the same engine and claims as the CLI, so cron, the
CLI and the server never sync one integration twice at once. Every endpoint
but ``GET /healthz`` needs ``Authorization: Bearer <CRON_SECRET>``.

``serve`` binds the address itself before anything else (a busy or unassignable
address is one line and exit 2, and "listening" is logged only once it listens),
sends every log line — uvicorn's own and its access log included — through
emsync's handlers (``EMSYNC_LOG_FORMAT``, ``EMSYNC_LOG_FILE``, redaction), and on
SIGTERM or Ctrl-C stops the runs it started as the CLI does (``interrupts``):
fetches in flight aborted, writes begun finished, the runs recorded as
``interrupted``, their leases released; then it exits 143 or 130.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import runs, validate
from .config import Settings
from .errors import EmsyncError, UnknownUser, UserError
from .interrupts import EXIT_CODES, CancelToken, stop_on_signals
from .serialize import to_json
from .sync import Syncer, SyncOptions

log = logging.getLogger("emsync")

MIN_SECRET_LENGTH = 32
FAILURES_ALLOWED = 5  # per address per minute before answers slow down
FAILURE_WINDOW_S = 60.0
MAX_PENALTY_S = 5.0


class _JSON(JSONResponse):
    def render(self, content) -> bytes:
        return to_json(content).encode()


class AuthGuard:
    """Bearer check in constant time, with a slowdown for addresses that keep failing."""

    penalty_sleep = staticmethod(asyncio.sleep)

    def __init__(self, secret: str):
        self._secret = secret.encode()
        self._failures: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()

    async def check(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = hmac.compare_digest(given.strip().encode(), self._secret) and scheme.lower() == "bearer"
        address = request.client.host if request.client else "?"
        if ok:
            return True
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures[address] if now - t < FAILURE_WINDOW_S] + [now]
            self._failures[address] = recent
        excess = len(recent) - FAILURES_ALLOWED
        if excess > 0:
            await type(self).penalty_sleep(min(MAX_PENALTY_S, float(excess)))
        log.warning("unauthorized request to %s from %s", request.url.path, address)
        return False


class ShuttingDown(EmsyncError):
    """The server is stopping (SIGTERM, Ctrl-C): it starts no new run."""


class RunTracker:
    """Runs this server started and has not finished: at most one sync-all, one sync-user per email.

    Every run shares ``cancel``: ``stop`` sets it (each run then ends as ``interrupted``) and waits for them.
    """

    def __init__(self, settings: Settings, engine):
        self.settings = settings
        self.engine = engine
        self.cancel = CancelToken()
        self._active: dict[str, int] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self.interrupted = 0  # runs that ended interrupted (stop's count: they may end before stop looks)

    def start(self, key: str, options: SyncOptions) -> tuple[int | None, int | None]:
        """(new run id, None) or (None, id of the run still in progress).

        Raises:
            ShuttingDown: after ``stop``. UnknownUser, ConfigError: as ``Syncer.open_run``.
        """
        with self._lock:
            if self.cancel.is_set():
                raise ShuttingDown("the server is shutting down: no new run starts")
            if key in self._active:
                return None, self._active[key]
            syncer = Syncer(self.settings, self.engine, cancel=self.cancel)
            opened = syncer.open_run(options)
            self._active[key] = opened.run_id
            thread = threading.Thread(target=self._run, args=(key, syncer, options, opened), name=f"serve-{key}", daemon=True)
            self._threads[key] = thread
        thread.start()
        return opened.run_id, None

    def stop(self, signum: int | None, timeout: float = 75.0) -> int:
        """Stop every run this server started (recorded as ``interrupted``, leases released) and wait for them,
        at most ``timeout`` seconds in all (systemd's stop timeout is 90 s). Returns how many ended interrupted (or are
        still running after the timeout)."""
        self.cancel.set(signum)
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))
        with self._lock:
            return self.interrupted + sum(t.is_alive() for t in threads)

    def _run(self, key: str, syncer: Syncer, options: SyncOptions, opened) -> None:
        interrupted = False
        try:
            interrupted = syncer.run(options, opened).interrupted
        except Exception:
            log.exception("server-triggered run %s failed", opened.run_id)
        finally:
            with self._lock:
                self.interrupted += interrupted
                self._active.pop(key, None)
                self._threads.pop(key, None)


def check_secret(settings: Settings) -> str:
    """The configured CRON_SECRET. Raises UserError when it is missing or too short."""
    if not settings.cron_secret:
        raise UserError("CRON_SECRET is not set: 'emsync secret' prints a new random one to put in the env file")
    if len(settings.cron_secret) < MIN_SECRET_LENGTH:
        raise UserError(
            f"CRON_SECRET is shorter than {MIN_SECRET_LENGTH} characters (set in {settings.origin('CRON_SECRET')}): "
            "'emsync secret' prints a strong one"
        )
    return settings.cron_secret


def create_app(settings: Settings, engine, tracker: RunTracker | None = None) -> Starlette:
    """The Starlette app; ``tracker`` holds the runs it starts (``serve`` keeps it to stop them on SIGTERM)."""
    guard = AuthGuard(check_secret(settings))
    tracker = tracker or RunTracker(settings, engine)

    def unauthorized() -> JSONResponse:
        return _JSON({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    def protected(handler):
        async def endpoint(request: Request):
            if not await guard.check(request):
                return unauthorized()
            return await handler(request)

        return endpoint

    async def healthz(request: Request):
        return _JSON({"status": "ok"})

    async def sync_all(request: Request):
        return await _start(tracker, "sync-all", SyncOptions(trigger="server"))

    async def sync_user(request: Request):
        try:
            body = await request.json()
            email = validate.email(body["email"]) if isinstance(body, dict) and isinstance(body.get("email"), str) else None
        except (ValueError, UserError):
            email = None
        if email is None:
            return _JSON({"error": 'the body must be JSON like {"email": "anna@example.com"}'}, status_code=422)
        return await _start(tracker, f"user:{email}", SyncOptions(email=email, trigger="user"))

    async def status(request: Request):
        from .report import build_status

        def build():
            with engine.begin() as conn:
                return build_status(conn, settings)

        return _JSON(await asyncio.to_thread(build))

    async def run_detail(request: Request):
        try:
            run_id = int(request.path_params["run_id"])
        except ValueError:
            return _JSON({"error": "no such run"}, status_code=404)

        def load():
            with engine.begin() as conn:
                return runs.run_detail(conn, run_id)

        detail = await asyncio.to_thread(load)
        if detail is None:
            return _JSON({"error": "no such run"}, status_code=404)
        return _JSON(detail)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/api/cron/sync-all", protected(sync_all), methods=["POST"]),
            Route("/api/sync/user", protected(sync_user), methods=["POST"]),
            Route("/api/status", protected(status), methods=["GET"]),
            Route("/api/runs/{run_id}", protected(run_detail), methods=["GET"]),
        ]
    )


async def _start(tracker: RunTracker, key: str, options: SyncOptions) -> JSONResponse:
    try:
        run_id, busy = await asyncio.to_thread(tracker.start, key, options)
    except UnknownUser:
        return _JSON({"error": f"no user with email {options.email}"}, status_code=404)
    except ShuttingDown as exc:
        return _JSON({"error": str(exc)}, status_code=503)
    except UserError as exc:
        return _JSON({"error": str(exc)}, status_code=422)
    except EmsyncError as exc:
        return _JSON({"error": str(exc)}, status_code=500)
    if busy is not None:
        return _JSON({"error": "a run started by this server is still in progress", "run_id": busy}, status_code=409)
    return _JSON({"run_id": run_id, "status": "running", "url": f"/api/runs/{run_id}"}, status_code=202)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6), bound before anything is logged or started.

    Raises:
        UserError: ``cannot listen on HOST:PORT: address already in use`` (or the OS's reason: cannot assign
        requested address, permission denied, an unknown host name).
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {where}: unknown host ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may bind while old connections linger
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise UserError(f"cannot listen on {where}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def serve(settings: Settings, engine, *, host: str, port: int) -> int:
    """Serve until SIGTERM or Ctrl-C; returns the exit code: 143 or 130 (runs it started were interrupted), else 0.

    Raises:
        UserError: the address cannot be listened on (nothing started, "listening" not logged).
    """
    from . import logs

    sock = listen(host, port)
    handlers = logs.configure_for(settings, console=logs.stderr_handler(settings.log_format), verbose=False)
    logs.attach(handlers, "uvicorn")  # uvicorn's lines and its access log (paths only, never headers) in the same format
    tracker = RunTracker(settings, engine)
    app = create_app(settings, engine, tracker)
    bound_host, bound_port = sock.getsockname()[:2]
    log.info("emsync serve listening on http://%s", f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}")
    config = uvicorn.Config(app, host=host, port=port, log_config=None, log_level="info", server_header=False)
    server = _Server(config, on_signal=tracker.cancel.set)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        with stop_on_signals(
            tracker.cancel, "the runs this server started are being interrupted", log_format=settings.log_format
        ):  # another: at once
            running = tracker.stop(server.signum)
        if server.signum is not None:
            runs = "1 run" if running == 1 else f"{running} runs"
            log.info("stopped by signal %d; %s started by this server interrupted", server.signum, runs)
        logs.detach(handlers)
    return EXIT_CODES.get(server.signum, 128 + server.signum) if server.signum else 0


class _Server(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM/SIGINT also stops the runs at once (their fetches in flight are aborted
    while uvicorn drains its connections), and whose second exits at once, as the CLI's do."""

    def __init__(self, config: uvicorn.Config, *, on_signal: Callable[[int], None]):
        super().__init__(config)
        self.on_signal = on_signal
        self.signum: int | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            os.write(2, b"emsync: stopped at once\n")
            os._exit(EXIT_CODES.get(sig, 128 + sig))
        self.signum = sig
        self.on_signal(sig)
        self.should_exit = True  # not uvicorn's own handler: it would raise the signal again once stopped
