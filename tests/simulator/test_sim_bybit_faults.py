"""Faults and request accounting on the Bybit layer, and the engine shared with Binance."""
from __future__ import annotations

import time
from decimal import Decimal

import pytest
import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError

SYMBOL = "BTCUSDT"


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, "60000")


@pytest.fixture
def bb(sim, account):
    """Real pybit HTTP for the fresh funded account (pybit's retry codes emptied so
    10006/10002 surface at once)."""
    session = sim.bybit_client(account.api_key, account.api_secret)
    session.retry_codes = set()
    return session


def test_http_429_fault_is_10006_with_reset_header(sim, account, bb):
    sim.add_fault(kind="http_429", count=2, api_key=account.api_key)
    for _ in range(2):
        with pytest.raises(InvalidRequestError) as info:
            bb.get_wallet_balance(accountType="UNIFIED")
        assert info.value.status_code == 10006
        headers = info.value.resp_headers
        assert headers["X-Bapi-Limit-Status"] == "0"
        assert int(headers["X-Bapi-Limit-Reset-Timestamp"]) > time.time() * 1000
    assert bb.get_wallet_balance(accountType="UNIFIED")["retCode"] == 0


def test_default_pybit_sleeps_until_the_reset_then_retries(sim, account):
    session = sim.bybit_client(account.api_key, account.api_secret)   # 10006 retried
    session.max_retries = 2
    sim.add_fault(kind="http_429", api_key=account.api_key)
    start = time.monotonic()
    assert session.get_positions(category="linear", symbol=SYMBOL)["retCode"] == 0
    assert 0.5 < time.monotonic() - start < 3


def test_http_418_fault_is_403_ip_ban(sim, account, bb, new_account):
    other = new_account()
    sim.add_fault(kind="http_418", duration_s=30, ms=7000, api_key=account.api_key)
    with pytest.raises(FailedRequestError) as info:
        bb.get_positions(category="linear", settleCoin="USDT")
    assert info.value.status_code == 403 and info.value.resp_headers["Retry-After"] == "7"
    assert int(info.value.resp_headers["X-Bapi-Limit-Reset-Timestamp"]) >= \
        time.time() * 1000 + 5000
    assert sim.bybit_client(other.api_key, other.api_secret).get_positions(
        category="linear", settleCoin="USDT")["retCode"] == 0


def test_http_5xx_fault_is_503(sim, account, bb):
    sim.add_fault(kind="http_5xx", api_key=account.api_key)
    with pytest.raises(FailedRequestError) as info:
        bb.get_open_orders(category="linear", settleCoin="USDT")
    assert info.value.status_code == 503
    assert bb.get_open_orders(category="linear", settleCoin="USDT")["retCode"] == 0


def test_timeout_fault_executes_the_order_but_holds_the_reply(sim, account, bb):
    sim.add_fault(kind="timeout", ms=1500, api_key=account.api_key)
    bb.timeout = 0.5
    with pytest.raises(requests.exceptions.ReadTimeout):
        bb.place_order(category="linear", symbol=SYMBOL, side="Buy", orderType="Market",
                       qty="0.002", orderLinkId="lost-reply")
    bb.timeout = 10
    [row] = bb.get_open_orders(category="linear", symbol=SYMBOL,
                               orderLinkId="lost-reply")["result"]["list"]
    assert row["orderStatus"] == "Filled"
    with pytest.raises(InvalidRequestError) as info:    # the safe replay is refused
        bb.place_order(category="linear", symbol=SYMBOL, side="Buy", orderType="Market",
                       qty="0.002", orderLinkId="lost-reply")
    assert info.value.status_code == 110072


def test_clock_skew_fault_gives_10002_and_shifts_server_time(sim, account, bb):
    sim.add_fault(kind="clock_skew", ms=-20_000, api_key=account.api_key)
    with pytest.raises(InvalidRequestError) as info:
        bb.get_wallet_balance(accountType="UNIFIED")
    assert info.value.status_code == 10002
    server = int(requests.get(sim.url + "/v5/market/time", timeout=5,
                              headers={"X-BAPI-API-KEY": account.api_key}).json()["time"])
    assert server < time.time() * 1000 - 15_000


def test_latency_fault(sim, account, bb):
    sim.add_fault(kind="latency", ms=300, api_key=account.api_key)
    start = time.monotonic()
    bb.get_positions(category="linear", symbol=SYMBOL)
    assert time.monotonic() - start >= 0.3


def test_request_counts_per_key_and_endpoint(sim, account, bb):
    for _ in range(3):
        bb.get_positions(category="linear", settleCoin="USDT")
    bb.get_wallet_balance(accountType="UNIFIED")
    with pytest.raises(InvalidRequestError):
        bb.cancel_order(category="linear", symbol=SYMBOL, orderLinkId="nope")
    assert sim.state()["requests"][account.api_key] == {
        "GET /v5/position/list": 3, "GET /v5/account/wallet-balance": 1,
        "POST /v5/order/cancel": 1}


def test_one_account_across_binance_and_bybit(sim, account, bb):
    binance = account.client
    binance.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.010")
    [pos] = bb.get_positions(category="linear", settleCoin="USDT")["result"]["list"]
    assert (pos["side"], pos["size"]) == ("Buy", "0.010")
    ack = bb.place_order(category="linear", symbol=SYMBOL, side="Sell", orderType="Market",
                         qty="0.004")["result"]
    [risk] = binance.futures_position_information(symbol=SYMBOL)
    assert risk["positionAmt"] == "0.006"
    fees = Decimal("0.3000005") + Decimal("0.1199998")           # 600.001, 239.9996 taker
    realised = (Decimal("59999.9") - Decimal("60000.1")) * Decimal("0.004")
    wallet = bb.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    expected = Decimal("10000") - fees + realised
    assert Decimal(wallet["totalWalletBalance"]) == expected
    usdt = next(b for b in binance.futures_account_balance() if b["asset"] == "USDT")
    assert Decimal(usdt["balance"]) == expected
    binance_ids = [o["orderId"] for o in binance.futures_get_all_orders(symbol=SYMBOL)]
    state_orders = sim.state(account.api_key)["orders"]
    assert [o["order_id"] for o in state_orders] == binance_ids and len(binance_ids) == 2
    assert bb.get_order_history(category="linear")["result"]["list"][0]["orderId"] == \
        ack["orderId"]


def test_state_lists_bybit_sockets(sim, account):
    ws = sim.bybit_private_ws(account.api_key, account.api_secret, topics=("wallet",))
    try:
        streams = [s for s in sim.state(account.api_key)["streams"]
                   if s["protocol"] == "bybit" and s.get("api_key") == account.api_key]
    finally:
        ws.close()
    assert streams and streams[0]["topics"] == ["wallet"] and streams[0]["authenticated"]
