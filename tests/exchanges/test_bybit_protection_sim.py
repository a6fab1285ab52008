"""BybitLinearClient protection legs (position trading-stop and its conditional orders),
liquidation/ADL fills and funding against the simulator, through the adapter's
ExchangeClient methods and its private stream (real pybit and websocket-client)."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal as D

import pytest

from exchanges.bybit.client import BybitLinearClient
from exchanges.errors import InvalidOrder, ProtectionLegNotFound
from exchanges.types import (
    FillEvent, FundingFee, OrderEvent, OrderRequest, ProtectionKind, ProtectionLegUpdate,
    ProtectionStatus, WorkingType,
)

SYMBOL = "BTCUSDT"


@pytest.fixture
def client(account, endpoints):
    c = BybitLinearClient(account[0], account[1], testnet=False, endpoints=endpoints,
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
        leg = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, coid(),
                                          trigger_price=D("49000"),
                                          working_type=WorkingType.MARK_PRICE)
        assert (leg.kind, leg.status, leg.trigger_price, leg.working_type) == (
            ProtectionKind.STOP_LOSS, ProtectionStatus.NEW, D("49000"), WorkingType.MARK_PRICE)
        assert leg.client_order_id == f"{SYMBOL}-stop_loss" and leg.order_side == "SELL"
        assert client.get_open_orders(SYMBOL) == []          # a leg is not an open order
        assert [l.order_id for l in client.open_protection_legs()] == [leg.order_id]
        sim.set_price(SYMBOL, "48900")
        events = collect(stream, lambda evs: any(
            isinstance(e, ProtectionLegUpdate) and e.leg.status is ProtectionStatus.FILLED
            for e in evs) and any(isinstance(e, FillEvent) for e in evs))
    finally:
        stream.close()
    statuses = [e.leg.status for e in events if isinstance(e, ProtectionLegUpdate)]
    assert ProtectionStatus.TRIGGERED in statuses and statuses[-1] is ProtectionStatus.FILLED
    [fill] = [e.fill for e in events if isinstance(e, FillEvent)]
    assert fill.order_id == leg.order_id and fill.fee > 0 and fill.reason is None
    assert any(isinstance(e, OrderEvent) and e.order.order_id == leg.order_id for e in events)
    assert client.get_positions() == []
    got = client.get_protection_leg(SYMBOL, leg.client_order_id)
    assert got.status is ProtectionStatus.FILLED and got.filled_quantity == D("0.010")
    assert client.open_protection_legs(SYMBOL) == []


def test_take_profit_trailing_modify_and_cancel(client, sim):
    open_long(client)
    tp = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.TAKE_PROFIT, coid(),
                                     trigger_price=D("52000"))
    moved = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.TAKE_PROFIT, coid(),
                                        trigger_price=D("53000"))
    assert moved.order_id == tp.order_id and moved.trigger_price == D("53000")
    ts = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.TRAILING_STOP, coid(),
                                     callback_rate=D("1"), activation_price=D("51000"))
    assert ts.trailing_distance == D("510")              # 1 % of 51000, on the 0.1 tick
    canceled = client.cancel_protection_leg(SYMBOL, tp.client_order_id)
    assert canceled.status is ProtectionStatus.CANCELED
    assert [l.kind for l in client.open_protection_legs(SYMBOL)] == [ProtectionKind.TRAILING_STOP]
    with pytest.raises(ProtectionLegNotFound):
        client.cancel_protection_leg(SYMBOL, tp.client_order_id)
    assert client.get_protection_leg(SYMBOL, tp.client_order_id).status is \
        ProtectionStatus.CANCELED
    sim.set_price(SYMBOL, "52000")       # activated; stop 52000 - 510 = 51490
    sim.set_price(SYMBOL, "51490")
    assert client.get_protection_leg(SYMBOL, ts.client_order_id).status is \
        ProtectionStatus.FILLED
    assert client.get_positions() == []


def test_refusals(client, sim):
    with pytest.raises(InvalidOrder) as info:
        client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, coid(),
                                    trigger_price=D("49000"))
    assert info.value.code == 10001                 # no position
    open_long(client)
    with pytest.raises(InvalidOrder) as info:
        client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, coid(),
                                    trigger_price=D("51000"))
    assert info.value.code == 10001                 # on the wrong side of the price
    with pytest.raises(ProtectionLegNotFound):
        client.get_protection_leg(SYMBOL, "nonsense")


def test_liquidation_adl_and_funding(client, sim, account):
    open_long(client)
    stream = client.user_stream()
    stream.connect()
    try:
        sim._call("POST", "/_sim/funding", {"symbol": SYMBOL, "rate": "-0.0001"})
        sim._call("POST", "/_sim/liquidate", {"api_key": account[0], "symbol": SYMBOL})
        open_long(client)
        sim._call("POST", "/_sim/liquidate", {"api_key": account[0], "symbol": SYMBOL,
                                              "kind": "adl"})
        events = collect(stream, lambda evs: any(
            isinstance(e, FillEvent) and e.fill.reason == "adl" for e in evs))
    finally:
        stream.close()
    [fee] = [e for e in events if isinstance(e, FundingFee)]
    assert fee.amount == D("0.05") and fee.symbol == SYMBOL   # shorts pay: a long receives
    reasons = [e.fill.reason for e in events if isinstance(e, FillEvent)]
    assert reasons.count("liquidation") == 1 and reasons.count("adl") == 1
    [rest_fee] = client.get_funding_fees(SYMBOL)
    assert rest_fee == fee
    reasons = [f.reason for f in client.get_fills(SYMBOL)]
    assert reasons.count("liquidation") == 1 and reasons.count("adl") == 1
    assert reasons.count(None) == 2                    # the two market buys
