"""The input layer: every byte a client sends passes one of these checks before any
parsing, arithmetic or database call, and a bad value is an ApiError 400 (413 for
size) naming the field, in CONTRACT.md's error shape. The rules themselves, free of
Flask, are in ``schemas/fields.py`` (shared with Socket.IO).

The rules, the same on REST (path, query, body) and Socket.IO (``parse_id``):

- JSON documents: at most ``MAX_CONTENT_LENGTH`` bytes (413) and ``MAX_JSON_DEPTH``
  levels of ``[``/``{`` nesting, both checked on the raw text *before* ``json.loads``
  (whose recursive descent would otherwise end in a RecursionError); no ``NaN``/
  ``Infinity`` literals; the top level an object.
- Ids: ASCII digits only (``'²'.isdigit()`` and ``'٣'`` in ``\\d`` are true in Python),
  1..``MAX_ID``: the range of the ``INTEGER`` primary keys on PostgreSQL (int32), which
  is also inside SQLite's int64, so both databases see the same values.
- Decimals (quantity, price): plain positional strings, at most ``DECIMAL_INT_DIGITS``
  integer and ``DECIMAL_FRAC_DIGITS`` fraction digits, no exponent; so the step/tick
  arithmetic of ``services/orders.py`` (default context precision 28) can never raise.
- Credentials (``api_key``, ``api_secret``): printable ASCII without spaces
  (``\\x21``-``\\x7e``): what Binance (``X-MBX-APIKEY``) and Bybit (``X-BAPI-API-KEY``)
  accept in an HTTP header; anything else could never authenticate.
- Text (labels, usernames, client order ids, passwords): no control characters
  (Unicode category Cc, NUL included: PostgreSQL refuses NUL in text, SQLite stores it)
  and no lone surrogates (Cs: not encodable as UTF-8).
"""
from __future__ import annotations

import json
import re
from typing import Any

from flask import current_app, request

from api.errors import ApiError
from services.schemas.fields import MAX_ID, control_character

MAX_JSON_DEPTH = 32

_ASCII_DIGITS = re.compile(r"[0-9]{1,10}")
_MS_DIGITS = re.compile(r"[0-9]{1,15}")
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def invalid(field: str | None, message: str, code: str = "validation_error") -> ApiError:
    """A 400 ApiError naming ``field`` (the message starts with it)."""
    return ApiError(code, f"{field}: {message}" if field else message, 400, field)


def parse_id(value: Any, field: str, from_json: bool = False) -> int:
    """``value`` as an id in 1..MAX_ID: an int, or (unless ``from_json``: a JSON body
    or Socket.IO payload must carry a number) a string of ASCII digits from a path or
    query. Raises ApiError 400 naming ``field`` otherwise (bool, float, Unicode digits,
    signs, spaces, out of range)."""
    if isinstance(value, bool) or (from_json and not isinstance(value, int)):
        raise invalid(field, "must be an integer id")
    if isinstance(value, str):
        if not _ASCII_DIGITS.fullmatch(value):
            raise invalid(field, f"must be an integer id between 1 and {MAX_ID}")
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise invalid(field, f"must be an integer id between 1 and {MAX_ID}")
    return value


def query_id(name: str, required: bool = False) -> int | None:
    """The id query parameter ``name`` (``parse_id`` rules), or None when absent or
    empty. Raises ApiError 400 naming it."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        if required:
            raise invalid(name, "is required")
        return None
    return parse_id(raw, name)


def query_ms(name: str, default: int = 0) -> int:
    """The time query parameter ``name`` (ms since the Unix epoch, UTC: ASCII digits,
    at most 15 of them), or ``default`` when absent or empty. Raises ApiError 400
    naming it."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not _MS_DIGITS.fullmatch(raw):
        raise invalid(name, "must be a time in milliseconds since the Unix epoch (0 or more)")
    return int(raw)


def check_text(value: str, field: str | None = None) -> str:
    """``value`` unchanged when it has no control character (Cc, NUL included) and no
    lone surrogate (Cs) (``services.schemas.fields.control_character``). Raises ValueError
    (pydantic turns it into a 400 naming the field) or, with ``field``, ApiError 400."""
    message = control_character(value)
    if message:
        if field:
            raise invalid(field, message)
        raise ValueError(message)
    return value


def json_depth(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting of the JSON text ``raw`` (string contents
    skipped), without parsing it. Linear in ``len(raw)``."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRINGS.sub(b'""', raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, limit: int | None = None) -> Any:
    """``raw`` parsed as JSON after the size and depth checks. Raises ApiError 413
    (too large), 400 ``invalid_json`` (too deep, malformed, NaN/Infinity, an integer
    of more than 4300 digits)."""
    if limit is not None and len(raw) > limit:
        raise ApiError("request_entity_too_large", "request body too large", 413)
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise ApiError("invalid_json", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digits
        raise ApiError("invalid_json", "request body is not valid JSON") from e


def json_object(optional: bool = False) -> dict:
    """The request's JSON body as a dict (``parse_json`` rules). An empty body is
    ``{}`` when ``optional``. Raises ApiError 400/413."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is not None and limit and request.content_length > limit:
        raise ApiError("request_entity_too_large", "request body too large", 413)
    raw = request.get_data(cache=True)
    if optional and not raw:
        return {}
    data = parse_json(raw, limit)
    if not isinstance(data, dict):
        raise ApiError("invalid_json", "request body must be a JSON object")
    return data
