"""Firebase Cloud Messaging as the simulator serves it (HTTP v1 and the OAuth token
endpoint of a service account), so that the server's real FCM client runs unchanged
against it (CONTRACT.md third round, "Notifications to phones", Simulator).

- ``POST /token`` (form ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``,
  ``assertion=<JWT>``): any signed JWT (three base64url parts whose payload is a JSON
  object with ``iss``) -> ``{"access_token", "expires_in": 3600, "token_type":
  "Bearer"}``; else 400 ``{"error": "invalid_grant"}`` (RFC 6749 5.2).
- ``POST /v1/projects/{project_id}/messages:send`` with ``Authorization: Bearer
  <access token from /token>`` and ``{"message": {"token", ...}}`` -> 200 ``{"name":
  "projects/{project_id}/messages/{n}"}``. Errors in Google's shape ``{"error":
  {"code", "message", "status", "details": [{"@type": ".../FcmError", "errorCode"}]}}``:
  401 UNAUTHENTICATED (no or unknown bearer), 400 INVALID_ARGUMENT (no message token),
  and the injected faults.
- ``GET /_sim/fcm[?token=T]`` -> ``{"messages": [{"id", "project_id", "message",
  "received_at"}]}``: every message answered 200, oldest first (a request refused by
  a fault is not listed).
- ``POST /_sim/fcm/faults {"kind": "unregistered" | "http_429" | "http_500",
  "token"?, "count"?: 1, "retry_after_s"?: 1}`` -> 201: the next ``count`` sends (to
  ``token`` only, when given) answer 404 UNREGISTERED, 429 QUOTA_EXCEEDED with
  ``Retry-After``, or 500 INTERNAL. ``DELETE /_sim/fcm/faults`` clears them (and
  ``DELETE /_sim/fcm`` the recorded messages).

The ``/_sim`` routes are the control API's (loopback only, ``control.middleware``).
"""
from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
FAULT_KINDS = {"unregistered": (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
               "http_429": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED",
                            "Quota exceeded for quota metric 'Send requests'."),
               "http_500": (500, "INTERNAL", "INTERNAL", "Internal error encountered.")}
MAX_KEPT = 100_000


def _google_error(status: int, grpc: str, fcm_code: str | None, message: str,
                  headers: dict | None = None) -> web.Response:
    err: dict = {"code": status, "message": message, "status": grpc}
    if fcm_code:
        err["details"] = [{"@type": FCM_ERROR_TYPE, "errorCode": fcm_code}]
    return web.json_response({"error": err}, status=status, headers=headers)


def _control_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _jwt_payload(assertion: str) -> dict | None:
    parts = assertion.split(".")
    if len(parts) != 3 or not all(parts):
        return None
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("iss") else None


@dataclass
class _Fault:
    kind: str
    token: str | None
    count: int
    retry_after_s: int


class FcmSim:
    """FCM's token and send endpoints, the messages accepted, and injected faults."""

    def __init__(self) -> None:
        self.access_tokens: dict[str, float] = {}  # token -> expiry (epoch s)
        self.messages: list[dict] = []
        self.faults: list[_Fault] = []
        self.refused = 0
        self._next = 0

    def add_routes(self, app: web.Application) -> None:
        """Register the routes on ``app``."""
        app.router.add_post("/token", self.token)
        app.router.add_post("/v1/projects/{project_id}/messages:send", self.send)
        app.router.add_get("/_sim/fcm", self.list_messages)
        app.router.add_delete("/_sim/fcm", self.clear_messages)
        app.router.add_post("/_sim/fcm/faults", self.add_fault)
        app.router.add_delete("/_sim/fcm/faults", self.clear_faults)

    async def token(self, request: web.Request) -> web.Response:
        """OAuth 2.0 JWT bearer grant (RFC 7523): an access token for any signed JWT."""
        form = await request.post()
        assertion = str(form.get("assertion", ""))
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" \
                or _jwt_payload(assertion) is None:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "a signed JWT assertion is required"},
                                     status=400)
        token = "ya29.sim-" + secrets.token_urlsafe(24)
        self.access_tokens[token] = time.time() + 3600
        return web.json_response({"access_token": token, "expires_in": 3600,
                                  "token_type": "Bearer"})

    def _take_fault(self, token: str) -> _Fault | None:
        for fault in self.faults:
            if fault.token is None or fault.token == token:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def send(self, request: web.Request) -> web.Response:
        """``projects.messages.send``."""
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.startswith("Bearer ") else ""
        if self.access_tokens.get(bearer, 0) < time.time():
            return _google_error(401, "UNAUTHENTICATED", None, "Request had invalid "
                                 "authentication credentials.")
        try:
            body = await request.json()
        except ValueError:
            body = None
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("token"), str) \
                or not message["token"]:
            return _google_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                                 "The registration token is not a valid FCM registration token")
        fault = self._take_fault(message["token"])
        if fault is not None:
            self.refused += 1
            status, grpc, code, text = FAULT_KINDS[fault.kind]
            headers = {"Retry-After": str(fault.retry_after_s)} if status == 429 else None
            return _google_error(status, grpc, code, text, headers)
        project_id = request.match_info["project_id"]
        self._next += 1
        name = f"projects/{project_id}/messages/{self._next}"
        self.messages.append({"id": self._next, "name": name, "project_id": project_id,
                              "message": message, "received_at": int(time.time() * 1000)})
        if len(self.messages) > MAX_KEPT:
            del self.messages[:len(self.messages) - MAX_KEPT]
        return web.json_response({"name": name})

    async def list_messages(self, request: web.Request) -> web.Response:
        """The accepted messages, oldest first (``?token=`` filters)."""
        token = request.query.get("token")
        rows = [m for m in self.messages if token is None or m["message"].get("token") == token]
        return web.json_response({"messages": rows, "refused": self.refused})

    async def clear_messages(self, request: web.Request) -> web.Response:
        """Forget the recorded messages."""
        self.messages.clear()
        return web.json_response({"cleared": True})

    async def add_fault(self, request: web.Request) -> web.Response:
        """Inject a fault for the next sends."""
        try:
            body = await request.json()
        except ValueError:
            return _control_error(400, "invalid_json", "the body must be a JSON object")
        if not isinstance(body, dict) or body.get("kind") not in FAULT_KINDS:
            return _control_error(400, "invalid_field",
                                  f"kind must be one of {', '.join(FAULT_KINDS)}")
        count, retry = body.get("count", 1), body.get("retry_after_s", 1)
        token = body.get("token")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            return _control_error(400, "invalid_field", "count must be a positive integer")
        if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
            return _control_error(400, "invalid_field", "retry_after_s must be an integer >= 0")
        if token is not None and not isinstance(token, str):
            return _control_error(400, "invalid_field", "token must be a string")
        self.faults.append(_Fault(body["kind"], token, count, retry))
        return web.json_response({"kind": body["kind"], "token": token, "count": count},
                                 status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        """Remove every injected FCM fault."""
        self.faults.clear()
        return web.json_response({"cleared": True})
