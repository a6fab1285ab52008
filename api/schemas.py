"""Request bodies and query strings, validated with pydantic (400 naming the field)."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from api.validation import CREDENTIAL_PATTERN, MAX_ID, check_decimal, check_text

# Text fields refuse control characters and lone surrogates (api/validation.py).
NoControl = AfterValidator(check_text)
Username = Annotated[str, StringConstraints(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256), NoControl]
Symbol = Annotated[str, StringConstraints(min_length=2, max_length=32, pattern=r"^[A-Z0-9]+$")]
CLIENT_ORDER_ID_PATTERN = r"^[.A-Z:/a-z0-9_-]{1,36}$"  # Binance newClientOrderId
ClientOrderId = Annotated[str, StringConstraints(min_length=1, max_length=36,
                                                 pattern=CLIENT_ORDER_ID_PATTERN)]
# Printable ASCII, no spaces: what the venues accept in an API-key header.
Secret = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=CREDENTIAL_PATTERN)]
Label = Annotated[str, StringConstraints(max_length=64), NoControl]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class Strict(BaseModel):
    """Base: unknown fields are refused, strings are not coerced from numbers."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Credentials(Strict):
    """POST /api/auth/register and /api/auth/login."""

    username: Username
    password: Password


class KeyCreate(Strict):
    """POST /api/exchange/keys."""

    exchange: Literal["binance", "bybit"]
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

    exchange: Literal["binance", "bybit"]
    symbols: list[Symbol] = Field(min_length=1, max_length=50)


RefreshTokenStr = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                                   pattern=r"^[A-Za-z0-9_-]+$")]


class RefreshRequest(Strict):
    """POST /api/auth/refresh."""

    refresh_token: RefreshTokenStr


class LogoutRequest(Strict):
    """POST /api/auth/logout: the refresh token of the session to end, or nothing
    (then the session of the bearer access token ends)."""

    refresh_token: RefreshTokenStr | None = None
