"""Google OAuth 2.0 for installed apps: get a refresh token for the Google Ads API from a person at a terminal.

The flow itself — the authorization URL, ``state``, PKCE (RFC 7636, S256),
parsing the redirect, the code exchange — is google-auth-oauthlib's
``InstalledAppFlow`` (over requests-oauthlib and oauthlib); this module only
supplies the client configuration, shows the URL, and turns the library's
exceptions into one-line ``UserError``s. Google's documents it follows:
"OAuth 2.0 for Mobile & Desktop Apps" (loopback IP address redirect,
``access_type=offline``, ``prompt=consent``), "Revoking a token".

Two ways to receive the authorization code:

* ``run_loopback``: listen on ``http://127.0.0.1:PORT/`` (0 = any free port),
  show (and optionally open) the URL; Google redirects the browser back to
  that address with ``code`` and ``state``.
* ``start_manual`` + ``finish_manual`` (``--no-browser``, e.g. on a VPS over
  SSH): show the URL, then take the full redirected address the person copies
  from the browser's address bar (the page itself fails to load: nothing
  listens on the laptop's loopback). PKCE makes a stolen code useless.

Scopes asked: ``https://www.googleapis.com/auth/adwords openid email``; Google
answers ``email`` as ``…/auth/userinfo.email`` and in its own order, which
oauthlib reports by raising a ``Warning`` carrying the token unless the
process-wide ``OAUTHLIB_RELAX_TOKEN_SCOPE`` is set. We take the token from the
warning instead of setting that variable, then check ourselves that the Ads
scope was granted (a person may untick it on the consent screen).

oauthlib refuses ``http://`` URLs (``InsecureTransportError``). The loopback
redirect is the one legitimate http URL: like ``run_local_server``, a pasted
``http://127.0.0.1:PORT/…`` address is handed to oauthlib as ``https``. This
module never sets ``OAUTHLIB_INSECURE_TRANSPORT``; only tests against the
http sandbox do.

requests-oauthlib logs token request and response bodies at DEBUG on its own
loggers; emsync never attaches handlers to them.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import FatalApiError, RetryableError, UserError
from .http import HttpClient, Service, new_session, read_body, redact, register_secret

ADS_SCOPE = "https://www.googleapis.com/auth/adwords"
SCOPES = (ADS_SCOPE, "openid", "email")
GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_REVOKE_URL = "https://oauth2.googleapis.com/revoke"
LOOPBACK_HOST = "127.0.0.1"
REVOKE_SERVICE = Service("Google's revoke endpoint", "GOOGLE_OAUTH_REVOKE_URL")
DEFAULT_TIMEOUT_S = 300.0
SUCCESS_PAGE = "emsync received Google's answer. You can close this tab and return to the terminal."


@dataclass(frozen=True)
class OAuthClient:
    """A Google OAuth client of type "Desktop app", and where Google's endpoints are (the sandbox stands in)."""

    client_id: str
    client_secret: str = field(repr=False)
    auth_url: str = GOOGLE_AUTH_URL
    token_url: str = GOOGLE_TOKEN_URL

    def config(self) -> dict:
        """The client in Google's client-secrets format, as ``Flow.from_client_config`` takes it."""
        return {
            "installed": {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "auth_uri": self.auth_url,
                "token_uri": self.token_url,
                "redirect_uris": [f"http://{LOOPBACK_HOST}"],
            }
        }


@dataclass(frozen=True)
class GoogleGrant:
    """What connecting a Google user yields. ``email`` comes from the ID token; None when Google sent none."""

    refresh_token: str = field(repr=False)
    access_token: str = field(repr=False)
    expiry: datetime | None
    scopes: tuple[str, ...]
    email: str | None


def _flow_class():
    from google_auth_oauthlib.flow import InstalledAppFlow

    class _Flow(InstalledAppFlow):
        """``InstalledAppFlow`` that hands the authorization URL to emsync instead of printing it."""

        url_hook: Callable[[str], None] | None = None

        def authorization_url(self, **kwargs):
            url, state = super().authorization_url(**kwargs)
            if self.url_hook is not None:
                self.url_hook(url)
            return url, state

    return _Flow


def build_flow(client: OAuthClient, *, redirect_uri: str | None = None):
    """An ``InstalledAppFlow`` for emsync's scopes; PKCE is on (the library generates the verifier)."""
    register_secret(client.client_secret)
    return _flow_class().from_client_config(client.config(), scopes=list(SCOPES), redirect_uri=redirect_uri)


def _auth_params(login_hint: str | None) -> dict:
    params = {"access_type": "offline", "prompt": "consent"}  # consent again, or Google sends no new refresh token
    if login_hint:
        params["login_hint"] = login_hint
    return params


def _show(url: str) -> None:
    print(f"Open this address in a browser and allow emsync to read Google Ads:\n\n  {url}\n", file=sys.stderr, flush=True)


def run_loopback(
    client: OAuthClient,
    *,
    port: int = 0,
    show_url: Callable[[str], None] = _show,
    open_browser: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    login_hint: str | None = None,
) -> GoogleGrant:
    """Sign in through the browser and receive the code on ``http://127.0.0.1:PORT/`` (0 = any free port).

    ``show_url`` receives the authorization URL once the local server listens.

    Raises:
        UserError: one line, no secret in it — the port is in use, consent was
            denied, the state did not match, the client was refused
            (``invalid_client``), the code was refused (``invalid_grant``), the
            Ads scope was not granted, or no answer came within ``timeout``.
    """
    flow = build_flow(client)

    def hook(url: str) -> None:
        show_url(url)
        if open_browser:
            webbrowser.open(url, new=1, autoraise=True)

    flow.url_hook = hook
    try:
        flow.run_local_server(
            host=LOOPBACK_HOST,
            port=port,
            open_browser=False,
            authorization_prompt_message=None,
            success_message=SUCCESS_PAGE,
            timeout_seconds=timeout,
            **_auth_params(login_hint),
        )
    except Exception as exc:
        token = _token_despite_scope_change(exc)
        if token is not None:
            return _grant(token)
        explained = _explain(exc, port=port, timeout=timeout)
        if explained is None:
            raise
        raise explained from None
    return _grant(flow.oauth2session.token)


@dataclass(frozen=True)
class ManualAuthorization:
    """A sign-in started for the paste-back path: show ``url``, then pass the pasted address to ``finish_manual``."""

    url: str
    redirect_uri: str
    flow: Any = field(repr=False, compare=False)  # google_auth_oauthlib.flow.Flow


def start_manual(client: OAuthClient, *, port: int | None = None, login_hint: str | None = None) -> ManualAuthorization:
    """Begin a sign-in whose redirect nobody receives: the person copies the redirected address back.

    ``port`` only has to match between the two steps; by default a random high
    port, so that nothing listening on the person's laptop receives the code.
    """
    port = port if port is not None else 49152 + secrets.randbelow(65535 - 49152)
    redirect_uri = f"http://{LOOPBACK_HOST}:{port}/"
    flow = build_flow(client, redirect_uri=redirect_uri)
    try:
        url, _state = flow.authorization_url(**_auth_params(login_hint))
    except Exception as exc:
        explained = _explain(exc)
        if explained is None:
            raise
        raise explained from None
    return ManualAuthorization(url=url, redirect_uri=redirect_uri, flow=flow)


def finish_manual(pending: ManualAuthorization, pasted_url: str) -> GoogleGrant:
    """Exchange the code in the redirected address the person pasted back.

    Raises:
        UserError: the text is not the redirected address, or any error
            ``run_loopback`` names (except the port and the timeout).
    """
    authorization_response = _loopback_as_https(pasted_url, pending.redirect_uri)
    register_secret(authorization_response)
    try:
        pending.flow.fetch_token(authorization_response=authorization_response)
    except Exception as exc:
        token = _token_despite_scope_change(exc)
        if token is not None:
            return _grant(token)
        explained = _explain(exc)
        if explained is None:
            raise
        raise explained from None
    return _grant(pending.flow.oauth2session.token)


def _loopback_as_https(pasted: str, redirect_uri: str) -> str:
    """The pasted address, checked against the redirect URI, with the scheme oauthlib insists on."""
    text = pasted.strip()
    parts = urlsplit(text)
    expected = urlsplit(redirect_uri)
    if not parts.scheme or not parts.netloc:
        raise UserError(f"paste the whole address from the browser's address bar; it starts with {redirect_uri}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or parts.hostname != expected.hostname or port != expected.port:
        raise UserError(f"that is not the address Google redirected to; it must start with {redirect_uri}")
    # oauthlib refuses http; the loopback redirect never leaves the machine, so treat it as the
    # https it stands for — the same thing InstalledAppFlow.run_local_server does.
    return urlunsplit(("https", parts.netloc, parts.path, parts.query, parts.fragment))


def _token_despite_scope_change(exc: Exception) -> dict | None:
    """The token oauthlib attaches to its scope-changed ``Warning`` (it raises one unless OAUTHLIB_RELAX_TOKEN_SCOPE is set)."""
    token = getattr(exc, "token", None)
    if isinstance(exc, Warning) and isinstance(token, dict):
        return token
    return None


def _grant(token: dict) -> GoogleGrant:
    refresh, access = token.get("refresh_token"), token.get("access_token")
    id_token = token.get("id_token")
    register_secret(refresh, access, id_token)
    raw_scopes = token.get("scope") or []
    scopes = tuple(raw_scopes.split() if isinstance(raw_scopes, str) else raw_scopes)
    if ADS_SCOPE not in scopes:
        raise UserError(
            "Google did not grant access to Google Ads: allow 'See, edit, create and delete your Google Ads "
            "accounts and data' on the consent screen and connect again"
        )
    if not refresh or not access:
        raise UserError(
            "Google sent no refresh token: remove emsync's access at https://myaccount.google.com/permissions and connect again"
        )
    expires_at = token.get("expires_at")
    expiry = datetime.fromtimestamp(float(expires_at), UTC) if expires_at else None
    return GoogleGrant(refresh_token=refresh, access_token=access, expiry=expiry, scopes=scopes, email=email_from_id_token(id_token))


def email_from_id_token(id_token: str | None) -> str | None:
    """The ``email`` claim of an ID token, without checking its signature.

    The token came straight from Google's token endpoint over TLS, which
    OpenID Connect Core §3.1.3.7 accepts in place of signature validation;
    emsync uses the address only to label the credential.
    """
    if not id_token or id_token.count(".") != 2:
        return None
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return None
    email = claims.get("email") if isinstance(claims, dict) else None
    return email if isinstance(email, str) and "@" in email else None


def _explain(exc: Exception, *, port: int | None = None, timeout: float | None = None) -> UserError | None:
    """One line for the person at the terminal (never the code, a token or the client secret); None: not ours to explain."""
    import errno

    import requests
    from google_auth_oauthlib.flow import WSGITimeoutError
    from oauthlib.oauth2.rfc6749 import errors as oauth

    if isinstance(exc, WSGITimeoutError):
        return UserError(f"no answer from the browser within {timeout:g}s: run the command again, or use --no-browser")
    if isinstance(exc, oauth.MismatchingStateError):
        return UserError("Google's answer does not belong to this sign-in (state mismatch): start again and use the newest address")
    if isinstance(exc, oauth.AccessDeniedError):
        return UserError("access was denied on Google's consent screen: nothing was connected")
    if isinstance(exc, oauth.InvalidClientError):
        return UserError(
            "Google refused the OAuth client (invalid_client): check GOOGLE_OAUTH_CLIENT_ID and "
            "GOOGLE_OAUTH_CLIENT_SECRET (an OAuth client of type 'Desktop app')"
        )
    if isinstance(exc, oauth.InvalidGrantError):
        return UserError(
            f"Google refused the authorization code (invalid_grant: {_description(exc) or 'expired or already used'}): "
            "run the command again"
        )
    if isinstance(exc, oauth.MissingCodeError):
        return UserError("the address carries no authorization code: copy the address Google redirected to, after allowing access")
    if isinstance(exc, oauth.InsecureTransportError):
        return UserError(
            "oauthlib refuses plain http for GOOGLE_OAUTH_AUTH_URL and GOOGLE_OAUTH_TOKEN_URL: use https "
            "(only against a local sandbox, set OAUTHLIB_INSECURE_TRANSPORT=1)"
        )
    if isinstance(exc, oauth.OAuth2Error):
        detail = _description(exc)
        return UserError(f"Google refused the sign-in ({exc.error}{': ' + detail if detail else ''})")
    if isinstance(exc, requests.RequestException):
        return UserError(
            f"cannot reach Google's OAuth endpoint: {redact(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)}"
        )
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return UserError(f"port {port} on {LOOPBACK_HOST} is in use: choose another with --port, or 0 for any free port")
    if isinstance(exc, OSError) and port is not None:
        return UserError(f"cannot listen on {LOOPBACK_HOST}:{port}: {exc.strerror or exc}")
    return None


def _description(exc) -> str:
    text = getattr(exc, "description", None) or ""
    return redact(" ".join(str(text).split())[:200])


def revoke(token: str, revoke_url: str = GOOGLE_REVOKE_URL, *, http: HttpClient | None = None) -> bool:
    """Revoke a refresh (or access) token at Google; revoking either ends the whole grant.

    Returns False when Google says the token was already expired or revoked
    (there is nothing left to revoke), True when it revoked it now.

    Raises:
        FatalApiError: Google refused the request for another reason.
        RetryableError: Google stayed unreachable or answered 5xx/429 through the retries.
    """
    register_secret(token)
    http = http or HttpClient(new_session(1), timeout=30, attempts=3, max_wait=30)
    return http.send("POST", revoke_url, data={"token": token}, classify=_classify_revoke)


def _classify_revoke(response) -> bool:
    if response.status_code == 200:
        return True
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryableError(f"Google's revoke endpoint answered HTTP {response.status_code}")
    body = read_body(response, REVOKE_SERVICE)
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code == 400 and error == "invalid_token":
        return False
    raise FatalApiError(f"Google's revoke endpoint answered HTTP {response.status_code}: {error or 'no error code'}")
