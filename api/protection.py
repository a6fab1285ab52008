"""PUT, GET, DELETE /api/positions/protection (CONTRACT.md "Protection")."""
from __future__ import annotations

from flask import Blueprint, g, request

from api.common import body, login_required, services
from api.validation import invalid, query_id
from services.schemas.fields import Symbol
from services.schemas.protection import Protection, ProtectionSet

bp = Blueprint("protection", __name__, url_prefix="/api/positions")


@bp.put("/protection")
@login_required
def set_protection():  # type: ignore[no-untyped-def]
    """200 the protection: named legs set (``null`` removes one), others kept."""
    req = body(ProtectionSet)
    return Protection.of(services().protection.put(g.user_id, req.key_id, req.symbol,
                                                   req.named_legs(), req.mode, req.working_type))


@bp.get("/protection")
@login_required
def list_protection():  # type: ignore[no-untyped-def]
    """200 ``[protection]``: one per symbol with a leg that is not canceled."""
    return Protection.many(services().protection.protections(g.user_id, query_id("key_id", required=True)))


@bp.delete("/protection")
@login_required
def remove_protection():  # type: ignore[no-untyped-def]
    """200 the protection with every live leg canceled."""
    key_id = query_id("key_id", required=True)
    return Protection.of(services().protection.delete(g.user_id, key_id, _symbol()))


def _symbol() -> str:
    from pydantic import TypeAdapter, ValidationError
    raw = request.args.get("symbol", "")
    if not raw:
        raise invalid("symbol", "is required")
    try:
        return TypeAdapter(Symbol).validate_python(raw)
    except ValidationError as e:
        raise invalid("symbol", "must be 2-32 characters of [A-Z0-9]") from e
