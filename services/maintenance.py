"""Operator tasks run from the command line (``flask --app app <command>``)."""
from __future__ import annotations

import logging

from sqlalchemy import select

from models import Database, ExchangeKey
from services.accounts import UserService
from services.errors import Conflict
from services.security import KeyCipher, hash_password

logger = logging.getLogger(__name__)


def create_admin(db: Database, users: UserService, username: str, password: str) -> tuple[int, bool]:
    """Create an admin user, or make an existing user admin and set its password.
    Returns ``(user_id, created)``."""
    try:
        user = users.register(username, password, is_admin=True)
        return user.id, True
    except Conflict:
        with db.transaction() as s:
            existing = users.by_username(username)
            assert existing is not None
            row = s.get(type(existing), existing.id)
            row.is_admin = True
            row.password_hash = hash_password(password)
        return existing.id, False


def rotate_encryption_key(db: Database, old_keys: list[str], new_key: str) -> int:
    """Re-encrypt every stored API secret with ``new_key``; secrets readable with
    ``new_key`` or any of ``old_keys`` are accepted. One transaction: all or nothing.
    Returns how many secrets were rewritten. Raises ValueError when a secret opens
    with none of the keys (nothing is changed then)."""
    cipher = KeyCipher(new_key, *old_keys)
    count = 0
    with db.transaction() as s:
        for key in s.scalars(select(ExchangeKey).where(ExchangeKey.api_secret_encrypted != b"")):
            key.api_secret_encrypted = cipher.rotate(key.api_secret_encrypted)
            count += 1
    logger.info("api secrets re-encrypted count=%s", count)
    return count
