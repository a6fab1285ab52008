"""Engine and session factory for one database URL."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

# A network partition can leave a transaction open on the server side, holding row
# locks, until TCP notices (hours): the server ends such sessions itself, a lock wait
# fails instead of hanging (the caller retries), and dead peers are found by keepalives.
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 5,
    "options": "-c lock_timeout=5000 -c statement_timeout=30000"
               " -c idle_in_transaction_session_timeout=30000",
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
}


class Database:
    """Owns the engine and the session factory.

    ``url`` is a SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg2://...``).
    Use ``with db.session() as s, s.begin():`` per unit of work.

    PostgreSQL: ``pool_size`` connections are kept, up to ``max_overflow`` more are
    opened under load, and a caller that finds every one in use waits up to
    ``pool_timeout_s`` seconds for one (then ``sqlalchemy.exc.TimeoutError``). The
    server sets them from ``DB_POOL_SIZE``, ``DB_MAX_OVERFLOW``, ``DB_POOL_TIMEOUT_S``.
    """

    def __init__(self, url: str, pool_size: int = 10, max_overflow: int = 10,
                 pool_timeout_s: float = 30.0) -> None:
        kwargs: dict = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            # values_plus_batch: an executemany UPDATE (the trades a write-behind batch
            # settles) is one round trip per 100 rows, not one per row
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow,
                          pool_timeout=pool_timeout_s,
                          connect_args=POSTGRES_CONNECT_ARGS)
            if url.startswith("postgresql+psycopg2") or url.startswith("postgresql://"):
                kwargs["executemany_mode"] = "values_plus_batch"
        self.url = url
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.session: sessionmaker[Session] = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside a transaction: committed on success, rolled back on error."""
        with self.session() as s, s.begin():
            yield s

    def ping(self) -> bool:
        """True when ``SELECT 1`` succeeds."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - health check reports, never raises
            return False

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
