"""Bybit position TP/SL/trailing stop (``/v5/position/trading-stop``), its conditional
orders on the ``order`` topic and in ``/v5/order/*``, liquidation/ADL executions and
funding, through the real pybit HTTP client and a /v5/private WebSocket."""
from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest
from pybit.exceptions import InvalidRequestError

from tests.support.simulator import recv_json_until

SYMBOL = "BTCUSDT"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bybit"


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, "60000")


@pytest.fixture
def bb(sim, account):
    return sim.bybit_client(account.api_key, account.api_secret)


def open_long(bb, qty="0.010"):
    bb.place_order(category="linear", symbol=SYMBOL, side="Buy", orderType="Market", qty=qty)


def orders_of(frames, **match):
    return [d for f in frames if f.get("topic") == "order" for d in f["data"]
            if all(d.get(k) == v for k, v in match.items())]


def conditional(bb):
    return bb.get_open_orders(category="linear", symbol=SYMBOL,
                              orderFilter="StopOrder")["result"]["list"]


def test_stop_loss_fires_as_its_own_conditional_order(sim, account, bb):
    open_long(bb)
    ws = sim.bybit_private_ws(account.api_key, account.api_secret)
    try:
        bb.set_trading_stop(category="linear", symbol=SYMBOL, stopLoss="59000",
                            slTriggerBy="MarkPrice", tpslMode="Full", positionIdx=0)
        frames = recv_json_until(ws, lambda fs: orders_of(fs, orderStatus="Untriggered"))
        [leg] = orders_of(frames, orderStatus="Untriggered")
        keys = set(json.loads((FIXTURES / "ws_private_order.json").read_text())["data"][0])
        assert keys <= set(leg)
        assert leg["stopOrderType"] == "StopLoss" and leg["triggerPrice"] == "59000.00"
        assert leg["triggerBy"] == "MarkPrice" and leg["side"] == "Sell"
        assert leg["reduceOnly"] is True and leg["closeOnTrigger"] is True
        assert leg["orderLinkId"] == "" and leg["createType"] == "CreateByStopLoss"
        [listed] = conditional(bb)
        assert listed["orderId"] == leg["orderId"]
        pos = bb.get_positions(category="linear", symbol=SYMBOL)["result"]["list"][0]
        assert pos["stopLoss"] == "59000.00" and pos["takeProfit"] == "0.00"
        sim.set_price(SYMBOL, "58900")
        frames = recv_json_until(ws, lambda fs: orders_of(fs, orderStatus="Filled"))
    finally:
        ws.close()
    statuses = [d["orderStatus"] for d in orders_of(frames, orderId=leg["orderId"])]
    assert statuses == ["Triggered", "Filled"]
    execs = [d for f in frames if f.get("topic") == "execution" for d in f["data"]]
    assert len(execs) == 1 and execs[0]["orderId"] == leg["orderId"]
    assert execs[0]["stopOrderType"] == "StopLoss" and D(execs[0]["execFee"]) > 0
    assert execs[0]["execType"] == "Trade"
    pos = bb.get_positions(category="linear", symbol=SYMBOL)["result"]["list"][0]
    assert pos["size"] == "0.000" and pos["stopLoss"] == "0.00"
    assert conditional(bb) == []


def test_take_profit_fires_and_the_stop_is_deactivated(sim, account, bb):
    open_long(bb)
    bb.set_trading_stop(category="linear", symbol=SYMBOL, stopLoss="59000",
                        takeProfit="61000", tpslMode="Full", positionIdx=0)
    legs = {o["stopOrderType"]: o["orderId"] for o in conditional(bb)}
    assert set(legs) == {"StopLoss", "TakeProfit"}
    sim.set_price(SYMBOL, "61000")
    history = bb.get_order_history(category="linear", symbol=SYMBOL)["result"]["list"]
    by_id = {o["orderId"]: o["orderStatus"] for o in history}
    assert by_id[legs["TakeProfit"]] == "Filled"
    assert by_id[legs["StopLoss"]] == "Deactivated"
    state = {o["type"]: o["status"]
             for o in sim.state(account.api_key)["orders"] if o.get("venue") == "bybit"}
    assert state == {"STOP_MARKET": "EXPIRED", "TAKE_PROFIT_MARKET": "FILLED"}


def test_modify_and_cancel_by_zero(sim, account, bb):
    open_long(bb)
    bb.set_trading_stop(category="linear", symbol=SYMBOL, stopLoss="59000",
                        tpslMode="Full", positionIdx=0)
    [first] = conditional(bb)
    bb.set_trading_stop(category="linear", symbol=SYMBOL, stopLoss="58000",
                        tpslMode="Full", positionIdx=0)
    [moved] = conditional(bb)
    assert moved["orderId"] == first["orderId"] and moved["triggerPrice"] == "58000.00"
    bb.set_trading_stop(category="linear", symbol=SYMBOL, stopLoss="0",
                        tpslMode="Full", positionIdx=0)
    assert conditional(bb) == []


def test_trailing_stop_distance_follows_the_high(sim, account, bb):
    open_long(bb)
    bb.set_trading_stop(category="linear", symbol=SYMBOL, trailingStop="500",
                        activePrice="60500", tpslMode="Full", positionIdx=0)
    [leg] = conditional(bb)
    assert leg["stopOrderType"] == "TrailingStop"
    assert bb.get_positions(category="linear", symbol=SYMBOL)["result"]["list"][0][
        "trailingStop"] == "500.00"
    sim.set_price(SYMBOL, "59800")            # not activated: no trigger
    assert len(conditional(bb)) == 1
    sim.set_price(SYMBOL, "62000")            # activated, stop 61500
    sim.set_price(SYMBOL, "61600")
    assert conditional(bb)[0]["triggerPrice"] == "61500.00"
    sim.set_price(SYMBOL, "61500")
    assert conditional(bb) == []
    pos = bb.get_positions(category="linear", symbol=SYMBOL)["result"]["list"][0]
    assert pos["size"] == "0.000"


def test_refusals(sim, account, bb):
    with pytest.raises(InvalidRequestError) as info:
        bb.set_trading_stop(category="linear", symbol=SYMBOL, stopLoss="59000",
                            tpslMode="Full", positionIdx=0)
    assert info.value.status_code == 10001 and "zero position" in info.value.message
    open_long(bb)
    with pytest.raises(InvalidRequestError) as info:
        bb.set_trading_stop(category="linear", symbol=SYMBOL, stopLoss="61000",
                            tpslMode="Full", positionIdx=0)
    assert info.value.status_code == 10001 and "lower" in info.value.message
    with pytest.raises(InvalidRequestError) as info:
        bb.set_trading_stop(category="linear", symbol=SYMBOL, takeProfit="59000",
                            tpslMode="Full", positionIdx=0)
    assert info.value.status_code == 10001


def test_liquidation_adl_and_funding_executions(sim, account, bb):
    open_long(bb)
    ws = sim.bybit_private_ws(account.api_key, account.api_secret)
    try:
        sim._call("POST", "/_sim/funding", {"symbol": SYMBOL, "rate": "0.0001"})
        sim._call("POST", "/_sim/liquidate", {"api_key": account.api_key, "symbol": SYMBOL})
        frames = recv_json_until(ws, lambda fs: [d for f in fs if f.get("topic") == "execution"
                                                 for d in f["data"]
                                                 if d["execType"] == "BustTrade"])
    finally:
        ws.close()
    execs = [d for f in frames if f.get("topic") == "execution" for d in f["data"]]
    funding = [e for e in execs if e["execType"] == "Funding"][0]
    assert D(funding["execFee"]) == D("0.06") and funding["symbol"] == SYMBOL
    bust = [e for e in execs if e["execType"] == "BustTrade"][0]
    assert bust["orderLinkId"] == "" and bust["createType"] == "CreateByLiq"
    open_long(bb)
    sim._call("POST", "/_sim/liquidate", {"api_key": account.api_key, "symbol": SYMBOL,
                                          "kind": "adl"})
    kinds = [e["execType"] for e in
             bb.get_executions(category="linear", symbol=SYMBOL)["result"]["list"]]
    assert kinds[0] == "AdlTrade" and "BustTrade" in kinds and "Funding" in kinds
    only = bb.get_executions(category="linear", symbol=SYMBOL, execType="Funding")
    assert [e["execType"] for e in only["result"]["list"]] == ["Funding"]


def test_conditional_order_create_fires_and_cancels(sim, account, bb):
    open_long(bb)
    with pytest.raises(InvalidRequestError) as info:
        bb.place_order(category="linear", symbol=SYMBOL, side="Sell", orderType="Market",
                       qty="0.010", triggerPrice="61000", triggerDirection=2, reduceOnly=True)
    assert info.value.status_code == 110093          # a fall to 61000 from 60000
    res = bb.place_order(category="linear", symbol=SYMBOL, side="Sell", orderType="Market",
                         qty="0.010", triggerPrice="59000", triggerDirection=2,
                         triggerBy="MarkPrice", reduceOnly=True, orderLinkId="cond-1")
    [held] = conditional(bb)
    assert held["orderId"] == res["result"]["orderId"] and held["orderLinkId"] == "cond-1"
    assert held["stopOrderType"] == "Stop" and held["orderStatus"] == "Untriggered"
    assert held["triggerDirection"] == 2 and held["qty"] == "0.010"
    bb.cancel_order(category="linear", symbol=SYMBOL, orderLinkId="cond-1")
    assert conditional(bb) == []
    bb.place_order(category="linear", symbol=SYMBOL, side="Sell", orderType="Market",
                   qty="0.010", triggerPrice="59000", triggerDirection=2, reduceOnly=True,
                   orderLinkId="cond-2")
    sim.set_price(SYMBOL, "58900")
    [done] = bb.get_open_orders(category="linear", symbol=SYMBOL,
                                orderLinkId="cond-2")["result"]["list"]
    assert done["orderStatus"] == "Filled" and done["stopOrderType"] == "Stop"
    [ex] = [e for e in bb.get_executions(category="linear", symbol=SYMBOL)["result"]["list"]
            if e["orderLinkId"] == "cond-2"]
    assert ex["createType"] == "CreateByStopOrder"


def test_account_reads(sim, account, bb):
    key = bb.get_api_key_information()["result"]
    assert key["apiKey"] == account.api_key and key["uta"] == 1 and key["readOnly"] == 0
    assert bb.get_account_info()["result"]["unifiedMarginStatus"] == 6
    spot = bb.get_instruments_info(category="spot")["result"]
    assert spot["list"] == []
