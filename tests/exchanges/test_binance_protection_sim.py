"""BinanceFuturesClient protection legs (Algo Service), liquidation/ADL fills, margin
calls and funding against the simulator, through the adapter's ExchangeClient methods
and its user stream (real python-binance and websocket-client; nothing stubbed)."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal as D

import pytest

from exchanges.binance.client import BinanceFuturesClient
from exchanges.errors import InvalidOrder, ProtectionLegNotFound, UseAlgoOrderApi
from exchanges.binance.errors import binance_errors
from exchanges.types import (
    FundingFee, MarginCall, OrderEvent, OrderRequest, ProtectionKind, ProtectionLegUpdate,
    ProtectionStatus, WorkingType,
)

SYMBOL = "BTCUSDT"
PRICE = D("50000")


@pytest.fixture
def client(account, endpoints):
    c = BinanceFuturesClient(account[0], account[1], testnet=False, endpoints=endpoints,
                             timeout_s=5)
    yield c
    c.close()


def coid() -> str:
    return "t-" + uuid.uuid4().hex[:20]


def collect(stream, want, deadline_s=5.0):
    events = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not want(events):
        events.extend(stream.recv(timeout_s=0.5))
    return events


def open_long(client, qty="0.010"):
    client.create_order(OrderRequest(SYMBOL, "BUY", "MARKET", D(qty), coid()))


def test_stop_loss_leg_fires_and_the_stream_reports_it(client, sim):
    open_long(client)
    stream = client.user_stream()
    stream.connect()
    try:
        cid = coid()
        leg = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, cid,
                                          trigger_price=D("49000"),
                                          working_type=WorkingType.MARK_PRICE)
        assert (leg.kind, leg.status, leg.trigger_price) == (
            ProtectionKind.STOP_LOSS, ProtectionStatus.NEW, D("49000"))
        assert leg.client_order_id == cid and leg.order_id and leg.order_side == "SELL"
        assert [l.client_order_id for l in client.open_protection_legs(SYMBOL)] == [cid]
        sim.set_price(SYMBOL, "48900")
        events = collect(stream, lambda evs: any(
            isinstance(e, ProtectionLegUpdate) and e.leg.status is ProtectionStatus.FILLED
            for e in evs))
    finally:
        stream.close()
    updates = [e.leg for e in events if isinstance(e, ProtectionLegUpdate)]
    assert [u.status for u in updates][-2:] == [ProtectionStatus.TRIGGERED,
                                                ProtectionStatus.FILLED]
    done = updates[-1]
    assert done.filled_quantity == D("0.010") and done.triggered_order_id
    fills = [e.fill for e in events if isinstance(e, OrderEvent) and e.fill is not None]
    assert len(fills) == 1 and fills[0].order_id == done.triggered_order_id
    assert fills[0].client_order_id == cid and fills[0].fee > 0 and fills[0].reason is None
    assert client.get_positions() == []
    got = client.get_protection_leg(SYMBOL, cid)
    assert got.status is ProtectionStatus.FILLED
    assert got.triggered_order_id == done.triggered_order_id
    assert client.open_protection_legs() == []


def test_take_profit_and_trailing_then_cancel(client, sim):
    open_long(client)
    tp = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.TAKE_PROFIT, coid(),
                                     trigger_price=D("52000"))
    ts = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.TRAILING_STOP, coid(),
                                     callback_rate=D("1.5"), activation_price=D("51000"))
    assert ts.callback_rate == D("1.5") and ts.activation_price == D("51000")
    assert ts.trigger_price is None and ts.kind is ProtectionKind.TRAILING_STOP
    canceled = client.cancel_protection_leg(SYMBOL, tp.client_order_id)
    assert canceled.status is ProtectionStatus.CANCELED
    with pytest.raises(ProtectionLegNotFound) as info:
        client.cancel_protection_leg(SYMBOL, tp.client_order_id)
    assert info.value.code == -2011
    sim.set_price(SYMBOL, "53000")      # activated; stop 1.5 % under 53000 = 52205
    sim.set_price(SYMBOL, "52200")
    assert client.get_protection_leg(SYMBOL, ts.client_order_id).status is ProtectionStatus.FILLED
    assert client.get_positions() == []
    with pytest.raises(ProtectionLegNotFound):
        client.get_protection_leg(SYMBOL, "never-placed")


def test_refusals_are_typed(client, sim):
    with pytest.raises(InvalidOrder) as info:
        client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, coid(),
                                    trigger_price=D("49000"))
    assert info.value.code == -4509
    open_long(client)
    with pytest.raises(InvalidOrder) as info:
        client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, coid(),
                                    trigger_price=D("51000"))
    assert info.value.code == -2021
    with pytest.raises(InvalidOrder) as info:      # outside 0.1..10: refused locally
        client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.TRAILING_STOP, coid(),
                                    callback_rate=D("12"))
    assert info.value.code is None
    with pytest.raises(UseAlgoOrderApi) as info, binance_errors():
        client._client._request_futures_api("post", "order", True, data={
            "symbol": SYMBOL, "side": "SELL", "type": "STOP_MARKET", "stopPrice": "49000",
            "closePosition": "true"})
    assert info.value.code == -4120


def test_liquidation_adl_margin_call_and_funding(client, sim, account):
    open_long(client)
    stream = client.user_stream()
    stream.connect()
    try:
        sim._call("POST", "/_sim/margin_call", {"api_key": account[0]})
        sim._call("POST", "/_sim/funding", {"symbol": SYMBOL, "rate": "0.0002"})
        sim._call("POST", "/_sim/liquidate", {"api_key": account[0], "symbol": SYMBOL})
        events = collect(stream, lambda evs: any(
            isinstance(e, OrderEvent) and e.fill is not None for e in evs))
        open_long(client)
        sim._call("POST", "/_sim/liquidate", {"api_key": account[0], "symbol": SYMBOL,
                                              "kind": "adl"})
        events += collect(stream, lambda evs: any(
            isinstance(e, OrderEvent) and e.fill is not None and e.fill.reason == "adl"
            for e in evs))
    finally:
        stream.close()
    [call] = [e for e in events if isinstance(e, MarginCall)]
    assert call.symbol == SYMBOL and call.position_amount == D("0.010")
    assert call.maintenance_margin > 0 and call.position_side == "LONG"
    [fee] = [e for e in events if isinstance(e, FundingFee)]
    assert fee.amount == D("-0.1") and fee.asset == "USDT"     # 0.01 * 50000 * 0.0002
    reasons = [e.fill.reason for e in events if isinstance(e, OrderEvent) and e.fill]
    assert reasons.count("liquidation") == 1 and reasons[-1] == "adl"
    [income] = client.get_funding_fees(SYMBOL)
    assert income.amount == D("-0.1") and income.symbol == SYMBOL and income.id
    assert income.time_ms == fee.time_ms
