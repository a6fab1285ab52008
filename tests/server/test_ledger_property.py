"""Property: any order of duplicated, reordered updates ends where the clean sequence does,
one event per write or in batches of any size (``ledger.apply_batch``, the one write path)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from exchanges import types as ex
from models import Database, ExchangeKey, Fill, Order, Trade, User
from services import ledger
from services.schema import upgrade


@pytest.fixture(scope="module")
def db(tmp_path_factory):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'l.sqlite3'}"
    upgrade(url)
    database = Database(url)
    with database.transaction() as s:
        s.add(User(id=1, username="p", password_hash="x"))
        s.flush()
        s.add(ExchangeKey(id=1, user_id=1, exchange="binance", api_key="k", api_secret_encrypted=b"x"))
    yield database
    database.dispose()


def _fill(i: int, qty: str, price: str) -> ex.Fill:
    return ex.Fill(trade_id=str(100 + i), order_id="9", client_order_id="c-1", symbol="BTCUSDT",
                   side="BUY", price=Decimal(price), quantity=Decimal(qty), fee=Decimal("0.01"),
                   fee_asset="USDT", realized_pnl=Decimal(0), is_maker=True, time=1000 + i)


def _order(status: ex.OrderStatus, filled: str, t: int) -> ex.Order:
    return ex.Order("c-1", "9", "BTCUSDT", "BUY", "LIMIT", status, Decimal("100"), Decimal("3"),
                    Decimal(filled), Decimal("100"), "GTC", False, t)


FILLS = [_fill(0, "1", "100"), _fill(1, "1.5", "99.5"), _fill(2, "0.5", "99")]
ORDERS = [_order(ex.OrderStatus.NEW, "0", 1), _order(ex.OrderStatus.PARTIALLY_FILLED, "1", 2),
          _order(ex.OrderStatus.PARTIALLY_FILLED, "2.5", 3), _order(ex.OrderStatus.FILLED, "3", 4)]
EVENTS = [("fill", f) for f in FILLS] + [("order", o) for o in ORDERS]


def _replay(db: Database, events: list) -> tuple:  # type: ignore[type-arg]
    with db.transaction() as s:
        for table in (Fill, Order, Trade):
            s.execute(delete(table))
        s.add(Trade(id=1, user_id=1, key_id=1, exchange="binance", symbol="BTCUSDT", side="BUY",
                    order_type="LIMIT", quantity=Decimal("3"), price=Decimal("100"),
                    client_order_id="c-1", entry_order_id="9"))
    for kind, ev in events:  # one event per transaction: a batch of one
        with db.transaction() as s:
            ledger.apply_batch(s, [(1, ev)] if kind == "order" else [],
                               [(1, ev)] if kind == "fill" else [])
    with db.session() as s:
        t = s.get(Trade, 1)
        o = s.scalars(select(Order)).one()
        n_fills = s.scalar(select(func.count()).select_from(Fill))
        return (t.status, t.filled_quantity, t.entry_price, t.fees, o.status, o.filled_quantity,
                n_fills)


_CLEAN: dict[int, tuple] = {}  # type: ignore[type-arg]


def _clean(db: Database, events: list) -> tuple:  # type: ignore[type-arg]
    """The state the clean sequence ends in, replayed once per sequence and database
    (deterministic: every example compares against the same result)."""
    key = id(db), id(events)
    if key not in _CLEAN:
        _CLEAN[key] = _replay(db, events)
    return _CLEAN[key]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(EVENTS))), min_size=0, max_size=12), st.randoms())
def test_duplicated_reordered_updates_end_in_the_clean_state(db, extra, rnd) -> None:  # type: ignore[no-untyped-def]
    clean = _clean(db, EVENTS)
    assert clean[0] == "open" and clean[1] == Decimal("3") and clean[6] == 3
    assert clean[4] == "FILLED"
    noisy = EVENTS + [EVENTS[i] for i in extra]   # every update at least once, some again
    rnd.shuffle(noisy)
    assert _replay(db, noisy) == clean


CANCEL_EVENTS = [("fill", FILLS[0]), ("order", _order(ex.OrderStatus.NEW, "0", 1)),
                 ("order", _order(ex.OrderStatus.PARTIALLY_FILLED, "1", 2)),
                 ("order", _order(ex.OrderStatus.CANCELED, "1", 3))]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(range(len(CANCEL_EVENTS))), min_size=0, max_size=8), st.randoms())
def test_a_cancel_that_raced_a_fill_ends_open_in_any_order(db, extra, rnd) -> None:  # type: ignore[no-untyped-def]
    clean = _clean(db, CANCEL_EVENTS)
    assert clean[0] == "open" and clean[1] == Decimal("1") and clean[4] == "CANCELED"
    noisy = CANCEL_EVENTS + [CANCEL_EVENTS[i] for i in extra]
    rnd.shuffle(noisy)
    assert _replay(db, noisy) == clean


def test_realized_pnl_is_the_sum_of_the_trades_and_a_late_pnl_report_changes_nothing(db) -> None:  # type: ignore[no-untyped-def]
    """CONTRACT.md "Risk figures that are true": the realized figure is the sum of the
    trades' ``realized_pnl`` (fees included), whatever the fills' exchange figures say;
    booked today, so ``today`` is all of it; a fill not linked to a trade (activity
    outside the ledger) adds only where it closes a trade's lot."""
    from models import RealizedDay
    with db.transaction() as s:
        for table in (Fill, Order, Trade, RealizedDay):
            s.execute(delete(table))
        s.add(Trade(user_id=1, key_id=1, exchange="binance", symbol="BTCUSDT", side="BUY",
                    order_type="MARKET", quantity=Decimal("1"), client_order_id="rp-1",
                    entry_order_id="7", status="pending"))
    entry = ex.Fill("e1", "7", "rp-1", "BTCUSDT", "BUY", Decimal("100"), Decimal("1"),
                    Decimal("0.1"), "USDT", Decimal("0"), False, 1000)
    close = ex.Fill("x1", "8", None, "BTCUSDT", "SELL", Decimal("105"), Decimal("1"),
                    Decimal("0.1"), "USDT", Decimal("0"), False, 2000)
    with db.transaction() as s:
        ledger.apply_batch(s, [], [(1, entry)])
        ledger.apply_batch(s, [], [(1, close)])
    r = ledger.realized_pnl(db, 1)
    with db.session() as s:
        trades = s.scalars(select(Trade.realized_pnl)).all()
    assert trades == [Decimal("4.8")]  # (105 - 100) * 1 - 0.1 own fee - 0.1 exit fee
    assert (r.all_time, r.today) == (Decimal("4.8"), Decimal("4.8"))
    assert ledger.realized_pnl(db, 1, now=2 * 86_400_000).today == 0  # another day
    # the same execution reported again with the exchange's PnL (Bybit stream after REST)
    with db.transaction() as s:
        late = ex.Fill(**{**close.__dict__, "realized_pnl": Decimal("5")})
        assert ledger.apply_batch(s, [], [(1, late)]) == set()  # not a new fill
    assert ledger.realized_pnl(db, 1).all_time == Decimal("4.8")


def test_connection_errors_are_retried_and_bad_statements_are_not() -> None:
    from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

    from services.write_behind import database_unavailable
    assert database_unavailable(OperationalError("SELECT 1", {}, Exception("refused")))
    assert database_unavailable(InterfaceError("SELECT 1", {}, Exception("connection already closed")))
    assert not database_unavailable(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not database_unavailable(ValueError("bug"))


def test_periodic_reconcile_takes_pending_accounts_and_a_round_robin_batch(db) -> None:  # type: ignore[no-untyped-def]
    from services.reconciler import Reconciler

    class Key:
        def __init__(self, id_: int) -> None:
            self.id = id_

    rec = Reconciler(db, orders=None, client_for=None)  # type: ignore[arg-type]
    with db.transaction() as s:
        for table in (Fill, Order, Trade):
            s.execute(delete(table))
    keys = [Key(i) for i in range(1, 8)]
    assert [k.id for k in rec._next_batch(keys, 3)] == [1, 2, 3]
    assert [k.id for k in rec._next_batch(keys, 3)] == [4, 5, 6]
    assert [k.id for k in rec._next_batch(keys, 3)] == [7, 1, 2]


def _replay_batched(db: Database, events: list, cuts: list[int]) -> tuple:  # type: ignore[type-arg]
    """Like ``_replay``, but several events per ``apply_batch`` (chunks cut at ``cuts``)."""
    with db.transaction() as s:
        for table in (Fill, Order, Trade):
            s.execute(delete(table))
        s.add(Trade(id=1, user_id=1, key_id=1, exchange="binance", symbol="BTCUSDT", side="BUY",
                    order_type="LIMIT", quantity=Decimal("3"), price=Decimal("100"),
                    client_order_id="c-1", entry_order_id="9"))
    bounds = sorted({0, len(events), *[c % (len(events) + 1) for c in cuts]})
    for a, b in zip(bounds, bounds[1:]):
        chunk = events[a:b]
        with db.transaction() as s:
            ledger.apply_batch(s, [(1, e) for k, e in chunk if k == "order"],
                               [(1, e) for k, e in chunk if k == "fill"])
    with db.session() as s:
        t = s.get(Trade, 1)
        o = s.scalars(select(Order)).one()
        n_fills = s.scalar(select(func.count()).select_from(Fill))
        return (t.status, t.filled_quantity, t.entry_price, t.fees, o.status, o.filled_quantity,
                n_fills)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(EVENTS))), min_size=0, max_size=12), st.randoms(),
       st.lists(st.integers(min_value=0, max_value=40), max_size=5))
def test_batched_writes_end_in_the_clean_state(db, extra, rnd, cuts) -> None:  # type: ignore[no-untyped-def]
    clean = _clean(db, EVENTS)
    noisy = EVENTS + [EVENTS[i] for i in extra]
    rnd.shuffle(noisy)
    assert _replay_batched(db, noisy, cuts) == clean


def test_positions_are_stored_as_last_reported_and_never_go_back(database_url) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from models import Position
    db = Database(database_url)
    with db.transaction() as s:
        s.add(User(id=1, username="p", password_hash="x"))
        s.flush()
        s.add_all([ExchangeKey(id=k, user_id=1, exchange="binance", api_key=f"k{k}",
                               api_secret_encrypted=b"x") for k in (1, 2)])

    def pos(symbol: str, size: str, entry: str) -> ex.Position:
        return ex.Position(symbol, "LONG", Decimal(size), Decimal(entry), Decimal(entry),
                           Decimal(0), Decimal(10), Decimal(0), "cross")

    def stored() -> dict:
        with db.session() as s:
            return {(r.key_id, r.symbol): (r.size, r.entry_price, r.updated_at)
                    for r in s.scalars(select(Position))}
    btc1, btc2, eth = pos("BTCUSDT", "0.01", "100"), pos("BTCUSDT", "0.03", "102"), pos("ETHUSDT", "1", "5")
    sol = pos("SOLUSDT", "3", "150")
    with db.transaction() as s:  # one batch: the newest report of each symbol wins
        ledger.apply_batch(s, [], [], [(1, 10, [btc1, sol], True), (1, 20, [btc2, eth], False),
                                       (2, 15, [btc1], True)])
    assert stored() == {(1, "BTCUSDT"): (Decimal("0.03"), Decimal("102"), 20),
                        (1, "ETHUSDT"): (Decimal("1"), Decimal("5"), 20),
                        (1, "SOLUSDT"): (Decimal("3"), Decimal("150"), 20),
                        (2, "BTCUSDT"): (Decimal("0.01"), Decimal("100"), 15)}
    with db.transaction() as s:  # a late older report changes nothing
        ledger.apply_batch(s, [], [], [(1, 12, [btc1], False)])
    with db.transaction() as s:  # BTC reported closed (size 0)
        ledger.apply_batch(s, [], [], [(1, 30, [eth, replace(btc2, size=Decimal(0))], False)])
    with db.transaction() as s:  # the same report replayed
        ledger.apply_batch(s, [], [], [(1, 30, [eth, replace(btc2, size=Decimal(0))], False)])
    assert stored()[(1, "BTCUSDT")] == (Decimal("0"), Decimal("102"), 30)
    assert stored()[(1, "SOLUSDT")] == (Decimal("3"), Decimal("150"), 20)
    with db.transaction() as s:  # a restarted stream's first report: SOL closed meanwhile
        ledger.apply_batch(s, [], [], [(1, 40, [eth], True)])
    assert stored() == {(1, "BTCUSDT"): (Decimal("0"), Decimal("102"), 40),
                        (1, "ETHUSDT"): (Decimal("1"), Decimal("5"), 40),
                        (1, "SOLUSDT"): (Decimal("0"), Decimal("150"), 40),
                        (2, "BTCUSDT"): (Decimal("0.01"), Decimal("100"), 15)}
    db.dispose()


def test_a_storm_of_first_reports_closes_in_one_read_not_one_update_per_key(database_url) -> None:  # type: ignore[no-untyped-def]
    """A batch of streams' first (complete) reports: the symbols a key no longer holds
    are closed, each key's own only, and when every key still holds what is stored
    (a reconnect storm) the batch writes no UPDATE at all (it used to send one per
    key)."""
    from sqlalchemy import event

    from models import Position
    db = Database(database_url)
    keys = range(1, 7)
    with db.transaction() as s:
        s.add(User(id=1, username="p", password_hash="x"))
        s.flush()
        s.add_all([ExchangeKey(id=k, user_id=1, exchange="binance", api_key=f"k{k}",
                               api_secret_encrypted=b"x") for k in keys])

    def pos(symbol: str, size: str = "1") -> ex.Position:
        return ex.Position(symbol, "LONG", Decimal(size), Decimal(100), Decimal(100),
                           Decimal(0), Decimal(10), Decimal(0), "cross")

    def stored() -> dict:
        with db.session() as s:
            return {(r.key_id, r.symbol): (r.size, r.updated_at) for r in s.scalars(select(Position))}

    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda conn, cur, stmt, *a: statements.append(stmt.split()[0].upper()))
    with db.transaction() as s:  # every key holds XRPUSDT and ETHUSDT
        ledger.apply_batch(s, [], [], [(k, 10, [pos("XRPUSDT"), pos("ETHUSDT")], False) for k in keys])
    statements.clear()
    with db.transaction() as s:  # the storm: each key's first report, the same positions
        ledger.apply_batch(s, [], [], [(k, 20, [pos("XRPUSDT"), pos("ETHUSDT")], True) for k in keys])
    assert statements.count("UPDATE") == 0, statements
    assert set(stored().values()) == {(Decimal(1), 20)}
    statements.clear()
    with db.transaction() as s:  # keys 1 and 2 closed ETHUSDT meanwhile; key 3's report is older
        ledger.apply_batch(s, [], [], [(1, 30, [pos("XRPUSDT")], True), (2, 31, [], True),
                                       (3, 15, [pos("XRPUSDT")], True)])
    assert statements.count("UPDATE") == 1, statements  # one statement for the batch
    got = stored()
    assert got[(1, "ETHUSDT")] == (Decimal(0), 30) and got[(1, "XRPUSDT")] == (Decimal(1), 30)
    assert got[(2, "ETHUSDT")] == (Decimal(0), 31) and got[(2, "XRPUSDT")] == (Decimal(0), 31)
    assert got[(3, "ETHUSDT")] == (Decimal(1), 20)  # a newer report is never undone
    assert all(got[(k, sym)] == (Decimal(1), 20) for k in (4, 5, 6) for sym in ("XRPUSDT", "ETHUSDT"))
    db.dispose()


def test_reconcile_after_a_reconnect_reuses_the_streams_snapshot_and_gap_fill(db) -> None:  # type: ignore[no-untyped-def]
    """The stream just fetched the positions and the fills of the gap: the reconcile
    that follows asks neither again (Binance weighs positionRisk and userTrades 5 each,
    which a reconnect storm of hundreds of accounts pays against one IP's budget), but
    still looks at a recently traded symbol the gap fill did not cover."""
    from services.reconciler import Reconciler

    _replay(db, EVENTS)  # one BTCUSDT trade of 3, recent
    with db.transaction() as s:
        s.add(Trade(id=2, user_id=1, key_id=1, exchange="binance", symbol="ETHUSDT", side="BUY",
                    order_type="LIMIT", quantity=Decimal("1"), price=Decimal("100"),
                    client_order_id="c-2", entry_order_id="10", status="canceled"))

    class Client:
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def get_positions(self) -> list:
            self.calls.append(("positions",))
            return []

        def get_fills(self, symbol: str, start_time: int | None = None) -> list:
            self.calls.append(("fills", symbol))
            return []

    client = Client()
    rec = Reconciler(db, orders=None, client_for=lambda key: client,  # type: ignore[arg-type]
                     pending_max_age_ms=0)
    held = ex.Position("BTCUSDT", "LONG", Decimal("3"), Decimal("100"), Decimal("100"), Decimal(0),
                       Decimal("20"), Decimal("0"), "cross")
    with db.session() as s:
        key = s.get(ExchangeKey, 1)
    out = rec.reconcile_key(key, positions=[held], fills_checked={"BTCUSDT"})
    assert "error" not in str(out["details"]), out
    assert client.calls == [("fills", "ETHUSDT")]
    client.calls.clear()
    rec.reconcile_key(key)  # the periodic run asks for everything
    assert client.calls[0] == ("positions",)
    assert sorted(c for c in client.calls[1:] if c[0] == "fills") == [("fills", "BTCUSDT"),
                                                                      ("fills", "ETHUSDT")]
