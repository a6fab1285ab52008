"""Helpers shared by the blueprints: body parsing and the authenticated user."""
from __future__ import annotations

from functools import wraps
from typing import Callable, TypeVar

from flask import current_app, g, request
from pydantic import BaseModel

from api.errors import ApiError

M = TypeVar("M", bound=BaseModel)


def body(model: type[M]) -> M:
    """The JSON body validated as ``model``. Raises ApiError 400 for a body that is not
    a JSON object, or pydantic's ValidationError (mapped to 400 naming the field)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError("invalid_json", "request body must be a JSON object")
    return model.model_validate(data)


def query_int(name: str, required: bool = False) -> int | None:
    """A positive integer query parameter, or None. Raises ApiError 400 naming it."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        if required:
            raise ApiError("validation_error", f"{name} is required", 400, name)
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise ApiError("validation_error", f"{name} must be a positive integer", 400, name)
    return int(raw)


def bearer_token() -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def services():  # type: ignore[no-untyped-def]
    """The app's service container (``app.extensions["pushsrv"]``)."""
    return current_app.extensions["pushsrv"]


F = TypeVar("F", bound=Callable)


def login_required(view: F) -> F:
    """Require a valid bearer token; sets ``g.user_id`` and ``g.is_admin``."""
    @wraps(view)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        g.user_id, g.is_admin = services().tokens.verify(bearer_token())
        return view(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
