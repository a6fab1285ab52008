"""Risk figures of the ledger (issue 20), on SQLite and PostgreSQL: the book's
``open_quantity`` through partial closes (first in first out), the realized figure as
the running sum of the trades' ``realized_pnl`` plus funding fees, funding fee rows
(idempotent, GET /api/funding), the write-behind telling the stream of every change,
and migration 0006's backfill."""
from __future__ import annotations

import itertools
import random
import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy import delete, select

from exchanges import types as ex
from exchanges.types import FundingFee as FundingEvent
from models import Database, ExchangeKey, Fill, FundingFee, RealizedDay, Trade, User
from services import book, ledger, realized
from services.account_state import AccountState
from services.write_behind import LedgerWriter, decode_event, encode_event
from tests.server.conftest import auth_header
from tests.support.waits import wait_for

D = Decimal
_ids = itertools.count(5000)


@pytest.fixture
def db(database_url):  # type: ignore[no-untyped-def]
    database = Database(database_url)
    with database.transaction() as s:
        s.add(User(id=1, username="p", password_hash="x"))
        s.flush()
        s.add(ExchangeKey(id=1, user_id=1, exchange="binance", api_key="k", api_secret_encrypted=b"x"))
    yield database
    database.dispose()


def fill(order_id: str, side: str, qty: str, price: str, t: int, coid: str | None = None,
         fee: str = "0", symbol: str = "XRPUSDT") -> ex.Fill:
    return ex.Fill(trade_id=str(next(_ids)), order_id=order_id, client_order_id=coid,
                   symbol=symbol, side=side, price=D(price), quantity=D(qty), fee=D(fee),
                   fee_asset="USDT", realized_pnl=D(0), is_maker=False, time=t)


def add_trade(db: Database, coid: str, order_id: str, side: str = "BUY", qty: str = "2") -> int:
    with db.transaction() as s:
        t = Trade(user_id=1, key_id=1, exchange="binance", symbol="XRPUSDT", side=side,
                  order_type="MARKET", quantity=D(qty), client_order_id=coid,
                  entry_order_id=order_id, status="pending")
        s.add(t)
    return t.id


def trades(db: Database) -> dict[int, Trade]:
    with db.session() as s:
        return {t.id: t for t in s.scalars(select(Trade))}


def trades_sum(db: Database) -> Decimal:
    return sum((t.realized_pnl or D(0) for t in trades(db).values()), D(0))


def funding_sum(db: Database) -> Decimal:
    with db.session() as s:
        return sum((f.amount for f in s.scalars(select(FundingFee))), D(0))


def test_open_quantity_follows_partial_closes_first_in_first_out(db) -> None:  # type: ignore[no-untyped-def]
    a = add_trade(db, "a", "1", qty="2")
    b = add_trade(db, "b", "2", qty="3")
    with db.transaction() as s:
        ledger.apply_batch(s, [], [(1, fill("1", "BUY", "2", "100", 10, "a", fee="0.2")),
                                   (1, fill("2", "BUY", "3", "110", 20, "b", fee="0.3"))])
    t = trades(db)
    assert (t[a].open_quantity, t[b].open_quantity) == (D(2), D(3))  # nothing consumed yet
    assert t[a].realized_pnl is None and ledger.realized_pnl(db, 1).all_time == 0

    with db.transaction() as s:  # an exit sells 1: from the oldest trade first
        ledger.apply_batch(s, [], [(1, fill("9", "SELL", "1", "120", 30, "exit-1", fee="0.1"))])
    t = trades(db)
    assert (t[a].open_quantity, t[b].open_quantity) == (D(1), D(3))
    assert (t[a].status, t[b].status) == ("open", "open")
    assert t[a].realized_pnl == D("20") - D("0.2") - D("0.1")  # its fees, the exit's fee
    assert ledger.realized_pnl(db, 1).all_time == trades_sum(db) == D("19.7")

    with db.transaction() as s:  # 2 more: the rest of a, then 1 of b
        ledger.apply_batch(s, [], [(1, fill("9", "SELL", "2", "90", 40, "exit-1"))])
    t = trades(db)
    assert (t[a].open_quantity, t[b].open_quantity) == (D(0), D(2))
    assert (t[a].status, t[b].status) == ("closed", "open")
    assert t[b].realized_pnl == D(-20) - D("0.3")
    assert ledger.realized_pnl(db, 1).all_time == trades_sum(db)

    with db.transaction() as s:  # the last 2 of b
        ledger.apply_batch(s, [], [(1, fill("9", "SELL", "2", "115", 50, "exit-1"))])
    t = trades(db)
    assert (t[a].open_quantity, t[b].open_quantity, t[b].status) == (D(0), D(0), "closed")
    # a: (120-100)*1 + (90-100)*1 - 0.2 - 0.1; b: (90-110)*1 + (115-110)*2 - 0.3
    assert t[a].realized_pnl == D("9.7") and t[b].realized_pnl == D("-10.3")
    assert ledger.realized_pnl(db, 1).all_time == trades_sum(db) == D("-0.6")


def test_an_entry_that_only_adds_holds_all_it_filled(db) -> None:  # type: ignore[no-untyped-def]
    """The write-behind skips the book when nothing can be consumed; the trade still
    says what it holds."""
    a = add_trade(db, "a", "1", qty="5")
    for i in range(3):
        with db.transaction() as s:
            ledger.apply_batch(s, [], [(1, fill("1", "BUY", "1", "100", 10 + i, "a"))])
    assert trades(db)[a].open_quantity == D(3)


def test_the_running_sum_equals_the_trades_in_any_arrival_order(db) -> None:  # type: ignore[no-untyped-def]
    """Out-of-order arrival re-opens, re-sizes and re-closes trades (issue 9); the
    figure follows every change exactly, and it is the same whatever the order."""
    a = add_trade(db, "a", "1", qty="2")
    b = add_trade(db, "b", "2", side="SELL", qty="3")
    events = [fill("1", "BUY", "1", "100", 10, "a", fee="0.05"),
              fill("1", "BUY", "1", "101", 11, "a", fee="0.05"),
              fill("2", "SELL", "3", "104", 20, "b", fee="0.1"),
              fill("9", "BUY", "0.5", "99", 30, "exit-1", fee="0.02"),
              fill("9", "BUY", "0.5", "98", 31, "exit-1", fee="0.02")]
    outcomes = set()
    for seed in range(4):
        with db.transaction() as s:
            for table in (Fill, RealizedDay):
                s.execute(delete(table))
            for t in s.scalars(select(Trade)):
                t.status, t.realized_pnl, t.open_quantity, t.filled_quantity = "pending", None, D(0), D(0)
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        for f in shuffled:
            with db.transaction() as s:
                ledger.apply_batch(s, [], [(1, f)])
            assert ledger.realized_pnl(db, 1).all_time == trades_sum(db)
        t = trades(db)
        outcomes.add((t[a].open_quantity, t[b].open_quantity, t[a].realized_pnl,
                      t[b].realized_pnl, ledger.realized_pnl(db, 1).all_time))
    assert len(outcomes) == 1
    (a_open, b_open, *_), = outcomes
    assert (a_open, b_open) == (D(0), D(0))  # b sold 2 against a and 1 the exit bought back


def test_funding_fees_are_rows_once_each_and_move_the_figure(db) -> None:  # type: ignore[no-untyped-def]
    paid = FundingEvent("XRPUSDT", D("-0.25"), "USDT", 1_000, "FUNDING_FEE-USDT-1000")
    with db.transaction() as s:
        assert ledger.apply_batch(s, [], [], [], [(1, paid)]) == {1}
        assert s.info[realized.CHANGED_KEYS] == {1}
    with db.transaction() as s:  # the stream replayed
        assert ledger.apply_batch(s, [], [], [], [(1, paid)]) == set()
    assert ledger.realized_pnl(db, 1).all_time == funding_sum(db) == D("-0.25")
    with db.transaction() as s:  # a Bybit payment: its execId is the same everywhere
        ledger.apply_funding(s, [(1, FundingEvent("BTCUSDT", D("0.1"), "USDT", 2_000, "e-9"))] * 2)
    assert ledger.realized_pnl(db, 1).all_time == trades_sum(db) + funding_sum(db) == D("-0.15")
    # a funding fee survives the dead-letter round trip
    assert decode_event("funding", encode_event("funding", paid)) == paid


def test_binance_income_rows_replace_the_stream_row_of_a_payment(db) -> None:  # type: ignore[no-untyped-def]
    """A cross account's stream event is the asset's total at T without a symbol; the
    income history has one row per symbol with its tranId: the history is the record
    and the total is not counted twice, whichever comes first."""
    stream = FundingEvent("", D("-0.30"), "USDT", 5_000, "FUNDING_FEE-USDT-5000")
    income = [FundingEvent("XRPUSDT", D("-0.2"), "USDT", 5_000, "771"),
              FundingEvent("BTCUSDT", D("-0.1"), "USDT", 5_000, "772")]
    with db.transaction() as s:
        ledger.apply_funding(s, [(1, stream)])
    with db.transaction() as s:
        ledger.apply_funding(s, [(1, f) for f in income])
    with db.transaction() as s:  # the stream's event again (a replay) and the history again
        ledger.apply_funding(s, [(1, stream)] + [(1, f) for f in income])
    with db.session() as s:
        ids = sorted(s.scalars(select(FundingFee.exchange_id)))
    assert ids == ["771", "772"]
    assert ledger.realized_pnl(db, 1).all_time == funding_sum(db) == D("-0.3")


def test_get_funding_answers_rows_since_and_refuses_bad_input(client, app) -> None:  # type: ignore[no-untyped-def]
    h = auth_header(client)
    other = auth_header(client, "bob")
    uid = client.get("/api/auth/me", headers=h).get_json()["id"]
    bob = client.get("/api/auth/me", headers=other).get_json()["id"]
    db = app.extensions["pushsrv"].db
    with db.transaction() as s:
        s.add_all([ExchangeKey(id=11, user_id=uid, exchange="binance", api_key="k1",
                               api_secret_encrypted=b"x"),
                   ExchangeKey(id=12, user_id=bob, exchange="binance", api_key="k2",
                               api_secret_encrypted=b"x")])
    with db.transaction() as s:
        ledger.apply_funding(s, [(11, FundingEvent("XRPUSDT", D("-0.5"), "USDT", 1_000, "1")),
                                 (11, FundingEvent("BTCUSDT", D("0.25"), "USDT", 2_000, "2")),
                                 (12, FundingEvent("XRPUSDT", D("-9"), "USDT", 1_500, "3"))])
    r = client.get("/api/funding?key_id=11", headers=h)
    assert r.status_code == 200
    assert r.get_json() == [{"time": 1000, "symbol": "XRPUSDT", "amount": "-0.5", "asset": "USDT"},
                            {"time": 2000, "symbol": "BTCUSDT", "amount": "0.25", "asset": "USDT"}]
    assert [f["time"] for f in client.get("/api/funding?key_id=11&since=1001", headers=h)
            .get_json()] == [2000]
    for query, field in (("key_id=11&since=-1", "since"), ("key_id=11&since=1.5", "since"),
                         ("key_id=11&since=x", "since"), ("key_id=abc", "key_id")):
        r = client.get(f"/api/funding?{query}", headers=h)
        assert r.status_code == 400 and r.get_json()["error"]["field"] == field, (query, r.get_json())
    assert client.get("/api/funding?key_id=12", headers=h).status_code == 404  # bob's
    assert client.get("/api/funding?key_id=11").status_code == 401


def _wait(predicate, timeout: float = 3.0) -> bool:  # type: ignore[no-untyped-def]
    return bool(wait_for(predicate, timeout))


def test_the_write_behind_tells_the_stream_of_every_change_within_a_second(db) -> None:  # type: ignore[no-untyped-def]
    """The figure reaches the ``pnl`` envelope whoever stored the fill: the write-behind
    itself (told at its commit), or another writer before it (an order's REST
    confirmation, an exit, another process: found by the realized watch), in which case
    the stream's own copy of the fill changes nothing when the write-behind stores it."""
    state = AccountState(1, 1, "binance", False)
    state.set_positions([])
    state.realized_pnl = ledger.realized_pnl(db, 1)
    state.envelope_if_changed("pnl", "rest", 0)
    told: list[tuple[int, float]] = []

    def on_recorded(key_id: int) -> None:  # what the stream does: re-read, push if changed
        state.realized_pnl = ledger.realized_pnl(db, key_id)
        env = state.envelope_if_changed("pnl", "rest", 0)
        if env is not None:
            told.append((key_id, time.monotonic()))
            pushed.append(env)

    pushed: list[dict] = []
    writer = LedgerWriter(db, on_recorded)
    worker = threading.Thread(target=writer.run, daemon=True)
    worker.start()
    try:
        a = add_trade(db, "a", "1", qty="2")
        writer.submit_fill(1, fill("1", "BUY", "2", "100", 10, "a", fee="0.2"))
        assert _wait(lambda: trades(db)[a].open_quantity == 2)
        time.sleep(0.3)  # the watch's first look is behind it
        close = fill("9", "SELL", "2", "103", 20, "exit-1", fee="0.2")
        sent = time.monotonic()
        writer.submit_fill(1, close)  # the write-behind closes the trade itself
        assert _wait(lambda: pushed and pushed[-1]["data"]["realized_pnl"] == "5.6", 1.0)
        assert told[-1][1] - sent < 1.0

        b = add_trade(db, "b", "2", qty="1")
        with db.transaction() as s:  # another path stores the fills first
            ledger.apply_batch(s, [], [(1, entry := fill("2", "BUY", "1", "100", 30, "b"))])
            ledger.apply_batch(s, [], [(1, exit_ := fill("8", "SELL", "1", "99", 40, "exit-2"))])
        stored = time.monotonic()
        writer.submit_fill(1, entry)  # the stream's copies: nothing new to write
        writer.submit_fill(1, exit_)
        expected = str(trades_sum(db))  # read once: the wait below polls memory only
        assert _wait(lambda: pushed[-1]["data"]["realized_pnl"] == expected, 1.0)
        assert told[-1][1] - stored < 1.0
        assert trades(db)[b].realized_pnl == D(-1)

        writer.submit_funding(1, FundingEvent("XRPUSDT", D("-0.6"), "USDT", 50, "f-1"))
        assert _wait(lambda: pushed[-1]["data"]["realized_pnl"] == "4", 1.0)
        assert D(pushed[-1]["data"]["realized_pnl"]) == trades_sum(db) + funding_sum(db)
    finally:
        writer.stop(timeout_s=2)
        worker.join(3)


def test_migration_0006_backfills_open_quantity_and_the_running_sum(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from services.schema import upgrade
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    upgrade(url, "0005")
    old = Database(url)
    with old.engine.begin() as c:
        c.execute(text("INSERT INTO users (id, username, password_hash, is_admin, created_at) "
                       "VALUES (1, 'p', 'x', 0, 0)"))
        c.execute(text("INSERT INTO exchange_keys (id, user_id, exchange, testnet, label, api_key, "
                       "api_secret_encrypted, status, created_at, updated_at) VALUES "
                       "(1, 1, 'binance', 0, '', 'k', x'00', 'active', 0, 0)"))
        for tid, coid, oid, qty, status, pnl in ((1, "a", "1", "2", "closed", "3.5"),
                                                 (2, "b", "2", "3", "open", "-1.25")):
            c.execute(text(
                "INSERT INTO trades (id, user_id, key_id, exchange, symbol, side, order_type, "
                "reduce_only, quantity, status, client_order_id, entry_order_id, filled_quantity, "
                "realized_pnl, fees, created_at, updated_at, closed_at) VALUES (:id, 1, 1, "
                "'binance', 'XRPUSDT', 'BUY', 'MARKET', 0, :q, :st, :coid, :oid, :q, :pnl, '0', "
                "0, 86400001, NULL)"), {"id": tid, "q": qty, "st": status, "coid": coid, "oid": oid, "pnl": pnl})
        for n, (tid, oid, side, qty, t) in enumerate(((1, "1", "BUY", "2", 1), (2, "2", "BUY", "3", 2),
                                                      (None, "9", "SELL", "3", 3))):
            c.execute(text(
                "INSERT INTO fills (key_id, trade_id, exchange_trade_id, exchange_order_id, symbol, "
                "side, price, quantity, fee, fee_asset, realized_pnl, is_maker, time) VALUES "
                "(1, :tid, :xid, :oid, 'XRPUSDT', :side, '1', :q, '0', 'USDT', '0', 0, :t)"),
                {"tid": tid, "xid": f"x{n}", "oid": oid, "side": side, "q": qty, "t": t})
    old.dispose()
    upgrade(url)
    db = Database(url)
    t = trades(db)
    assert (t[1].open_quantity, t[2].open_quantity) == (D(0), D(2))  # the exit took a's 2 and 1 of b
    assert ledger.realized_pnl(db, 1, now=86_400_001).all_time == D("2.25") == trades_sum(db)
    with db.transaction() as s:  # and it moves on from there
        book.settle_symbol(s, 1, "XRPUSDT")
    assert ledger.realized_pnl(db, 1).all_time == trades_sum(db)
    db.dispose()


class _FundingHistory:
    """A client whose funding history is ``rows`` (what the venue adapters return)."""

    def __init__(self, rows: list) -> None:
        self.rows = rows
        self.asked: list[int | None] = []

    def get_funding_fees(self, symbol=None, start_time=None, limit=1000):  # type: ignore[no-untyped-def]
        self.asked.append(start_time)
        return [r for r in self.rows if start_time is None or r.time_ms >= start_time]


def test_the_reconciler_records_the_funding_history_the_ledger_lacks(db) -> None:  # type: ignore[no-untyped-def]
    from services import funding
    now = 10 * 86_400_000
    history = _FundingHistory([FundingEvent("XRPUSDT", D("-0.2"), "USDT", now - 5_000, "771"),
                               FundingEvent("XRPUSDT", D("0.05"), "USDT", now - 1_000, "772")])
    # no position and no recent trade: no funding can have been charged, nothing asked
    assert funding.record_missing(db, 1, history, set(), 86_400_000, now) == 0
    assert history.asked == []
    with db.transaction() as s:  # the stream saw the first payment (no tranId)
        ledger.apply_funding(s, [(1, FundingEvent("", D("-0.2"), "USDT", now - 5_000,
                                                  f"FUNDING_FEE-USDT-{now - 5_000}"))])
    assert funding.record_missing(db, 1, history, {"XRPUSDT"}, 86_400_000, now) == 1
    assert history.asked == [now - 86_400_000]  # nothing from the history stored yet
    assert funding.record_missing(db, 1, history, {"XRPUSDT"}, 86_400_000, now) == 0
    assert history.asked[-1] == now - 1_000 + 1  # from the last payment it has on
    with db.session() as s:
        assert sorted(s.scalars(select(FundingFee.exchange_id))) == ["771", "772"]
    assert ledger.realized_pnl(db, 1).all_time == D("-0.15")
    assert funding.record_missing(db, 1, object(), {"XRPUSDT"}, 86_400_000, now) == 0


def test_the_stream_hands_funding_to_the_ledger_and_rereads_the_figure_at_each_connect() -> None:
    """A funding event goes to the ledger (``on_funding``, else the fill sink) and is
    not a fill; a stream that (re)connects reads the ledger's figure again, also with
    a state kept from before (it heard of no change while no stream of it ran)."""
    from services.account_stream import AccountStream

    fee = FundingEvent("XRPUSDT", D("-0.1"), "USDT", 1_000, "f-1")

    class Stream:
        keepalive_interval_s = 1e9

        def __init__(self) -> None:
            self.frames = [[fee]]

        def connect(self) -> None:
            pass

        def recv(self, timeout: float) -> list:
            return self.frames.pop(0) if self.frames else []

        def recv_waiting(self) -> list:
            return []

        def close(self) -> None:
            pass

    class Client:
        def user_stream(self) -> Stream:
            return Stream()

        def get_balance(self):  # type: ignore[no-untyped-def]
            return ex.Balance(D("100"), D("0"), D("100"), D("90"), ())

        def get_positions(self) -> list:
            return []

        def get_open_orders(self, symbol=None) -> list:  # type: ignore[no-untyped-def]
            return []

    figures = iter([realized.Realized(D("1"), D("1")), realized.Realized(D("2.5"), D("0.5"))])
    fills: list = []
    funding: list = []
    sent: list[dict] = []
    state = AccountState(1, 2, "binance", False)
    for on_funding, sink in ((None, fills), (funding.append, funding)):
        stream = AccountStream(state, get_client=Client, realized_pnl=lambda: next(figures),
                               publish=sent.append, on_fill=fills.append, sleep=lambda s: None,
                               on_funding=on_funding)
        stream._connect(Client())
        stream._consume(Client())
        assert sink == [fee] and state.fills.envelope(0) is None  # not pushed as a fill
        sink.clear()
    assert state.realized_pnl == realized.Realized(D("2.5"), D("0.5"))  # read again
    assert state.last("pnl")["data"]["realized_pnl"] == "2.5"
