"""Users and sessions: register, login, me, refresh, logout, the session list.

Login attempts are counted before the password is checked (api/ratelimit.py);
refresh is limited per address by Flask-Limiter (counted before the view runs).
"""
from __future__ import annotations

from flask import Blueprint, g, request

from api.common import bearer_token, body, login_required, services
from api.ratelimit import LoginLimits
from api.validation import check_text, parse_id
from extensions import limiter
from services.schemas import responses as out
from services.schemas.requests import Credentials, LoginCredentials, LogoutRequest, RefreshRequest

bp = Blueprint("auth", __name__, url_prefix="/api/auth")


def _user_agent() -> str:
    """The client's User-Agent, cut to 256 characters, control characters dropped."""
    agent = request.headers.get("User-Agent", "")[:256]
    try:
        return check_text(agent)
    except ValueError:
        return "".join(ch for ch in agent if ch.isprintable())


@bp.post("/register")
def register():  # type: ignore[no-untyped-def]
    """201 ``{"id", "username"}``; 409 when taken."""
    creds = body(Credentials)
    user = services().users.register(creds.username, creds.password)
    return out.User.of(user), 201


@bp.post("/login")
def login():  # type: ignore[no-untyped-def]
    """200 ``{"access_token", "token_type", "expires_in", "refresh_token",
    "refresh_expires_in", "session_id"}``; 401; 429 (``Retry-After``) when the
    address or the username used up its attempts."""
    creds = body(LoginCredentials)
    cfg = services().config
    limits = LoginLimits(cfg.LOGIN_RATE_LIMIT, cfg.LOGIN_USERNAME_RATE_LIMIT)
    attempt = limits.begin(creds.username)
    pair = services().sessions.login(creds.username, creds.password, _user_agent())
    limits.succeeded(attempt)
    return out.Token.of(pair)


@bp.post("/refresh")
@limiter.limit(lambda: services().config.REFRESH_RATE_LIMIT)
def refresh():  # type: ignore[no-untyped-def]
    """200 a new token pair; the presented refresh token stops working; a rotated one
    presented again ends its session; 401 otherwise."""
    return out.Token.of(services().sessions.refresh(body(RefreshRequest).refresh_token))


@bp.post("/logout")
@limiter.limit(lambda: services().config.REFRESH_RATE_LIMIT)
def logout():  # type: ignore[no-untyped-def]
    """204: the session of the given refresh token (or of the bearer token) ends."""
    req = body(LogoutRequest, optional=True)
    session_id = None if req.refresh_token else services().tokens.session_id(bearer_token())
    services().sessions.logout(req.refresh_token, session_id)
    return "", 204


@bp.get("/me")
@login_required
def me():  # type: ignore[no-untyped-def]
    """200 ``{"id", "username", "is_admin"}``."""
    return out.Me.of(services().users.get(g.user_id))


@bp.get("/sessions")
@login_required
def list_sessions():  # type: ignore[no-untyped-def]
    """200 ``[{"id", "created_at", "last_used_at", "user_agent", "current"}]``."""
    current = services().tokens.session_id(bearer_token())
    return [out.Session.of(s, current=s.id == current) for s in services().sessions.list(g.user_id)]


@bp.delete("/sessions/<session_id>")
@login_required
def end_session(session_id: str):  # type: ignore[no-untyped-def]
    """204; 404 for an unknown, ended or another user's session."""
    services().sessions.end(g.user_id, parse_id(session_id, "session_id"))
    return "", 204
