"""Sessions for mobile apps through the REST API (SQLite and PostgreSQL): login gives a
refresh token, refresh rotates it, a rotated one presented again ends the session,
logout and the session list end sessions, refresh tokens expire and are stored hashed."""
from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import select

from app import create_app
from models import AuthSession, RefreshToken
from tests.server.conftest import make_config

CREDS = {"username": "alice", "password": "password123"}


def _login(client, agent: str = "app/1.0", creds: dict = CREDS) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/api/auth/login", json=creds, headers={"User-Agent": agent})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _refresh(client, token: str):  # type: ignore[no-untyped-def]
    return client.post("/api/auth/refresh", json={"refresh_token": token})


def _bearer(pair: dict) -> dict:
    return {"Authorization": "Bearer " + pair["access_token"]}


@pytest.fixture
def alice(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/api/auth/register", json=CREDS).status_code == 201


def test_login_carries_a_refresh_token_stored_only_hashed(client, app, alice) -> None:  # type: ignore[no-untyped-def]
    pair = _login(client)
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 3600
    assert pair["refresh_expires_in"] == 30 * 24 * 3600 and len(pair["refresh_token"]) >= 43
    with app.extensions["pushsrv"].db.session() as s:
        rows = list(s.scalars(select(RefreshToken)))
    assert [r.token_hash for r in rows] == [hashlib.sha256(pair["refresh_token"].encode()).hexdigest()]
    assert client.get("/api/auth/me", headers=_bearer(pair)).status_code == 200


def test_refresh_rotates_and_reuse_revokes_the_session(client, alice) -> None:  # type: ignore[no-untyped-def]
    first = _login(client)
    r = _refresh(client, first["refresh_token"])
    assert r.status_code == 200
    second = r.get_json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["session_id"] == first["session_id"]
    assert client.get("/api/auth/me", headers=_bearer(second)).status_code == 200
    # the rotated token presented again (a thief, or the owner after a thief): the whole
    # session ends, so the token the rotation gave out stops working too
    r = _refresh(client, first["refresh_token"])
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "refresh_token_reused"
    r = _refresh(client, second["refresh_token"])
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_refresh_token"
    # other sessions of the user are untouched
    other = _login(client, "other-phone")
    assert _refresh(client, other["refresh_token"]).status_code == 200


def test_refresh_refuses_unknown_and_malformed_tokens(client, alice) -> None:  # type: ignore[no-untyped-def]
    _login(client)
    assert _refresh(client, "x" * 43).status_code == 401
    for bad in ["", "a b", "é" * 10, 42, None, "x" * 129]:
        r = client.post("/api/auth/refresh", json={"refresh_token": bad})
        assert r.status_code == 400 and r.get_json()["error"]["field"] == "refresh_token"
    assert client.post("/api/auth/refresh", json={}).status_code == 400


def test_logout_ends_the_session(client, alice) -> None:  # type: ignore[no-untyped-def]
    a, b = _login(client, "phone-a"), _login(client, "phone-b")
    assert client.post("/api/auth/logout", json={"refresh_token": a["refresh_token"]}).status_code == 204
    assert _refresh(client, a["refresh_token"]).status_code == 401
    assert _refresh(client, b["refresh_token"]).status_code == 200  # only that session
    # without a body: the session of the bearer token
    c = _login(client, "phone-c")
    assert client.post("/api/auth/logout", headers=_bearer(c)).status_code == 204
    assert _refresh(client, c["refresh_token"]).status_code == 401
    assert client.post("/api/auth/logout").status_code == 401  # nothing names a session
    # twice, or an unknown token: still 204
    assert client.post("/api/auth/logout", json={"refresh_token": a["refresh_token"]}).status_code == 204


def test_session_list_and_delete(client, alice) -> None:  # type: ignore[no-untyped-def]
    a, b = _login(client, "phone-a"), _login(client, "phone-b")
    r = client.get("/api/auth/sessions", headers=_bearer(a))
    sessions = r.get_json()
    assert r.status_code == 200 and [s["user_agent"] for s in sessions] == ["phone-b", "phone-a"]
    assert {k for s in sessions for k in s} == {"id", "created_at", "last_used_at", "user_agent",
                                                 "current"}
    assert [s["current"] for s in sessions] == [False, True]
    assert client.delete(f"/api/auth/sessions/{b['session_id']}", headers=_bearer(a)).status_code == 204
    assert _refresh(client, b["refresh_token"]).status_code == 401
    assert [s["id"] for s in client.get("/api/auth/sessions", headers=_bearer(a)).get_json()] == \
        [a["session_id"]]
    assert client.delete(f"/api/auth/sessions/{b['session_id']}", headers=_bearer(a)).status_code == 404
    # another user's session is not found, and stays alive
    client.post("/api/auth/register", json={"username": "mallory", "password": "password123"})
    m = _login(client, creds={"username": "mallory", "password": "password123"})
    r = client.delete(f"/api/auth/sessions/{a['session_id']}", headers=_bearer(m))
    assert r.status_code == 404
    assert client.get("/api/auth/sessions", headers=_bearer(m)).get_json()[0]["id"] == m["session_id"]
    assert _refresh(client, a["refresh_token"]).status_code == 200
    assert client.get("/api/auth/sessions").status_code == 401


def test_refresh_token_expires(database_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from services import sessions
    app = create_app(make_config(database_url, REFRESH_EXPIRES_S=2))
    try:
        client = app.test_client()
        client.post("/api/auth/register", json=CREDS)
        pair = _login(client)
        assert pair["refresh_expires_in"] == 2
        fresh = _refresh(client, pair["refresh_token"]).get_json()
        later = sessions.now_ms() + 2_100  # the sessions' clock 2.1 s on, not a 2.1 s sleep
        monkeypatch.setattr(sessions, "now_ms", lambda: later)
        r = _refresh(client, fresh["refresh_token"])
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_refresh_token"
        # an expired rotated token is "invalid", not "reused": the session is not revoked
        r = _refresh(client, pair["refresh_token"])
        assert r.get_json()["error"]["code"] == "invalid_refresh_token"
        assert client.get("/api/auth/sessions", headers=_bearer(fresh)).get_json() == []
    finally:
        app.extensions["pushsrv"].shutdown()


def test_refresh_prunes_rotated_tokens_once_expired(client, app, alice) -> None:  # type: ignore[no-untyped-def]
    pair = _login(client)
    db = app.extensions["pushsrv"].db
    with db.transaction() as s:  # a token of this session rotated long ago, now expired
        s.add(RefreshToken(session_id=pair["session_id"], token_hash="0" * 64, created_at=1,
                           expires_at=2, rotated_at=1))
    newer = _refresh(client, pair["refresh_token"]).get_json()
    assert newer["session_id"] == pair["session_id"]
    with db.session() as s:
        hashes = set(s.scalars(select(RefreshToken.token_hash).where(
            RefreshToken.session_id == pair["session_id"])))
    # the expired one is gone; the one just rotated stays for reuse detection
    assert "0" * 64 not in hashes and len(hashes) == 2


def test_revoked_session_row_records_why(client, app, alice) -> None:  # type: ignore[no-untyped-def]
    a = _login(client)
    _refresh(client, a["refresh_token"])
    _refresh(client, a["refresh_token"])
    with app.extensions["pushsrv"].db.session() as s:
        sess = s.get(AuthSession, a["session_id"])
    assert sess.revoked_reason == "reuse" and sess.revoked_at is not None


def test_refresh_is_rate_limited_per_address(database_url) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(database_url, REFRESH_RATE_LIMIT="3 per minute"))
    try:
        client = app.test_client()
        codes = [_refresh(client, "x" * 43).status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        r = _refresh(client, "x" * 43)
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        assert r.get_json()["error"]["code"] == "rate_limited"
    finally:
        app.extensions["pushsrv"].shutdown()
