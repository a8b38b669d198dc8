"""Reaching an integration's account: its credential decrypted, made usable by its connector, persisted when renewed.

The sync engine and backfills both go through ``CredentialAccess``, so where
tokens live (a ``credentials`` row shared by integrations) and how they are
prepared is written once for both.

Integrations share credentials (one Google login, one Meta user): a Google
access token is refreshed once per credential and cached on it for every
integration (threads of one process wait on a per-credential lock and find it
cached), a Meta token is renewed once per credential, and a credential the
platform refused — or whose side step (a renewal, ``debug_token``) failed — is
not tried again until ``new_run``.
"""

from __future__ import annotations

import threading

from . import store
from .clock import Clock
from .config import Settings
from .crypto import TokenBox
from .db import one_statement, write_transaction
from .domain import Connector, Credentials, IntegrationState
from .errors import ConfigError, NeedsReauth
from .http import HttpClient
from .keys import unreadable_token
from .redaction import register_secret


def make_connector(platform: str, settings: Settings, api: HttpClient, clock: Clock) -> Connector:
    if platform == "meta":
        from .connectors.meta import MetaConnector

        return MetaConnector(settings, api, clock)
    from .connectors.google import GoogleConnector

    return GoogleConnector(settings, api, clock)


class CredentialAccess:
    """One process's access to stored credentials: per-credential locks, and what this run learnt about each."""

    def __init__(self, db_engine, box: TokenBox):
        self.db = db_engine
        self.box = box
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._refused: dict[int, str] = {}  # credential id -> why the platform refused it in this run
        self._side_warnings: dict[int, tuple[str, ...]] = {}  # credential id -> its failed side steps in this run

    def new_run(self) -> None:
        """Forget what the last run learnt: a refused credential or a failed renewal is tried again."""
        self._refused.clear()
        self._side_warnings.clear()

    def prepare(self, state: IntegrationState, connector: Connector, creds: Credentials) -> list[str]:
        """Fill ``creds`` from the integration's credential, refreshed or renewed when due, once for all its
        integrations; returns the warnings of side steps that failed (a renewal, debug_token) without stopping the sync.

        Under the credential's lock the row is read again: another thread may have refreshed it a
        moment ago. A refresh or renewal is saved at once, so the threads that wait find it.

        Raises:
            NeedsReauth: the platform refused the credential (now, or earlier in this run), or it was removed.
            ConfigError: no configured key decrypts its token (the message names the credential, and the fix).
        """
        credential_id = state.credential_id
        with self._lock_for(credential_id):
            refused = self._refused.get(credential_id)
            if refused is not None:
                raise NeedsReauth(refused)
            with one_statement(self.db) as conn:
                stored = store.credential_state(conn, credential_id)
            if stored is None:
                raise NeedsReauth("the integration's credential was removed: connect the account again")
            creds.access_token = self._open(stored, "access_token_enc", state)
            creds.refresh_token = self._open(stored, "refresh_token_enc", state)
            creds.token_expires_at = stored.token_expires_at
            cached = stored.cached_access_token_enc
            if cached is not None and self.box.readable(cached):
                creds.cached_access_token = self.box.decrypt(cached)
                creds.cached_access_token_expires_at = stored.cached_access_token_expires_at
            # else: a cached access token no key decrypts (another host's newer key) is just refreshed again
            creds.data_access_expires_at = stored.data_access_expires_at
            creds.token_checked_at = stored.token_checked_at
            register_secret(*creds.secrets())
            earlier = self._side_warnings.get(credential_id)
            if earlier is not None:
                return list(earlier)
            try:
                warnings = list(connector.prepare(state.account, creds))
            except NeedsReauth as exc:
                self._refused[credential_id] = str(exc)
                raise
            if creds.changed:
                with write_transaction(self.db) as conn:
                    store.save_tokens(conn, self.box, credential_id, creds)
            if warnings:
                self._side_warnings[credential_id] = tuple(warnings)
            return warnings

    def save(self, conn, state: IntegrationState, creds: Credentials) -> None:
        """Persist, inside the caller's transaction, a token renewed during the fetch itself (a Google 401 refreshes once)."""
        if creds.changed:
            store.save_tokens(conn, self.box, state.credential_id, creds)

    def _open(self, stored, column: str, state: IntegrationState) -> str | None:
        blob = getattr(stored, column)
        if blob is None:
            return None
        if not self.box.readable(blob):
            raise ConfigError(unreadable_token(stored.platform, column, stored.id, state.id))
        return self.box.decrypt(blob)

    def _lock_for(self, credential_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(credential_id, threading.Lock())
