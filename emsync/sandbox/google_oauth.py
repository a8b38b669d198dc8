"""The sandbox's Google OAuth 2.0: the authorization endpoint, the token endpoint, token revocation.

What it follows (Google, "OAuth 2.0 for Mobile & Desktop Apps", loopback IP
redirect, and RFC 7636 PKCE):

* ``GET /o/oauth2/v2/auth?client_id&redirect_uri&response_type=code&scope&state
  &code_challenge&code_challenge_method=S256&access_type=offline&prompt=consent
  [&login_hint]``. Google shows an error page, without redirecting, when the
  client or the redirect URI is wrong; otherwise, once the user decides, it
  redirects (302) to ``redirect_uri?state=…&code=…&scope=…`` or
  ``redirect_uri?error=access_denied&state=…``. The sandbox's "user" always
  consents unless a ``google_oauth_faults`` entry says otherwise. Stricter
  than Google on purpose, so emsync cannot forget them: ``state``, an
  ``…/auth/adwords`` scope and an S256 ``code_challenge`` are required.
* ``POST /token`` with ``grant_type=authorization_code&code&redirect_uri
  &code_verifier`` (client credentials in the form or as HTTP Basic, both of
  which Google accepts) → ``{"access_token", "expires_in": 3599,
  "refresh_token", "scope", "token_type": "Bearer", "id_token"}``. Codes are
  single-use; ``redirect_uri`` must be the authorization request's; the
  verifier must hash to the challenge. A refresh token is issued only for
  ``access_type=offline``, and, as Google does, only on a user's first
  consent to the client unless ``prompt=consent`` asked again. ``scope`` comes
  back as Google writes it: ``email`` as ``…/auth/userinfo.email``, in
  another order. ``id_token`` (for ``openid``) is a JWT whose payload carries
  ``email`` (for ``email``); its signature is FAKE — nothing can verify it.
  emsync reads it straight from the token endpoint, which OpenID Connect
  Core §3.1.3.7 allows without checking the signature.
* ``grant_type=refresh_token`` as before. Errors: 401 ``invalid_client``;
  400 ``invalid_grant`` (unknown, expired or reused code, missing or wrong
  verifier, revoked refresh token); 400 ``redirect_uri_mismatch``.
* ``POST /revoke`` with ``token`` (form or query): 200 ``{}``; revoking an
  access token revokes the refresh token it came from; an already revoked
  token answers 400 ``{"error": "invalid_token"}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from urllib.parse import quote, unquote_plus, urlencode

from .server import DEFAULT_GOOGLE_USER, Request, Response, Sandbox, new_id, raw_response

AUTH_PATH = "/o/oauth2/v2/auth"
ADS_SCOPE = "https://www.googleapis.com/auth/adwords"
SCOPE_ALIASES = {"email": "https://www.googleapis.com/auth/userinfo.email", "profile": "https://www.googleapis.com/auth/userinfo.profile"}
LOOPBACK = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\]):(\d{1,5})(/[^?#]*)?$")
VERIFIER_CHARS = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest, unpadded


def _page_error(status: int, error: str, description: str) -> Response:
    # Google renders these as an HTML error page and does not redirect; JSON keeps them readable in tests.
    return Response(status, {"error": error, "error_description": description})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def granted_scopes(requested: str) -> list[str]:
    """The scopes as Google reports them: aliases expanded to URLs, de-duplicated, in Google's (sorted) order."""
    return sorted({SCOPE_ALIASES.get(s, s) for s in requested.split()})


def login_user(sb: Sandbox, hint: str | None) -> str:
    users = sb.scenario["google_users"]
    if hint and hint in users:
        return hint
    emails = [key for key in users if "@" in key]
    return sb.scenario["google_login"] or (emails[0] if emails else DEFAULT_GOOGLE_USER)


def user_of(sb: Sandbox, access_token: str) -> tuple[str | None, dict | None]:
    """(email, ``google_users`` entry) for an access token, looked up by refresh token first, then email."""
    users = sb.scenario["google_users"]
    refresh = sb.google_token_owner.get(access_token)
    email = sb.google_token_user.get(access_token) or (sb.google_token_user.get(refresh) if refresh else None)
    for key in (refresh, email):
        if key and key in users:
            return email, users[key] or {}
    return email, None


def authorize(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    return "google.auth", None, _authorize(sb, req)


def _authorize(sb: Sandbox, req: Request) -> Response:
    p = req.query
    s = sb.scenario
    if req.method != "GET":
        return _page_error(405, "invalid_request", "The authorization endpoint is reached with GET.")
    if p.get("client_id") != s["google_client_id"]:
        return _page_error(401, "invalid_client", "The OAuth client was not found.")
    redirect = p.get("redirect_uri", "")
    loopback = LOOPBACK.match(redirect)
    if not loopback or not 0 < int(loopback.group(2)) < 65536:
        return _page_error(
            400, "redirect_uri_mismatch", "Desktop clients must use a loopback redirect: http://127.0.0.1:PORT or http://localhost:PORT"
        )
    if p.get("response_type") != "code":
        return _page_error(400, "unsupported_response_type", "Invalid response_type: expected code")
    scopes = p.get("scope", "").split()
    if ADS_SCOPE not in scopes:
        return _page_error(400, "invalid_scope", f"sandbox: the scope must include {ADS_SCOPE}")
    if not p.get("state"):
        return _page_error(400, "invalid_request", "sandbox: state is required (it protects the redirect from forgery)")
    if p.get("code_challenge_method") != "S256" or not CHALLENGE.match(p.get("code_challenge", "")):
        return _page_error(
            400, "invalid_request", "sandbox: PKCE is required: a 43-character code_challenge with code_challenge_method=S256"
        )
    if p.get("access_type", "online") not in ("online", "offline"):
        return _page_error(400, "invalid_request", f"Invalid access_type: {(p.get('access_type') or '')[:20]}")
    prompts = set(p.get("prompt", "").split())
    if not prompts <= {"none", "consent", "select_account"}:
        return _page_error(400, "invalid_request", "Invalid prompt")
    state = p["state"]
    fault = sb.take_listed_fault(
        ("google_oauth",), s["google_oauth_faults"], "auth", ("access_denied", "state_mismatch", "untick_ads"), default_endpoint="auth"
    )
    kind = fault["kind"] if fault is not None else None
    if kind == "access_denied":
        return _redirect(redirect, {"error": "access_denied", "state": state})
    if kind == "state_mismatch":
        state = "forged-" + state
    email = login_user(sb, p.get("login_hint"))
    code = "4/0Asandbox" + new_id() + new_id()
    # Granular consent lets a person untick a scope; the grant then covers the others only.
    granted = [scope for scope in granted_scopes(p["scope"]) if not (kind == "untick_ads" and scope == ADS_SCOPE)]
    with sb._lock:
        first_consent = (p["client_id"], email) not in sb.google_consented
        sb.google_consented.add((p["client_id"], email))
        sb.google_codes[code] = {
            "client_id": p["client_id"],
            "redirect_uri": redirect,
            "challenge": p["code_challenge"],
            "email": email,
            "scopes": granted,
            "offline": p.get("access_type") == "offline",
            "refresh": first_consent or "consent" in prompts,
            "expires": time.time() + float(s["google_code_ttl"]),
            "used": False,
        }
    params = {"state": state, "code": code, "scope": " ".join(granted), "authuser": "0"}
    if "consent" in prompts:
        params["prompt"] = "consent"
    return _redirect(redirect, params)


def _redirect(redirect_uri: str, params: dict) -> Response:
    location = redirect_uri + ("&" if "?" in redirect_uri else "?") + urlencode(params, quote_via=quote)
    return Response(302, {}, headers={"Location": location})


def _client(req: Request) -> tuple[str | None, str | None]:
    """Client credentials from the form (client_secret_post) or an HTTP Basic header (client_secret_basic)."""
    auth = req.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            client_id, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except ValueError:
            return None, None
        return unquote_plus(client_id), unquote_plus(secret)
    return req.params.get("client_id"), req.params.get("client_secret")


def token(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    fault = sb.take_endpoint_fault("google.token", ("server_error", "raw"))
    if fault is not None:  # e.g. a 401 HTML page from a proxy, a 503
        return "google.token", None, raw_response(fault) if fault["kind"] == "raw" else Response(503, {"error": "backend_error"})
    return "google.token", None, _token(sb, req)


def _token(sb: Sandbox, req: Request) -> Response:
    p = req.params
    s = sb.scenario
    client_id, secret = _client(req)
    if client_id != s["google_client_id"]:
        return Response(401, {"error": "invalid_client", "error_description": "The OAuth client was not found."})
    if not hmac.compare_digest((secret or "").encode(), s["google_client_secret"].encode()):
        return Response(401, {"error": "invalid_client", "error_description": "Unauthorized"})
    grant = p.get("grant_type")
    if grant == "authorization_code":
        return _exchange_code(sb, req, client_id or "")
    if grant != "refresh_token":
        return Response(400, {"error": "unsupported_grant_type", "error_description": f"Invalid grant_type: {(grant or '')[:30]}"})
    refresh = p.get("refresh_token", "")
    if not refresh or refresh in s["revoked_refresh_tokens"]:
        return Response(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    scope = " ".join(sb.google_refresh_scopes.get(refresh) or [ADS_SCOPE])
    access = _issue_access(sb, refresh=refresh, email=sb.google_token_user.get(refresh))
    return Response(200, {"access_token": access, "expires_in": int(s["google_token_ttl"]), "scope": scope, "token_type": "Bearer"})


def _issue_access(sb: Sandbox, *, refresh: str | None, email: str | None) -> str:
    access = "ya29.a0sandbox" + new_id() + new_id()
    with sb._lock:
        sb.google_access_tokens[access] = time.time() + int(sb.scenario["google_token_ttl"])
        if refresh:
            sb.google_token_owner[access] = refresh
        if email:
            sb.google_token_user[access] = email
    return access


def _exchange_code(sb: Sandbox, req: Request, client_id: str) -> Response:
    p = req.params
    with sb._lock:
        entry = sb.google_codes.get(p.get("code", ""))
        usable = entry is not None and not entry["used"] and entry["expires"] > time.time() and entry["client_id"] == client_id
        if entry is not None:
            entry["used"] = True  # single use, even when this attempt fails
    if not usable or entry is None:
        return Response(400, {"error": "invalid_grant", "error_description": "Bad Request"})
    if p.get("redirect_uri") != entry["redirect_uri"]:
        return Response(400, {"error": "redirect_uri_mismatch", "error_description": "Bad Request"})
    verifier = p.get("code_verifier", "")
    if not verifier:
        return Response(400, {"error": "invalid_grant", "error_description": "Missing code verifier."})
    if not VERIFIER_CHARS.match(verifier) or _b64url(hashlib.sha256(verifier.encode()).digest()) != entry["challenge"]:
        return Response(400, {"error": "invalid_grant", "error_description": "Invalid code verifier."})
    email = entry["email"]
    refresh = None
    if entry["offline"] and entry["refresh"]:
        refresh = "1//0sandbox" + new_id() + new_id()
        with sb._lock:
            sb.google_token_user[refresh] = email
            sb.google_refresh_scopes[refresh] = entry["scopes"]
    access = _issue_access(sb, refresh=refresh, email=email)
    body = {
        "access_token": access,
        "expires_in": int(sb.scenario["google_token_ttl"]),
        "scope": " ".join(entry["scopes"]),
        "token_type": "Bearer",
    }
    if refresh:
        body["refresh_token"] = refresh
    if "openid" in entry["scopes"]:
        body["id_token"] = id_token(client_id, email, with_email=SCOPE_ALIASES["email"] in entry["scopes"])
    return Response(200, body)


def id_token(client_id: str, email: str, *, with_email: bool) -> str:
    """A JWT in Google's shape. The signature is fake: this is a sandbox, nothing may trust it."""
    now = int(time.time())
    header = {"alg": "RS256", "kid": "sandbox-unsigned", "typ": "JWT"}
    payload = {
        "iss": "https://accounts.google.com",
        "azp": client_id,
        "aud": client_id,
        "sub": str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16)),
        "iat": now,
        "exp": now + 3600,
    }
    if with_email:
        payload.update(email=email, email_verified=True)
    parts = [_b64url(json.dumps(header).encode()), _b64url(json.dumps(payload).encode()), _b64url(b"sandbox-fake-signature")]
    return ".".join(parts)


def revoke(sb: Sandbox, req: Request) -> tuple[str, str | None, Response]:
    return "google.revoke", None, _revoke(sb, req)


def _revoke(sb: Sandbox, req: Request) -> Response:
    if req.method != "POST":
        return Response(405, {"error": "invalid_request", "error_description": "Use POST"})
    token_value = req.params.get("token", "")
    if not token_value:
        return Response(400, {"error": "invalid_request", "error_description": "Bad Request"})
    revoked = sb.scenario["revoked_refresh_tokens"]
    with sb._lock:
        if token_value in sb.google_access_tokens:
            owner = sb.google_token_owner.get(token_value)
            del sb.google_access_tokens[token_value]
            if owner and owner not in revoked:
                revoked.append(owner)
            return Response(200, {})
        if token_value in revoked or token_value.startswith("ya29."):
            return Response(400, {"error": "invalid_token", "error_description": "Token expired or revoked"})
        revoked.append(token_value)
    return Response(200, {})
