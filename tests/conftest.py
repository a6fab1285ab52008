"""Shared fixtures: databases (SQLite and a real PostgreSQL), the simulator process
and a funded simulator account.

``sim``: one simulator process per test session (per xdist worker), ``tests/e2e``
included; tests share it through distinct accounts, and ``new_account`` clears faults
after each test.
``account`` / ``new_account``: a funded simulator account (``SimAccount``); its
faults are cleared after the test; a directory's conftest overrides ``sim_prices``
to set prices when it is created. ``tests/e2e`` overrides ``account`` with a user
registered on the server process (``tests.e2e.conftest.Account``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import pytest
from sqlalchemy import create_engine, text

from tests.support.pg_databases import PgDatabases
from tests.support.simulator import SimulatorProcess, start_simulator

E2E_DIRS = {"e2e", "browser"}  # every test under these is marked e2e
TMPFS = "/dev/shm"


def _temporary_files_in_memory() -> None:
    """Put pytest's ``tmp_path`` directories (and every other temporary file of the
    run and of the processes it starts) on the RAM file system when there is one and
    ``TMPDIR`` is not set: the SQLite databases of the tests commit thousands of times
    and each commit waits for an fsync on a disk, none on tmpfs (the one-process run of
    tests/server/test_ledger_property.py took 32 s instead of 50 s on a loaded machine).
    Runs at import, before pytest picks its base temporary directory."""
    if "TMPDIR" not in os.environ and os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK):
        os.environ["TMPDIR"] = TMPFS
        tempfile.tempdir = None  # tempfile.gettempdir() looks again


_temporary_files_in_memory()


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


def make_pg_database(admin_url: str, template: str | None = None) -> tuple[str, callable]:
    """Create a fresh database (a copy of ``template`` when given); returns ``(url, drop)``."""
    name = "pushsrv_" + uuid.uuid4().hex[:12]
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    url = admin_url.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
    return url, drop


@pytest.fixture(scope="session")
def migrated_templates(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Each database migrated once per test process: a SQLite file to copy and, when
    PostgreSQL is reachable, a template database (``CREATE DATABASE ... TEMPLATE``
    copies it in a fraction of the time the eight migrations take). Dropped at the end."""
    from services import schema
    made: dict[str, object] = {}
    drops = []

    def get(kind: str):  # type: ignore[no-untyped-def]
        if kind not in made:
            if kind == "sqlite":
                path = tmp_path_factory.mktemp("template") / "migrated.sqlite3"
                schema.upgrade(f"sqlite:///{path}")
                made[kind] = path
            else:
                url, drop = make_pg_database(PG_ADMIN_URL)
                schema.upgrade(url)
                made[kind] = url.rsplit("/", 1)[1]
                drops.append(drop)
        return made[kind]
    yield get
    for drop in drops:
        drop()


@pytest.fixture(scope="session")
def pg_databases(pg_server, migrated_templates):  # type: ignore[no-untyped-def]
    """The session's ``PgDatabases``: one copy of the migrated template, emptied and
    renamed for each test (tests/support/pg_databases.py), dropped at the end."""
    databases = PgDatabases(pg_server, migrated_templates("postgresql"))
    yield databases
    databases.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, migrated_templates):  # type: ignore[no-untyped-def]
    """A fresh, migrated database: SQLite file and a real PostgreSQL database (copies
    of a database migrated once per test process; the PostgreSQL one is a copy emptied
    and renamed for each test, see ``PgDatabases``)."""
    if request.param == "sqlite":
        path = tmp_path / "test.sqlite3"
        shutil.copyfile(migrated_templates("sqlite"), path)
        yield f"sqlite:///{path}"
        return
    yield request.getfixturevalue("pg_databases").take()


def simulator_fixture(scope: str):  # type: ignore[no-untyped-def]
    """A ``sim`` fixture of ``scope``: a simulator subprocess (random walk off, see
    ``start_simulator``), stopped after the last test of the scope."""
    @pytest.fixture(scope=scope, name="sim")
    def sim_fixture() -> Iterator[SimulatorProcess]:
        proc = start_simulator()
        try:
            yield proc
        finally:
            proc.stop()
    return sim_fixture


sim = simulator_fixture("session")


@dataclass
class SimAccount:
    """A funded simulator account. Unpacks and indexes as ``(api_key, api_secret)``;
    ``client`` is a real python-binance Client for it (built on first use)."""

    api_key: str
    api_secret: str
    sim: SimulatorProcess = field(repr=False)

    def __iter__(self) -> Iterator[str]:
        return iter((self.api_key, self.api_secret))

    def __getitem__(self, index: int) -> str:
        return (self.api_key, self.api_secret)[index]

    @cached_property
    def client(self):  # type: ignore[no-untyped-def]
        return self.sim.binance_client(self.api_key, self.api_secret)


@pytest.fixture
def sim_prices() -> dict[str, str]:
    """``{symbol: price}`` set on the simulator when an account is created (none here;
    ``tests/exchanges`` puts BTCUSDT at 50000)."""
    return {}


@pytest.fixture
def new_account(sim: SimulatorProcess, sim_prices: dict[str, str]) -> Iterator[Callable[..., SimAccount]]:
    """Factory: ``new_account(usdt="10000")`` -> a SimAccount with distinct keys (then
    ``sim_prices`` are set). Faults are cleared after the test."""
    def make(usdt: str = "10000") -> SimAccount:
        key, secret = "k" + uuid.uuid4().hex[:20], "s" + uuid.uuid4().hex
        sim.create_account(key, secret, balances={"USDT": usdt})
        for symbol, price in sim_prices.items():
            sim.set_price(symbol, price)
        return SimAccount(key, secret, sim)
    yield make
    sim.clear_faults()


@pytest.fixture
def account(new_account: Callable[..., SimAccount]) -> SimAccount:
    """A fresh account funded with 10000 USDT."""
    return new_account()
