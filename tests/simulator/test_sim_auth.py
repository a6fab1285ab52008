"""Signing, timestamps, API keys, clock skew and the control API's loopback rule."""
from __future__ import annotations

import asyncio
import time

import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from binance.exceptions import BinanceAPIException

from exchanges.simulator.binance_auth import sign, strip_signature
from exchanges.simulator.control import Control, is_loopback
from tests.support.simulator import SimulatorError


def test_signed_request_from_python_binance_is_accepted(account):
    balances = account.client.futures_account_balance()
    usdt = next(b for b in balances if b["asset"] == "USDT")
    assert usdt["balance"] == "10000.00000000"
    assert account.client.response.headers["X-MBX-USED-WEIGHT-1M"].isdigit()


def test_bad_signature_is_1022(sim, account):
    bad = sim.binance_client(account.api_key, "not-the-secret")
    with pytest.raises(BinanceAPIException) as info:
        bad.futures_account_balance()
    assert (info.value.status_code, info.value.code) == (400, -1022)


def test_unknown_key_is_401_2015(sim):
    stranger = sim.binance_client("no-such-key", "whatever")
    with pytest.raises(BinanceAPIException) as info:
        stranger.futures_account()
    assert (info.value.status_code, info.value.code) == (401, -2015)


def test_missing_key_header_is_401_2014(sim):
    resp = requests.get(sim.url + "/fapi/v2/balance?timestamp=1&signature=00", timeout=5)
    assert resp.status_code == 401 and resp.json()["code"] == -2014
    assert resp.headers["Content-Type"].startswith("application/json")


def test_stale_and_future_timestamps_are_1021(account):
    account.client.timestamp_offset = -20_000          # older than recvWindow=10000
    with pytest.raises(BinanceAPIException) as info:
        account.client.futures_account_balance()
    assert (info.value.status_code, info.value.code) == (400, -1021)
    account.client.timestamp_offset = 3_000            # more than 1 s ahead of the server
    with pytest.raises(BinanceAPIException) as info:
        account.client.futures_account_balance()
    assert info.value.code == -1021
    account.client.timestamp_offset = 0
    assert account.client.futures_account_balance()


def test_form_body_params_are_signed_and_read_for_delete(account):
    c = account.client
    order = c.futures_create_order(symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.010",
                                   price="50000.0", timeInForce="GTC")
    canceled = c.futures_cancel_order(symbol="BTCUSDT", orderId=order["orderId"])
    assert canceled["status"] == "CANCELED"


def test_clock_skew_fault_gives_1021_until_the_client_resyncs(sim, account):
    sim.add_fault(kind="clock_skew", ms=120_000, api_key=account.api_key)
    c = account.client
    with pytest.raises(BinanceAPIException) as info:
        c.futures_account_balance()
    assert info.value.code == -1021
    server = c.futures_time()["serverTime"]
    assert server - int(time.time() * 1000) > 100_000
    c.timestamp_offset = server - int(time.time() * 1000)
    assert c.futures_account_balance()
    sim.clear_faults()
    assert abs(c.futures_time()["serverTime"] - time.time() * 1000) < 5_000


def test_clock_skew_with_count_skews_only_the_next_request(sim, account):
    sim.add_fault(kind="clock_skew", count=1, api_key=account.api_key)   # default -5000 ms
    with pytest.raises(BinanceAPIException) as info:
        account.client.futures_account_balance()
    assert info.value.code == -1021
    assert account.client.futures_account_balance()


def test_doc_signature_vectors():
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    payload = ("symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
               "&recvWindow=5000&timestamp=1499827319559")
    assert sign(secret, payload) == \
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    assert sign("testsecret", "recvWindow=10000&symbol=BTCUSDT&timestamp=1700000000000") == \
        "4506e1909fd47ff598a22e99c6457f85e5d71b312945be26ac5e4090804b2e8b"
    assert strip_signature("a=1&b=2&signature=ABC") == ("a=1&b=2", "ABC")
    assert strip_signature("a=1") == ("a=1", None)


@pytest.mark.parametrize("peer,expected", [
    (("127.0.0.1", 5000), True), (("127.8.9.10", 1), True), (("::1", 1, 0, 0), True),
    (("::ffff:127.0.0.1", 1, 0, 0), True), (("10.0.0.5", 1), False),
    (("192.168.1.2", 1), False), (("::ffff:10.0.0.5", 1, 0, 0), False),
    (None, False), ("", False), ("not-an-ip", False),
])
def test_is_loopback(peer, expected):
    assert is_loopback(peer) is expected


def test_control_middleware_refuses_non_loopback_peers():
    asyncio.run(_check_control_middleware())


async def _check_control_middleware():
    control = Control.__new__(Control)   # the middleware needs no state

    async def handler(request):
        return web.json_response({"ok": True})

    class Transport:
        def __init__(self, peer):
            self.peer = peer

        def get_extra_info(self, name, default=None):
            return self.peer if name == "peername" else default

    outside = make_mocked_request("GET", "/_sim/state", transport=Transport(("10.1.2.3", 40000)))
    resp = await control.middleware(outside, handler)
    assert resp.status == 403
    inside = make_mocked_request("GET", "/_sim/state", transport=Transport(("127.0.0.1", 40000)))
    assert (await control.middleware(inside, handler)).status == 200


def test_secrets_and_signatures_never_reach_the_log(sim, account):
    account.client.futures_account()
    account.client.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET",
                                        quantity="0.002")
    log = sim.log_text()
    assert "account created" in log and account.api_key[-4:] in log
    assert account.api_secret not in log and account.api_key not in log
    assert "signature" not in log


def test_state_can_be_narrowed_to_one_account(sim, account, new_account):
    other = new_account()
    other.client.futures_account()
    state = sim.state(account.api_key)
    assert [a["api_key"] for a in state["accounts"]] == [account.api_key]
    assert set(state["requests"]) == {account.api_key}
    assert account.api_secret not in str(sim.state())


def test_account_recreate_is_idempotent_and_conflicts_on_another_secret(sim, account):
    again = sim.create_account(account.api_key, account.api_secret)
    assert again["created"] is False and again["balances"]["USDT"] == "10000"
    with pytest.raises(SimulatorError) as info:
        sim.create_account(account.api_key, "different")
    assert info.value.status == 409
