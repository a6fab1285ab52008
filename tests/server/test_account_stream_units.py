"""The account stream's units: polling pace, the rate governor holding refreshes and
reconnects back, account events applied at once, Binance open orders per symbol, and
the position reports to the ledger."""
from __future__ import annotations

from decimal import Decimal

from exchanges.types import AssetBalance, Balance
from services.account_refresh import StreamSettings
from services.account_state import AccountState
from services.ledger import Realized
from tests.support.factories import btc_long as _pos


def test_polling_interval_stretches_with_the_number_of_polling_accounts() -> None:
    from types import SimpleNamespace

    from exchanges.governor import Governors
    from services.stream_manager import POLLING_KEYS_PER_S, StreamManager
    mgr = StreamManager(None, None, None, lambda e: None, lambda *a: None,  # type: ignore[arg-type]
                        lambda s: None, None)
    binance, bybit = ("binance", False, None), ("bybit", False, None)

    def add(first: int, n: int, group, live: bool) -> None:  # type: ignore[no-untyped-def]
        for i in range(first, first + n):
            mgr._streams[i] = SimpleNamespace(stream=object() if live else None)
            mgr._groups[i] = group

    add(0, 500, binance, live=True)
    assert mgr._poll_scale(binance) == 1.0      # streams up: no stretch
    add(1000, 3 * POLLING_KEYS_PER_S, binance, live=False)
    assert mgr._poll_scale(binance) == 3.0      # 300 polling -> every 3 intervals
    assert mgr._poll_scale(bybit) == 1.0        # the other venue's are not counted
    # with the venues' governors: Binance's 2400 weight a minute, half of its 80 % query
    # share for polling, about 16 per account -> 1 account a second: 300 take 300 s
    mgr._governors = Governors()
    assert mgr._poll_scale(binance) == 300.0
    add(2000, 480, bybit, live=False)  # Bybit: 600 / 5 s * 0.8 * 0.5 / 3 = 16 a second
    assert mgr._poll_scale(bybit) == 30.0
    # a second egress address has its own budget: its 100 polling accounts take 100 s,
    # and the first address's 300 are not slowed by them
    other = ("binance", False, "127.0.0.2")
    add(3000, 100, other, live=False)
    assert mgr._poll_scale(other) == 100.0 and mgr._poll_scale(binance) == 300.0


def test_a_refresh_the_rate_governor_holds_back_keeps_the_stream_live() -> None:
    import time as clock

    from exchanges.errors import ThrottledLocally
    from exchanges.types import AccountEvent, WalletUpdate
    from services.account_stream import AccountStream

    class Stream:
        keepalive_interval_s = 1e9

        def __init__(self) -> None:  # a wallet change: available balance needs REST
            self.frames = [[AccountEvent("ORDER", (WalletUpdate("USDT", Decimal("100"), Decimal("100")),),
                                         (), 1_000)]]

        def recv(self, timeout: float) -> list:
            return self.frames.pop(0) if self.frames else []

        def recv_waiting(self) -> list:
            return []

        def close(self) -> None:
            self.closed = True

    class Client:
        calls = 0

        def get_balance(self):  # type: ignore[no-untyped-def]
            Client.calls += 1
            raise ThrottledLocally("binance", None, "query budget of this window used up", None, 20_000)

    state = AccountState(1, 2, "binance", False)
    state.set_balance(Balance(Decimal("100"), Decimal("0"), Decimal("100"), Decimal("90"), ()))
    state.envelope_if_changed("balance", "rest", 1)
    sent: list[dict] = []
    stream = AccountStream(state, get_client=Client, realized_pnl=lambda: None,  # type: ignore[arg-type]
                           publish=sent.append, on_fill=lambda f: None, sleep=lambda s: None,
                           settings=StreamSettings(completion_delay_s=0.0))
    stream.stream, stream.status = Stream(), "live"  # type: ignore[assignment]
    stream._connected_at = stream._last_event_at = clock.monotonic()
    stream._keepalive_at = clock.monotonic() + 1e9
    stream._consume(Client())                 # ACCOUNT_UPDATE -> balance refresh -> held back
    assert stream.stream is not None and stream.status == "live" and stream.refreshes_held == 1
    assert sent == [] and "balance" in stream.refresher.due  # nothing marked stale, still due
    stream._consume(Client())                 # within the 20 s: not asked again
    assert Client.calls == 1 and stream.stream is not None


def test_an_event_s_rest_completion_waits_for_the_burst() -> None:
    """An account event that leaves the available balance incomplete: its frame is
    pushed at once, the REST completion goes ``completion_delay_s`` later (the other
    accounts' pushes of the same burst first), and the stream's next wait ends then."""
    import time as clock

    from exchanges.types import AccountEvent, WalletUpdate
    from services.account_stream import AccountStream

    class Stream:
        keepalive_interval_s = 1e9

        def __init__(self) -> None:
            self.frames = [[AccountEvent("ORDER", (WalletUpdate("USDT", Decimal("100"), Decimal("100")),),
                                         (), 1_000)]]
            self.waits: list[float] = []

        def recv(self, timeout: float) -> list:
            self.waits.append(timeout)
            return self.frames.pop(0) if self.frames else []

        def recv_waiting(self) -> list:
            return []

        def close(self) -> None:
            pass

    class Client:
        calls: list[float] = []

        def get_balance(self) -> Balance:
            Client.calls.append(clock.monotonic())
            return Balance(Decimal("100"), Decimal("0"), Decimal("100"), Decimal("80"), ())

    state = AccountState(1, 2, "binance", False)
    state.set_balance(Balance(Decimal("90"), Decimal("0"), Decimal("90"), Decimal("90"),
                              (AssetBalance("USDT", Decimal("90"), Decimal("90"), Decimal("0"),
                                            Decimal("90")),)))
    state.envelope_if_changed("balance", "rest", 1)
    sent: list[dict] = []
    stream = AccountStream(state, get_client=Client, realized_pnl=lambda: None,  # type: ignore[arg-type]
                           publish=sent.append, on_fill=lambda f: None, sleep=lambda s: None,
                           settings=StreamSettings(completion_delay_s=0.2))
    frames = Stream()
    stream.stream, stream.status = frames, "live"  # type: ignore[assignment]
    stream._connected_at = stream._last_event_at = clock.monotonic()
    stream._keepalive_at = clock.monotonic() + 1e9
    t0 = clock.monotonic()
    stream._consume(Client())                 # the event: pushed, its completion not yet
    assert [e["type"] for e in sent] == ["balance"] and Client.calls == []
    assert sent[0]["data"]["total_wallet_balance"] == "100"
    assert stream.refresher.due == {"balance"}
    stream._consume(Client())                 # the next wait ends when the completion may go
    assert 0 < frames.waits[-1] <= 0.2 and Client.calls == []
    clock.sleep(max(0.0, t0 + 0.2 - clock.monotonic()))
    stream._consume(Client())
    assert len(Client.calls) == 1 and Client.calls[0] - t0 >= 0.2
    assert stream.refresher.due == set() and sent[-1]["data"]["available_balance"] == "80"


def test_a_reconnect_whose_snapshot_is_held_back_keeps_its_stream_and_waits() -> None:
    """Held back by the rate governor between the stream's connect and ``live``: the
    stream stays open and the held call is tried again after Retry-After; calls that
    went through are not repeated, and no new listenKey is spent."""
    from exchanges.errors import ThrottledLocally
    from services.account_stream import AccountStream

    class Stream:
        keepalive_interval_s = 1e9
        closed = False

        def connect(self) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    calls: list[str] = []
    held = {"positions": 1, "fills": 2}  # refusals left per kind

    def answer(kind: str, value):  # type: ignore[no-untyped-def]
        calls.append(kind)
        if held.get(kind):
            held[kind] -= 1
            raise ThrottledLocally("binance", None, "query budget of this window used up", None, 7_000)
        return value

    class Client:
        streams = 0

        def user_stream(self) -> Stream:
            Client.streams += 1
            return Stream()

        def get_balance(self):  # type: ignore[no-untyped-def]
            return answer("balance", Balance(Decimal("100"), Decimal("0"), Decimal("100"),
                                             Decimal("90"), ()))

        def get_positions(self) -> list:
            return answer("positions", [_pos("0.01")])

        def get_open_orders(self, symbol=None) -> list:  # type: ignore[no-untyped-def]
            return answer("orders", [])

        def get_fills(self, symbol: str, start_time=None) -> list:  # type: ignore[no-untyped-def]
            return answer("fills", [])

    slept: list[float] = []
    reconnected: list[tuple] = []
    state = AccountState(1, 2, "binance", False)
    stream = AccountStream(state, get_client=Client, realized_pnl=lambda: None,  # type: ignore[arg-type]
                           publish=lambda env: None, on_fill=lambda f: None, sleep=slept.append,
                           on_reconnected=lambda *a: reconnected.append(a))
    stream.state.resume_from_ms = 1_000  # a reconnect: the gap fill follows the snapshot
    stream._connect(Client())
    assert stream.status == "live" and Client.streams == 1 and not stream.stream.closed  # type: ignore[union-attr]
    assert calls == ["balance", "positions", "positions", "orders", "fills", "fills", "fills"]
    assert len(slept) == 3 and all(7.0 <= s <= 8.75 for s in slept)  # Retry-After + jitter
    assert stream.refreshes_held == 3
    assert [(k, [p.symbol for p in ps], syms) for k, ps, syms in reconnected] == [
        (2, ["BTCUSDT"], {"BTCUSDT"})]


def test_account_events_are_applied_at_once_and_rest_completes_the_rest() -> None:
    from exchanges.types import AccountEvent, PositionUpdate, WalletUpdate
    state = AccountState(1, 1, "binance", False)
    state.set_positions([_pos("0.01")])                  # 0.01 BTC @ 100, mark 101
    state.set_balance(Balance(Decimal("1000"), Decimal("0.01"), Decimal("1000.01"), Decimal("900"),
                              (AssetBalance("USDT", Decimal("1000"), Decimal("900"), Decimal("0.01"),
                                            Decimal("1000.01")),)))
    # a fill added 0.02 @ 100.3 and paid a fee: ACCOUNT_UPDATE with the new position and wallet
    changed, incomplete = state.apply_account_event(AccountEvent("ORDER", (
        WalletUpdate("USDT", Decimal("999.9"), Decimal("999.9")),), (
        PositionUpdate("BTCUSDT", Decimal("0.03"), Decimal("100.2"), Decimal("0.02"), "cross"),), 5))
    assert changed == {"positions", "pnl", "balance"} and incomplete == {"positions", "balance"}
    p = state.positions["BTCUSDT"]
    assert (p.size, p.entry_price, p.unrealized_pnl, p.leverage) == (
        Decimal("0.03"), Decimal("100.2"), Decimal("0.024"), Decimal("20"))  # at our mark, 101
    b = state.balance
    assert (b.total_wallet_balance, b.total_unrealized_pnl, b.total_margin_balance,
            b.available_balance) == (Decimal("999.9"), Decimal("0.024"), Decimal("999.924"),
                                     Decimal("900"))  # available: REST's, until it refreshes
    assert b.assets[0].margin_balance == Decimal("999.924")
    # a position in a symbol not held yet: shown at once with what the event carries;
    # its mark price, leverage and liquidation price are null until REST (never guessed)
    changed, incomplete = state.apply_account_event(AccountEvent("ORDER", (), (
        PositionUpdate("ETHUSDT", Decimal("-1"), Decimal("3000"), Decimal("0"), "cross"),), 6))
    assert changed == {"positions", "pnl", "balance"} and incomplete == {"positions"}
    eth = [r for r in state.data("positions") if r["symbol"] == "ETHUSDT"]
    assert eth == [{"symbol": "ETHUSDT", "side": "SHORT", "size": "1", "entry_price": "3000",
                    "mark_price": None, "unrealized_pnl": "0", "leverage": None,
                    "liquidation_price": None, "margin_type": "cross"}]
    state.realized_pnl = Realized(Decimal(0), Decimal(0))
    assert [p["roe_pct"] for p in state.data("pnl")["positions"]
            if p["symbol"] == "ETHUSDT"] == [None]
    state.mark_known("ETHUSDT")                          # a mark tick: that much is known
    assert state.apply_mark("ETHUSDT", Decimal("2990")) == ("positions", "pnl", "balance")
    eth = [r for r in state.data("positions") if r["symbol"] == "ETHUSDT"][0]
    assert (eth["mark_price"], eth["unrealized_pnl"], eth["leverage"]) == ("2990", "10", None)
    state.apply_account_event(AccountEvent("ORDER", (), (
        PositionUpdate("ETHUSDT", Decimal("0"), Decimal("0"), Decimal("0"), "cross"),), 6))
    # closed: gone at once, its unrealized PnL leaves the totals
    changed, incomplete = state.apply_account_event(AccountEvent("ORDER", (), (
        PositionUpdate("BTCUSDT", Decimal("0"), Decimal("0"), Decimal("0"), "cross"),), 7))
    assert changed == {"positions", "pnl", "balance"} and incomplete == set()
    assert state.positions == {} and state.balance.total_unrealized_pnl == 0


def test_binance_open_orders_are_asked_per_known_symbol_with_a_full_round_in_ten() -> None:
    from services.account_stream import AccountStream
    asked: list = []

    class Client:
        def get_open_orders(self, symbol=None):  # type: ignore[no-untyped-def]
            asked.append(symbol)
            return []
    for exchange, per_symbol in (("binance", True), ("bybit", False)):
        asked.clear()
        state = AccountState(1, 1, exchange, False)
        stream = AccountStream(state, get_client=Client, realized_pnl=lambda: None,  # type: ignore[arg-type]
                               publish=lambda e: None, on_fill=lambda f: None, sleep=lambda s: None)
        stream.refresher.open_orders(Client())        # first snapshot: everything
        state.set_orders([])
        state.set_positions([_pos("0.01")])  # BTCUSDT held
        for _ in range(10):
            stream.refresher.open_orders(Client())
        want = [None] + (["BTCUSDT"] * 8 + [None, "BTCUSDT"] if per_symbol else [None] * 10)
        assert asked == want, exchange


def test_a_stream_the_rate_governor_holds_waits_for_the_budget_instead_of_spinning() -> None:
    from exchanges.errors import ThrottledLocally
    from services.account_stream import AccountStream

    def held() -> None:
        raise ThrottledLocally("binance", None, "query budget of this window used up", None, 30_000)

    class Client:
        def user_stream(self):  # type: ignore[no-untyped-def]
            from types import SimpleNamespace
            return SimpleNamespace(connect=held)

        def get_balance(self):  # type: ignore[no-untyped-def]
            held()
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 4:
            stream.running = False
    stream = AccountStream(AccountState(1, 1, "binance", False), get_client=Client,
                           realized_pnl=lambda: None, publish=lambda e: None,  # type: ignore[arg-type, return-value]
                           on_fill=lambda f: None, sleep=sleep)
    stream.run()  # connect held, then the poll held, ...: each waits out Retry-After
    assert len(sleeps) == 4 and all(30 <= s <= 37.5 for s in sleeps), sleeps


def test_position_reports_carry_closed_symbols_and_the_first_is_complete() -> None:
    from services.account_stream import AccountStream
    reports: list = []
    state = AccountState(1, 1, "binance", False)
    stream = AccountStream(state, get_client=lambda: None, realized_pnl=lambda: None,  # type: ignore[arg-type, return-value]
                           publish=lambda e: None, on_fill=lambda f: None, sleep=lambda s: None,
                           on_positions=lambda held, as_of, complete: reports.append(
                               ([(p.symbol, p.size) for p in held], complete)))
    state.set_positions([_pos("0.01")])
    stream.reporter.report()
    stream.reporter.report()               # unchanged: not reported again
    state.set_positions([_pos("0.02", mark="102")])
    stream.reporter.report()               # the mark moved only: not reported
    state.set_positions([])
    stream.reporter.report()               # closed: reported with size 0
    assert reports == [([("BTCUSDT", Decimal("0.01"))], True), ([("BTCUSDT", Decimal("0"))], False)]


def test_marks_are_stale_only_when_the_shared_stream_receives_no_ticks() -> None:
    """A server busy handing one tick to a thousand holders must not send each of them
    polling REST: the symbol's stream is alive while it delivers, so no holder's marks
    are stale then; they are once the stream has received nothing for MARK_STALE_S."""
    import time

    from exchanges.types import Ticker
    from services import account_push
    from services.account_stream import AccountStream
    from services.tickers import TickerHub

    class Stream:
        def connect(self) -> None: ...
        def close(self) -> None: ...

    hub = TickerHub(lambda *k: Stream(), lambda env: None, spawn=lambda *a: None,  # type: ignore[arg-type, return-value]
                    sleep=lambda s: None)
    state = AccountState(1, 1, "binance", False)
    stream = AccountStream(state, get_client=lambda: None, realized_pnl=lambda: None,  # type: ignore[arg-type, return-value]
                           publish=lambda e: None, on_fill=lambda f: None, sleep=lambda s: None,
                           tickers=hub)
    state.set_positions([_pos("0.01")])
    stream.marks.sync()                       # subscribed: a grace period until a tick
    up = hub._upstreams[("binance", False, "BTCUSDT")]
    assert not stream.marks.stale()
    stream.marks.tick_seen["BTCUSDT"] -= account_push.MARK_STALE_S + 1   # this holder's last tick is old
    assert hub.mark_age_s("binance", False, "BTCUSDT") == float("inf")  # no live stream
    assert stream.marks.stale()
    up.state, up.frame_at = "live", time.monotonic()   # the stream receives ticks
    assert not stream.marks.stale()
    seen_during: list[bool] = []
    # only a slow holder this time (this account's own callback would refresh its tick)
    up.subscribers = {"slow": lambda t: seen_during.append(stream.marks.stale())}
    up.frame_at -= account_push.MARK_STALE_S + 1       # ... its last one long ago, but
    stream.marks.tick_seen["BTCUSDT"] -= 100                # a delivery is under way:
    up.delivering = True
    hub._deliver(up, Ticker("BTCUSDT", None, Decimal("101"), None, None, 1))
    up.delivering = False
    assert seen_during == [False]
    up.frame_at -= account_push.MARK_STALE_S + 1       # nothing received since: stale
    stream.marks.tick_seen["BTCUSDT"] -= 100
    assert stream.marks.stale()


def test_ticks_received_during_a_slow_delivery_collapse_into_the_newest() -> None:
    """A delivery round longer than the tick interval hands out the newest mark next,
    not a queue of older ones; with no round under way every tick goes out."""
    from exchanges.types import Ticker
    from services.tickers import TickerHub

    tasks: list = []
    hub = TickerHub(lambda *k: None, lambda env: None,  # type: ignore[arg-type, return-value]
                    spawn=lambda fn, *a: tasks.append((fn, a)), sleep=lambda s: None)
    got: list[Decimal] = []
    tasks_during: list[int] = []

    def tick(price: str) -> Ticker:
        return Ticker("XRPUSDT", None, Decimal(price), None, None, 1)

    def holder(t: Ticker) -> None:               # slow: two ticks arrive while it holds 1.0
        got.append(t.mark_price)
        if t.mark_price == Decimal("1.0"):
            hub._offer(up, tick("1.1"))
            hub._offer(up, tick("1.2"))         # replaces 1.1 before its turn
            tasks_during.append(len(tasks))     # no second delivery task (0)

    hub.subscribe("binance", False, "XRPUSDT", "key:1", holder)
    tasks.clear()                                   # the upstream loop, not run here
    up = hub._upstreams[("binance", False, "XRPUSDT")]

    def run_tasks() -> None:
        while tasks:
            fn, args = tasks.pop(0)
            fn(*args)

    hub._offer(up, tick("1.0"))                      # idle: a delivery task for it
    assert len(tasks) == 1 and up.delivering
    run_tasks()
    assert got == [Decimal("1.0"), Decimal("1.2")] and up.skipped == 1
    assert tasks_during == [0]
    assert not up.delivering and up.pending is None
    hub._offer(up, tick("1.3"))                      # idle again: delivered, none skipped
    run_tasks()
    assert got[-1] == Decimal("1.3") and up.skipped == 1
    assert hub.stats()["skipped"] == 1


def test_streams_sharing_an_admission_connect_one_at_a_time_and_a_stopped_one_never() -> None:
    """A storm is admitted: with an admission of one, a second stream connects only
    once the first one's connect (user stream and snapshot) is done, and a stream
    stopped while it waits for its turn never connects."""
    import threading

    from services.account_stream import AccountStream

    release = threading.Event()
    connected: dict[str, threading.Event] = {n: threading.Event() for n in "abc"}

    def client_of(name: str):  # type: ignore[no-untyped-def]
        class Stream:
            keepalive_interval_s = 1e9

            def __init__(self) -> None:
                self.closed = threading.Event()

            def connect(self) -> None:
                connected[name].set()
                if name == "a":
                    assert release.wait(10)

            def recv(self, timeout: float) -> list:
                self.closed.wait(timeout)
                return []

            def recv_waiting(self) -> list:
                return []

            def close(self) -> None:
                self.closed.set()

        class Client:
            def user_stream(self) -> Stream:
                return Stream()

            def get_balance(self) -> Balance:
                return Balance(Decimal("100"), Decimal("0"), Decimal("100"), Decimal("90"), ())

            def get_positions(self) -> list:
                return []

            def get_open_orders(self, symbol=None) -> list:  # type: ignore[no-untyped-def]
                return []
        return Client

    admission = threading.BoundedSemaphore(1)
    streams = {n: AccountStream(AccountState(1, i, "binance", False), get_client=client_of(n),
                                realized_pnl=lambda: None, publish=lambda env: None,  # type: ignore[arg-type]
                                on_fill=lambda f: None, sleep=lambda s: None, admission=admission)
               for i, n in enumerate("abc")}
    threads = {n: threading.Thread(target=s.run, daemon=True) for n, s in streams.items()}
    try:
        threads["a"].start()
        assert connected["a"].wait(5)
        threads["b"].start()
        threads["c"].start()
        assert not connected["b"].wait(0.3) and not connected["c"].is_set()  # their turn waits
        streams["c"].stop()  # stopped while waiting: never connects
        release.set()
        assert connected["b"].wait(5)
    finally:
        release.set()
        for s in streams.values():
            s.stop()
        for t in threads.values():
            t.join(5)
    assert not connected["c"].is_set()
    assert not any(t.is_alive() for t in threads.values())


def test_realized_refresh_after_fills_is_skipped_once_the_manager_stops() -> None:
    """``fills_recorded`` waits ``REALIZED_REFRESH_S`` on the manager's stop flag: a
    refresh still waiting when ``stop_all()`` runs ends without reading the ledger."""
    import threading
    import time
    from types import SimpleNamespace

    from services.stream_manager import StreamManager
    spawned: list[threading.Thread] = []

    def spawn(fn, *args):  # type: ignore[no-untyped-def]
        t = threading.Thread(target=fn, args=args)
        spawned.append(t)
        t.start()
        return t
    mgr = StreamManager(None, None, None, lambda e: None, spawn,  # type: ignore[arg-type]
                        time.sleep, None)
    refreshed: list[int] = []
    for key_id in (1, 2):
        mgr._streams[key_id] = SimpleNamespace(  # type: ignore[assignment]
            running=True, refresh_realized=lambda k=key_id: refreshed.append(k))
    mgr.fills_recorded(1)
    for t in spawned:
        t.join(5)
    assert refreshed == [1]  # a running manager refreshes
    mgr.fills_recorded(2)
    mgr.stopping.set()  # what stop_all() sets first
    for t in spawned:
        t.join(5)
    assert refreshed == [1] and not mgr._realized_pending


def test_positions_read_by_rest_are_handed_on_after_the_shape_report() -> None:
    """A REST read of the positions (an event's completion, a poll) is handed to
    ``on_positions_read`` after ``on_positions`` reported the shape: the risk watcher
    waiting since that report takes them instead of asking the venue again."""
    from services.account_stream import AccountStream

    seen: list[tuple[str, object]] = []
    held = [_pos("0.01")]

    class Client:
        def get_positions(self):  # type: ignore[no-untyped-def]
            return held

    state = AccountState(1, 2, "binance", False)
    stream = AccountStream(state, get_client=Client, realized_pnl=lambda: None,  # type: ignore[arg-type]
                           publish=lambda e: None, on_fill=lambda f: None, sleep=lambda s: None,
                           on_positions=lambda p, as_of, complete: seen.append(("shape", complete)),
                           on_positions_read=lambda p: seen.append(("read", p)))
    stream.refresher.poll(Client(), kinds=("positions",), force=True)  # type: ignore[arg-type]
    assert seen == [("shape", True), ("read", held)]
    stream.refresher.poll(Client(), kinds=("positions",), force=True)  # type: ignore[arg-type]
    assert seen[2:] == [("read", held)]     # same shape: not reported again, still handed on
