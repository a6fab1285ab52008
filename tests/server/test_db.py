"""PostgreSQL sessions are set up so that an orphaned transaction cannot stall us."""
from __future__ import annotations

from sqlalchemy import text

from models import Database
from tests.conftest import make_pg_database


def test_postgres_sessions_time_out_lock_waits_and_orphans(pg_server) -> None:  # type: ignore[no-untyped-def]
    url, drop = make_pg_database(pg_server)
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            settings = {name: conn.execute(text(f"SHOW {name}")).scalar()
                        for name in ("lock_timeout", "statement_timeout",
                                     "idle_in_transaction_session_timeout")}
        assert settings == {"lock_timeout": "5s", "statement_timeout": "30s",
                            "idle_in_transaction_session_timeout": "30s"}
    finally:
        db.dispose()
        drop()
