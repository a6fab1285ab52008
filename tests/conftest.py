"""Shared fixtures: databases (SQLite and a real PostgreSQL), the simulator process."""
from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

E2E_DIRS = {"e2e", "browser"}  # every test under these is marked e2e


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Mark the tests of ``tests/e2e`` and ``tests/browser`` ``e2e`` (modules elsewhere
    that start a server process mark themselves with ``pytestmark``)."""
    for item in items:
        if E2E_DIRS & set(item.path.parts[-3:-1]):
            item.add_marker(pytest.mark.e2e)


PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL admin URL. Skips when unreachable, except under CI=true (fails)."""
    if not _pg_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {PG_ADMIN_URL} (required in CI)")
        pytest.skip("PostgreSQL not reachable")
    return PG_ADMIN_URL


def make_pg_database(admin_url: str) -> tuple[str, callable]:
    """Create a fresh database; returns ``(url, drop)``."""
    name = "pushsrv_" + uuid.uuid4().hex[:12]
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
    return url, drop


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):  # type: ignore[no-untyped-def]
    """A fresh, migrated database: SQLite file and a real PostgreSQL database."""
    from services import schema
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.sqlite3'}"
        schema.upgrade(url)
        yield url
        return
    admin = request.getfixturevalue("pg_server")
    url, drop = make_pg_database(admin)
    schema.upgrade(url)
    yield url
    drop()
