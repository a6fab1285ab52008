"""BinanceFuturesClient without a network: the library client's methods are stubbed."""
from __future__ import annotations

import json
from decimal import Decimal as D

import pytest
import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException

from exchanges.base import ExchangeClient, UserStream
from exchanges.binance.client import BinanceFuturesClient, order_params
from exchanges.errors import ClockSkew, ExchangeUnavailable, InvalidOrder
from exchanges.types import OrderRequest, VenueEndpoints

ENDPOINTS = VenueEndpoints("http://127.0.0.1:9/", "ws://127.0.0.1:9")


def api_error(status: int, code: int, msg: str = "x") -> BinanceAPIException:
    r = requests.Response()
    r.status_code = status
    r._content = json.dumps({"code": code, "msg": msg}).encode()
    return BinanceAPIException(r, status, r.text)


@pytest.fixture
def client():
    c = BinanceFuturesClient("key123456", "secret", testnet=True, endpoints=ENDPOINTS, timeout_s=3)
    c._client.futures_time = lambda: {"serverTime": 0}
    yield c
    c.close()


def test_construction_is_offline_and_redirected(client):
    assert isinstance(client, ExchangeClient)
    assert client._client.FUTURES_URL == "http://127.0.0.1:9/fapi"
    assert client._client.API_URL == "http://127.0.0.1:9/api"
    assert client._client.testnet is False and client.testnet is True
    assert client._client._requests_params == {"timeout": 3}
    assert client.created_at > 1_600_000_000_000
    assert "secret" not in repr(client) and "key123456" not in repr(client)
    assert isinstance(client.user_stream(), UserStream)
    assert client.is_alive()


def test_close_marks_dead_and_never_raises(client):
    client._client.close_connection = lambda: (_ for _ in ()).throw(RuntimeError("x"))
    client.close()
    assert not client.is_alive()
    del client._client.close_connection     # let the library's __del__ close for real


def test_sync_clock_median_of_three(client):
    samples = iter([10_000_000_000_000, 10_000_000_000_500, 20_000_000_000_000])
    client._client.futures_time = lambda: {"serverTime": next(samples)}
    offset = client.sync_clock()
    assert client._client.timestamp_offset == offset
    # the median sample (…500) wins, not the outlier
    assert 10_000_000_000_500 - offset > 1_600_000_000_000


def test_clock_skew_resamples_and_retries_get(client):
    calls = []

    def account():
        calls.append(1)
        if len(calls) == 1:
            raise api_error(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        return {"totalWalletBalance": "1", "totalUnrealizedProfit": "0",
                "totalMarginBalance": "1", "availableBalance": "1", "assets": []}

    syncs = []
    client._client.futures_time = lambda: syncs.append(1) or {"serverTime": 1}
    client._client.futures_account = account
    assert client.get_balance().total_wallet_balance == D("1")
    assert len(calls) == 2 and len(syncs) == 6      # first use + resample, 3 samples each


def test_clock_skew_twice_raises(client):
    client._client.futures_account = lambda: (_ for _ in ()).throw(api_error(400, -1021))
    with pytest.raises(ClockSkew):
        client.get_balance()


def test_clock_skew_on_cancel_is_not_retried(client):
    calls = []

    def cancel(**kw):
        calls.append(kw)
        raise api_error(400, -1021)

    client._client.futures_cancel_order = cancel
    with pytest.raises(ClockSkew):
        client.cancel_order("BTCUSDT", order_id="7")
    assert calls == [{"symbol": "BTCUSDT", "orderId": "7"}]


def test_create_order_params_are_strings():
    p = order_params(OrderRequest("BTCUSDT", "buy", "limit", D("1E-3"), "coid-1", D("65000.10")))
    assert p == {"symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.001",
                 "newClientOrderId": "coid-1", "reduceOnly": "false", "newOrderRespType": "RESULT",
                 "price": "65000.10", "timeInForce": "GTC"}
    m = order_params(OrderRequest("BTCUSDT", "SELL", "MARKET", D("2"), "c2", reduce_only=True))
    assert m["reduceOnly"] == "true" and "price" not in m and "timeInForce" not in m


@pytest.mark.parametrize("req", [
    OrderRequest("BTCUSDT", "BUY", "LIMIT", D("1"), "c"),
    OrderRequest("BTCUSDT", "BUY", "STOP_MARKET", D("1"), "c"),
    OrderRequest("BTCUSDT", "HOLD", "MARKET", D("1"), "c"),
])
def test_create_order_local_rejects(req):
    with pytest.raises(InvalidOrder):
        order_params(req)


def test_symbol_rules_cached(client):
    info = {"symbols": [{"symbol": "BTCUSDT", "filters": [
        {"filterType": "PRICE_FILTER", "tickSize": "0.01", "minPrice": "0.01", "maxPrice": "1E+6"},
        {"filterType": "LOT_SIZE", "stepSize": "0.001", "minQty": "0.001", "maxQty": "1000"},
        {"filterType": "MIN_NOTIONAL", "notional": "100"}]}]}
    calls = []
    client._client.futures_exchange_info = lambda: calls.append(1) or info
    assert client.get_symbol_rules("BTCUSDT").tick_size == D("0.01")
    assert client.get_symbol_rules("BTCUSDT").min_notional == D("100")
    with pytest.raises(InvalidOrder) as exc_info:
        client.get_symbol_rules("NOPEUSDT")
    assert exc_info.value.code == -1121
    assert len(calls) == 1


def test_connection_refused_maps_to_unavailable():
    c = BinanceFuturesClient("k", "s", False, VenueEndpoints("http://127.0.0.1:9", "ws://x"), 1)
    with pytest.raises(ExchangeUnavailable):
        c.server_time()
    assert isinstance(c._client, Client)
