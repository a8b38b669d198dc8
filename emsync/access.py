"""Reaching an integration's account: its credentials decrypted, made usable by its connector, persisted when renewed.

The sync engine and backfills both go through these functions, so a change in
where tokens live (or how they are prepared) is made once for both.
"""

from __future__ import annotations

from . import store
from .clock import Clock
from .config import Settings
from .crypto import TokenBox
from .domain import Connector, Credentials, IntegrationState
from .http import HttpClient
from .redaction import register_secret


def make_connector(platform: str, settings: Settings, api: HttpClient, clock: Clock) -> Connector:
    if platform == "meta":
        from .connectors.meta import MetaConnector

        return MetaConnector(settings, api, clock)
    from .connectors.google import GoogleConnector

    return GoogleConnector(settings, api, clock)


def decrypt_credentials(box: TokenBox, state: IntegrationState) -> Credentials:
    """The integration's tokens in clear text for this session, registered for redaction at once.

    Raises:
        ConfigError: the key cannot decrypt them.
    """
    creds = Credentials(
        access_token=box.decrypt(state.access_token_enc),
        token_expires_at=state.token_expires_at,
        refresh_token=box.decrypt(state.refresh_token_enc),
        cached_access_token=box.decrypt(state.cached_access_token_enc),
        cached_access_token_expires_at=state.cached_access_token_expires_at,
    )
    register_secret(*creds.secrets())
    return creds


def open_connector(settings: Settings, state: IntegrationState, creds: Credentials, api: HttpClient, clock: Clock) -> Connector:
    """The platform's connector with ``creds`` made usable (a token renewed or refreshed when due; ``creds`` changes in place).

    Raises:
        ApiError: the platform refused to renew or refresh.
    """
    connector = make_connector(state.platform, settings, api, clock)
    connector.prepare(creds)
    return connector


def save_credentials(conn, box: TokenBox, integration_id: int, creds: Credentials) -> None:
    """Persist, encrypted and inside the caller's transaction, what a connector renewed; nothing when unchanged."""
    if not creds.changed:
        return
    store.save_tokens(
        conn,
        integration_id,
        access_token_enc=box.encrypt(creds.access_token),
        token_expires_at=creds.token_expires_at,
        cached_access_token_enc=box.encrypt(creds.cached_access_token),
        cached_access_token_expires_at=creds.cached_access_token_expires_at,
    )
