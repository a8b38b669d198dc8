"""Token encryption at rest (Fernet: AES-128-CBC + HMAC-SHA256, with a timestamp).

``EMSYNC_SECRET_KEY`` holds one key, or several separated by commas during a
rotation (``new,old``): Fernet's ``MultiFernet`` encrypts with the first and
decrypts with any of them.
"""

from __future__ import annotations

from .errors import ConfigError

UNREADABLE = "EMSYNC_SECRET_KEY cannot decrypt the stored tokens: it is not the key they were stored with"


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def split_keys(value: str) -> list[str]:
    """The keys of an ``EMSYNC_SECRET_KEY`` value, first (the one that encrypts) first."""
    return [k.strip() for k in value.split(",") if k.strip()]


class TokenBox:
    """Encrypts token strings with the first configured key, decrypts them with any.

    Its repr never shows a key.
    """

    def __init__(self, key: str):
        from cryptography.fernet import Fernet, MultiFernet

        keys = split_keys(key)
        if not keys:
            raise ConfigError("EMSYNC_SECRET_KEY is empty")
        self._first = Fernet(keys[0].encode())
        self._multi = MultiFernet([Fernet(k.encode()) for k in keys])
        self.key_count = len(keys)

    def __repr__(self) -> str:
        return f"TokenBox(keys={self.key_count}, key=***)"

    def encrypt(self, token: str | None) -> str | None:
        if token is None:
            return None
        return self._multi.encrypt(token.encode()).decode()

    def decrypt(self, blob: str | None) -> str | None:
        """The clear token; None for None.

        Raises:
            ConfigError: no configured key decrypts it.
        """
        from cryptography.fernet import InvalidToken

        if blob is None:
            return None
        try:
            return self._multi.decrypt(blob.encode()).decode()
        except InvalidToken:
            raise ConfigError(UNREADABLE) from None

    def readable(self, blob: str) -> bool:
        """Whether some configured key decrypts ``blob``."""
        return self._try(self._multi, blob)

    def readable_with_first(self, blob: str) -> bool:
        """Whether the first key alone decrypts ``blob`` (the older keys are then not needed for it)."""
        return self._try(self._first, blob)

    def rotate(self, blob: str) -> str:
        """``blob`` encrypted again with the first key (same token).

        Raises:
            ConfigError: no configured key decrypts it.
        """
        from cryptography.fernet import InvalidToken

        try:
            return self._multi.rotate(blob.encode()).decode()
        except InvalidToken:
            raise ConfigError(UNREADABLE) from None

    @staticmethod
    def _try(fernet, blob: str) -> bool:
        from cryptography.fernet import InvalidToken

        try:
            fernet.decrypt(blob.encode())
        except (InvalidToken, ValueError, TypeError):
            return False
        return True
