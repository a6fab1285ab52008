"""Admin endpoints (curl): health, stats, connections, cache clear, reconcile.

Every call needs ``X-Admin-Token: <ADMIN_TOKEN>`` or an admin user's bearer token.
"""
from __future__ import annotations

import hmac
import time

from flask import Blueprint, request

from api.common import bearer_token, services
from api.errors import ApiError
from api.validation import json_object, parse_id
from services.schemas import responses as out

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def require_admin() -> None:
    """401 unless the admin token or an admin user's token is presented."""
    svc = services()
    token = request.headers.get("X-Admin-Token", "")
    if token and hmac.compare_digest(token.encode(), svc.config.ADMIN_TOKEN.encode()):
        return
    bearer = bearer_token()
    if bearer:
        try:
            _, is_admin = svc.tokens.verify(bearer)
        except Exception:  # any token problem is the same 401
            is_admin = False
        if is_admin:
            return
    if token:
        raise ApiError("unauthorized", "X-Admin-Token is not the admin token", 401)
    raise ApiError("unauthorized", "admin token required (X-Admin-Token)", 401)


@bp.get("/health")
def health():  # type: ignore[no-untyped-def]
    """``{"status": "ok"|"degraded", "db", "message_queue", "uptime_s"}``."""
    svc = services()
    db_ok = svc.db.ping()
    mq = svc.message_queue_status()
    status = "ok" if db_ok and mq in ("ok", "none") else "degraded"
    return out.Health.of({"status": status, "db": "ok" if db_ok else "down", "message_queue": mq,
                          "uptime_s": int(time.monotonic() - svc.started_monotonic)}), \
        200 if status == "ok" else 503


@bp.get("/stats")
def stats():  # type: ignore[no-untyped-def]
    """Connections, subscriptions, client cache, streams, pushes, write-behind."""
    svc = services()
    figures = svc.hub.stats()
    figures["exchange_cache"] = svc.trading.stats()
    figures["streams"] = svc.streams.stats()
    figures["tickers"] = svc.tickers.stats()
    figures["rate_limits"] = svc.governors.stats()
    figures["reconcile"] = svc.reconciler.stats()
    figures["write_behind"] = svc.ledger_writer.stats()
    if svc.metrics is not None:
        figures["gc"] = svc.metrics.gc.stats()
    if svc.notify is not None:
        figures["notifications"] = svc.notify.stats()
    return out.Stats.of(figures)


@bp.get("/connections")
def connections():  # type: ignore[no-untyped-def]
    """``[{"sid", "user_id", "rooms", "connected_at"}]``."""
    return [out.Connection.of(c, rooms=c.rooms()) for c in services().hub.connections()]


@bp.post("/users/<user_id>/cache/clear")
def clear_cache(user_id: str):  # type: ignore[no-untyped-def]
    """``{"cleared": [{"user_id", "exchange", "testnet"}]}``."""
    return out.CacheCleared.of({"cleared": services().trading.clear_user_cache(
        parse_id(user_id, "user_id"))})


@bp.post("/reconcile")
def reconcile():  # type: ignore[no-untyped-def]
    """Reconcile the ledger with the exchange (all accounts with ledger activity, or
    one user's): ``{"checked", "fixed", "details"}``."""
    data = json_object(optional=True)
    user_id = data.get("user_id")
    if user_id is not None:
        user_id = parse_id(user_id, "user_id", from_json=True)
    return out.ReconcileResult.of(services().reconciler.reconcile(user_id))
