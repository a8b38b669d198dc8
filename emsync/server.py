"""`emsync serve`: the original product's HTTP trigger (optional extra ``emsync[server]``).

``POST /api/cron/sync-all`` and ``POST /api/sync/user`` start a run in a
background thread through the same engine and claims as the CLI, so cron, the
CLI and the server never sync one integration twice at once. Every endpoint
but ``GET /healthz`` needs ``Authorization: Bearer <CRON_SECRET>``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections import defaultdict

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import runs, validate
from .config import Settings
from .errors import EmsyncError, UnknownUser, UserError
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


class RunTracker:
    """Runs this server started and has not finished: at most one sync-all, one sync-user per email."""

    def __init__(self, settings: Settings, engine):
        self.settings = settings
        self.engine = engine
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self, key: str, options: SyncOptions) -> tuple[int | None, int | None]:
        """(new run id, None) or (None, id of the run still in progress)."""
        with self._lock:
            if key in self._active:
                return None, self._active[key]
            syncer = Syncer(self.settings, self.engine)
            opened = syncer.open_run(options)
            self._active[key] = opened.run_id
        thread = threading.Thread(target=self._run, args=(key, syncer, options, opened), name=f"serve-{key}", daemon=True)
        thread.start()
        return opened.run_id, None

    def _run(self, key: str, syncer: Syncer, options: SyncOptions, opened) -> None:
        try:
            syncer.run(options, opened)
        except Exception:
            log.exception("server-triggered run %s failed", opened.run_id)
        finally:
            with self._lock:
                self._active.pop(key, None)


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


def create_app(settings: Settings, engine) -> Starlette:
    guard = AuthGuard(check_secret(settings))
    tracker = RunTracker(settings, engine)

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
    except UserError as exc:
        return _JSON({"error": str(exc)}, status_code=422)
    except EmsyncError as exc:
        return _JSON({"error": str(exc)}, status_code=500)
    if busy is not None:
        return _JSON({"error": "a run started by this server is still in progress", "run_id": busy}, status_code=409)
    return _JSON({"run_id": run_id, "status": "running", "url": f"/api/runs/{run_id}"}, status_code=202)


def serve(settings: Settings, engine, *, host: str, port: int) -> None:
    import uvicorn

    app = create_app(settings, engine)
    from . import logs

    handler = logging.StreamHandler()
    handler.setFormatter(logs.formatter(settings.log_format))
    logs.configure(log_format=settings.log_format, log_file=settings.log_file, console=handler, verbose=False)
    log.info("emsync serve listening on http://%s:%d", host, port)
    # uvicorn's access log shows paths only, never headers; keep it.
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False)
