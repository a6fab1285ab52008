"""Config, security, payload serialisation and change detection."""
from __future__ import annotations

from decimal import Decimal

import pytest
from cryptography.fernet import Fernet

from config import ConfigError, load_config
from exchanges.types import AssetBalance, Balance, Order, OrderStatus, Position
from services.account_state import AccountState
from services.errors import Unauthorized
from services.security import KeyCipher, TokenService, hash_password, verify_password
from services.ledger import Realized
from services.serialize import dec, pnl_data


def test_production_refuses_to_start_naming_what_is_missing() -> None:
    with pytest.raises(ConfigError) as e:
        load_config({"APP_ENV": "production", "SECRET_KEY": "x"})
    for name in ("DATABASE_URL", "KEY_ENCRYPTION_KEY", "ADMIN_TOKEN"):
        assert name in str(e.value)
    assert "SECRET_KEY" not in str(e.value)


def test_production_defaults_to_real_venues_and_honours_overrides() -> None:
    env = {"APP_ENV": "production", "DATABASE_URL": "sqlite://", "SECRET_KEY": "s",
           "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(), "ADMIN_TOKEN": "a",
           "BINANCE_TESTNET_REST_URL": "http://127.0.0.1:1"}
    cfg = load_config(env)
    assert cfg.venue("binance", False).rest_url == "https://fapi.binance.com"
    assert cfg.venue("binance", False).ws_url == "wss://fstream.binance.com"
    assert cfg.venue("binance", True).rest_url == "http://127.0.0.1:1"
    assert cfg.venue("bybit", True).rest_url == "https://api-testnet.bybit.com"
    assert not cfg.EMBED_SIMULATOR


def test_passwords_are_argon2id_and_verify() -> None:
    h = hash_password("correct horse")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "correct horse")
    assert not verify_password(h, "wrong horse")
    assert not verify_password(None, "anything")


def test_tokens_expire_and_reject_tampering() -> None:
    tokens = TokenService("k" * 32, expires_s=60)
    tok = tokens.issue(7, False)
    assert tokens.verify(tok) == (7, False)
    with pytest.raises(Unauthorized):
        tokens.verify(tok[:-2] + ("AA" if tok[-2:] != "AA" else "BB"))
    with pytest.raises(Unauthorized):
        TokenService("other-key" * 4, 60).verify(tok)
    expired = TokenService("k" * 32, expires_s=-10).issue(7, False)
    with pytest.raises(Unauthorized) as e:
        tokens.verify(expired)
    assert e.value.code == "token_expired"


def test_cipher_round_trip_and_rotation() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = KeyCipher(old).encrypt("s3cr3t")
    assert b"s3cr3t" not in token
    assert KeyCipher(new, old).decrypt(token) == "s3cr3t"
    with pytest.raises(ValueError):
        KeyCipher(new).decrypt(token)


def test_decimal_strings_never_scientific() -> None:
    assert dec(Decimal("1E-7")) == "0.0000001"
    assert dec(Decimal("64210.50")) == "64210.5"
    assert dec(Decimal("1E+3")) == "1000"
    assert dec(Decimal("0E-8")) == "0"


def _pos(upnl: str, mark: str = "101") -> Position:
    return Position("BTCUSDT", "LONG", Decimal("0.01"), Decimal("100"), Decimal(mark),
                    Decimal(upnl), Decimal("20"), Decimal("50"), "cross")


def test_pnl_roe_and_totals() -> None:
    data = pnl_data([_pos("0.01")], Realized(Decimal("-1.5"), Decimal("0.25")))
    # margin = 0.01 * 100 / 20 = 0.05; roe = 0.01 / 0.05 = 20 %
    assert data == {"unrealized_pnl": "0.01", "realized_pnl": "-1.5", "realized_pnl_today": "0.25",
                    "positions": [{"symbol": "BTCUSDT", "side": "LONG",
                                   "unrealized_pnl": "0.01", "roe_pct": "20"}]}


def test_change_detection_pushes_only_on_change_and_seq_grows() -> None:
    state = AccountState(4, 7, "binance", False)
    assert state.envelope_if_changed("positions", "rest", 1) is None  # nothing known yet
    state.set_positions([_pos("0.01")])
    first = state.envelope_if_changed("positions", "rest", 1)
    assert first is not None and first["seq"] == 1 and first["data"][0]["unrealized_pnl"] == "0.01"
    state.set_positions([_pos("0.01")])
    assert state.envelope_if_changed("positions", "rest", 2) is None
    state.set_positions([_pos("0.02", mark="102")])
    second = state.envelope_if_changed("positions", "stream", 3)
    assert second["seq"] == 2 and second["source"] == "stream"
    stale = state.mark_stale(("positions",))
    assert len(stale) == 1 and stale[0]["stale"] and stale[0]["data"] == second["data"]
    assert state.mark_stale(("positions",)) == []
    assert state.cached(["positions"])[0]["source"] == "cache"


def test_final_orders_leave_the_open_set_and_old_updates_are_ignored() -> None:
    state = AccountState(1, 1, "binance", False)
    state.set_orders([])

    def order(status: OrderStatus, t: int) -> Order:
        return Order("c1", "10", "BTCUSDT", "BUY", "LIMIT", status, Decimal("100"),
                     Decimal("1"), Decimal("0"), Decimal("0"), "GTC", False, t)
    state.apply_order(order(OrderStatus.NEW, 1))
    assert [o["status"] for o in state.data("orders")] == ["NEW"]
    state.apply_order(order(OrderStatus.CANCELED, 3))
    assert state.data("orders") == []
    state.set_orders([order(OrderStatus.NEW, 5)])
    state.apply_order(order(OrderStatus.CANCELED, 4))  # older than what we hold
    assert len(state.data("orders")) == 1


def test_order_rows_follow_every_update_of_a_held_order() -> None:
    state = AccountState(1, 1, "binance", False)
    state.set_orders([])

    def order(oid: str, filled: str, t: int) -> Order:
        return Order("c" + oid, oid, "BTCUSDT", "BUY", "LIMIT", OrderStatus.PARTIALLY_FILLED,
                     Decimal("100"), Decimal("2"), Decimal(filled), Decimal("100"), "GTC", False, t)
    state.apply_order(order("1", "0.5", 1))
    state.apply_order(order("2", "0.1", 2))
    assert [r["filled_quantity"] for r in state.data("orders")] == ["0.5", "0.1"]
    state.apply_order(order("1", "1.5", 3))  # now the newest: listed last, new figure
    assert [(r["order_id"], r["filled_quantity"]) for r in state.data("orders")] == [
        ("2", "0.1"), ("1", "1.5")]


def test_a_type_nobody_receives_is_built_when_a_subscriber_asks() -> None:
    from services.account_stream import AccountStream
    state = AccountState(3, 9, "binance", False)
    sent: list[dict] = []
    listening: set[str] = set()
    stream = AccountStream(state, get_client=lambda: None, realized_pnl=lambda: None,  # type: ignore[arg-type, return-value]
                           publish=sent.append, on_fill=lambda f: None, sleep=lambda s: None,
                           audience=lambda uid, kind: uid == 3 and kind in listening)
    state.set_positions([_pos("0.01")])
    stream._emit(("positions",), "stream", 10)
    assert sent == []  # not built, not sent
    state.set_positions([_pos("0.02", mark="102")])
    stream._emit(("positions",), "stream", 11)
    assert sent == []
    snap = state.cached(["positions"])  # a subscriber arrives: the current value, once
    assert [(e["seq"], e["as_of"], e["source"], e["data"][0]["unrealized_pnl"]) for e in snap] == [
        (1, 11, "cache", "0.02")]
    listening.add("positions")
    state.set_positions([_pos("0.03", mark="103")])
    stream._emit(("positions",), "stream", 12)
    assert [(e["seq"], e["data"][0]["unrealized_pnl"]) for e in sent] == [(2, "0.03")]


def test_the_packet_binary_check_agrees_with_python_socketio() -> None:
    from socketio.packet import Packet as Original

    from ws.packet import Packet
    for data in (["orders", {"data": [{"a": "1", "b": [1, 2, {"c": None}]}]}],
                 ["x", {"data": [{"a": "1"}, {"b": [b"raw"]}]}], [b"top"], "text", [],
                 ["x", {"d": bytearray(b"1")}], ["x", ("tuple", b"not walked")]):
        assert Packet.data_is_binary(data) == Original.data_is_binary(data), data
    pkt = Packet(2, data=["orders", {"n": 1}], namespace="/")
    assert pkt.encode() == Original(2, data=["orders", {"n": 1}], namespace="/").encode()


def test_balance_payload_shape() -> None:
    state = AccountState(1, 1, "binance", False)
    state.set_balance(Balance(Decimal("100"), Decimal("1"), Decimal("101"), Decimal("90"),
                              (AssetBalance("USDT", Decimal("100"), Decimal("90"), Decimal("1"),
                                            Decimal("101")),)))
    env = state.envelope_if_changed("balance", "rest", 5)
    assert env["data"]["assets"][0] == {"asset": "USDT", "wallet_balance": "100",
                                        "available_balance": "90", "unrealized_pnl": "1",
                                        "margin_balance": "101"}
    assert set(env) == {"type", "user_id", "key_id", "exchange", "testnet", "epoch", "seq", "as_of",
                        "sent_at", "source", "stale", "data"}


def test_polling_interval_stretches_with_the_number_of_polling_accounts() -> None:
    from types import SimpleNamespace

    from exchanges.governor import Governors
    from services.streams import POLLING_KEYS_PER_S, StreamManager
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
                           publish=sent.append, on_fill=lambda f: None, sleep=lambda s: None)
    stream.stream, stream.status = Stream(), "live"  # type: ignore[assignment]
    stream._connected_at = stream._last_event_at = clock.monotonic()
    stream._keepalive_at = clock.monotonic() + 1e9
    stream._consume(Client())                 # ACCOUNT_UPDATE -> balance refresh -> held back
    assert stream.stream is not None and stream.status == "live" and stream.refreshes_held == 1
    assert sent == [] and "balance" in stream._refresh_due  # nothing marked stale, still due
    stream._consume(Client())                 # within the 20 s: not asked again
    assert Client.calls == 1 and stream.stream is not None


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
        stream._open_orders(Client())        # first snapshot: everything
        state.set_orders([])
        state.set_positions([_pos("0.01")])  # BTCUSDT held
        for _ in range(10):
            stream._open_orders(Client())
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
    stream._report_positions()
    stream._report_positions()               # unchanged: not reported again
    state.set_positions([_pos("0.02", mark="102")])
    stream._report_positions()               # the mark moved only: not reported
    state.set_positions([])
    stream._report_positions()               # closed: reported with size 0
    assert reports == [([("BTCUSDT", Decimal("0.01"))], True), ([("BTCUSDT", Decimal("0"))], False)]
