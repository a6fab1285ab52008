"""Password hashing (Argon2id), access tokens (JWT, HS256) and API-secret encryption
(Fernet). No secret handled here is ever logged."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from services.errors import Unauthorized

_hasher = PasswordHasher()  # Argon2id, memory-hard (RFC 9106 defaults of argon2-cffi)
# A valid hash to verify against when the user does not exist (same cost either way).
_DUMMY_HASH = _hasher.hash("not-a-real-password")


def _offload(fn: Callable[..., Any], *args: Any) -> Any:
    """Run the CPU-bound KDF: in eventlet's OS thread pool (``tpool.execute``) when the
    process is monkey-patched by eventlet, so that the event hub is never blocked for
    the ~50 ms a hash takes (argon2-cffi releases the GIL); directly otherwise."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        from eventlet import tpool
        return tpool.execute(fn, *args)
    return fn(*args)


def hash_password(password: str) -> str:
    """Argon2id hash string of ``password``."""
    return _offload(_hasher.hash, password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; takes the same time for an unknown user (pass None)."""
    return bool(_offload(_verify, password_hash or _DUMMY_HASH, password)) and password_hash is not None


class TokenService:
    """Issues and checks JWT access tokens.

    Claims: ``sub`` (user id as a string), ``iat``, ``exp`` (seconds, per RFC 7519),
    ``adm`` (bool), ``sid`` (the login session, services/sessions.py; absent on tokens
    issued without one).
    """

    algorithm = "HS256"

    def __init__(self, secret_key: str, expires_s: int) -> None:
        self._key = secret_key
        self.expires_s = expires_s

    def issue(self, user_id: int, is_admin: bool, session_id: int | None = None) -> str:
        """A signed token valid for ``expires_s`` seconds."""
        now = int(time.time())
        claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "exp": now + self.expires_s,
                                  "adm": is_admin}
        if session_id is not None:
            claims["sid"] = session_id
        return jwt.encode(claims, self._key, algorithm=self.algorithm)

    def verify(self, token: str | None) -> tuple[int, bool]:
        """``(user_id, is_admin)`` of a valid token. Raises Unauthorized otherwise."""
        claims = self.claims(token)
        return int(claims["sub"]), bool(claims.get("adm", False))

    def session_id(self, token: str | None) -> int | None:
        """The ``sid`` claim of a valid token (None without one). Raises Unauthorized."""
        sid = self.claims(token).get("sid")
        return sid if isinstance(sid, int) and not isinstance(sid, bool) else None

    def claims(self, token: str | None) -> dict[str, Any]:
        """The claims of a valid token. Raises Unauthorized otherwise."""
        if not token:
            raise Unauthorized("unauthorized", "missing access token")
        try:
            claims = jwt.decode(token, self._key, algorithms=[self.algorithm],
                                options={"require": ["exp", "sub"]})
            int(claims["sub"])
            return claims
        except jwt.ExpiredSignatureError as e:
            raise Unauthorized("token_expired", "access token expired") from e
        except (jwt.InvalidTokenError, ValueError, TypeError) as e:
            raise Unauthorized("unauthorized", "invalid access token") from e


class KeyCipher:
    """Encrypts API secrets with Fernet keys from the environment.

    ``keys``: the current key first, then older keys still accepted for decryption
    (a rotation re-encrypts with the first).
    """

    def __init__(self, *keys: str) -> None:
        if not keys or not keys[0]:
            raise ValueError("KEY_ENCRYPTION_KEY is required")
        self._fernet = MultiFernet([Fernet(k.encode() if isinstance(k, str) else k) for k in keys])

    def encrypt(self, secret: str) -> bytes:
        """Fernet token (bytes) of ``secret``."""
        return self._fernet.encrypt(secret.encode())

    def rotate(self, token: bytes) -> bytes:
        """``token`` re-encrypted with the current (first) key. Raises ValueError when
        no configured key opens it."""
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken as e:
            raise ValueError("stored API secret cannot be decrypted with the configured keys") from e

    def decrypt(self, token: bytes) -> str:
        """The clear secret. Raises ValueError when no configured key opens the token."""
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as e:
            raise ValueError("stored API secret cannot be decrypted with the configured keys") from e
