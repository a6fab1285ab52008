"""Socket.IO payload fuzzing against a real server process (SQLite and PostgreSQL):
every ``subscribe`` / ``unsubscribe`` / ``subscribe_ticker`` / ``unsubscribe_ticker``
payload, well-formed or not, gets an ack of CONTRACT.md's shape, never an internal
error and never silence; the connection stays usable; the server logs no traceback."""
from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from api.validation import MAX_ID
from tests.e2e.conftest import Account, Listener

TYPES = ["balance", "positions", "pnl", "orders", "fills"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
IDS = st.one_of(st.integers(), st.integers(min_value=MAX_ID - 3, max_value=2**70),
                st.integers(max_value=0), st.text(max_size=6), st.sampled_from(["²", "٣", "1"]),
                st.booleans(), st.floats(), st.none(), JSON)


def _subscribe_payloads(own_key_id: int):  # type: ignore[no-untyped-def]
    key_ids = st.one_of(IDS, st.just(own_key_id))
    valid = st.fixed_dictionaries(
        {"types": st.lists(st.sampled_from(TYPES[:4]), min_size=1, max_size=4, unique=True)},
        optional={"key_id": st.just(own_key_id)})
    return st.one_of(valid, JSON, st.fixed_dictionaries(
        {"types": st.one_of(st.lists(st.sampled_from(TYPES) | st.text(max_size=10), max_size=6), JSON)},
        optional={"key_id": key_ids, "since": JSON, "max_hz": JSON}))


TICKER_PAYLOADS = st.one_of(st.fixed_dictionaries(
    {"exchange": st.just("binance"), "symbols": st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT"]),
                                                         min_size=1, max_size=2)}),
    JSON, st.fixed_dictionaries(
    {"exchange": st.sampled_from(["binance", "bybit"]) | st.text(max_size=8) | JSON,
     "symbols": st.one_of(st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT"]) | st.text(max_size=12),
                                   max_size=5), JSON)}))


def _check_ack(ack, tally: Counter) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
    tally["ok" if ack["ok"] else "refused"] += 1
    if not ack["ok"]:
        err = ack["error"]
        assert err["code"] and err["message"] and err["code"] != "internal_error", ack


def test_every_payload_gets_an_ack(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    listener = Listener(server.url, account.token)
    tally: Counter = Counter()
    fuzz_settings = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                             phases=[Phase.explicit, Phase.generate],
                             suppress_health_check=list(HealthCheck))
    try:
        @fuzz_settings
        @given(event=st.sampled_from(["subscribe", "unsubscribe"]),
               payload=_subscribe_payloads(account.key_id))
        def fuzz_subscribe(event, payload) -> None:  # type: ignore[no-untyped-def]
            _check_ack(listener.call(event, payload), tally)  # call raises TimeoutError on silence

        @fuzz_settings
        @given(event=st.sampled_from(["subscribe_ticker", "unsubscribe_ticker"]),
               payload=TICKER_PAYLOADS)
        def fuzz_ticker(event, payload) -> None:  # type: ignore[no-untyped-def]
            _check_ack(listener.call(event, payload), tally)

        fuzz_subscribe()
        fuzz_ticker()
        print(f"\nsocket.io fuzz {server.url}: acks={sum(tally.values())} {dict(tally)}")
        assert tally["ok"] > 0 and tally["refused"] > 0
        # the connection is still usable, and the cases are refused naming key_id
        for bad in (2**63, 2**31, "²", True, 0):
            ack = listener.call("subscribe", {"types": ["balance"], "key_id": bad})
            assert ack["ok"] is False and ack["error"]["field"] == "key_id", (bad, ack)
        ack = listener.call("subscribe", {"types": ["balance"], "key_id": account.key_id})
        assert ack["ok"] is True and "balance" in ack["subscribed"]
    finally:
        listener.close()
    log = server.log()
    assert "Traceback" not in log and "socket handler failed" not in log, log[-3000:]
