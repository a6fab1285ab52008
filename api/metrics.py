"""GET /metrics: the app's Prometheus metrics in the text exposition format 0.0.4.

Access (CONTRACT.md: "no token needed only when bound to loopback"): a request
whose peer address is loopback (127.0.0.0/8, ::1) and that did not come through
a proxy (no ``X-Forwarded-For`` / ``Forwarded`` header) needs no token; any other
request needs the admin credentials of ``/admin/*`` (``X-Admin-Token`` or an
admin user's bearer token), else 401 in the error shape.
"""
from __future__ import annotations

import ipaddress

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from api.admin import require_admin
from api.common import services

bp = Blueprint("metrics", __name__)


def is_loopback(address: str | None) -> bool:
    """True for a loopback IPv4/IPv6 address (also IPv4-mapped ``::ffff:127.x``)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _direct_loopback_peer() -> bool:
    proxied = "X-Forwarded-For" in request.headers or "Forwarded" in request.headers
    return not proxied and is_loopback(request.remote_addr)


@bp.get("/metrics")
def metrics() -> Response:
    """200 the Prometheus text format (``text/plain; version=0.0.4``); 401 for a
    non-loopback peer without admin credentials."""
    if not _direct_loopback_peer():
        require_admin()
    body = generate_latest(services().metrics.registry)
    return Response(body, status=200, content_type=CONTENT_TYPE_PLAIN_0_0_4)
