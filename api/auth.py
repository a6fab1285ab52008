"""POST /api/auth/register, POST /api/auth/login, GET /api/auth/me."""
from __future__ import annotations

from flask import Blueprint, g

from api.common import body, login_required, services
from api.schemas import Credentials
from extensions import limiter

bp = Blueprint("auth", __name__, url_prefix="/api/auth")


@bp.post("/register")
def register():  # type: ignore[no-untyped-def]
    """201 ``{"id", "username"}``; 409 when taken."""
    creds = body(Credentials)
    user = services().users.register(creds.username, creds.password)
    return {"id": user.id, "username": user.username}, 201


@bp.post("/login")
@limiter.limit(lambda: services().config.LOGIN_RATE_LIMIT, deduct_when=lambda r: r.status_code == 401)
def login():  # type: ignore[no-untyped-def]
    """200 ``{"access_token", "token_type", "expires_in"}``; 401; 429 after repeated failures."""
    creds = body(Credentials)
    token, expires_in = services().users.login(creds.username, creds.password)
    return {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}


@bp.get("/me")
@login_required
def me():  # type: ignore[no-untyped-def]
    """200 ``{"id", "username", "is_admin"}``."""
    user = services().users.get(g.user_id)
    return {"id": user.id, "username": user.username, "is_admin": user.is_admin}
