"""Request bodies (REST) and the Socket.IO ticker payload, validated with pydantic:
a bad value is a 400 (or a ``{"ok": false}`` ack) naming the field."""
from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.schemas.fields import (
    ClientOrderId,
    Exchange,
    Id,
    Label,
    LoginPassword,
    Password,
    RefreshTokenStr,
    Secret,
    Symbol,
    Username,
    check_decimal,
)


class Strict(BaseModel):
    """Base: unknown fields are refused, strings are not coerced from numbers."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(Strict):
    """POST /api/auth/register: the password policy applies (8..256 characters)."""

    username: Username
    password: Password


class LoginCredentials(Strict):
    """POST /api/auth/login: a wrong password of any length is a 401, so only
    emptiness and size are checked here."""

    username: Username
    password: LoginPassword


class KeyCreate(Strict):
    """POST /api/exchange/keys."""

    exchange: Exchange
    api_key: Secret
    api_secret: Secret
    testnet: bool = False
    label: Label = ""


class KeyUpdate(Strict):
    """PUT /api/exchange/keys/{id}: any subset."""

    api_key: Secret | None = None
    api_secret: Secret | None = None
    label: Label | None = None
    testnet: bool | None = None


class OrderCreate(Strict):
    """POST /api/orders. ``quantity`` and ``price`` are decimal strings; ``timeout_s``
    (LIMIT only, seconds): cancel the order if it has not filled by then."""

    key_id: Id
    symbol: Symbol
    side: Literal["BUY", "SELL"]
    type: Literal["MARKET", "LIMIT"]
    quantity: Decimal
    price: Decimal | None = None
    time_in_force: Literal["GTC", "IOC", "FOK"] | None = None
    reduce_only: bool = False
    client_order_id: ClientOrderId | None = None
    timeout_s: int | None = Field(default=None, gt=0, le=86_400)

    @field_validator("quantity", "price", mode="before")
    @classmethod
    def _dec(cls, v: object, info) -> Decimal | None:  # type: ignore[no-untyped-def]
        return None if v is None and info.field_name == "price" else check_decimal(v)

    def cross_field_error(self) -> tuple[str, str] | None:
        """``(field, message)`` when LIMIT lacks a price or MARKET has one."""
        if self.type == "LIMIT" and self.price is None:
            return "price", "price is required for LIMIT orders"
        if self.type == "MARKET" and self.price is not None:
            return "price", "price is not allowed for MARKET orders"
        if self.type == "MARKET" and self.time_in_force is not None:
            return "time_in_force", "time_in_force applies to LIMIT orders only"
        if self.type == "MARKET" and self.timeout_s is not None:
            return "timeout_s", "timeout_s applies to LIMIT orders only"
        return None


class ClosePosition(Strict):
    """POST /api/positions/close."""

    key_id: Id
    symbol: Symbol


class TickerSubscribe(Strict):
    """Socket.IO ``subscribe_ticker`` / ``unsubscribe_ticker`` payload."""

    exchange: Exchange
    symbols: list[Symbol] = Field(min_length=1, max_length=50)


class RefreshRequest(Strict):
    """POST /api/auth/refresh."""

    refresh_token: RefreshTokenStr


class LogoutRequest(Strict):
    """POST /api/auth/logout: the refresh token of the session to end, or nothing
    (then the session of the bearer access token ends)."""

    refresh_token: RefreshTokenStr | None = None


class ReconcileRequest(BaseModel):
    """POST /admin/reconcile (optional body): ``user_id`` limits it to one user's
    accounts. Documentation only: the handler reads the body with ``parse_id`` (other
    keys are ignored, as before)."""

    model_config = ConfigDict(extra="allow")

    user_id: Id | None = None
