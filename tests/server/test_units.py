"""Config, security, payload serialisation and change detection (the account
stream's own units are in test_account_stream_units.py)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from cryptography.fernet import Fernet

from config import ConfigError, load_config
from exchanges.types import AssetBalance, Balance, Order, OrderStatus
from services.account_state import AccountState
from services.errors import Unauthorized
from services.ledger import Realized
from services.security import KeyCipher, TokenService, hash_password, verify_password
from services.serialize import dec, pnl_data
from tests.support.factories import btc_long as _pos


def test_production_refuses_to_start_naming_what_is_missing() -> None:
    with pytest.raises(ConfigError) as e:
        load_config({"APP_ENV": "production", "SECRET_KEY": "x"})
    for name in ("DATABASE_URL", "KEY_ENCRYPTION_KEY", "ADMIN_TOKEN"):
        assert name in str(e.value)
    assert "SECRET_KEY" not in str(e.value)


def test_gc_thresholds_default_parse_and_refuse_malformed() -> None:
    """GC_THRESHOLDS: the server's gc.set_threshold (app.tune_gc applies it)."""
    import gc

    import app
    assert load_config({}).GC_THRESHOLDS == (50_000, 20, 100)
    assert load_config({"GC_THRESHOLDS": "1000, 5,50"}).GC_THRESHOLDS == (1000, 5, 50)
    for bad in ("1000,5", "a,b,c", "0,10,10", "1000,-1,10"):
        with pytest.raises(ConfigError, match="GC_THRESHOLDS"):
            load_config({"GC_THRESHOLDS": bad})
    before = gc.get_threshold()
    try:
        app.tune_gc((12_345, 6, 78))
        assert gc.get_threshold() == (12_345, 6, 78)
    finally:
        gc.set_threshold(*before)


def test_message_queue_url_must_be_redis() -> None:
    assert load_config({"MESSAGE_QUEUE_URL": "redis://127.0.0.1:6379/0"}).MESSAGE_QUEUE_URL
    with pytest.raises(ConfigError, match="MESSAGE_QUEUE_URL"):
        load_config({"MESSAGE_QUEUE_URL": "amqp://guest@127.0.0.1//"})


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
    # the server's own hasher (the unit tests swap in a cheap one): RFC 9106's
    # second recommended option as argon2-cffi ships it, seen in the import-time hash
    from services import security
    assert security._DUMMY_HASH.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


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
    stream.pusher.changed(("positions",), "stream", 10)
    assert sent == []  # not built, not sent
    state.set_positions([_pos("0.02", mark="102")])
    stream.pusher.changed(("positions",), "stream", 11)
    assert sent == []
    snap = state.cached(["positions"])  # a subscriber arrives: the current value, once
    assert [(e["seq"], e["as_of"], e["source"], e["data"][0]["unrealized_pnl"]) for e in snap] == [
        (1, 11, "cache", "0.02")]
    listening.add("positions")
    state.set_positions([_pos("0.03", mark="103")])
    stream.pusher.changed(("positions",), "stream", 12)
    assert [(e["seq"], e["data"][0]["unrealized_pnl"]) for e in sent] == [(2, "0.03")]


def test_mark_ticks_move_the_balance_when_it_is_read() -> None:
    """A tick adds its unrealized PnL delta; the balance read after several shows the
    sum (total and the margin asset), a replaced balance drops the moves of the old
    one, and an account event sees the moves first."""
    from exchanges.types import AccountEvent, WalletUpdate
    state = AccountState(1, 1, "binance", False)
    state.set_positions([_pos("0.01", mark="101")])  # 0.01 BTC from 100
    usdt = AssetBalance("USDT", Decimal("1000"), Decimal("900"), Decimal("0.01"), Decimal("1000.01"))
    state.set_balance(Balance(Decimal("1000"), Decimal("0.01"), Decimal("1000.01"), Decimal("900"), (usdt,)))
    held = state._balance
    for mark in ("102", "104", "103"):
        assert state.apply_mark("BTCUSDT", Decimal(mark)) == ("positions", "pnl", "balance")
    assert state._balance is held  # no Balance built per tick
    b = state.balance
    assert (b.total_unrealized_pnl, b.total_margin_balance) == (Decimal("0.03"), Decimal("1000.03"))
    assert (b.assets[0].unrealized_pnl, b.assets[0].margin_balance) == (Decimal("0.03"), Decimal("1000.03"))
    state.apply_mark("BTCUSDT", Decimal("110"))  # +0.07, then a REST snapshot replaces it
    state.set_balance(Balance(Decimal("1000"), Decimal("0.05"), Decimal("1000.05"), Decimal("900"), (usdt,)))
    assert state.balance.total_unrealized_pnl == Decimal("0.05")
    state.apply_mark("BTCUSDT", Decimal("111"))  # +0.01 on 0.05
    state.apply_account_event(AccountEvent("DEPOSIT", (WalletUpdate("USDT", Decimal("1100"), Decimal("1100")),), (), 1))
    b = state.balance
    assert b.total_unrealized_pnl == Decimal("0.06") and b.total_wallet_balance == Decimal("1100")
    assert b.assets[0].margin_balance == Decimal("1100") + b.assets[0].unrealized_pnl


def test_the_packet_binary_check_agrees_with_python_socketio() -> None:
    from socketio.packet import Packet as Original

    from ws.packet import Packet
    for data in (["orders", {"data": [{"a": "1", "b": [1, 2, {"c": None}]}]}],
                 ["x", {"data": [{"a": "1"}, {"b": [b"raw"]}]}], [b"top"], "text", [],
                 ["x", {"d": bytearray(b"1")}], ["x", ("tuple", b"not walked")]):
        assert Packet.data_is_binary(data) == Original.data_is_binary(data), data
    pkt = Packet(2, data=["orders", {"n": 1}], namespace="/")
    assert pkt.encode() == Original(2, data=["orders", {"n": 1}], namespace="/").encode()


def test_the_packet_json_is_orjson_with_the_stdlib_meaning() -> None:
    """Socket.IO packets are encoded with orjson; what a client decodes is what the
    stdlib encoder would have given it, including what orjson cannot encode alone."""
    import json

    from ws.packet import OrjsonCodec, Packet
    assert Packet.json is OrjsonCodec
    env = ["pnl", {"type": "pnl", "seq": 3, "stale": False, "data": {"unrealized_pnl": "1.5",
                                                                     "positions": [], "x": None}}]
    assert OrjsonCodec.dumps(env) == json.dumps(env, separators=(",", ":"))  # ASCII: the same text
    for value in (["x", {"name": "caf\u00e9 \u2603"}], {1: "int key"}, [2 ** 70], [1.5, -0.0]):
        assert json.loads(OrjsonCodec.dumps(value, separators=(",", ":"))) == json.loads(
            json.dumps(value)), value
    with pytest.raises(ValueError):
        OrjsonCodec.loads('{"types": [')
    with pytest.raises(TypeError):
        OrjsonCodec.dumps([Decimal("1")])  # neither encoder takes a Decimal: never sent as a number
    pkt = Packet(2, data=env, namespace="/")
    assert Packet(encoded_packet=pkt.encode()).data == env


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


def test_password_hashing_runs_off_the_eventlet_hub_only_when_monkey_patched() -> None:
    """Under eventlet's monkey patching the ~50 ms KDF runs in tpool's OS threads (the
    hub keeps serving); in a plain process it runs in the caller's thread."""
    import subprocess
    import sys
    probe = ("from eventlet.patcher import original\n"
             "th = original('threading')\n"
             "from services import security\n"
             "print(security._offload(th.get_ident) != th.get_ident())\n")
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    outs = [subprocess.run([sys.executable, "-c", prefix + probe], cwd=root, capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip()
            for prefix in ("import eventlet; eventlet.monkey_patch()\n", "")]
    assert outs == ["True", "False"]


def test_the_state_types_and_fills_of_a_key_share_one_epoch_with_a_seq_per_type() -> None:
    """AccountState and its FillLog number envelopes through one PushSequence: one epoch,
    a ``seq`` per type; a ``cache`` snapshot spends no ``seq``."""
    from exchanges.types import Fill
    from services.push_sequence import StreamPosition
    state = AccountState(1, 7, "binance", False)
    state.set_positions([_pos("0.01")])
    positions = state.envelope("positions", "stream", 1)
    assert state.fills.add(Fill("t1", "9", None, "BTCUSDT", "BUY", Decimal("0.01"), Decimal("100"),
                                Decimal("0"), "USDT", Decimal("0"), False, 2))
    fills = state.fills.envelope(2)
    assert fills is not None and positions is not None
    assert (positions["epoch"], positions["seq"]) == (fills["epoch"], fills["seq"]) == (state.epoch, 1)
    assert state.position("fills") == StreamPosition(state.epoch, 1)
    assert state.position("pnl") == StreamPosition(state.epoch, 0)
    assert state.fills.snapshot([])["seq"] == 1 and state.seq("fills") == 1
    assert state.fills.after(0) == [fills] and state.fills.recent() == fills["data"]
    cached = state.cached(["positions", "fills"])
    assert [(e["type"], e["seq"], e["source"]) for e in cached] == [
        ("positions", 1, "cache"), ("fills", 1, "cache")]
    assert cached[0]["data"] == positions["data"] and cached[1]["data"] == []
