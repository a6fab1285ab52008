"""BybitLinearClient and BybitUserStream against the local exchange simulator.

Real pybit and websocket-client talk to ``tests.support.simulator``'s process over
loopback (Bybit v5 REST under ``/v5``, private WS ``/v5/private``); nothing is stubbed.
"""
from __future__ import annotations

import time
import uuid
from decimal import Decimal as D

import pytest

from exchanges.bybit.client import BybitLinearClient
from exchanges.errors import (
    AuthFailed, ClockSkew, ExchangeTimeout, ExchangeUnavailable, InsufficientBalance,
    InvalidOrder, IpBanned, OrderNotFound, RateLimited,
)
from exchanges.types import (
    AccountEvent, FillEvent, OrderEvent, OrderRequest, OrderStatus, VenueEndpoints,
)
from tests.support.simulator import start_simulator

SYMBOL = "BTCUSDT"
PRICE = D("50000")

@pytest.fixture(scope="module")
def sim():
    proc = start_simulator()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def endpoints(sim):
    return VenueEndpoints(rest_url=sim.url, ws_url=sim.ws_url)


@pytest.fixture
def account(sim):
    """A fresh funded account per test: (api_key, api_secret)."""
    key, secret = "k" + uuid.uuid4().hex[:20], "s" + uuid.uuid4().hex
    sim.create_account(key, secret, balances={"USDT": "10000"})
    sim.set_price(SYMBOL, str(PRICE))
    yield key, secret
    sim.clear_faults()


@pytest.fixture
def client(account, endpoints):
    c = BybitLinearClient(account[0], account[1], testnet=False, endpoints=endpoints, timeout_s=5)
    yield c
    c.close()


def coid() -> str:
    return "t-" + uuid.uuid4().hex[:20]


def market(side: str = "BUY", qty: str = "0.010") -> OrderRequest:
    return OrderRequest(SYMBOL, side, "MARKET", D(qty), coid())


def test_validate_credentials_ok(client):
    client.validate_credentials()
    assert abs(client.server_time() - int(time.time() * 1000)) < 60_000


def test_bad_key_is_auth_failed(endpoints):
    c = BybitLinearClient("no-such-key", "whatever", False, endpoints, 5)
    with pytest.raises(AuthFailed) as info:
        c.validate_credentials()
    assert info.value.http_status == 401     # pybit raises on the status, body unread
    c.close()


def test_bad_secret_is_auth_failed(account, endpoints):
    c = BybitLinearClient(account[0], "wrong-secret", False, endpoints, 5)
    with pytest.raises(AuthFailed) as info:
        c.validate_credentials()
    assert info.value.code == 10004
    c.close()


def test_balance(client):
    b = client.get_balance()
    usdt = next(a for a in b.assets if a.asset == "USDT")
    assert usdt.wallet_balance == D("10000")
    assert b.total_wallet_balance > 0 and b.available_balance > 0


def test_symbol_rules_and_ticker(client):
    r = client.get_symbol_rules(SYMBOL)
    assert r.tick_size > 0 and r.step_size > 0 and r.min_qty > 0
    t = client.get_ticker(SYMBOL)
    assert t.symbol == SYMBOL and t.mark_price > 0 and t.last_price > 0
    assert t.bid is None or t.ask is None or t.bid <= t.ask


def test_market_order_fills_and_shows_in_positions_and_fills(client):
    req = market("BUY", "0.010")
    o = client.create_order(req)
    assert o.client_order_id == req.client_order_id
    assert o.status is OrderStatus.FILLED
    assert o.filled_quantity == D("0.010") and o.avg_price > 0
    again = client.get_order(SYMBOL, client_order_id=req.client_order_id)
    assert again.order_id == o.order_id and again.status is OrderStatus.FILLED
    [p] = [p for p in client.get_positions() if p.symbol == SYMBOL]
    assert (p.side, p.size) == ("LONG", D("0.010"))
    assert p.entry_price == o.avg_price and p.leverage == D("20") and p.mark_price > 0
    assert p.margin_type == "cross"
    fills = client.get_fills(SYMBOL, order_id=o.order_id)
    assert sum(f.quantity for f in fills) == D("0.010")
    assert all(f.order_id == o.order_id and f.fee >= 0 for f in fills)


def test_sell_opens_short(client):
    client.create_order(market("SELL", "0.020"))
    [p] = [p for p in client.get_positions() if p.symbol == SYMBOL]
    assert (p.side, p.size) == ("SHORT", D("0.020"))


def test_limit_rests_then_cancel(client):
    req = OrderRequest(SYMBOL, "BUY", "LIMIT", D("0.010"), coid(), price=PRICE * D("0.9"))
    o = client.create_order(req)
    assert o.status is OrderStatus.NEW and o.price == PRICE * D("0.9")
    assert o.time_in_force == "GTC"
    assert o.order_id in [x.order_id for x in client.get_open_orders(SYMBOL)]
    assert o.order_id in [x.order_id for x in client.get_open_orders()]
    c = client.cancel_order(SYMBOL, order_id=o.order_id)
    assert c.status is OrderStatus.CANCELED and c.order_id == o.order_id
    assert o.order_id not in [x.order_id for x in client.get_open_orders(SYMBOL)]
    with pytest.raises(OrderNotFound) as info:
        client.cancel_order(SYMBOL, order_id=o.order_id)
    assert info.value.code in (110001, 110008, 110010)


def test_limit_filled_by_simulator(client, sim):
    o = client.create_order(OrderRequest(SYMBOL, "SELL", "LIMIT", D("0.020"), coid(),
                                         price=PRICE * D("1.05")))
    sim.fill(o.order_id, quantity="0.005")
    part = client.get_order(SYMBOL, order_id=o.order_id)
    assert part.status is OrderStatus.PARTIALLY_FILLED and part.filled_quantity == D("0.005")
    sim.fill(o.order_id)
    done = client.get_order(SYMBOL, order_id=o.order_id)
    assert done.status is OrderStatus.FILLED and done.filled_quantity == D("0.020")


def test_get_order_unknown(client):
    with pytest.raises(OrderNotFound) as info:
        client.get_order(SYMBOL, client_order_id="never-sent")
    assert info.value.code == 110001


def _collect(stream, want, deadline_s=5.0):
    """Receive until ``want(events)`` holds or the deadline passes."""
    events = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not want(events):
        events.extend(stream.recv(timeout_s=0.5))
    return events


def test_user_stream_order_and_fill_events(client):
    stream = client.user_stream()
    stream.connect()
    try:
        req = market("BUY", "0.010")
        o = client.create_order(req)

        def done(evs):
            return (any(isinstance(e, OrderEvent) and e.order.order_id == o.order_id
                        and e.order.status is OrderStatus.FILLED for e in evs)
                    and any(isinstance(e, FillEvent) and e.fill.order_id == o.order_id
                            for e in evs))
        events = _collect(stream, done)
        orders = [e for e in events if isinstance(e, OrderEvent) and e.order.order_id == o.order_id]
        assert orders, events
        assert orders[-1].order.client_order_id == req.client_order_id
        assert orders[-1].event_time > 0
        fills = [e for e in events if isinstance(e, FillEvent) and e.fill.order_id == o.order_id]
        assert fills, events
        assert sum(e.fill.quantity for e in fills) == D("0.010")
        assert all(e.fill.price > 0 and e.fill.fee >= 0 for e in fills)
        acct = _collect(stream, lambda evs: any(isinstance(e, AccountEvent) for e in evs),
                        deadline_s=2.0)
        acct = [e for e in events + acct if isinstance(e, AccountEvent)]
        assert any(p.symbol == SYMBOL and p.amount == D("0.010") for a in acct for p in a.positions)
        stream.keepalive()
        after = stream.recv(timeout_s=0.5)              # the pong is swallowed
        assert all(isinstance(e, (OrderEvent, FillEvent, AccountEvent)) for e in after)
    finally:
        stream.close()


def test_user_stream_bad_secret_is_auth_failed(account, endpoints):
    c = BybitLinearClient(account[0], "wrong-secret", False, endpoints, 5)
    stream = c.user_stream()
    try:
        with pytest.raises(AuthFailed):
            stream.connect()
    finally:
        stream.close()
        c.close()


def test_rate_limit_10006_is_rate_limited(client, sim):
    client.validate_credentials()
    sim.add_fault(kind="http_429", count=1)
    with pytest.raises(RateLimited) as info:
        client.get_balance()
    assert info.value.code == 10006
    assert info.value.retry_after_ms is not None and info.value.retry_after_ms > 0
    client.get_balance()


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


def test_order_rejections(client):
    with pytest.raises(InsufficientBalance) as info:
        client.create_order(market("BUY", "5"))
    assert info.value.code == 110007
    with pytest.raises(InvalidOrder) as info:
        client.create_order(market("BUY", "0.0001"))
    assert info.value.code == 10001
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
        sim.add_fault(kind="timeout", ms=2500, api_key=account[0])
        req = market("BUY", "0.010")
        with pytest.raises(ExchangeTimeout):
            c.create_order(req)
        time.sleep(1.6)     # let the held reply go
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


def test_user_stream_dropped_socket_raises(client, sim, account):
    stream = client.user_stream()
    stream.connect()
    try:
        sim.add_fault(kind="drop_ws", api_key=account[0])
        with pytest.raises(ExchangeUnavailable):
            _collect(stream, lambda evs: False, deadline_s=3.0)
    finally:
        stream.close()
