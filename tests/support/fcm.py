"""Helpers for the notification tests and benchmark: a service-account file pointed at
the simulator's ``/token``, and the simulator's FCM control calls."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT_ID = "pushsrv-test"


def write_service_account(directory: Path, sim_url: str, project_id: str = PROJECT_ID) -> Path:
    """A service-account JSON (a fresh RSA key; ``token_uri`` the simulator's) in
    ``directory``; returns its path."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = directory / f"fcm-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps({"type": "service_account", "project_id": project_id,
                                "private_key_id": uuid.uuid4().hex, "private_key": pem,
                                "client_email": f"test@{project_id}.iam.gserviceaccount.com",
                                "client_id": "1", "token_uri": f"{sim_url}/token"}))
    return path


def new_token() -> str:
    """A device token of FCM's shape (opaque, ~160 characters)."""
    return uuid.uuid4().hex + ":APA91b" + uuid.uuid4().hex * 4


def messages(sim_url: str, token: str | None = None) -> list[dict]:
    """The messages the simulator's FCM accepted (to ``token`` only, when given)."""
    r = requests.get(sim_url + "/_sim/fcm", params={"token": token} if token else None, timeout=10)
    r.raise_for_status()
    return r.json()["messages"]


def fault(sim_url: str, kind: str, token: str | None = None, count: int = 1,
          retry_after_s: int = 1) -> None:
    """Inject an FCM fault at the simulator."""
    body: dict = {"kind": kind, "count": count, "retry_after_s": retry_after_s}
    if token is not None:
        body["token"] = token
    r = requests.post(sim_url + "/_sim/fcm/faults", json=body, timeout=10)
    assert r.status_code == 201, r.text


def clear_faults(sim_url: str) -> None:
    """Remove every injected FCM fault."""
    requests.delete(sim_url + "/_sim/fcm/faults", timeout=10).raise_for_status()
