"""Firebase Cloud Messaging, HTTP v1 API: one POST per message to
``{FCM_URL}/v1/projects/{project_id}/messages:send`` with an OAuth 2.0 access token
of a service account (scope ``https://www.googleapis.com/auth/firebase.messaging``).

Source: Firebase docs, "Migrate from legacy FCM APIs to HTTP v1", "Send a message
using FCM HTTP v1 API" and the REST reference ``projects.messages.send``; error codes
from ``ErrorCode`` of the FCM v1 reference (``UNREGISTERED`` 404, ``INVALID_ARGUMENT``
400, ``QUOTA_EXCEEDED`` 429, ``UNAVAILABLE`` 503, ``INTERNAL`` 500).

Why not ``firebase-admin``: its messaging service builds the send URL from a class
constant (``_MessagingService.FCM_URL = 'https://fcm.googleapis.com/v1/projects/{0}/
messages:send'``) and mounts its own retrying HTTP adapter on that host; pointing it
at ``FCM_URL`` (the simulator, a proxy) means overwriting its private parts, and its
internal retries would stack with the outbox's. So: ``google-auth`` for the
credentials (``service_account.Credentials`` reads ``project_id`` and ``token_uri``
from the JSON file and refreshes the token there) and ``requests`` for the documented
request. Under eventlet both are cooperative (the server monkey-patches sockets);
the worker calls ``send`` from its own green thread.
"""
from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from dataclasses import dataclass

import requests

logger = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


class FcmError(Exception):
    """A send that failed. ``status``: HTTP status (0: no answer); ``code``: FCM's
    error code (``UNREGISTERED``, ``INVALID_ARGUMENT``, ...) or the gRPC status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class FcmRetryable(FcmError):
    """Try again later: 429, 5xx, a timeout or a refused connection.
    ``retry_after_s``: the server's ``Retry-After`` (None when it gave none)."""

    def __init__(self, status: int, code: str, message: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(status, code, message)
        self.retry_after_s = retry_after_s


class FcmTokenGone(FcmError):
    """The registration token is unregistered (404 ``UNREGISTERED``) or invalid (400
    ``INVALID_ARGUMENT`` naming the token): the device must be removed."""


class FcmRejected(FcmError):
    """Refused for another reason (e.g. 403 ``SENDER_ID_MISMATCH``, a bad payload):
    retrying will not help."""


@dataclass(frozen=True)
class FcmConfig:
    """``credentials_path``: a service-account JSON file; ``url``: FCM's base URL."""

    credentials_path: str
    url: str = "https://fcm.googleapis.com"
    timeout_s: float = 10.0


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify(status: int, body: str, retry_after: str | None) -> FcmError:
    """The typed error of an FCM error answer (``status``, JSON ``body``)."""
    try:
        err = json.loads(body).get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {}
    details = err.get("details") or []
    code = next((d.get("errorCode") for d in details if isinstance(d, dict)
                 and d.get("@type") == FCM_ERROR_TYPE and d.get("errorCode")), None)
    code = code or err.get("status") or str(status)
    message = str(err.get("message") or body[:200])
    if status == 429 or status >= 500:
        return FcmRetryable(status, code, message, _retry_after(retry_after))
    if code == "UNREGISTERED" or status == 404:
        return FcmTokenGone(status, code, message)
    if code == "INVALID_ARGUMENT":
        fields = [v.get("field", "") for d in details if isinstance(d, dict)
                  and d.get("@type") == BAD_REQUEST_TYPE for v in d.get("fieldViolations", [])]
        if any("token" in f for f in fields) or "registration token" in message.lower():
            return FcmTokenGone(status, code, message)
    return FcmRejected(status, code, message)


class FcmClient:
    """Sends messages through FCM HTTP v1. Raises ValueError (file unreadable, not a
    service account) at construction."""

    def __init__(self, cfg: FcmConfig) -> None:
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account

        self._creds = service_account.Credentials.from_service_account_file(
            cfg.credentials_path, scopes=[SCOPE])
        self.project_id: str = self._creds.project_id or ""
        if not self.project_id:
            raise ValueError("the service account file has no project_id")
        self._url = f"{cfg.url.rstrip('/')}/v1/projects/{self.project_id}/messages:send"
        self._timeout = cfg.timeout_s
        self._session = requests.Session()
        self._auth_request = Request(self._session)
        self._lock = threading.Lock()  # one token refresh at a time
        self.token_refreshes = 0

    def _token(self, force: bool = False) -> str:
        import google.auth.exceptions
        with self._lock:
            if force or not self._creds.valid:
                try:
                    self._creds.refresh(self._auth_request)
                except google.auth.exceptions.TransportError as e:
                    raise FcmRetryable(0, "TOKEN_UNREACHABLE", type(e).__name__) from e
                except google.auth.exceptions.RefreshError as e:
                    status = 0
                    raise FcmRetryable(status, "TOKEN_REFUSED", str(e)[:200]) from e
                self.token_refreshes += 1
            return self._creds.token

    def send(self, message: dict) -> str:
        """POST ``{"message": message}``; returns FCM's message name. Raises
        FcmRetryable, FcmTokenGone or FcmRejected. A 401 (token expired early) is
        retried once with a fresh token."""
        for attempt in (0, 1):
            token = self._token(force=attempt == 1)
            try:
                r = self._session.post(self._url, json={"message": message}, timeout=self._timeout,
                                       headers={"Authorization": f"Bearer {token}"})
            except requests.RequestException as e:
                raise FcmRetryable(0, "UNREACHABLE", type(e).__name__) from e
            if r.status_code == 200:
                try:
                    return str(r.json().get("name", ""))
                except ValueError:
                    return ""
            if r.status_code == 401 and attempt == 0:
                continue
            raise classify(r.status_code, r.text, r.headers.get("Retry-After"))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()


def build_message(token: str, collapse_key: str, title: str, body: str,
                  data: dict[str, str]) -> dict:
    """The HTTP v1 ``message``: a notification with ``data`` (strings only), the event
    key as Android ``collapse_key`` and APNs ``apns-collapse-id`` (so a retry of one
    event replaces, never adds), high priority on both. FCM uses the block of the token's platform."""
    return {"token": token, "notification": {"title": title, "body": body},
            "data": {k: str(v) for k, v in data.items()},
            "android": {"collapse_key": collapse_key, "priority": "high"},
            "apns": {"headers": {"apns-collapse-id": collapse_key, "apns-priority": "10"}}}
