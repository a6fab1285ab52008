"""Fault injection and request accounting, seen through the real python-binance Client."""
from __future__ import annotations

import time

import pytest
import requests
from binance.exceptions import BinanceAPIException

SYMBOL = "BTCUSDT"


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, "60000")


def test_http_429_with_retry_after_for_count_requests(sim, account):
    sim.add_fault(kind="http_429", count=2, api_key=account.api_key)
    for _ in range(2):
        with pytest.raises(BinanceAPIException) as info:
            account.client.futures_account_balance()
        assert (info.value.status_code, info.value.code) == (429, -1003)
        assert int(info.value.response.headers["Retry-After"]) >= 1
        assert info.value.response.headers["Content-Type"].startswith("application/json")
    assert account.client.futures_account_balance()


def test_http_faults_only_hit_the_targeted_key(sim, account, new_account):
    other = new_account()
    sim.add_fault(kind="http_418", duration_s=30, ms=7000, api_key=account.api_key)
    with pytest.raises(BinanceAPIException) as info:
        account.client.futures_account()
    assert info.value.status_code == 418 and info.value.response.headers["Retry-After"] == "7"
    assert other.client.futures_account()
    with pytest.raises(BinanceAPIException):           # still banned (duration, not count)
        account.client.futures_account()


def test_http_5xx(sim, account):
    sim.add_fault(kind="http_5xx", api_key=account.api_key)
    with pytest.raises(BinanceAPIException) as info:
        account.client.futures_get_open_orders()
    assert info.value.status_code == 503
    assert account.client.futures_get_open_orders() == []


def test_latency_delays_replies(sim, account):
    sim.add_fault(kind="latency", ms=300, api_key=account.api_key)
    start = time.monotonic()
    account.client.futures_time()
    assert time.monotonic() - start >= 0.3
    sim.clear_faults()
    start = time.monotonic()
    account.client.futures_time()
    assert time.monotonic() - start < 0.3


def test_timeout_executes_the_request_but_holds_the_reply(sim, account):
    sim.add_fault(kind="timeout", ms=1500, api_key=account.api_key)
    account.client.REQUEST_TIMEOUT = 0.5
    with pytest.raises(requests.exceptions.ReadTimeout):
        account.client.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET",
                                            quantity="0.002")
    account.client.REQUEST_TIMEOUT = 10
    [order] = sim.state(account.api_key)["orders"]
    assert order["status"] == "FILLED"              # the fate was unknown to the client only
    assert account.client.futures_get_all_orders(symbol=SYMBOL)[0]["status"] == "FILLED"


def test_reject_orders_fault(sim, account):
    c = account.client
    sim.add_fault(kind="reject_orders", count=2, api_key=account.api_key)
    with pytest.raises(BinanceAPIException) as info:
        c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.002")
    assert (info.value.status_code, info.value.code) == (400, -2010)
    fok = c.futures_create_order(symbol=SYMBOL, side="BUY", type="LIMIT", quantity="0.002",
                                 price="60000.1", timeInForce="FOK")
    assert fok["status"] == "EXPIRED"
    ok = c.futures_create_order(symbol=SYMBOL, side="BUY", type="LIMIT", quantity="0.002",
                                price="60000.1", timeInForce="FOK", newOrderRespType="RESULT")
    assert ok["status"] == "FILLED"


def test_faults_are_listed_in_state_and_cleared(sim, account):
    sim.add_fault(kind="latency", ms=1, api_key=account.api_key)
    kinds = [f["kind"] for f in sim.state()["faults"]]
    assert "latency" in kinds
    sim.clear_faults()
    assert sim.state()["faults"] == []


def test_bad_fault_is_400(sim):
    resp = requests.post(sim.url + "/_sim/faults", json={"kind": "meteor"}, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_fault"


def test_request_counts_per_key_and_endpoint(sim, account):
    c = account.client
    for _ in range(3):
        c.futures_account()
    c.futures_account_balance()
    with pytest.raises(BinanceAPIException):
        c.futures_get_order(symbol=SYMBOL, orderId=1)
    counts = sim.state()["requests"][account.api_key]
    assert counts == {"GET /fapi/v2/account": 3, "GET /fapi/v3/balance": 1,
                      "GET /fapi/v1/order": 1}
    used = int(c.response.headers["X-MBX-USED-WEIGHT-1M"])
    c.futures_time()
    assert int(c.response.headers["X-MBX-USED-WEIGHT-1M"]) in (used + 1, 1)   # 1: new minute


def test_weight_is_counted_per_ip_with_each_endpoints_weight_and_can_be_enforced(sim, new_account):
    a, b = new_account(), new_account()
    if time.time() % 60 > 55:  # the whole test within one minute of the weight counter
        time.sleep(61 - time.time() % 60)

    def used(acct) -> int:  # type: ignore[no-untyped-def]
        return int(acct.client.response.headers["X-MBX-USED-WEIGHT-1M"])
    a.client.futures_time()
    base = used(a)
    a.client.futures_account()
    assert used(a) == base + 5
    b.client.futures_get_open_orders()               # another key, the same IP: all symbols
    assert used(b) == base + 5 + 40
    b.client.futures_get_open_orders(symbol=SYMBOL)  # one symbol
    assert used(b) == base + 46
    limit = base + 46 + 10
    assert requests.put(f"{sim.url}/_sim/limits", json={"ip_weight_limit": limit}).status_code == 200
    try:
        a.client.futures_account()                   # 51 of 56: still served
        with pytest.raises(BinanceAPIException) as e:
            b.client.futures_get_open_orders()       # would make 91
        assert (e.value.status_code, e.value.code) == (429, -1003)
        assert 1 <= int(e.value.response.headers["Retry-After"]) <= 60
        weights = sim.state()["weight_per_minute"]
        assert max(max(w.values()) for k, w in weights.items() if k.startswith("binance ")) >= limit
    finally:
        requests.put(f"{sim.url}/_sim/limits", json={"ip_weight_limit": 0})
    bad = requests.put(f"{sim.url}/_sim/limits", json={"ip_weight_limit": -1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_ip_weight_limit"
