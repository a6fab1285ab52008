"""Probes for load balancers and orchestrators, no token (CONTRACT.md "Health for
load balancers").

- ``GET /healthz``: 200 ``{"status": "ok"}`` while the process serves (liveness);
  it touches nothing else, so a slow database never restarts a healthy process.
- ``GET /readyz``: 200 ``{"status": "ready", "checks": {"database": "ok",
  "message_queue": "ok" | "none"}}`` when the database answers ``SELECT 1`` and the
  message queue (only when ``MESSAGE_QUEUE_URL`` is set) answers a Redis PING; else
  503 ``{"error": {"code": "not_ready", "message"}, "status": "unavailable",
  "failed": ["database" | "message_queue", ...], "checks": {...}}`` (the project's
  error shape plus the detail). No figures, no user or key names: ``/admin/health`` keeps the
  admin-only detail.
"""
from __future__ import annotations

from flask import Blueprint

from api.common import services
from api.openapi import OPERATIONS, RESPONSE_SCHEMAS, Op, _enum, _obj

bp = Blueprint("health", __name__)

_CHECK = _enum("ok", "down")
RESPONSE_SCHEMAS["Alive"] = _obj(status=_enum("ok"))
RESPONSE_SCHEMAS["Ready"] = _obj(
    ("failed",), status=_enum("ready", "unavailable"),
    failed={"type": "array", "items": _enum("database", "message_queue"),
            "description": "on 503: the dependencies that did not answer"},
    checks=_obj(("message_queue",), database=_CHECK,
                message_queue=_enum("ok", "down", "none")))
OPERATIONS["health.healthz"] = Op("Liveness: 200 while the process serves (no token)",
                                  (200, "Alive", "Alive"), None, (), "none")
OPERATIONS["health.readyz"] = Op(
    "Readiness: 200 when the database (and the message queue, when configured) answer; "
    "503 (an Error that also carries Ready's fields) names which failed",
    (200, "Ready", "Ready"), None, (503,), "none")


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """200 ``{"status": "ok"}``."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """200 when every dependency answers, else 503 naming the failed ones."""
    svc = services()
    checks = {"database": "ok" if svc.db.ping() else "down",
              "message_queue": svc.message_queue_status()}
    failed = [name for name, state in checks.items() if state == "down"]
    if failed:
        return {"error": {"code": "not_ready", "message": " and ".join(failed) + " not answering"},
                "status": "unavailable", "failed": failed, "checks": checks}, 503
    return {"status": "ready", "checks": checks}
