"""Units of issue 20's third round: ``FillTags`` (a leg's fill known before it is
pushed) and ``RiskAlerts`` (liquidation-near once per position until it moves out;
liquidation / ADL once per venue order), without processes."""
from __future__ import annotations

import time
from decimal import Decimal as D
from types import SimpleNamespace

from exchanges.types import Fill
from services.protection.fill_tags import FillTags
from services.protection.risk import WATCH_FALLBACK_S, RiskAlerts, Watched


def _fill(order_id: str = "1", coid: str | None = None, reason: str | None = None,
          symbol: str = "BTCUSDT") -> Fill:
    return Fill("t" + order_id, order_id, coid, symbol, "SELL", D("100"), D("1"), D("0"),
                "USDT", D("0"), False, 0, reason)


def test_fill_tags_by_client_id_order_id_and_exit() -> None:
    tags = FillTags()
    row = SimpleNamespace(mode="exchange", key_id=1, kind="stop_loss", client_order_id="psl-a",
                          venue_leg_id="psl-a", order_id="777")
    tags.note_rows([row])
    assert tags.reason(1, _fill("5", "psl-a")) == "stop_loss"      # Binance: the algo's id
    assert tags.reason(1, _fill("777", "")) == "stop_loss"         # Bybit: same orderId
    assert tags.reason(2, _fill("777", "")) is None                # another key
    assert tags.reason(1, _fill("9", "mine-1")) is None            # an ordinary order
    tags.note_leg(1, SimpleNamespace(kind=SimpleNamespace(value="take_profit"),
                                     client_order_id="ptp-b", order_id="42",
                                     triggered_order_id="43"))
    assert tags.reason(1, _fill("43", "")) == "take_profit"        # ALGO_UPDATE ai
    # server mode: the exit's fills while the rule's exit works, then by exit id
    assert tags.reason(1, _fill("50", "exit-12-0-abc")) is None
    tags.firing(1, "BTCUSDT", "trailing_stop")
    assert tags.reason(1, _fill("51", "exit-12-0-abc")) == "trailing_stop"
    tags.fired_done(1, "BTCUSDT")
    assert tags.reason(1, _fill("52", "exit-12-1-def")) == "trailing_stop"
    assert tags.reason(1, _fill("53", "exit-13-0-aaa")) is None


def test_fill_tags_bounded() -> None:
    tags = FillTags(max_ids=3)
    for i in range(5):
        tags.note_ids(1, "stop_loss", f"id{i}")
    assert tags.reason(1, _fill("x", "id0")) is None and tags.reason(1, _fill("x", "id4"))


class _Spawn:
    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        self.calls.append((fn.__name__, args))


def test_liquidation_near_once_until_it_moves_out() -> None:
    spawn = _Spawn()
    risk = RiskAlerts(None, None, None, spawn, lambda *a: None)  # type: ignore[arg-type]
    market = ("binance", False, "BTCUSDT")
    risk._watched[market] = {(1, "BTCUSDT"): Watched(7, 1, "BTCUSDT", "LONG", D("50000"), D("10"))}
    assert risk.check(market, D("60000")) == []          # 16.7 % away
    assert len(risk.check(market, D("55000"))) == 1      # 9.1 %: enters
    assert risk.check(market, D("54000")) == []          # still near: once
    assert risk.check(market, D("56000")) == []          # 10.7 %: out
    assert len(risk.check(market, D("55500"))) == 1      # 9.9 %: in again
    assert [c[0] for c in spawn.calls] == ["_near", "_near"]


def test_liquidation_alert_once_per_venue_order() -> None:
    spawn = _Spawn()
    risk = RiskAlerts(None, None, None, spawn, lambda *a: None)  # type: ignore[arg-type]
    risk.on_fill(7, 1, _fill("9", "autoclose-1", "liquidation"))
    risk.on_fill(7, 1, _fill("9", "autoclose-1", "liquidation"))   # a second part / replay
    risk.on_fill(7, 1, _fill("10", "adl_autoclose", "adl"))
    risk.on_fill(7, 1, _fill("11", "mine", None))
    assert [c[0] for c in spawn.calls] == ["_venue_close", "_venue_close"]


def test_liquidation_watch_reads_thresholds_together_and_the_venue_only_when_it_must(database_url) -> None:  # type: ignore[no-untyped-def]
    """A stream's first report (its REST snapshot) carries the venue's liquidation
    price: no positions request. A later shape change does not: the positions the
    stream's REST completion reads are taken (no request of the watcher's); only when
    none comes within the fallback wait is the venue asked (one request). The users'
    thresholds of keys reported at the same moment are one query."""
    import threading

    from exchanges.types import Position
    from models import Database, ExchangeKey, User
    from models.notify import NotificationSettings

    db = Database(database_url)
    try:
        with db.transaction() as s:
            for uid in (1, 2):
                s.add(User(id=uid, username=f"u{uid}", password_hash="x"))
            s.flush()
            s.add(NotificationSettings(user_id=2, liquidation_warning_pct=D("25")))
            for kid, uid in ((11, 1), (12, 2)):
                s.add(ExchangeKey(id=kid, user_id=uid, exchange="binance", api_key=f"k{kid}",
                                  api_secret_encrypted=b"x"))
        asked: list[int] = []

        def pos(liq: str) -> Position:
            return Position("BTCUSDT", "LONG", D("0.1"), D("60000"), D("60000"), D("0"),
                            D("10"), D(liq), "cross")

        def client_for(key):  # type: ignore[no-untyped-def]
            asked.append(key.id)
            return SimpleNamespace(get_positions=lambda: [pos("52000")])

        class Tickers:
            def subscribe(self, *market_and_handler):  # type: ignore[no-untyped-def]
                return None

        threads: list[threading.Thread] = []
        alerted: list[int] = []

        def spawn(fn, *args):  # type: ignore[no-untyped-def]
            if fn.__name__ == "_near":  # a liquidation_near alert: noted, not raised
                alerted.append(args[0].key_id)
                return
            threads.append(threading.Thread(target=fn, args=args))

        waits: list[float] = []
        risk = RiskAlerts(db, client_for, Tickers(), spawn, lambda *a: None, waits.append)
        from services.coalesce import Coalescer

        def gather(wait_s: float) -> None:
            """The first caller's wait for others to join: until both keys of the same
            moment asked (at most 10 s on a loaded machine), not a fixed second."""
            deadline = time.monotonic() + 10
            while risk._owners.asked < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
        risk._owners = Coalescer(risk._read_owners, sleep=gather, wait_s=1.0)
        statements: list[str] = []
        from sqlalchemy import event
        event.listen(db.engine, "before_cursor_execute",
                     lambda conn, cur, stmt, *a: statements.append(stmt)
                     if "notification_settings" in stmt else None)
        risk.positions_seen(11, [pos("50000")], complete=True)
        risk.positions_seen(12, [pos("51000")], complete=True)
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        market = ("binance", False, "BTCUSDT")
        watched = risk._watched[market]
        assert asked == []  # the snapshot's own liquidation prices
        assert watched[(11, "BTCUSDT")].liquidation_price == D("50000")
        assert (watched[(11, "BTCUSDT")].pct, watched[(12, "BTCUSDT")].pct) == (D("10"), D("25"))
        assert watched[(12, "BTCUSDT")].user_id == 2
        assert len(statements) == 1 and risk._owners.reads == 1  # one query for both keys
        assert alerted == [12]  # 15 % from liquidation: inside user 2's 25 %, outside 10 %
        threads.clear()
        risk.positions_seen(11, [pos("50000")])  # a stream shape change: its figure is stale
        risk.positions_seen(11, [pos("50000")])  # another before the completion: one wait
        [fallback] = threads
        risk.positions_read(11, [pos("51500")])  # the stream's REST completion read them
        assert len(threads) == 2
        threads[1].start()
        threads[1].join(10)
        assert asked == [] and watched[(11, "BTCUSDT")].liquidation_price == D("51500")
        fallback.start()                         # its wait ends: nothing left to ask
        fallback.join(10)
        assert waits == [WATCH_FALLBACK_S] and asked == [] and risk.asked == 0
        threads.clear()
        risk.positions_seen(11, [pos("50000")])  # a shape change no completion follows
        [fallback] = threads
        fallback.start()
        fallback.join(10)
        assert asked == [11] and risk.asked == 1  # the venue asked after the wait
        assert watched[(11, "BTCUSDT")].liquidation_price == D("52000")
        threads.clear()
        # a snapshot whose position cannot be liquidated (the venue's "0"): not watched,
        # and the venue is not asked again (it would say "0" again), nor the owner read
        reads = risk._owners.reads
        risk.positions_seen(12, [pos("0")], complete=True)
        assert threads == []  # no task at all
        assert asked == [11] and (12, "BTCUSDT") not in watched
        assert risk._owners.reads == reads
    finally:
        db.dispose()
