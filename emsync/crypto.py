"""Token encryption at rest (Fernet: AES-128-CBC + HMAC-SHA256, with a timestamp)."""

from __future__ import annotations

from .errors import ConfigError


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


class TokenBox:
    """Encrypts and decrypts token strings with the configured key.

    Its repr never shows the key.
    """

    def __init__(self, key: str):
        from cryptography.fernet import Fernet

        self._fernet = Fernet(key.encode())

    def __repr__(self) -> str:
        return "TokenBox(key=***)"

    def encrypt(self, token: str | None) -> str | None:
        if token is None:
            return None
        return self._fernet.encrypt(token.encode()).decode()

    def decrypt(self, blob: str | None) -> str | None:
        from cryptography.fernet import InvalidToken

        if blob is None:
            return None
        try:
            return self._fernet.decrypt(blob.encode()).decode()
        except InvalidToken:
            raise ConfigError("EMSYNC_SECRET_KEY cannot decrypt the stored tokens: it is not the key they were stored with") from None
