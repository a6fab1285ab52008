"""Accounts of ``bench.fanout`` kept between runs (``--accounts-cache``).

Making 2,000 accounts through the API (two Argon2 hashes each, register and login)
takes many minutes on a busy 2-core machine, and it is not what the benchmark
measures. The first run saves them: the server's SQLite database right after setup
(``sqlite3`` backup), the accounts (credentials, ids, tokens) and the secrets the
server ran with (``SECRET_KEY`` signs the tokens, ``KEY_ENCRYPTION_KEY`` encrypts the
stored API secrets; ``JWT_EXPIRES_S`` is pinned to a day so the tokens stay valid). A
later run starts its server on a copy of that database (the server migrates it to its
own head, so another branch's server can use it) with the same secrets, and only the
simulator accounts and their positions are made again (the simulator keeps no state).
The files are bench/results/ (ignored by git): fake credentials of the simulator only.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import asdict
from pathlib import Path

from cryptography.fernet import Fernet

from bench.common import Account

JWT_EXPIRES_S = "86400"


def paths(base: Path) -> tuple[Path, Path]:
    """``(accounts json, sqlite file)`` of the cache named ``base``."""
    return base.with_suffix(".json"), base.with_suffix(".sqlite3")


def load(base: Path, need: int) -> tuple[list[Account], dict[str, str]] | None:
    """The cached accounts (at least ``need``) and the server secrets, or None."""
    js, db = paths(base)
    if not (js.exists() and db.exists()):
        return None
    data = json.loads(js.read_text())
    if len(data["accounts"]) < need:
        return None
    return [Account(**a) for a in data["accounts"]], data["env"]


def new_env() -> dict:
    """Fresh server secrets to pin (so that a cache made with them stays usable)."""
    return {"SECRET_KEY": os.urandom(24).hex(), "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "JWT_EXPIRES_S": JWT_EXPIRES_S}


def save(base: Path, accounts: list[Account], env: dict, sqlite_path: Path) -> None:
    """Write the accounts, the secrets and a consistent copy of the database."""
    js, db = paths(base)
    db.unlink(missing_ok=True)
    src, dst = sqlite3.connect(sqlite_path), sqlite3.connect(db)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    js.write_text(json.dumps({"env": env, "accounts": [asdict(a) for a in accounts]}))


def direct(db_url: str, sim, n: int, env: dict, tag: str,  # type: ignore[no-untyped-def]
           before_key=None, workers: int = 16) -> list[Account]:
    """``n`` accounts written straight into the server's database (users, keys) with
    tokens signed by ``env["SECRET_KEY"]`` (valid ``JWT_EXPIRES_S``) and secrets
    encrypted with ``env["KEY_ENCRYPTION_KEY"]``; each simulator account is made (and
    ``before_key(account)`` run) first, on ``workers`` threads. What a user's
    registration costs (two Argon2 hashes, a signed key check) is not what the
    fan-out or the storm measure, and on PostgreSQL there is no cached database."""
    import uuid

    from bench.common import run_pool
    from models import Database, ExchangeKey, User
    from services.security import KeyCipher, TokenService

    accounts = [Account("d" + tag + f"_{i}", "pw-" + uuid.uuid4().hex, "dk" + uuid.uuid4().hex,
                        "ds" + uuid.uuid4().hex) for i in range(n)]

    def sim_side(i: int) -> None:
        a = accounts[i]
        sim.create_account(a.api_key, a.api_secret, balances={"USDT": "10000"})
        if before_key is not None:
            before_key(a)
    _, errors = run_pool(sim_side, n, workers)
    if errors:
        raise RuntimeError(f"{len(errors)} simulator accounts failed: {errors[:3]}")
    db = Database(db_url)
    cipher = KeyCipher(env["KEY_ENCRYPTION_KEY"])
    tokens = TokenService(env["SECRET_KEY"], int(env.get("JWT_EXPIRES_S", JWT_EXPIRES_S)))
    try:
        with db.transaction() as s:
            for a in accounts:
                user = User(username=a.username, password_hash="!bench-direct")
                s.add(user)
                s.flush()
                key = ExchangeKey(user_id=user.id, exchange="binance", testnet=False,
                                  label="bench", api_key=a.api_key,
                                  api_secret_encrypted=cipher.encrypt(a.api_secret))
                s.add(key)
                s.flush()
                a.user_id, a.key_id = user.id, key.id
                a.token = tokens.issue(user.id, False)
    finally:
        db.dispose()
    return accounts
