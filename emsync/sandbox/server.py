"""The sandbox HTTP server: real sockets on loopback, both APIs, per-account faults, a request log.

Usage in tests, the demo and the benchmark::

    with Sandbox({"meta_accounts": {"123": {"faults": [{"kind": "server_error", "times": 1}]}}}) as sb:
        env = sb.env()            # META_GRAPH_URL=..., GOOGLE_ADS_API_URL=..., ...
        ...
        sb.count("meta.insights", "123")

A fault is ``{"kind": ..., "times": N}`` (``times`` absent: every time) and
applies to the account's metrics endpoint unless it names another
``endpoint``. Kinds common to both platforms: ``server_error``, ``slow``
(``seconds``), ``truncated``, ``drop``, ``raw`` (``status``, ``text`` sent as
is, ``content_type``, ``headers``: a plain "Not Found", an HTML 401 or 502
page, a 429 with ``Retry-After``). Meta: ``rate_limit`` (``code``,
``eta_minutes``), ``page_error`` (``page``), ``token_expired``,
``token_revoked``, ``permission`` (#200), ``reduce_data``, ``usage_high``,
``legacy_throttle`` (``pct`` in ``x-fb-ads-insights-throttle`` only),
``bad_cursor_loop``, ``empty_pages`` (the chain goes on with empty pages and
a fresh ``next`` forever), ``endless_pages`` (the same: with the last rows again), ``multi_day_row`` (one row spanning the whole
range), ``row_outside_window``, ``version_deprecated`` (#2635, ``wanted``),
``report_lag`` (100/33 on a report run's ``report_status`` or
``report_insights``, ``page``), ``report_failed`` (endpoint
``report_status``: "Job Failed", with the ``error_*`` fields the poll names).
Google: ``rate_limit`` (``retry_seconds``), ``quota_exhausted``
(``retry_seconds``: short ones are per-second rates; ``scope``: ``DEVELOPER`` default,
``PROJECT`` or ``ACCOUNT``), ``unauthenticated``,
``permission_denied``, ``not_enabled``, ``error_in_stream``, ``bad_query``,
``row_outside_window``.

Endpoints that belong to no account take faults from
``scenario["endpoint_faults"][name]``: ``meta.token_exchange`` and
``meta.debug_token`` (``server_error``, ``rate_limit``, ``raw``),
``google.token`` (``server_error``, ``raw``).

Account settings beyond currency and time zone: Meta ``account_status`` (2
disabled, 101 closed, 3/7/8/9/100 other states), ``campaign_states``
({campaign id: "DELETED"|"ARCHIVED"}: left out unless the query filters on
``campaign.effective_status`` with that state; an invalid status value fails
the query with 100/1487561), ``ad_set_attribution`` (e.g. "1d_click": each
attribution window then counts purchases differently, and
``use_unified_attribution_setting`` / ``action_attribution_windows`` change
the numbers), ``campaign_names`` ({campaign id: name}, a rename); Google
``campaign_names``, ``campaign_statuses`` ({campaign id: "PAUSED"}),
``manager``. Scenario ``meta_data_access_days``: days until ``debug_token``'s
``data_access_expires_at``. Meta rows carry ``inline_link_clicks`` (three
quarters of all clicks).

History: any date in range is served, for both platforms. Meta refuses a
``time_range`` starting more than 37 months before today (code 3018, as the
Insights API does). A Meta account's ``max_sync_rows`` makes a synchronous
query over more rows than that answer "Please reduce the amount of data"
(code 1), as large accounts' long ranges do, so the client needs an async
report run. ``google_daily_operations``: the developer token's quota — after
that many Google Ads operations (searchStream and listAccessibleCustomers
calls answered), every call gets 429 ``RESOURCE_EXHAUSTED`` with
``rateScope: DEVELOPER`` until ``reset_google_operations()`` (a new day).
``hold_dates(before)`` makes metric queries whose range starts before that
day wait until ``release_dates()`` (tests stop a backfill mid-way with it).
The request log records each metric query's dates as ``span`` ("since..until").
A Google fault on a ``FROM customer_client`` query must name
``"endpoint": "customer_client"``; the default endpoint is the metrics query.

Scenario keys for connecting and discovering accounts (all optional):

``google_customers`` entries (besides ``campaigns``, ``currency``,
``timezone``, ``name``, ``faults``, ``restate`` and ``manager`` — the
login-customer-id this customer must be reached through) may carry
``is_manager`` (bool), ``children`` (customer ids directly under a manager:
two levels make manager → sub-manager → clients) and ``status``
(``ENABLED`` default, ``CANCELED``, ``SUSPENDED``, ``CLOSED``: any query on a
customer that is not enabled answers 403 ``CUSTOMER_NOT_ENABLED``).

``google_users``: ``{"<email or refresh token>": {"accessible": [ids],
"ads_user": true}}``: what ``customers:listAccessibleCustomers`` answers for
tokens of that user (default: every ``google_customers`` id that is nobody's
child); ``ads_user: false`` makes the Ads API answer 401 ``NOT_ADS_USER``.
With ``accessible`` set, queries on customers the user cannot reach (itself
accessible, or under the accessible manager named in ``login-customer-id``)
answer ``USER_PERMISSION_DENIED``.
``google_login``: the email the sandbox's consent screen signs in as when the
authorization request has no ``login_hint`` naming a known user (default: the
first email in ``google_users``, else ``sandbox.user@example.com``).
``google_oauth_faults``: ``[{"kind": "access_denied" | "state_mismatch" |
"untick_ads", "times": N}]`` for the authorization endpoint (consent denied:
a redirect with ``error=access_denied``; a redirect carrying another
``state``; the person unticks the Ads scope, so the grant lacks it).

``meta_tokens``: ``{"<token>": {"type": "USER" | "SYSTEM_USER", "user_id",
"scopes": [...], "expires_at": epoch seconds (0 = never),
"data_access_expires_at", "valid": true, "accounts": [ad account ids],
"businesses": [business ids], "faults": [...]}}``. A token exchanged with
``fb_exchange_token`` inherits its parent's entry. Token faults:
``bad_cursor_loop``, ``server_error`` and ``permission`` with ``endpoint`` one of
``adaccounts``, ``businesses``, ``owned_ad_accounts``, ``client_ad_accounts``.
``meta_accounts`` entries may carry ``account_status`` (1 = ACTIVE, 2 =
DISABLED, 101 = CLOSED, ...). ``meta_max_limit`` also caps these edges' page
size. ``meta_businesses``: ``{"<business id>":
{"name", "owned": [ad account ids], "client": [ad account ids]}}``.
"""

from __future__ import annotations

import copy
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

DEFAULTS = {
    "seed": 7,
    "campaigns": 5,
    "meta_app_id": "sandbox-app",
    "meta_app_secret": "sandbox-app-secret-0123456789",
    "google_client_id": "sandbox-client.apps.googleusercontent.com",
    "google_client_secret": "sandbox-client-secret-0123456789",
    "google_token_ttl": 3599,
    "google_batch_size": 10000,
    "meta_max_limit": 5000,
    "async_polls": 2,
    "restate": False,
    "auto_accounts": True,
    "revoked_refresh_tokens": [],
    "meta_revoked_tokens": [],
    "google_code_ttl": 600,
    "google_users": {},
    "google_login": None,
    "google_oauth_faults": [],
    "meta_tokens": {},
    "meta_businesses": {},
    "google_daily_operations": None,
}
DEFAULT_GOOGLE_USER = "sandbox.user@example.com"
LOCALES = (("PLN", "Europe/Warsaw"), ("USD", "America/New_York"), ("EUR", "Europe/Berlin"), ("GBP", "Europe/London"))


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    body: bytes
    base_url: str

    @property
    def params(self) -> dict[str, str]:
        return {**self.query, **self.form}


@dataclass
class Response:
    status: int
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    truncate: bool = False
    drop: bool = False
    raw: str | None = None  # a body sent as is (an HTML error page, "Not Found"), not JSON


class Sandbox:
    """Fake Meta Graph API + Google Ads REST API + Google OAuth, on 127.0.0.1."""

    def __init__(self, scenario: dict | None = None, *, latency_ms: float = 0, port: int = 0, host: str = "127.0.0.1"):
        self.scenario = copy.deepcopy({**DEFAULTS, **(scenario or {})})  # never share lists between sandboxes
        self.scenario.setdefault("meta_accounts", {})
        self.scenario.setdefault("google_customers", {})
        self.latency = latency_ms / 1000.0
        self._lock = threading.Lock()
        self.log: list[dict] = []
        self._fault_use: dict[tuple, int] = {}
        self._calls: dict[tuple, int] = {}
        self.meta_tokens_issued: dict[str, float] = {}
        self.google_access_tokens: dict[str, float] = {}
        self.google_token_owner: dict[str, str] = {}  # access token -> the refresh token it came from
        self.google_token_user: dict[str, str] = {}  # access or refresh token -> the Google user (email) it was issued to
        self.google_codes: dict[str, dict] = {}  # authorization code -> what it was issued for
        self.google_refresh_scopes: dict[str, list[str]] = {}  # refresh token -> the scopes granted with it
        self.google_consented: set[tuple[str, str]] = set()  # (client id, email) that already consented once
        self.meta_token_parent: dict[str, str] = {}  # exchanged long-lived token -> the token it was exchanged from
        self.report_runs: dict[str, dict] = {}
        self._server = _Server((host, port), _Handler)
        self._server.sandbox = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self._gate = threading.Event()
        self._gate.set()
        self.google_operations = 0  # answered Google Ads operations, against google_daily_operations
        self._held_before: date | None = None
        self._dates_gate = threading.Event()
        self._dates_gate.set()
        self.held = 0  # metric queries waiting in hold_dates right now
        self.waiting = 0  # API requests waiting in hold right now

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Sandbox:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def hold(self) -> None:
        """Make API requests wait (up to a minute) until ``release``: lets tests start several runs together."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def wait_at_gate(self) -> None:
        """Called for every API request: waits while ``hold`` is on (counted in ``waiting``)."""
        if not self._gate.is_set():
            self._wait_counted(self._gate, "waiting", 60)

    def hold_dates(self, before: date) -> None:
        """Make metric queries whose range starts before ``before`` wait (up to two minutes) until ``release_dates``."""
        self._held_before = before
        self._dates_gate.clear()

    def release_dates(self) -> None:
        self._held_before = None
        self._dates_gate.set()

    def wait_if_held(self, since: date) -> None:
        held = self._held_before
        if held is not None and since < held:
            self._wait_counted(self._dates_gate, "held", 120)

    def _wait_counted(self, gate: threading.Event, counter: str, timeout: float) -> None:
        """Wait at ``gate`` (at most ``timeout`` seconds) while counted in the attribute ``counter``."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
        try:
            gate.wait(timeout)
        finally:
            with self._lock:
                setattr(self, counter, getattr(self, counter) - 1)

    def spend_google_operation(self) -> bool:
        """Count one Google Ads operation; False (refuse it) once ``google_daily_operations`` are spent."""
        limit = self.scenario["google_daily_operations"]
        with self._lock:
            if limit is not None and self.google_operations >= int(limit):
                return False
            self.google_operations += 1
            return True

    def reset_google_operations(self) -> None:
        """A new Pacific day for the developer token's quota."""
        with self._lock:
            self.google_operations = 0

    def env(self) -> dict[str, str]:
        """Settings that point emsync at this sandbox."""
        s = self.scenario
        return {
            "META_GRAPH_URL": self.url,
            "GOOGLE_ADS_API_URL": self.url,
            "GOOGLE_OAUTH_TOKEN_URL": f"{self.url}/token",
            "GOOGLE_OAUTH_AUTH_URL": f"{self.url}/o/oauth2/v2/auth",
            "GOOGLE_OAUTH_REVOKE_URL": f"{self.url}/revoke",
            "META_APP_ID": s["meta_app_id"],
            "META_APP_SECRET": s["meta_app_secret"],
            "GOOGLE_OAUTH_CLIENT_ID": s["google_client_id"],
            "GOOGLE_OAUTH_CLIENT_SECRET": s["google_client_secret"],
        }

    # ---------------------------------------------------------------- accounts, faults, log

    def account(self, platform: str, account_id: str) -> dict | None:
        key = "meta_accounts" if platform == "meta" else "google_customers"
        accounts = self.scenario[key]
        if account_id in accounts:
            found = accounts[account_id] or {}
        elif self.scenario["auto_accounts"]:
            found = {}
        else:
            return None
        currency, tz = LOCALES[int(account_id) % len(LOCALES)]
        return {
            "campaigns": self.scenario["campaigns"],
            "currency": currency,
            "timezone": tz,
            "name": f"{platform.title()} account {account_id}",
            "conversions": "standard",
            "faults": [],
            "restate": self.scenario["restate"],
            **found,
        }

    def set_account(self, platform: str, account_id: str, **config) -> None:
        key = "meta_accounts" if platform == "meta" else "google_customers"
        with self._lock:
            self.scenario[key][account_id] = {**(self.scenario[key].get(account_id) or {}), **config}

    def take_fault(self, platform: str, account_id: str, endpoint: str, kinds: tuple[str, ...], **match) -> dict | None:
        """The first active fault of one of ``kinds`` for this endpoint, consuming one of its ``times``."""
        account = self.account(platform, account_id) or {}
        return self.take_listed_fault(
            (platform, account_id), account.get("faults") or [], endpoint, kinds, default_endpoint=_default_endpoint(platform), **match
        )

    def take_listed_fault(
        self, owner: tuple, faults: list, endpoint: str, kinds: tuple[str, ...], *, default_endpoint: str, **match
    ) -> dict | None:
        """``take_fault`` for any list of faults; ``owner`` keeps the use counts of different lists apart."""
        with self._lock:
            for index, fault in enumerate(faults):
                if fault.get("kind") not in kinds or fault.get("endpoint", default_endpoint) != endpoint:
                    continue
                if any(fault.get(k) is not None and fault.get(k) != v for k, v in match.items()):
                    continue
                if self._use((*owner, index), fault):
                    return fault
        return None

    def _use(self, key: tuple, fault: dict) -> bool:
        """Consume one of the fault's ``times`` (the caller holds the lock); False when none is left."""
        used = self._fault_use.get(key, 0)
        if fault.get("times") is not None and used >= fault["times"]:
            return False
        self._fault_use[key] = used + 1
        return True

    def take_endpoint_fault(self, endpoint: str, kinds: tuple[str, ...]) -> dict | None:
        """The first active fault of one of ``kinds`` in ``scenario["endpoint_faults"][endpoint]``, consuming one of
        its ``times``: faults of endpoints that belong to no account (Meta's token exchange and debug_token,
        Google's token endpoint)."""
        with self._lock:
            for index, fault in enumerate((self.scenario.get("endpoint_faults") or {}).get(endpoint) or []):
                if fault.get("kind") in kinds and self._use(("endpoint", endpoint, index), fault):
                    return fault
        return None

    def next_call(self, platform: str, account_id: str, endpoint: str) -> int:
        """How many earlier calls this endpoint had for the account (0 for the first)."""
        with self._lock:
            key = (platform, account_id, endpoint)
            n = self._calls.get(key, 0)
            self._calls[key] = n + 1
            return n

    def record(self, kind: str, account: str | None, method: str, path: str, status: int, span: str | None = None) -> None:
        entry = {"ts": time.time(), "kind": kind, "account": account, "method": method, "path": path, "status": status, "span": span}
        with self._lock:
            self.log.append(entry)

    def count(self, kind: str | None = None, account: str | None = None, span: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for e in self.log
                if (kind is None or e["kind"] == kind)
                and (account is None or e["account"] == account)
                and (span is None or e["span"] == span)
            )

    def spans(self, kind: str, account: str | None = None) -> list[str]:
        """The date ranges ("since..until") of the metric queries logged for ``kind``, in order."""
        with self._lock:
            return [e["span"] for e in self.log if e["kind"] == kind and (account is None or e["account"] == account) and e["span"]]

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    def today(self, tz_name: str) -> date:
        return datetime.now(UTC).astimezone(ZoneInfo(tz_name)).date()

    # ---------------------------------------------------------------- dispatch

    def handle(self, request: Request) -> tuple[str, str | None, Response]:
        from . import google, google_oauth, meta

        if request.path.startswith("/__sandbox/"):
            return "sandbox", None, self._control(request)
        if request.path == "/token":
            return google_oauth.token(self, request)
        if request.path == google_oauth.AUTH_PATH:
            return google_oauth.authorize(self, request)
        if request.path == "/revoke":
            return google_oauth.revoke(self, request)
        if request.path.endswith("/customers:listAccessibleCustomers"):
            return google.list_accessible(self, request)
        if "/customers/" in request.path:
            return google.search_stream(self, request)
        return meta.route(self, request)

    def _control(self, request: Request) -> Response:
        if request.path == "/__sandbox/requests":
            with self._lock:
                return Response(200, {"requests": list(self.log)})
        if request.path == "/__sandbox/reset" and request.method == "POST":
            self.reset_log()
            return Response(200, {"ok": True})
        return Response(404, {"error": "unknown sandbox control path"})


def _default_endpoint(platform: str) -> str:
    return "insights" if platform == "meta" else "search_stream"


def apply_common_faults(sb: Sandbox, platform: str, account_id: str, endpoint: str, **match) -> Response | None:
    """Faults that look the same on both platforms' wires."""
    fault = sb.take_fault(platform, account_id, endpoint, ("slow", "drop", "truncated", "raw"), **match)
    if fault is None:
        return None
    if fault["kind"] == "slow":
        time.sleep(float(fault.get("seconds", 3)))  # then answer normally, too late for the client
        return None
    if fault["kind"] == "drop":
        return Response(0, drop=True)
    if fault["kind"] == "raw":
        return raw_response(fault)
    return Response(200, truncate=True)


def raw_response(fault: dict) -> Response:
    """A ``raw`` fault's answer: ``status`` with ``text`` sent as is (``content_type``, default text/html) and ``headers``."""
    headers = {"Content-Type": fault.get("content_type", "text/html; charset=UTF-8"), **(fault.get("headers") or {})}
    return Response(int(fault.get("status", 502)), headers=headers, raw=str(fault.get("text", "<html><body>Bad Gateway</body></html>")))


class _Server(ThreadingHTTPServer):
    # Class attributes: the backlog is read by listen() inside the constructor (setting it afterwards did nothing:
    # the socket kept socketserver's 5, and parallel clients met refused or reset connections).
    request_queue_size = 256
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as production front ends set it: headers and body go out in two writes, and with Nagle's
    # algorithm the body waited for the client's delayed ACK (40 ms on Linux), on top of any --latency-ms.
    disable_nagle_algorithm = True
    server_version = "emsync-sandbox/1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        sb: Sandbox = self.server.sandbox  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        form = dict(parse_qsl(body.decode("utf-8", "replace"))) if "form-urlencoded" in (self.headers.get("Content-Type") or "") else {}
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])  # type: ignore[index]
        request = Request(
            self.command,
            parts.path,
            dict(parse_qsl(parts.query, keep_blank_values=True)),
            form,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            f"http://{host}",
        )
        if not request.path.startswith("/__sandbox/"):
            sb.wait_at_gate()
        if sb.latency:
            time.sleep(sb.latency)
        try:
            kind, account, response = sb.handle(request)
        except Exception as exc:  # noqa: BLE001 - a sandbox bug must look like a server error, not hang the client
            kind, account, response = "error", None, Response(500, {"error": {"message": f"sandbox bug: {exc}", "code": 2}})
        if kind != "sandbox":  # the control endpoints are not API traffic
            sb.record(kind, account, self.command, parts.path, response.status, request_span(request))
        if response.drop:
            self.close_connection = True
            return
        payload = json.dumps(response.body if response.body is not None else {}).encode()
        if response.truncate:
            payload = _truncated_payload(sb, request)
        if response.raw is not None:
            payload = response.raw.encode()
        try:
            self.send_response(response.status)
            if "Content-Type" not in response.headers:
                self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def request_span(request: Request) -> str | None:
    """A metric query's dates as "since..until": Meta's ``time_range`` parameter or the GAQL ``BETWEEN``."""
    from .google import BETWEEN

    raw = request.params.get("time_range")
    if raw:
        try:
            spec = json.loads(raw)
            return f"{spec['since']}..{spec['until']}"
        except (ValueError, KeyError, TypeError):
            return None
    if request.body and b"segments.date" in request.body:
        found = BETWEEN.search(request.body.decode("utf-8", "replace"))
        return f"{found.group(1)}..{found.group(2)}" if found else None
    return None


def _truncated_payload(sb: Sandbox, request: Request) -> bytes:
    """The first half of a plausible body: valid HTTP, broken JSON."""
    sample = json.dumps({"data": [{"campaign_id": "1", "spend": "1.00"}] * 20, "paging": {}}).encode()
    return sample[: len(sample) // 2]


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)
