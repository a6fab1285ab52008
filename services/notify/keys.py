"""Event keys: the one string that names an event across the outbox (its unique key
per device), the FCM collapse key (Android ``collapse_key``, APNs
``apns-collapse-id``, at most 64 bytes) and the record of socket deliveries."""
from __future__ import annotations

import hashlib

MAX_KEY_LEN = 64  # APNs apns-collapse-id: at most 64 bytes


def _bounded(key: str) -> str:
    if len(key.encode()) <= MAX_KEY_LEN:
        return key
    return key.split(":", 1)[0] + ":" + hashlib.sha256(key.encode()).hexdigest()[:48]


def fill_key(key_id: int, symbol: str, trade_id: str) -> str:
    """The event key of a fill: exchange trade ids are unique per (key, symbol)."""
    return _bounded(f"fill:{key_id}:{symbol}:{trade_id}")


def alert_key(alert_id: int) -> str:
    """The event key of an ``alerts`` item (its row id)."""
    return f"alert:{alert_id}"


def event_keys_of(envelope: dict) -> list[str]:
    """The event keys of a ``fills`` or ``alerts`` push envelope's items ([] for any
    other type)."""
    kind = envelope.get("type")
    data = envelope.get("data") or []
    if kind == "fills":
        return [fill_key(envelope["key_id"], r["symbol"], r["trade_id"]) for r in data]
    if kind == "alerts":
        return [alert_key(r["id"]) for r in data]
    return []
