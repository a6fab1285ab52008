"""Bybit v5 request plumbing: parameters, X-BAPI-* authentication, error replies.

Signature (Bybit ``v5/guide.mdx`` "Authentication"; EXCHANGE_PROTOCOLS.md §3.2):
``X-BAPI-SIGN = HMAC_SHA256(secret, timestamp + api_key + recv_window + payload)`` in
hex, where ``payload`` is the raw query string of a GET as received (pybit sends it
sorted and unencoded; if that form does not match, the URL-decoded form is tried) or
the raw body of a POST, never re-serialised. ``timestamp`` and ``recv_window`` are the
header texts. Timestamp rule: ``server - recv_window <= timestamp < server + 1000``,
else retCode 10002; ``recv_window`` defaults to 5000.

Refusals: unknown or missing ``X-BAPI-API-KEY`` -> HTTP 401 with body retCode 10003
"API key is invalid." (real Bybit answers 401 for a wrong or wrong-environment key;
pybit raises ``FailedRequestError(status_code=401)`` without reading the body, other
clients see 10003); bad signature -> HTTP 200 retCode 10004 ``error sign!
origin_string[...]``; missing or malformed parameters -> 10001. Business errors are
HTTP 200 with a non-zero retCode and ``result: {}`` (``engine_error``).
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar, overload
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from exchanges.simulator.engine import Engine
from exchanges.simulator.models import Account, EngineError

T = TypeVar("T")

DEFAULT_RECV_WINDOW = 5000


class BybitError(Exception):
    """A Bybit error reply: envelope with ``retCode``/``retMsg`` and HTTP ``status``."""

    def __init__(self, code: int, msg: str, status: int = 200,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code, self.msg, self.status = code, msg, status
        self.headers = dict(headers or {})


def params_error(detail: str) -> BybitError:
    """retCode 10001 ``params error: <detail>``."""
    return BybitError(10001, f"params error: {detail}")


class Params:
    """Request parameters: the query string of a GET or the JSON object body of a POST.
    Values keep their JSON type; accessors convert and raise 10001."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values

    @classmethod
    def parse(cls, method: str, raw_query: str, raw_body: str) -> Params:
        """GET: ``a=1&b=2`` (URL-decoded); other methods: a JSON object (empty body = {})."""
        if method == "GET":
            return cls(dict(parse_qsl(raw_query, keep_blank_values=True)))
        if not raw_body.strip():
            return cls({})
        try:
            body = json.loads(raw_body)
        except ValueError:
            raise params_error("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise params_error("request body must be a JSON object")
        return cls(body)

    def get(self, name: str) -> str | None:
        """The value as text (JSON bools as ``true``/``false``), None when absent/empty."""
        value = self.values.get(name)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            raise params_error(f"{name} invalid")
        return str(value)

    def require(self, name: str) -> str:
        """The value; 10001 when absent or empty."""
        value = self.get(name)
        if value is None:
            raise params_error(f"{name} is required")
        return value

    @overload
    def decimal(self, name: str, required: Literal[True]) -> Decimal: ...
    @overload
    def decimal(self, name: str, required: bool = False) -> Decimal | None: ...

    def decimal(self, name: str, required: bool = False) -> Decimal | None:
        """A decimal; 10001 when required and missing, or malformed."""
        value = self.require(name) if required else self.get(name)
        if value is None:
            return None
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise params_error(f"{name} invalid") from None
        if not number.is_finite():
            raise params_error(f"{name} invalid")
        return number

    @overload
    def integer(self, name: str, default: int) -> int: ...
    @overload
    def integer(self, name: str, default: int | None = None) -> int | None: ...

    def integer(self, name: str, default: int | None = None) -> int | None:
        """An integer; 10001 when malformed; ``default`` when absent."""
        value = self.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise params_error(f"{name} invalid") from None

    def boolean(self, name: str) -> bool:
        """JSON ``true``/``false`` (or the texts ``true``/``false``/``1``/``0``)."""
        value = self.get(name)
        if value is None:
            return False
        if value.lower() in ("true", "1"):
            return True
        if value.lower() in ("false", "0"):
            return False
        raise params_error(f"{name} invalid")


def sign(secret: str, text: str) -> str:
    """``HMAC_SHA256(secret, text)`` as lower-case hex."""
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def account_for_key(engine: Engine, api_key: str | None) -> Account:
    """The account of ``X-BAPI-API-KEY``; HTTP 401 / 10003 when missing or unknown."""
    account = engine.accounts.get(api_key) if api_key else None
    if account is None:
        raise BybitError(10003, "API key is invalid.", 401)
    return account


def verify_request(engine: Engine, headers: Mapping[str, str], payload: str,
                   server_ms: int) -> Account:
    """Check the X-BAPI-* headers of a private request; returns the account.

    Raises BybitError 10003/HTTP 401 (key), 10001 (malformed timestamp or window),
    10002 (outside the window), 10004 (signature).
    """
    account = account_for_key(engine, headers.get("X-BAPI-API-KEY"))
    ts_text = headers.get("X-BAPI-TIMESTAMP", "")
    window_text = headers.get("X-BAPI-RECV-WINDOW", "")
    try:
        timestamp = int(ts_text)
        window = int(window_text) if window_text else DEFAULT_RECV_WINDOW
    except ValueError:
        raise params_error("X-BAPI-TIMESTAMP or X-BAPI-RECV-WINDOW invalid") from None
    if window <= 0:
        raise params_error("X-BAPI-RECV-WINDOW invalid")
    if not server_ms - window <= timestamp < server_ms + 1000:
        raise BybitError(10002, "invalid request, please check your server timestamp or "
                                f"recv_window param. req_timestamp[{timestamp}],"
                                f"server_timestamp[{server_ms}],recv_window[{window}]")
    signature = headers.get("X-BAPI-SIGN", "").lower()
    prefix = f"{ts_text}{account.api_key}{window_text}"
    if hmac.compare_digest(sign(account.api_secret, prefix + payload), signature):
        return account
    decoded = unquote_plus(payload)
    if decoded != payload and hmac.compare_digest(sign(account.api_secret, prefix + decoded),
                                                  signature):
        return account
    raise BybitError(10004, f"error sign! origin_string[{prefix}{payload}]")


# EngineError.reason -> (retCode, retMsg); {placeholders} come from EngineError.detail.
ENGINE_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_symbol": (10001, "params error: symbol invalid"),
    "invalid_side": (10001, "params error: side invalid"),
    "invalid_type": (10001, "params error: orderType invalid"),
    "invalid_tif": (10001, "params error: timeInForce invalid"),
    "invalid_quantity": (10001, "The number of contracts exceeds minimum limit allowed"),
    "quantity_too_large": (10001, "The number of contracts exceeds maximum limit allowed"),
    "invalid_price": (10001, "params error: price invalid"),
    "precision": (10001, "params error: qty or price precision invalid"),
    "price_too_high": (110003, "Order price is out of permissible range"),
    "price_too_low": (110003, "Order price is out of permissible range"),
    "min_notional": (110094, "Order does not meet minimum order value {min_notional}USDT"),
    "insufficient_margin": (110007, "ab not enough for new order"),
    "reduce_only_rejected": (110017, "current position is zero, cannot fix reduce-only "
                                     "order qty"),
    "duplicate_client_order_id": (110072, "OrderLinkedID is duplicate"),
    "unknown_order": (110001, "order not exists or too late to cancel"),
    "order_not_open": (110001, "order not exists or too late to cancel"),
    "invalid_leverage": (10001, "params error: leverage invalid"),
}


def engine_error(exc: EngineError) -> BybitError:
    """Map an EngineError to the Bybit retCode and message."""
    if exc.reason == "unknown_account":
        return BybitError(10003, "API key is invalid.", 401)
    code, msg = ENGINE_ERRORS.get(exc.reason, (10016, "Internal System Error."))
    try:
        msg = msg.format(**exc.detail)
    except KeyError:
        pass
    return BybitError(code, msg)


def category(params: Params) -> str:
    """``category``: required, only ``linear`` is simulated (else 10001)."""
    value = params.require("category")
    if value != "linear":
        raise params_error(f"category {value} is not supported (only linear is simulated)")
    return value


def page(rows: list[T], params: Params, default: int, maximum: int) -> tuple[list[T], str]:
    """Cut ``rows`` by ``limit`` (1..``maximum``, default ``default``) and ``cursor``
    (the offset we handed out as ``nextPageCursor``); returns ``(rows, next cursor)``
    with ``""`` when nothing follows. 10001 for a malformed cursor or limit."""
    limit = params.integer("limit", default)
    if limit is None or not 1 <= limit <= maximum:
        raise params_error(f"limit must be within [1, {maximum}]")
    cursor = params.get("cursor")
    start = 0
    if cursor is not None:
        if not cursor.isdigit():
            raise params_error("cursor invalid")
        start = int(cursor)
    chunk = rows[start:start + limit]
    return chunk, str(start + limit) if start + limit < len(rows) else ""


def envelope(result: object, now_ms: int, code: int = 0, msg: str = "OK") -> dict[str, Any]:
    """The v5 reply object."""
    return {"retCode": code, "retMsg": msg, "result": result, "retExtInfo": {}, "time": now_ms}


def error_response(err: BybitError, now_ms: int) -> web.Response:
    """The JSON error reply (``result: {}``) with ``err.status`` and ``err.headers``."""
    return web.json_response(envelope({}, now_ms, err.code, err.msg), status=err.status,
                             headers=err.headers or None)


class Ctx:
    """What a handler gets: ``params``, ``account`` (private endpoints), ``now`` (ms)."""

    def __init__(self, params: Params, account: Account | None, now: int) -> None:
        self.params, self.now = params, now
        self._account = account

    @property
    def account(self) -> Account:
        """The authenticated account (private endpoints only; public ones have none)."""
        assert self._account is not None
        return self._account

    @property
    def api_key(self) -> str:
        """The authenticated account's api key."""
        return self.account.api_key


Handler = Callable[[Ctx], Awaitable[object]]
