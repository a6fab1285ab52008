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


def load(base: Path, need: int) -> tuple[list[Account], dict] | None:
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
