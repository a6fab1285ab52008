"""Binance request plumbing: parameters, authentication, error replies, handler context.

Signature rule (Binance docs): ``totalParams = raw query string + raw body`` with the
``signature=<hex>`` pair removed; ``HMAC_SHA256(secret, totalParams)`` in hex,
compared case-insensitively. If the raw form does not match, the URL-decoded form
is tried (python-binance signs a ``newClientOrderId`` unencoded while requests
encodes it in bodies). Timestamp rule: refuse with -1021 when
``timestamp < serverTime - recvWindow`` or ``timestamp > serverTime + 1000``;
``recvWindow`` defaults to 5000 and may not exceed 60000.
Parameters are read from the query string AND the form body for every method,
whatever the Content-Type says. API keys: missing -> -2014, unknown -> -2015 (HTTP 401).
``engine_error`` maps the engine's protocol-neutral refusals to Binance codes.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Awaitable, Callable
from urllib.parse import parse_qsl, unquote_plus

from aiohttp import web

from exchanges.simulator.engine import Engine
from exchanges.simulator.models import Account, EngineError

NONE, KEY, SIGNED = "NONE", "KEY", "SIGNED"  # endpoint security types
MAX_RECV_WINDOW = 60000
DEFAULT_RECV_WINDOW = 5000


class BinanceError(Exception):
    """A Binance error reply: ``{"code": code, "msg": msg}`` with HTTP ``status``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(f"{code}: {msg}")
        self.code, self.msg, self.status = code, msg, status


def mandatory(name: str) -> BinanceError:
    """-1102 for a missing parameter ``name``."""
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                               "or malformed.")


def illegal(name: str) -> BinanceError:
    """-1100 for a parameter ``name`` that does not parse."""
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range "
                               "is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")


@dataclass
class Params:
    """The merged query + body parameters of one request (first value wins)."""

    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw_query: str, raw_body: str) -> "Params":
        """Parse ``a=1&b=2`` from query and body (URL-decoded)."""
        values: dict[str, str] = {}
        for raw in (raw_query, raw_body):
            if raw:
                for key, value in parse_qsl(raw, keep_blank_values=True):
                    values.setdefault(key, value)
        return cls(values)

    def get(self, name: str) -> str | None:
        """The value, or None when absent or empty."""
        value = self.values.get(name)
        return value if value not in (None, "") else None

    def require(self, name: str) -> str:
        """The value; raises -1102 when absent or empty."""
        value = self.get(name)
        if value is None:
            raise mandatory(name)
        return value

    def decimal(self, name: str, required: bool = False) -> Decimal | None:
        """A decimal parameter; -1102 when required and missing, -1100 when malformed."""
        value = self.require(name) if required else self.get(name)
        if value is None:
            return None
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise illegal(name) from None
        if not number.is_finite():
            raise illegal(name)
        return number

    def integer(self, name: str, required: bool = False) -> int | None:
        """An integer parameter; -1102 when required and missing, -1100 when malformed."""
        value = self.require(name) if required else self.get(name)
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            raise illegal(name) from None

    def boolean(self, name: str) -> bool:
        """``"true"`` (any case) is True; absent or anything else is False."""
        return (self.get(name) or "").lower() == "true"


def strip_signature(raw: str) -> tuple[str, str | None]:
    """Remove the ``signature=`` pair from a raw ``a=1&b=2`` string.

    Returns ``(rest, signature or None)``; the other pairs keep their order and bytes.
    """
    if "signature=" not in raw:
        return raw, None
    kept, signature = [], None
    for pair in raw.split("&"):
        if pair.startswith("signature="):
            signature = pair[len("signature="):]
        else:
            kept.append(pair)
    return "&".join(kept), signature


def sign(secret: str, payload: str) -> str:
    """HMAC-SHA256 of ``payload`` with ``secret``, lower-case hex."""
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


def account_for_key(engine: Engine, api_key: str | None) -> Account:
    """The account of the ``X-MBX-APIKEY`` header; -2014 (missing) / -2015 (unknown),
    both HTTP 401."""
    if not api_key:
        raise BinanceError(-2014, "API-key format invalid.", 401)
    account = engine.accounts.get(api_key)
    if account is None:
        raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
    return account


def verify_signed(account: Account, params: Params, raw_query: str, raw_body: str,
                  server_ms: int) -> None:
    """Check ``timestamp``/``recvWindow`` then the signature of a SIGNED request.

    Raises BinanceError -1102 (missing timestamp/signature), -1100 (malformed),
    -1131 (recvWindow > 60000), -1021 (outside the window), -1022 (bad signature).
    """
    timestamp = params.integer("timestamp", required=True)
    recv_window = params.integer("recvWindow") or DEFAULT_RECV_WINDOW
    if recv_window > MAX_RECV_WINDOW or recv_window <= 0:
        raise BinanceError(-1131, "recvWindow must be less than 60000")
    if timestamp < server_ms - recv_window or timestamp > server_ms + 1000:
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
    query, sig_q = strip_signature(raw_query)
    body, sig_b = strip_signature(raw_body)
    signature = sig_q or sig_b
    if not signature:
        raise mandatory("signature")
    payload = query + body
    signature = signature.lower()
    if hmac.compare_digest(sign(account.api_secret, payload), signature):
        return
    decoded = unquote_plus(payload)
    if decoded != payload and hmac.compare_digest(sign(account.api_secret, decoded), signature):
        return
    raise BinanceError(-1022, "Signature for this request is not valid.")


ENGINE_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_symbol": (-1121, "Invalid symbol."),
    "invalid_side": (-1117, "Invalid side."),
    "invalid_type": (-1116, "Invalid orderType."),
    "invalid_tif": (-1115, "Invalid timeInForce."),
    "invalid_quantity": (-4003, "Quantity less than or equal to zero."),
    "quantity_too_large": (-4005, "Quantity greater than max quantity."),
    "invalid_price": (-4001, "Price less than 0."),
    "precision": (-1111, "Precision is over the maximum defined for this asset."),
    "price_too_high": (-4016, "Limit price can't be higher than {limit}."),
    "price_too_low": (-4024, "Limit price can't be lower than {limit}."),
    "min_notional": (-4164, "Order's notional must be no smaller than {min_notional} "
                            "(unless you choose reduce only)."),
    "insufficient_margin": (-2019, "Margin is insufficient."),
    "reduce_only_rejected": (-2022, "ReduceOnly Order is rejected."),
    "duplicate_client_order_id": (-4116, "ClientOrderId is duplicated."),
    "unknown_order": (-2013, "Order does not exist."),
    "order_not_open": (-2011, "Unknown order sent."),
    "invalid_leverage": (-4028, "Leverage is not valid."),
    "would_trigger": (-2021, "Order would immediately trigger."),
    "invalid_callback": (-2007, "Invalid callBack rate."),
    "missing_trigger": (-1102, "Mandatory parameter 'triggerPrice' was not sent, was "
                               "empty/null, or malformed."),
    "invalid_working_type": (-1100, "Illegal characters found in parameter 'workingType'."),
}


def engine_error(exc: EngineError, unknown_order_code: int = -2013) -> BinanceError:
    """Map an EngineError to the Binance code and message."""
    if exc.reason == "unknown_account":
        return BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
    if exc.reason == "unknown_order" and unknown_order_code == -2011:
        return BinanceError(-2011, "Unknown order sent.")
    code, msg = ENGINE_ERRORS.get(exc.reason, (-1000, "An unknown error occurred."))
    try:
        msg = msg.format(**exc.detail)
    except KeyError:
        pass
    return BinanceError(code, msg)


def error_response(err: BinanceError, headers: dict | None = None) -> web.Response:
    """The JSON error reply."""
    return web.json_response({"code": err.code, "msg": err.msg}, status=err.status,
                             headers=headers)


class Ctx:
    """What a handler gets: ``params``, ``account`` (KEY/SIGNED), ``now`` (server ms)."""

    def __init__(self, params: Params, account: Account | None, now: int) -> None:
        self.params, self.account, self.now = params, account, now

    @property
    def api_key(self) -> str:
        """The authenticated account's api key."""
        assert self.account is not None
        return self.account.api_key


Handler = Callable[[Ctx], Awaitable[object]]
