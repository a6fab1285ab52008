"""BybitLinearClient and BybitUserStream against the local exchange simulator:
the Bybit-only behaviour.

What both adapters must do (credentials, snapshots, orders, fills, cancel races,
rejections with codes, 429/10006, clock skew, stream events and drops) is asserted once
for both venues in ``test_contract.py``. Real pybit and websocket-client talk to
``tests.support.simulator``'s process over loopback (Bybit v5 REST under ``/v5``,
private WS ``/v5/private``); nothing is stubbed.
"""
from __future__ import annotations

import time
import uuid
from decimal import Decimal as D

import pytest

from exchanges.bybit.client import BybitLinearClient
from exchanges.errors import (
    AuthFailed,
    ClockSkew,
    ExchangeTimeout,
    ExchangeUnavailable,
    InvalidOrder,
    IpBanned,
)
from exchanges.types import OrderRequest, OrderStatus

SYMBOL = "BTCUSDT"
PRICE = D("50000")

@pytest.fixture
def client(account, endpoints):
    c = BybitLinearClient(account[0], account[1], testnet=False, endpoints=endpoints, timeout_s=5)
    yield c
    c.close()


def coid() -> str:
    return "t-" + uuid.uuid4().hex[:20]


def market(side: str = "BUY", qty: str = "0.010") -> OrderRequest:
    return OrderRequest(SYMBOL, side, "MARKET", D(qty), coid())


def test_sell_opens_short(client):
    client.create_order(market("SELL", "0.020"))
    [p] = [p for p in client.get_positions() if p.symbol == SYMBOL]
    assert (p.side, p.size) == ("SHORT", D("0.020"))


def test_user_stream_bad_secret_is_auth_failed(account, endpoints):
    c = BybitLinearClient(account[0], "wrong-secret", False, endpoints, 5)
    stream = c.user_stream()
    try:
        with pytest.raises(AuthFailed):
            stream.connect()
    finally:
        stream.close()
        c.close()


def test_http_403_is_ip_banned(client, sim):
    client.validate_credentials()
    sim.add_fault(kind="http_418", count=1)
    with pytest.raises(IpBanned) as info:
        client.get_positions()
    assert info.value.http_status == 403 and info.value.retry_after_ms > 0


def test_http_5xx_is_unavailable(client, sim):
    client.validate_credentials()
    sim.add_fault(kind="http_5xx", count=1)
    with pytest.raises(ExchangeUnavailable) as info:
        client.get_open_orders()
    assert info.value.http_status == 503


def test_duplicate_client_order_id_is_invalid_order(client):
    req = market("BUY", "0.010")
    client.create_order(req)
    with pytest.raises(InvalidOrder) as info:
        client.create_order(req)
    assert info.value.code == 110072


def test_reject_orders_fault_gives_rejected(client, sim):
    sim.add_fault(kind="reject_orders", count=1)
    o = client.create_order(OrderRequest(SYMBOL, "BUY", "LIMIT", D("0.010"), coid(),
                                         price=PRICE * D("0.9")))
    assert o.status is OrderStatus.REJECTED


def test_timeout_on_create_then_reconcile_by_client_id(account, endpoints, sim):
    c = BybitLinearClient(account[0], account[1], False, endpoints, timeout_s=1)
    try:
        c.validate_credentials()
        sim.add_fault(kind="timeout", ms=1500, api_key=account[0])
        req = market("BUY", "0.010")
        with pytest.raises(ExchangeTimeout):
            c.create_order(req)
        time.sleep(0.6)     # let the held reply go (1.5 s after the request)
        o = c.get_order(SYMBOL, client_order_id=req.client_order_id)
        assert o.status is OrderStatus.FILLED
    finally:
        c.close()


@pytest.mark.parametrize("skew_ms", [-5000, 25000])
def test_clock_skew_resample_then_success(client, sim, skew_ms):
    """The server clock jumps (behind: our timestamp is >= serverTime + 1000; ahead: it
    is older than recv_window 5000): the first signed call gets 10002, the adapter
    resamples the offset and the retried call succeeds."""
    client.validate_credentials()
    before = client.time_offset_ms
    sim.add_fault(kind="clock_skew", ms=skew_ms)
    b = client.get_balance()
    assert b.total_wallet_balance > 0
    assert abs(client.time_offset_ms - before - skew_ms) < 1000
    assert client._http.recv_window == 5000


def test_clock_skew_create_order_retried(client, sim):
    client.validate_credentials()
    sim.add_fault(kind="clock_skew", ms=-5000)
    o = client.create_order(market("BUY", "0.010"))
    assert o.status is OrderStatus.FILLED


def test_clock_skew_cancel_not_retried_but_resampled(client, sim):
    o = client.create_order(OrderRequest(SYMBOL, "BUY", "LIMIT", D("0.010"), coid(),
                                         price=PRICE * D("0.9")))
    sim.add_fault(kind="clock_skew", ms=-5000)
    with pytest.raises(ClockSkew) as info:
        client.cancel_order(SYMBOL, order_id=o.order_id)
    assert info.value.code == 10002
    assert client.cancel_order(SYMBOL, order_id=o.order_id).status is OrderStatus.CANCELED
