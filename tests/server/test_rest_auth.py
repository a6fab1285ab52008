"""Auth, admin access and bad input on the REST API (SQLite and PostgreSQL)."""
from __future__ import annotations

from sqlalchemy import func, select

from models import Trade, User
from tests.server.conftest import auth_header


def test_register_login_me(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/api/auth/register", json={"username": "alice", "password": "password123"})
    assert r.status_code == 201 and r.get_json()["username"] == "alice"
    assert client.post("/api/auth/register", json={"username": "alice", "password": "password123"}
                       ).status_code == 409
    r = client.post("/api/auth/login", json={"username": "alice", "password": "password123"})
    body = r.get_json()
    assert r.status_code == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3600
    me = client.get("/api/auth/me", headers={"Authorization": "Bearer " + body["access_token"]})
    assert me.get_json() == {"id": 1, "username": "alice", "is_admin": False}


def test_wrong_password_and_no_token_are_401(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/auth/register", json={"username": "alice", "password": "password123"})
    r = client.post("/api/auth/login", json={"username": "alice", "password": "nope-nope"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_credentials"
    assert client.get("/api/auth/me").status_code == 401
    r = client.get("/api/auth/me", headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401 and "error" in r.get_json()


def test_a_short_wrong_password_is_401_not_the_password_policy(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/auth/register", json={"username": "alice", "password": "password123"})
    r = client.post("/api/auth/login", json={"username": "alice", "password": "abc"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "invalid_credentials"
    assert "8" not in r.get_json()["error"]["message"]
    r = client.post("/api/auth/login", json={"username": "alice", "password": ""})
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "password"


def test_authentication_comes_before_an_unknown_query_parameter(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/trades?bogus=1")
    assert r.status_code == 401, r.get_json()
    r = client.get("/api/trades?bogus=1", headers={"Authorization": "Bearer garbage"})
    assert r.status_code == 401, r.get_json()
    r = client.get("/api/trades?bogus=1", headers=auth_header(client))
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "bogus"


def test_a_wrong_admin_token_is_told_so(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/admin/stats", headers={"X-Admin-Token": "not-it"})
    assert r.status_code == 401 and "is not the admin token" in r.get_json()["error"]["message"]
    r = client.get("/admin/stats")
    assert r.status_code == 401 and "required" in r.get_json()["error"]["message"]


def test_login_is_rate_limited_after_repeated_failures(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/api/auth/register", json={"username": "alice", "password": "password123"})
    codes = [client.post("/api/auth/login", json={"username": "alice", "password": "wrongpass1"}
                         ).status_code for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    r = client.post("/api/auth/login", json={"username": "alice", "password": "password123"})
    assert r.status_code == 429 and r.headers.get("Retry-After")
    assert r.get_json()["error"]["code"] == "rate_limited"


def test_bad_input_is_400_naming_the_field_and_writes_nothing(client, app) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ("/api/auth/register", b"{not json", "invalid_json", None),
        ("/api/auth/register", b"[1, 2]", "invalid_json", None),
        ("/api/auth/register", {"username": "al"}, "validation_error", "username"),
        ("/api/auth/register", {"username": "alice!", "password": "password123"}, "validation_error", "username"),
        ("/api/auth/register", {"username": "alice", "password": "short"}, "validation_error", "password"),
        ("/api/auth/register", {"username": 12345, "password": "password123"}, "validation_error", "username"),
        ("/api/auth/register", {"username": "alice", "password": "password123", "admin": True},
         "validation_error", "admin"),
    ]
    for path, payload, code, field in cases:
        if isinstance(payload, bytes):
            r = client.post(path, data=payload, content_type="application/json")
        else:
            r = client.post(path, json=payload)
        err = r.get_json()["error"]
        assert r.status_code == 400, (payload, r.get_json())
        assert err["code"] == code
        if field:
            assert err["field"] == field and field in err["message"]
    with app.extensions["pushsrv"].db.session() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0


def test_order_validation_names_the_field(client, app) -> None:  # type: ignore[no-untyped-def]
    h = auth_header(client)
    base = {"key_id": 1, "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT",
            "quantity": "0.01", "price": "50000"}
    cases = [({**base, "quantity": 0.01}, "quantity"), ({**base, "quantity": "abc"}, "quantity"),
             ({**base, "quantity": "-1"}, "quantity"), ({**base, "side": "buy"}, "side"),
             ({**base, "type": "STOP"}, "type"), ({**base, "key_id": "1"}, "key_id"),
             ({k: v for k, v in base.items() if k != "price"}, "price"),
             ({**base, "type": "MARKET"}, "price"), ({**base, "symbol": "btc usdt"}, "symbol"),
             ({**base, "time_in_force": "DAY"}, "time_in_force"),
             ({**base, "client_order_id": "x" * 37}, "client_order_id")]
    for payload, field in cases:
        r = client.post("/api/orders", json=payload, headers=h)
        assert r.status_code == 400, (payload, r.get_json())
        assert r.get_json()["error"]["field"] == field, (payload, r.get_json())
    # a well-formed order on an unknown key is 404, and nothing is written
    r = client.post("/api/orders", json=base, headers=h)
    assert r.status_code == 404 and r.get_json()["error"]["field"] == "key_id"
    with app.extensions["pushsrv"].db.session() as s:
        assert s.scalar(select(func.count()).select_from(Trade)) == 0


def test_unknown_keys_and_huge_bodies(client) -> None:  # type: ignore[no-untyped-def]
    h = auth_header(client)
    assert client.put("/api/exchange/keys/99", json={"label": "x"}, headers=h).status_code == 404
    assert client.delete("/api/exchange/keys/99", headers=h).status_code == 404
    assert client.get("/api/account/balance?key_id=99", headers=h).status_code == 404
    assert client.get("/api/account/balance?key_id=abc", headers=h).status_code == 400
    assert client.get("/api/account/everything", headers=h).status_code == 404
    assert client.get("/api/trades?status=weird", headers=h).get_json()["error"]["field"] == "status"
    r = client.post("/api/auth/register", data=b"{" + b" " * 200_000 + b"}",
                    content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]["code"]
    assert client.get("/nope").get_json()["error"]["code"] == "not_found"


def test_admin_requires_token(client) -> None:  # type: ignore[no-untyped-def]
    for method, path in [("get", "/admin/health"), ("get", "/admin/stats"),
                         ("get", "/admin/connections"), ("post", "/admin/users/1/cache/clear"),
                         ("post", "/admin/reconcile")]:
        assert getattr(client, method)(path).status_code == 401
        assert getattr(client, method)(path, headers={"X-Admin-Token": "wrong"}).status_code == 401
        user_h = auth_header(client, "bob", "password123")
        assert getattr(client, method)(path, headers=user_h).status_code == 401
    ok = {"X-Admin-Token": "admin-token"}
    health = client.get("/admin/health", headers=ok).get_json()
    assert health["status"] == "ok" and health["db"] == "ok" and health["message_queue"] == "none"
    stats = client.get("/admin/stats", headers=ok).get_json()
    assert {"connections", "users_online", "subscriptions", "exchange_cache", "streams",
            "push", "write_behind"} <= set(stats)
    assert client.post("/admin/users/1/cache/clear", headers=ok).get_json() == {"cleared": []}
    assert client.post("/admin/reconcile", headers=ok, json={}).get_json() == {
        "checked": 0, "fixed": 0, "details": []}
    assert client.post("/admin/reconcile", headers=ok, json={"user_id": "x"}).status_code == 400
