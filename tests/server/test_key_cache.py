"""API keys read once and kept (services.accounts.KeyCache), concurrent misses read
together (services.coalesce.Coalescer), the realized PnL of keys starting together
read in one grouped query (services.container._LedgerFacade) equal to the ledger's
own per-key sums; on SQLite and a real PostgreSQL."""
from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import event

from models import Database, ExchangeKey, User, now_ms
from services import ledger, realized
from services.accounts import KeyCache
from services.coalesce import Coalescer
from services.container import _LedgerFacade
from services.errors import NotFound


def _together(n: int, fn) -> list:  # type: ignore[no-untyped-def]
    """``fn(i)`` on n threads started at once; the results in order."""
    out: list = [None] * n
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - returned for the assertions
            out[i] = e
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_lookups_share_one_read_and_its_error() -> None:
    calls: list[list[int]] = []

    def load(keys: list[int]) -> dict[int, str]:
        calls.append(sorted(keys))
        time.sleep(0.05)
        return {k: f"v{k}" for k in keys if k != 3}
    c = Coalescer(load, wait_s=0.05)
    got = _together(20, c.get)
    assert got == [None if i == 3 else f"v{i}" for i in range(20)]
    assert len(calls) <= 2 and sorted(k for call in calls for k in call) == list(range(20))

    def fail(keys: list[int]) -> dict[int, str]:
        raise RuntimeError("database down")
    c = Coalescer(fail, wait_s=0.05)
    assert all(isinstance(e, RuntimeError) for e in _together(5, c.get))


@pytest.fixture
def db(database_url):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    yield database
    database.dispose()


def _counting(db: Database) -> list[str]:
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda conn, cursor, stmt, *a: statements.append(stmt)
                 if "exchange_keys" in stmt or "fills" in stmt else None)
    return statements


def _keys(db: Database, n: int) -> list[ExchangeKey]:
    out = []
    with db.transaction() as s:
        for i in range(n):
            user = User(username=f"kc{i}-{time.monotonic_ns()}", password_hash="x")
            s.add(user)
            s.flush()
            key = ExchangeKey(user_id=user.id, exchange="binance", testnet=False, label="",
                              api_key=f"k{i}", api_secret_encrypted=b"x")
            s.add(key)
            s.flush()
            out.append(key)
    return out


def test_keys_are_read_once_in_batches_and_forgotten_when_changed(db: Database) -> None:
    keys = _keys(db, 30)
    statements = _counting(db)
    cache = KeyCache(db, batch_wait_s=0.05)
    got = _together(30, lambda i: cache.get(keys[i].user_id, keys[i].id))
    assert [k.id for k in got] == [k.id for k in keys]
    lists = _together(30, lambda i: cache.of_user(keys[i].user_id))
    assert [[k.id for k in ks] for ks in lists] == [[k.id] for k in keys]
    read = len(statements)
    assert read <= 4, statements                       # batched: not 60 reads
    for k in keys:                                     # then never read again
        cache.get(k.user_id, k.id)
        cache.of_user(k.user_id)
    assert len(statements) == read
    with pytest.raises(NotFound):                      # another user's key: not found
        cache.get(keys[1].user_id, keys[0].id)
    changes: list[tuple[int, int]] = []
    cache.on_change = lambda user_id, key_id: changes.append((user_id, key_id))
    with db.transaction() as s:
        s.get(ExchangeKey, keys[0].id).status = "deleted"
    cache.changed(keys[0].user_id, keys[0].id)        # the KeyService does this on delete
    assert changes == [(keys[0].user_id, keys[0].id)]  # told to the other processes
    with pytest.raises(NotFound):
        cache.get(keys[0].user_id, keys[0].id)
    assert cache.of_user(keys[0].user_id) == []
    cache.invalidate(keys[1].user_id, keys[1].id)     # another process changed it
    before = len(statements)
    cache.get(keys[1].user_id, keys[1].id)
    assert len(statements) == before + 1


def test_realized_pnl_of_keys_starting_together_is_one_query_equal_to_the_ledgers(
        db: Database) -> None:
    keys = _keys(db, 12)
    now = now_ms()
    with db.transaction() as s:  # what the book books: trades' realized PnL and funding
        for i, k in enumerate(keys[:8]):
            realized.book_change(s, k.id, trades_pnl=Decimal("1.4"), now=now - 2 * 86_400_000)
            realized.book_change(s, k.id, trades_pnl=Decimal(i) - Decimal("0.25"), now=now)
    facade = _LedgerFacade(db, writer=None)  # type: ignore[arg-type]
    facade._realized._wait_s = 0.05
    statements = _counting(db)
    got = _together(12, lambda i: facade.realized_pnl(keys[i].id))
    reads = len([s for s in statements if "realized_days" in s])
    assert got == [ledger.realized_pnl(db, k.id) for k in keys]
    assert reads <= 2  # the 12 keys in one read (two when they straddle a batch)
    assert got[3] == ledger.Realized(Decimal("4.15"), Decimal("2.75"))
