"""Request and response bodies of the notification routes (CONTRACT.md third round,
"Notifications to phones"): a bad value is a 400 naming the field; responses follow
``services.schemas.out.Out`` (every key always sent, decimals as strings, ms UTC)."""
from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from services.schemas.fields import Exchange, Symbol, check_decimal
from services.schemas.out import DecimalOut, Ms, Out
from services.schemas.requests import Strict

# FCM registration tokens are opaque printable ASCII (about 150-250 characters today);
# 4096 bounds the column, not the format
DeviceToken = Annotated[str, StringConstraints(min_length=1, max_length=4096,
                                               pattern=r"^[\x21-\x7e]+$")]
Locale = Annotated[str, StringConstraints(min_length=2, max_length=16,
                                          pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$")]


class DeviceRegister(Strict):
    """POST /api/devices."""

    token: DeviceToken
    platform: Literal["ios", "android"]
    locale: Locale = "en"


class SettingsUpdate(Strict):
    """PUT /api/notifications/settings: any subset; ``liquidation_warning_pct`` a
    decimal string above 0 and at most 100."""

    fills: bool | None = None
    protection: bool | None = None
    risk: bool | None = None
    price_alerts: bool | None = None
    skip_when_online: bool | None = None
    liquidation_warning_pct: Decimal | None = None

    @field_validator("liquidation_warning_pct", mode="before")
    @classmethod
    def _pct(cls, v: object) -> Decimal | None:
        if v is None:
            return None
        d = check_decimal(v)
        if d > 100:
            raise ValueError("must be at most 100 (percent)")
        return d


class PriceAlertCreate(Strict):
    """POST /api/alerts/price: exactly one of ``above`` / ``below`` (a decimal string)."""

    exchange: Exchange
    symbol: Symbol
    above: Decimal | None = None
    below: Decimal | None = None
    repeat: bool = False

    @field_validator("above", "below", mode="before")
    @classmethod
    def _price(cls, v: object) -> Decimal | None:
        return None if v is None else check_decimal(v)

    def missing_field(self) -> tuple[str, str] | None:
        """``(field, message)`` when neither or both of above/below are given."""
        if (self.above is None) == (self.below is None):
            return "above", "give exactly one of above or below"
        return None


class DeviceOut(Out):
    """A registered device (the token is never returned)."""

    id: int
    platform: Literal["ios", "android"]
    locale: str
    created_at: Ms
    last_sent_at: Ms | None


class SettingsOut(Out):
    """The user's notification settings."""

    fills: bool
    protection: bool
    risk: bool
    price_alerts: bool
    skip_when_online: bool
    liquidation_warning_pct: DecimalOut


class PriceAlertOut(Out):
    """A price alert; ``fired_at`` the last time it fired (null: never)."""

    id: int
    exchange: str
    symbol: str
    above: DecimalOut | None
    below: DecimalOut | None
    repeat: bool
    created_at: Ms
    fired_at: Ms | None


class NotificationOut(Out):
    """One notification of the outbox (``GET /api/notifications``)."""

    id: int
    device_id: int | None
    event_type: str = Field(description="fills or alerts")
    event_key: str = Field(description="the collapse key")
    title: str
    body: str
    status: str = Field(description="pending, sent, skipped, failed, device_removed or not_configured")
    attempts: int
    error: str | None
    created_at: Ms
    sent_at: Ms | None


RESPONSE_MODELS = (DeviceOut, SettingsOut, PriceAlertOut, NotificationOut)  # for the spec
