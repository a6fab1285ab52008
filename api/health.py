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
from services.schemas.responses import Alive, NotReady, Ready

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    """200 ``{"status": "ok"}``."""
    return Alive.of({"status": "ok"})


@bp.get("/readyz")
def readyz():  # type: ignore[no-untyped-def]
    """200 when every dependency answers, else 503 naming the failed ones."""
    svc = services()
    checks = {"database": "ok" if svc.db.ping() else "down",
              "message_queue": svc.message_queue_status()}
    failed = [name for name, state in checks.items() if state == "down"]
    if failed:
        return NotReady.of({"error": {"code": "not_ready",
                                      "message": " and ".join(failed) + " not answering"},
                            "status": "unavailable", "failed": failed, "checks": checks}), 503
    return Ready.of({"status": "ready", "checks": checks})
