"""Domain errors raised by services; ``api`` and ``ws`` map them to CONTRACT.md's shape.

Exchange errors (``exchanges.errors``) pass through services unchanged.
"""
from __future__ import annotations


class ServiceError(Exception):
    """Base: ``code`` is a snake_case identifier, ``message`` a human sentence,
    ``field`` the offending input field when there is one."""

    status = 400

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class ValidationFailed(ServiceError):
    """Input broke a rule (HTTP 400)."""


class Unauthorized(ServiceError):
    """No or bad credentials (HTTP 401)."""

    status = 401


class NotFound(ServiceError):
    """Unknown resource, or another user's (HTTP 404: never reveal it exists)."""

    status = 404


class Conflict(ServiceError):
    """The resource exists or is in a state that forbids the action (HTTP 409)."""

    status = 409
