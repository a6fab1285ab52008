"""BybitLinearClient without a network: pybit's methods (or its requests session) stubbed."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from decimal import Decimal as D

import pytest
import requests
from pybit.exceptions import InvalidRequestError
from pybit.unified_trading import HTTP

from exchanges.base import ExchangeClient, UserStream
from exchanges.bybit import client as client_mod
from exchanges.bybit.client import BybitLinearClient, order_params
from exchanges.errors import ClockSkew, ExchangeUnavailable, InvalidOrder, OrderNotFound
from exchanges.factory import SUPPORTED_EXCHANGES, create_client
from exchanges.types import OrderRequest, OrderStatus, VenueEndpoints

ENDPOINTS = VenueEndpoints("http://127.0.0.1:9/", "ws://127.0.0.1:9")
NOW = 1_700_000_000_000


def env(result: dict, t: int = NOW) -> dict:
    return {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": t}


def ret_error(code: int, msg: str = "x") -> InvalidRequestError:
    return InvalidRequestError(request="GET x", message=msg, status_code=code, time="00:00:00",
                               resp_headers={})


def order_row(**kw) -> dict:
    row = {"orderId": "o-1", "orderLinkId": "c-1", "symbol": "BTCUSDT", "price": "0",
           "qty": "0.010", "side": "Buy", "orderStatus": "Filled", "avgPrice": "50000",
           "cumExecQty": "0.010", "timeInForce": "IOC", "orderType": "Market", "reduceOnly": False,
           "createdTime": "1700000000000", "updatedTime": "1700000000001"}
    row.update(kw)
    return row


def exec_row(exec_id: str, t: int, exec_type: str = "Trade") -> dict:
    return {"symbol": "BTCUSDT", "orderId": "o-1", "orderLinkId": "c-1", "side": "Buy",
            "execFee": "0.1", "execId": exec_id, "execPrice": "50000", "execQty": "0.001",
            "execType": exec_type, "execTime": str(t), "isMaker": False, "feeCurrency": "USDT"}


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setattr(client_mod, "LOOKUP_DELAYS_S", (0.0, 0.0, 0.0))
    c = BybitLinearClient("key123456", "secret", testnet=True, endpoints=ENDPOINTS, timeout_s=3)
    c._http.get_server_time = lambda: env({"timeNano": str(int(time.time() * 1e9))})
    yield c
    c.close()


def test_construction_is_offline_and_redirected(client):
    assert isinstance(client, ExchangeClient)
    h = client._http
    assert h.endpoint == "http://127.0.0.1:9"
    assert h.testnet is False and client.testnet is True
    assert (h.timeout, h.recv_window, h.max_retries, h.retry_delay) == (3, 5000, 1, 0)
    assert h.retry_codes == set() and h.force_retry is False and h.log_requests is False
    assert client.created_at > 1_600_000_000_000
    assert "secret" not in repr(client) and "key123456" not in repr(client)
    assert isinstance(client.user_stream(), UserStream)
    assert client.is_alive()


def test_plain_pybit_would_restore_its_retry_codes():
    """Why OffsetHTTP empties retry_codes after __post_init__."""
    plain = HTTP(api_key="k", api_secret="s", retry_codes=set())
    assert 10002 in plain.retry_codes and 10006 in plain.retry_codes
    plain.client.close()


def test_no_pybit_log_handler_per_session(monkeypatch):
    import logging
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])          # as in a process without logging setup
    pybit_logger = logging.getLogger("pybit._http_manager")
    before = list(pybit_logger.handlers)
    for _ in range(3):
        BybitLinearClient("k", "s", False, ENDPOINTS, 1).close()
    assert pybit_logger.handlers == before


def test_factory_builds_bybit():
    assert SUPPORTED_EXCHANGES == ("binance", "bybit")
    c = create_client("bybit", "k", "s", False, ENDPOINTS, 2)
    assert isinstance(c, BybitLinearClient) and c.exchange == "bybit"
    c.close()


def test_close_marks_dead_and_never_raises(client):
    client._http.client.close = lambda: (_ for _ in ()).throw(RuntimeError("x"))
    client.close()
    assert not client.is_alive()


def test_sync_clock_median_of_three(client):
    samples = iter([10_000_000_000_000, 10_000_000_000_500, 20_000_000_000_000])
    client._http.get_server_time = lambda: env({"timeNano": str(next(samples) * 1_000_000)})
    offset = client.sync_clock()
    assert client.time_offset_ms == offset == client._http.time_offset_ms
    assert 10_000_000_000_500 - offset > 1_600_000_000_000   # the median, not the outlier


def test_signed_request_uses_offset_and_fixed_recv_window(client):
    """Through pybit's real _submit_request: the X-BAPI-TIMESTAMP is local + offset and
    the signature covers exactly that timestamp."""
    client._clock_synced = True
    client._http.time_offset_ms = 123_456
    sent = []

    def send(request, timeout):
        sent.append(request)
        r = requests.Response()
        r.status_code, r._content = 200, json.dumps(env({"list": []})).encode()
        return r

    client._http.client.send = send
    before = int(time.time() * 1000)
    client.get_positions()
    after = int(time.time() * 1000)
    [req] = sent
    h = req.headers
    ts = int(h["X-BAPI-TIMESTAMP"])
    assert before + 123_456 <= ts <= after + 123_456
    assert h["X-BAPI-RECV-WINDOW"] == "5000" and h["X-BAPI-API-KEY"] == "key123456"
    payload = req.url.split("?", 1)[1]
    assert payload == "category=linear&limit=200&settleCoin=USDT"
    signed = f"{ts}key1234565000{payload}".encode()
    expected = hmac.new(b"secret", signed, hashlib.sha256).hexdigest()
    assert h["X-BAPI-SIGN"] == expected


def test_signature_test_vector():
    """EXCHANGE_PROTOCOLS.md §3.2 vector through our header builder."""
    c = BybitLinearClient("testkey", "testsecret", False, ENDPOINTS, 1)
    sig = c._http._auth(payload="category=linear&settleCoin=USDT", recv_window=5000,
                        timestamp=1700000000000)
    assert sig == "a81f5536f55e5c748e179a26ff5bfa56e957740ec7c59616ff942a944a58a69d"
    c.close()


def test_clock_skew_resamples_and_retries_get(client):
    calls, syncs = [], []

    def balance(**kw):
        calls.append(kw)
        if len(calls) == 1:
            raise ret_error(10002, "invalid request, please check your server timestamp")
        return env({"list": [{"totalWalletBalance": "1", "totalPerpUPL": "0", "coin": [],
                              "totalMarginBalance": "1", "totalAvailableBalance": "1"}]})

    client._http.get_server_time = lambda: syncs.append(1) or env({"timeNano": str(NOW * 10**6)})
    client._http.get_wallet_balance = balance
    assert client.get_balance().total_wallet_balance == D("1")
    assert len(calls) == 2 and len(syncs) == 6      # first use + resample, 3 samples each
    assert calls[0] == {"accountType": "UNIFIED"}


def test_clock_skew_twice_raises(client):
    client._http.get_wallet_balance = lambda **kw: (_ for _ in ()).throw(ret_error(10002))
    with pytest.raises(ClockSkew) as info:
        client.validate_credentials()
    assert info.value.code == 10002


def test_clock_skew_on_cancel_is_not_retried(client):
    calls = []

    def cancel(**kw):
        calls.append(kw)
        raise ret_error(10002)

    client._http.cancel_order = cancel
    with pytest.raises(ClockSkew):
        client.cancel_order("BTCUSDT", order_id="7")
    assert calls == [{"category": "linear", "symbol": "BTCUSDT", "orderId": "7"}]


def test_clock_skew_on_create_is_retried_once_with_same_link_id(client):
    calls = []

    def place(**kw):
        calls.append(kw)
        if len(calls) == 1:
            raise ret_error(10002)
        return env({"orderId": "o-1", "orderLinkId": kw["orderLinkId"]})

    client._http.place_order = place
    client._http.get_open_orders = lambda **kw: env({"list": [order_row()], "nextPageCursor": ""})
    o = client.create_order(OrderRequest("BTCUSDT", "BUY", "MARKET", D("0.010"), "c-1"))
    assert o.status is OrderStatus.FILLED and o.avg_price == D("50000")
    assert len(calls) == 2 and calls[0] == calls[1] and calls[0]["orderLinkId"] == "c-1"


def test_order_params_and_wire_body():
    p = order_params(OrderRequest("BTCUSDT", "buy", "limit", D("1E-3"), "coid-1", D("65000.10")))
    assert p == {"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit",
                 "qty": "0.001", "price": "65000.10", "timeInForce": "GTC",
                 "orderLinkId": "coid-1", "reduceOnly": False}
    assert HTTP.prepare_payload("POST", dict(p)) == (
        '{"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": "Limit", '
        '"qty": "0.001", "price": "65000.10", "timeInForce": "GTC", "orderLinkId": "coid-1", '
        '"reduceOnly": false}')
    m = order_params(OrderRequest("BTCUSDT", "SELL", "MARKET", D("2"), "c2", reduce_only=True))
    assert m["reduceOnly"] is True and "price" not in m and "timeInForce" not in m
    assert m["orderType"] == "Market" and m["side"] == "Sell"
    g = order_params(OrderRequest("BTCUSDT", "BUY", "LIMIT", D("1"), "c3", D("1"), "GTX"))
    assert g["timeInForce"] == "PostOnly"


@pytest.mark.parametrize("req", [
    OrderRequest("BTCUSDT", "BUY", "LIMIT", D("1"), "c"),
    OrderRequest("BTCUSDT", "BUY", "STOP_MARKET", D("1"), "c"),
    OrderRequest("BTCUSDT", "HOLD", "MARKET", D("1"), "c"),
    OrderRequest("BTCUSDT", "BUY", "LIMIT", D("1"), "c", D("1"), "GTD"),
])
def test_create_order_local_rejects(req):
    with pytest.raises(InvalidOrder):
        order_params(req)


def test_create_order_read_back_falls_back_to_ack(client):
    client._clock_synced = True
    client._http.place_order = lambda **kw: env({"orderId": "o-9", "orderLinkId": "c-9"}, t=NOW + 5)
    client._http.get_open_orders = lambda **kw: env({"list": []})
    client._http.get_order_history = lambda **kw: env({"list": []})
    req = OrderRequest("BTCUSDT", "BUY", "LIMIT", D("0.5"), "c-9", D("100"))
    o = client.create_order(req)
    assert (o.order_id, o.client_order_id, o.status) == ("o-9", "c-9", OrderStatus.NEW)
    assert (o.price, o.quantity, o.filled_quantity) == (D("100"), D("0.5"), D(0))
    assert o.updated_at == NOW + 5


def test_get_order_open_then_history_then_not_found(client):
    client._clock_synced = True
    seen = []
    client._http.get_open_orders = lambda **kw: seen.append(("rt", kw)) or env({"list": []})
    client._http.get_order_history = lambda **kw: seen.append(("hist", kw)) or env(
        {"list": [order_row(orderStatus="Cancelled")]})
    o = client.get_order("BTCUSDT", client_order_id="c-1")
    assert o.status is OrderStatus.CANCELED
    ref = {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "c-1"}
    assert seen == [("rt", ref), ("hist", ref)]
    client._http.get_order_history = lambda **kw: env({"list": []})
    with pytest.raises(OrderNotFound) as info:
        client.get_order("BTCUSDT", order_id="nope")
    assert info.value.code == 110001
    with pytest.raises(ValueError):
        client.get_order("BTCUSDT")


def test_cancel_reads_back_until_final(client):
    client._clock_synced = True
    client._http.cancel_order = lambda **kw: env({"orderId": "o-1", "orderLinkId": "c-1"})
    states = iter(["New", "Cancelled"])
    client._http.get_open_orders = lambda **kw: env(
        {"list": [order_row(orderType="Limit", price="10", timeInForce="GTC",
                            orderStatus=next(states), cumExecQty="0", avgPrice="")]})
    o = client.cancel_order("BTCUSDT", client_order_id="c-1")
    assert o.status is OrderStatus.CANCELED and o.price == D("10")


def test_cancel_unknown_maps_110001(client):
    client._clock_synced = True
    client._http.cancel_order = lambda **kw: (_ for _ in ()).throw(
        ret_error(110001, "order not exists or too late to cancel"))
    with pytest.raises(OrderNotFound) as info:
        client.cancel_order("BTCUSDT", order_id="1")
    assert info.value.code == 110001


def test_open_orders_paged_and_filtered(client):
    client._clock_synced = True
    calls = []

    def realtime(**kw):
        calls.append(kw)
        if "cursor" not in kw:
            return env({"list": [order_row(orderId="a", orderStatus="New")],
                        "nextPageCursor": "page%3D2"})
        return env({"list": [order_row(orderId="b", orderStatus="PartiallyFilled"),
                             order_row(orderId="c", orderStatus="Filled")], "nextPageCursor": ""})

    client._http.get_open_orders = realtime
    assert [o.order_id for o in client.get_open_orders()] == ["a", "b"]
    assert calls[0] == {"category": "linear", "orderFilter": "Order", "settleCoin": "USDT",
                        "limit": 50}
    assert calls[1]["cursor"] == "page%3D2"
    calls.clear()
    client.get_open_orders("ETHUSDT")
    assert calls[0] == {"category": "linear", "orderFilter": "Order", "symbol": "ETHUSDT",
                        "limit": 50}


def test_fills_sorted_limited_and_trades_only(client):
    client._clock_synced = True
    calls = []
    client._http.get_executions = lambda **kw: calls.append(kw) or env(
        {"list": [exec_row("3", 30), exec_row("f", 25, "Funding"), exec_row("1", 10)],
         "nextPageCursor": "more"})
    fills = client.get_fills("BTCUSDT", order_id="o-1", start_time=5, limit=3)
    assert [f.trade_id for f in fills] == ["1", "3"]
    assert calls == [{"category": "linear", "symbol": "BTCUSDT", "orderId": "o-1",
                      "startTime": 5, "limit": 3}]


def test_symbol_rules_cached(client):
    info = env({"category": "linear", "nextPageCursor": "", "list": [{
        "symbol": "BTCUSDT", "priceFilter": {"tickSize": "0.10"},
        "lotSizeFilter": {"qtyStep": "0.001", "minOrderQty": "0.001", "maxOrderQty": "100",
                          "minNotionalValue": "5"}}]})
    calls = []
    client._http.get_instruments_info = lambda **kw: calls.append(kw) or info
    assert client.get_symbol_rules("BTCUSDT").tick_size == D("0.10")
    assert client.get_symbol_rules("BTCUSDT").min_notional == D("5")
    with pytest.raises(InvalidOrder) as err:
        client.get_symbol_rules("NOPEUSDT")
    assert err.value.code == 10001
    assert calls == [{"category": "linear", "limit": 1000}]


def test_ticker_unknown_symbol(client):
    client._http.get_tickers = lambda **kw: env({"category": "linear", "list": []})
    with pytest.raises(InvalidOrder):
        client.get_ticker("NOPEUSDT")


def test_connection_refused_maps_to_unavailable():
    c = BybitLinearClient("k", "s", False, VenueEndpoints("http://127.0.0.1:9", "ws://x"), 1)
    with pytest.raises(ExchangeUnavailable):
        c.server_time()
    with pytest.raises(ExchangeUnavailable):
        c.validate_credentials()        # the clock sync fails first, mapped the same way
    c.close()
