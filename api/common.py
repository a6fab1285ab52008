"""Helpers shared by the blueprints: body parsing and the authenticated user."""
from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request
from pydantic import BaseModel

from api.validation import json_object, query_id

M = TypeVar("M", bound=BaseModel)


def body(model: type[M], optional: bool = False) -> M:
    """The JSON body validated as ``model`` (size and depth checked before parsing,
    ``api/validation.py``); an empty body is ``{}`` when ``optional``. Raises ApiError
    400/413, or pydantic's ValidationError (mapped to 400 naming the field)."""
    return model.model_validate(json_object(optional))


def query_int(name: str, required: bool = False) -> int | None:
    """An id query parameter (ASCII digits, 1..MAX_ID), or None. Raises ApiError 400
    naming it. Same as ``api.validation.query_id``."""
    return query_id(name, required)


def bearer_token() -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def services() -> Any:
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
