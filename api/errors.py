"""One error contract: every failure becomes ``{"error": {"code", "message"[, "field"]}}``
with CONTRACT.md's status. Never a stack trace in a response."""
from __future__ import annotations

import decimal
import logging
import math
import time

from flask import Flask, jsonify
from limits.errors import StorageError
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from exchanges import errors as xe
from extensions import limiter
from services.errors import ServiceError
from services.schemas.responses import Error

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answer: ``code`` snake_case, ``message`` a sentence, ``status`` HTTP,
    ``field`` the input field at fault, ``headers`` extra response headers."""

    def __init__(self, code: str, message: str, status: int = 400, field: str | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.field = code, message, status, field
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body (``services.schemas.responses.Error``; ``field`` only when set)."""
        return Error.of({"error": {"code": self.code, "message": self.message,
                                   "field": self.field or None}})


def from_validation(e: ValidationError) -> ApiError:
    """The first pydantic error as a 400 naming the field (dotted path)."""
    first = e.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    message = first.get("msg", "invalid value")
    return ApiError("validation_error", f"{field}: {message}" if field else message, 400, field)


def from_exchange(e: xe.ExchangeError) -> ApiError:
    """Typed exchange error -> CONTRACT.md status, carrying the exchange's code."""
    msg = f"{e.exchange} error {e.code}: {e.message}" if e.code is not None else f"{e.exchange}: {e.message}"
    if isinstance(e, xe.RateLimited):
        retry_s = max(1, (e.retry_after_ms or 1000) // 1000)
        return ApiError("exchange_rate_limited", msg, 429, headers={"Retry-After": str(retry_s)})
    if isinstance(e, xe.ExchangeTimeout):
        return ApiError("exchange_timeout", msg, 504)
    if isinstance(e, xe.ExchangeUnavailable):
        return ApiError("exchange_unavailable", msg, 503 if (e.http_status or 0) >= 500 else 502)
    if isinstance(e, xe.AuthFailed):
        return ApiError("exchange_auth_failed", msg, 422)
    if isinstance(e, xe.ClockSkew):
        return ApiError("exchange_clock_skew", msg, 502)
    code = {xe.InsufficientBalance: "insufficient_balance", xe.OrderNotFound: "exchange_order_not_found",
            xe.InvalidOrder: "exchange_rejected"}.get(type(e), "exchange_rejected")
    return ApiError(code, msg, 422)


# Raised by arithmetic or a driver on a value the input layer (api/validation.py)
# should have refused: still the client's input, so a 400, never a 500.
INPUT_ERRORS = (OverflowError, RecursionError, decimal.InvalidOperation, UnicodeEncodeError)


def to_api_error(e: Exception) -> ApiError | None:
    """Map a known exception to an ApiError; None when it is a bug (-> 500)."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, INPUT_ERRORS):
        logger.warning("input refused late error=%s", type(e).__name__)
        return ApiError("validation_error", "a value in the request is out of range or "
                        "cannot be represented", 400)
    if isinstance(e, ValidationError):
        return from_validation(e)
    if isinstance(e, StorageError):  # the rate-limit counters cannot be reached: fail closed
        logger.warning("rate limit storage unavailable error=%s", type(e.storage_error).__name__)
        return ApiError("rate_limit_unavailable", "rate limiting is unavailable; retry later", 503,
                        headers={"Retry-After": "5"})
    if isinstance(e, ServiceError):
        return ApiError(e.code, e.message, e.status, e.field)
    if isinstance(e, xe.ExchangeError):
        err = from_exchange(e)
        err.exchange_code = e.code  # type: ignore[attr-defined]
        return err
    return None


def _respond(err: ApiError):  # type: ignore[no-untyped-def]
    body = Error.of({"error": {"code": err.code, "message": err.message, "field": err.field or None,
                               "exchange_code": getattr(err, "exchange_code", None)}})
    resp = jsonify(body)
    resp.status_code = err.status
    for k, v in err.headers.items():
        resp.headers[k] = v
    return resp


def _retry_after_s(header: str | None) -> int:
    """Seconds until Flask-Limiter's breached window frees (its ``current_limit``),
    else the header it set, else 60."""
    try:
        current = limiter.current_limit
    except Exception:  # outside a limited request: nothing to read
        current = None
    if current is not None:
        return max(1, math.ceil(current.reset_at - time.time()))
    return int(header) if header and header.isdigit() else 60


def register_error_handlers(app: Flask) -> None:
    """Install the JSON error handlers on ``app``."""

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):  # type: ignore[no-untyped-def]
        code = (e.name or "error").lower().replace(" ", "_")
        headers = {}
        original = e.get_response().headers
        if "Allow" in original:  # 405 Method Not Allowed (RFC 9110 section 15.5.6)
            headers["Allow"] = original["Allow"]
        if e.code == 429:
            code = "rate_limited"
            headers["Retry-After"] = str(_retry_after_s(original.get("Retry-After")))
        message = e.description or e.name
        if e.code == 413:
            message = "request body too large"
        return _respond(ApiError(code, message, e.code or 500, headers=headers))

    @app.errorhandler(Exception)
    def _any(e: Exception):  # type: ignore[no-untyped-def]
        err = to_api_error(e)
        if err is not None:
            metrics = getattr(app.extensions.get("pushsrv"), "metrics", None)
            if metrics is not None and isinstance(e, xe.ExchangeError):
                metrics.count_exchange_error(e.exchange, type(e).__name__)
            return _respond(err)
        if isinstance(e, SQLAlchemyError):
            logger.exception("database error")
            return _respond(ApiError("database_unavailable", "the database is unavailable", 503))
        logger.exception("unhandled error")
        return _respond(ApiError("internal_error", "internal server error", 500))
