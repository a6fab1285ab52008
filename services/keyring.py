"""Lookup of a user's own API key: the one place that decides "not yours = not found"."""
from __future__ import annotations

from models import Database, ExchangeKey
from services.errors import NotFound


def get_owned_key(db: Database, user_id: int, key_id: int) -> ExchangeKey:
    """The key ``key_id`` if it belongs to ``user_id`` and is not deleted.

    Raises NotFound (``key_not_found``, field ``key_id``) otherwise, also for another
    user's key, so that its existence is never revealed.
    """
    with db.session() as s:
        key = s.get(ExchangeKey, key_id)
    if key is None or key.user_id != user_id or key.status == "deleted":
        raise NotFound("key_not_found", f"no API key {key_id}", "key_id")
    return key
