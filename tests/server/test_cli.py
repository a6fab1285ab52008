"""Operator commands: create-admin and rotate-encryption-key."""
from __future__ import annotations

from cryptography.fernet import Fernet
from sqlalchemy import select

from models import ExchangeKey, User
from services.security import KeyCipher


def test_create_admin_then_admin_endpoints_accept_its_token(app, client) -> None:  # type: ignore[no-untyped-def]
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-admin", "root-op"], env={"ADMIN_PASSWORD": "s3cret-pass"})
    assert result.exit_code == 0 and "created" in result.output, result.output
    token = client.post("/api/auth/login", json={"username": "root-op", "password": "s3cret-pass"}
                        ).get_json()["access_token"]
    assert client.get("/admin/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    again = runner.invoke(args=["create-admin", "root-op"], env={"ADMIN_PASSWORD": "other-pass1"})
    assert again.exit_code == 0 and "updated" in again.output
    assert client.post("/api/auth/login", json={"username": "root-op", "password": "other-pass1"}
                       ).status_code == 200


def test_rotate_encryption_key_re_encrypts_every_secret(app) -> None:  # type: ignore[no-untyped-def]
    svc = app.extensions["pushsrv"]
    with svc.db.transaction() as s:
        s.add(User(id=50, username="holder", password_hash="x"))
        s.flush()
        s.add(ExchangeKey(user_id=50, exchange="binance", api_key="k1",
                          api_secret_encrypted=svc.cipher.encrypt("the-secret")))
    new_key = Fernet.generate_key().decode()
    result = app.test_cli_runner().invoke(args=["rotate-encryption-key"],
                                          env={"NEW_KEY_ENCRYPTION_KEY": new_key})
    assert result.exit_code == 0 and "re-encrypted 1 secrets" in result.output, result.output
    with svc.db.session() as s:
        token = s.scalars(select(ExchangeKey.api_secret_encrypted)).one()
    assert KeyCipher(new_key).decrypt(token) == "the-secret"          # the new key alone opens it
    missing = app.test_cli_runner().invoke(args=["rotate-encryption-key"], env={})
    assert missing.exit_code != 0 and "NEW_KEY_ENCRYPTION_KEY" in missing.output
