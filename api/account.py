"""GET /api/account/{balance|positions|pnl|orders}?key_id=ID: the push envelope now."""
from __future__ import annotations

from flask import Blueprint, g

from api.common import login_required, query_int, services
from api.errors import ApiError
from services.account_kinds import STATE_TYPES
from services.schemas.responses import Envelope

bp = Blueprint("account", __name__, url_prefix="/api/account")


@bp.get("/<kind>")
@login_required
def snapshot(kind: str):  # type: ignore[no-untyped-def]
    """200 the envelope of ``kind`` (from the live stream's state, or a REST fetch)."""
    if kind not in STATE_TYPES:
        raise ApiError("not_found", f"unknown account type {kind!r}; one of {', '.join(STATE_TYPES)}", 404)
    svc = services()
    key = svc.keys.resolve(g.user_id, query_int("key_id"))
    return Envelope.of(svc.snapshots.envelope(g.user_id, key, kind))
