"""Notifications to phones (CONTRACT.md third round): devices, settings, price alerts,
and the user's recent notifications and alerts (for the web console)."""
from __future__ import annotations

from flask import Blueprint, g

from api.common import body, login_required, services
from api.errors import ApiError
from api.validation import parse_id
from services.notify.schemas import (
    DeviceOut,
    DeviceRegister,
    NotificationOut,
    PriceAlertCreate,
    PriceAlertOut,
    SettingsOut,
    SettingsUpdate,
)

bp = Blueprint("notify", __name__)


def _notify():  # type: ignore[no-untyped-def]
    return services().notify


@bp.post("/api/devices")
@login_required
def register_device():  # type: ignore[no-untyped-def]
    """201 the new device; 200 when the token was registered already (now this user's)."""
    req = body(DeviceRegister)
    device, created = _notify().devices.register(g.user_id, req.token, req.platform, req.locale)
    return DeviceOut.of(device), 201 if created else 200


@bp.get("/api/devices")
@login_required
def list_devices():  # type: ignore[no-untyped-def]
    """200 the user's devices."""
    return DeviceOut.many(_notify().devices.list(g.user_id))


@bp.delete("/api/devices/<device_id>")
@login_required
def delete_device(device_id: str):  # type: ignore[no-untyped-def]
    """204; 404 for another user's device."""
    _notify().devices.delete(g.user_id, parse_id(device_id, "device_id"))
    return "", 204


@bp.get("/api/notifications/settings")
@login_required
def get_settings():  # type: ignore[no-untyped-def]
    """200 the settings (defaults until changed)."""
    return SettingsOut.of(_notify().devices.settings(g.user_id))


@bp.put("/api/notifications/settings")
@login_required
def put_settings():  # type: ignore[no-untyped-def]
    """200 the settings after applying the fields given."""
    changes = body(SettingsUpdate).model_dump(exclude_none=True)
    return SettingsOut.of(_notify().devices.update_settings(g.user_id, changes))


@bp.get("/api/notifications")
@login_required
def list_notifications():  # type: ignore[no-untyped-def]
    """200 the user's last 50 notifications, newest first."""
    return NotificationOut.many(_notify().devices.notifications(g.user_id))


@bp.post("/api/alerts/price")
@login_required
def create_price_alert():  # type: ignore[no-untyped-def]
    """201 the alert; 400 naming the field (unknown symbol, neither or both thresholds)."""
    req = body(PriceAlertCreate)
    problem = req.missing_field()
    if problem:
        raise ApiError("validation_error", problem[1], 400, problem[0])
    row = _notify().price_alerts.create(g.user_id, req.exchange, req.symbol, req.above,
                                        req.below, req.repeat)
    return PriceAlertOut.of(row), 201


@bp.get("/api/alerts/price")
@login_required
def list_price_alerts():  # type: ignore[no-untyped-def]
    """200 the user's price alerts."""
    return PriceAlertOut.many(_notify().price_alerts.list(g.user_id))


@bp.delete("/api/alerts/price/<alert_id>")
@login_required
def delete_price_alert(alert_id: str):  # type: ignore[no-untyped-def]
    """204; 404 for another user's alert."""
    _notify().price_alerts.delete(g.user_id, parse_id(alert_id, "alert_id"))
    return "", 204
