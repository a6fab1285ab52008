"""BinanceFuturesClient and BinanceUserStream against the local exchange simulator:
the Binance-only behaviour.

What both adapters must do (credentials, snapshots, orders, fills, cancel races,
rejections with codes, 429, clock skew, stream events and drops) is asserted once for
both venues in ``test_contract.py``. Real python-binance and websocket-client talk to
``tests.support.simulator``'s process over loopback; nothing is stubbed.
"""
from __future__ import annotations

import time
import uuid
from decimal import Decimal as D

import pytest

from exchanges.binance.client import BinanceFuturesClient
from exchanges.errors import ClockSkew
from exchanges.types import OrderRequest, OrderStatus, StreamExpired

SYMBOL = "BTCUSDT"
PRICE = D("50000")


@pytest.fixture
def client(account, endpoints):
    c = BinanceFuturesClient(account[0], account[1], testnet=False, endpoints=endpoints, timeout_s=5)
    yield c
    c.close()


def coid() -> str:
    return "t-" + uuid.uuid4().hex[:20]


def _collect(stream, want, deadline_s=5.0):
    """Receive until ``want(events)`` holds or the deadline passes."""
    events = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not want(events):
        events.extend(stream.recv(timeout_s=0.5))
    return events


@pytest.mark.parametrize("skew_ms", [-5000, 25000])
def test_clock_skew_resample_then_success(client, sim, skew_ms):
    """The server clock jumps (behind: our timestamp is > serverTime + 1000; ahead: it is
    older than recvWindow 10000): the first signed call gets -1021, the adapter resamples
    the offset and the retried call succeeds."""
    client.validate_credentials()
    before = client._client.timestamp_offset
    sim.add_fault(kind="clock_skew", ms=skew_ms)
    b = client.get_balance()
    assert b.total_wallet_balance == D("10000")
    assert abs(client._client.timestamp_offset - before - skew_ms) < 1000


def test_clock_skew_cancel_not_retried_but_resampled(client, sim):
    o = client.create_order(OrderRequest(SYMBOL, "BUY", "LIMIT", D("0.010"), coid(),
                                         price=PRICE * D("0.9")))
    sim.add_fault(kind="clock_skew", ms=-5000)
    with pytest.raises(ClockSkew) as info:
        client.cancel_order(SYMBOL, order_id=o.order_id)
    assert info.value.code == -1021
    assert client.cancel_order(SYMBOL, order_id=o.order_id).status is OrderStatus.CANCELED


def test_user_stream_listen_key_expired(client, sim, account):
    stream = client.user_stream()
    stream.connect()
    try:
        sim.add_fault(kind="expire_listen_key", api_key=account[0])
        events = _collect(stream, lambda evs: any(isinstance(e, StreamExpired) for e in evs))
        assert any(isinstance(e, StreamExpired) and e.event_time > 0 for e in events), events
    finally:
        stream.close()


def test_a_failed_handshake_keeps_its_listen_key_for_the_next_connect(account, sim):
    """While the stream endpoint is unreachable, retries reuse the listenKey POSTed for
    the first try (no POST, weight 1, per retry); once it is reachable, that key opens
    the stream."""
    from exchanges.errors import ExchangeUnavailable
    from exchanges.types import VenueEndpoints
    from tests.support.server import free_port

    dead = VenueEndpoints(sim.url, f"ws://127.0.0.1:{free_port()}")  # nothing listens there
    c = BinanceFuturesClient(account[0], account[1], testnet=False, endpoints=dead, timeout_s=5)

    def posts() -> int:
        return sim.state()["requests"].get(account[0], {}).get("POST /fapi/v1/listenKey", 0)
    try:
        for _ in range(3):
            with pytest.raises(ExchangeUnavailable):
                c.user_stream().connect()
        assert posts() == 1
        c.endpoints = VenueEndpoints(sim.url, sim.ws_url)
        stream = c.user_stream()
        stream.connect()
        try:
            assert posts() == 1 and stream.connected
        finally:
            stream.close()  # DELETEs the key: the next connect POSTs again
        stream = c.user_stream()
        stream.connect()
        stream.close()
        assert posts() == 2
    finally:
        c.close()
