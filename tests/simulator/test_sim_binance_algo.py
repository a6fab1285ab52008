"""Binance Algo Service legs, liquidation/ADL, margin call and funding on the simulator,
through the real python-binance Client and a real user-data WebSocket."""
from __future__ import annotations

import time
import uuid
from decimal import Decimal as D

import pytest
import websocket
from binance.exceptions import BinanceAPIException

from tests.support.simulator import SimulatorError, recv_json_until

SYMBOL = "BTCUSDT"

# ALGO_UPDATE "o" keys of the doc example (user-data-streams/Event-Algo-Order-Update)
# that every frame carries; ap/aq/act only once triggered, rm only on a failure.
ALGO_KEYS = {"caid", "aid", "at", "o", "s", "S", "ps", "f", "q", "X", "ai", "tp", "p", "V",
             "wt", "pm", "cp", "pP", "R", "tt", "gtd"}


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, "60000")


def ws_for(sim, client):
    key = client.futures_stream_get_listen_key()
    return websocket.create_connection(f"{sim.ws_url}/private/ws?listenKey={key}", timeout=5)


def algo(frames, status=None):
    return [f for f in frames if f.get("e") == "ALGO_UPDATE"
            and (status is None or f["o"]["X"] == status)]


def open_long(client, qty="0.010"):
    client.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity=qty)


def legs(sim, api_key):
    return [o for o in sim.state(api_key)["orders"] if o["type"] in
            ("STOP_MARKET", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")]


def api_error(fn, **kw) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as info:
        fn(**kw)
    return info.value


def test_stop_loss_triggers_closes_position_and_reports_algo_update(sim, account):
    c = account.client
    open_long(c)
    ws = ws_for(sim, c)
    try:
        cid = f"sl-{uuid.uuid4().hex[:8]}"
        res = c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                          triggerPrice="59000", closePosition="true",
                                          workingType="MARK_PRICE", clientAlgoId=cid)
        assert res["algoStatus"] == "NEW" and res["clientAlgoId"] == cid
        assert res["closePosition"] is True and res["timeInForce"] == "GTE_GTC"
        new = recv_json_until(ws, lambda fs: algo(fs, "NEW"))
        assert ALGO_KEYS <= set(algo(new, "NEW")[0]["o"])
        assert [o["status"] for o in legs(sim, account.api_key)] == ["NEW"]
        assert D(legs(sim, account.api_key)[0]["trigger_price"]) == D("59000")
        sim.set_price(SYMBOL, "59500")          # not yet
        assert c.futures_get_algo_order(clientAlgoId=cid)["algoStatus"] == "NEW"
        sim.set_price(SYMBOL, "58990")
        frames = recv_json_until(ws, lambda fs: algo(fs, "FINISHED"))
    finally:
        ws.close()
    statuses = [f["o"]["X"] for f in algo(frames)]
    assert statuses[-3:] == ["TRIGGERING", "TRIGGERED", "FINISHED"]
    finished = algo(frames, "FINISHED")[0]["o"]
    fills = [f for f in frames if f.get("e") == "ORDER_TRADE_UPDATE" and f["o"]["x"] == "TRADE"]
    assert len(fills) == 1
    fill = fills[0]["o"]
    assert fill["c"] == cid and fill["S"] == "SELL" and fill["R"] is True
    assert fill["ot"] == "STOP_MARKET" and D(fill["n"]) > 0
    assert str(fill["i"]) == finished["ai"] and D(finished["aq"]) == D("0.010")
    assert all(D(p["positionAmt"]) == 0 for p in c.futures_position_information(symbol=SYMBOL))
    got = c.futures_get_algo_order(clientAlgoId=cid)
    assert got["algoStatus"] == "FINISHED" and got["actualOrderId"] == finished["ai"]
    assert [o["status"] for o in legs(sim, account.api_key)] == ["FILLED"]
    assert c.futures_get_open_algo_orders(symbol=SYMBOL) == []


def test_take_profit_fires_then_the_stop_expires_oco(sim, account):
    c = account.client
    open_long(c)
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                triggerPrice="59000", closePosition="true", clientAlgoId="sl-a")
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="TAKE_PROFIT_MARKET",
                                triggerPrice="61000", closePosition="true", clientAlgoId="tp-a")
    assert len(c.futures_get_open_algo_orders(symbol=SYMBOL)) == 2
    sim.set_price(SYMBOL, "61000")
    by_cid = {o["client_order_id"]: o["status"] for o in legs(sim, account.api_key)}
    assert by_cid == {"sl-a": "EXPIRED", "tp-a": "FILLED"}
    assert c.futures_get_open_algo_orders(symbol=SYMBOL) == []


def test_manual_close_expires_every_leg(sim, account):
    c = account.client
    open_long(c)
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                triggerPrice="59000", closePosition="true", clientAlgoId="sl-m")
    c.futures_create_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity="0.010",
                           reduceOnly="true")
    assert c.futures_get_algo_order(clientAlgoId="sl-m")["algoStatus"] == "EXPIRED"


def test_trailing_stop_follows_the_high_after_activation(sim, account):
    c = account.client
    open_long(c)
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="TRAILING_STOP_MARKET",
                                quantity="0.010", reduceOnly="true", callbackRate="1",
                                activatePrice="60500", workingType="MARK_PRICE",
                                clientAlgoId="ts-1")
    sim.set_price(SYMBOL, "59500")        # below activation: 1 % under 60000 is not a trigger
    assert c.futures_get_algo_order(clientAlgoId="ts-1")["algoStatus"] == "NEW"
    sim.set_price(SYMBOL, "62000")        # activated, high 62000 -> stop 61380
    assert D(legs(sim, account.api_key)[0]["trigger_price"]) == D("61380")
    sim.set_price(SYMBOL, "61400")
    assert c.futures_get_algo_order(clientAlgoId="ts-1")["algoStatus"] == "NEW"
    sim.set_price(SYMBOL, "61380")
    got = c.futures_get_algo_order(clientAlgoId="ts-1")
    assert got["algoStatus"] == "FINISHED"
    trades = c.futures_account_trades(symbol=SYMBOL)
    assert trades[-1]["side"] == "SELL" and D(trades[-1]["commission"]) > 0


def test_working_type_picks_mark_or_last_price(sim, account):
    c = account.client
    price = lambda mark, last: sim._call("POST", "/_sim/price", {  # noqa: E731
        "symbol": SYMBOL, "price": mark, "last_price": last})
    open_long(c)
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                triggerPrice="59000", closePosition="true",
                                workingType="MARK_PRICE", clientAlgoId="sl-mark")
    price("60000", "58000")                       # only the last price crossed
    assert c.futures_get_algo_order(clientAlgoId="sl-mark")["algoStatus"] == "NEW"
    price("58900", "60000")
    assert c.futures_get_algo_order(clientAlgoId="sl-mark")["algoStatus"] == "FINISHED"
    price("60000", "60000")
    open_long(c)
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                triggerPrice="59000", closePosition="true",
                                workingType="CONTRACT_PRICE", clientAlgoId="sl-last")
    price("58000", "60000")                       # only the mark crossed
    assert c.futures_get_algo_order(clientAlgoId="sl-last")["algoStatus"] == "NEW"
    price("60000", "58900")
    assert c.futures_get_algo_order(clientAlgoId="sl-last")["algoStatus"] == "FINISHED"


def test_refusals(sim, account):
    c = account.client
    err = api_error(c._request_futures_api, method="post", path="order", signed=True,
                    data={"symbol": SYMBOL, "side": "SELL", "type": "STOP_MARKET",
                          "stopPrice": "59000", "closePosition": "true"})
    assert err.code == -4120 and "Algo Order API" in err.message
    err = api_error(c.futures_create_algo_order, symbol=SYMBOL, side="SELL",
                    type="STOP_MARKET", triggerPrice="59000", closePosition="true")
    assert err.code == -4509                  # no position, no open order
    open_long(c)
    err = api_error(c.futures_create_algo_order, symbol=SYMBOL, side="SELL",
                    type="STOP_MARKET", triggerPrice="61000", closePosition="true")
    assert err.code == -2021                  # would trigger at once
    err = api_error(c.futures_create_algo_order, symbol=SYMBOL, side="SELL",
                    type="TRAILING_STOP_MARKET", quantity="0.010", callbackRate="11")
    assert err.code == -2007
    err = api_error(c.futures_create_algo_order, symbol=SYMBOL, side="SELL",
                    type="TRAILING_STOP_MARKET", closePosition="true", callbackRate="1")
    assert err.code == -1106
    err = api_error(c.futures_create_algo_order, symbol=SYMBOL, side="SELL",
                    type="STOP_MARKET", quantity="0.010", triggerPrice="59000")
    assert err.code == -1102 and "not simulated" in err.message   # would open: not held
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                triggerPrice="59000", closePosition="true", clientAlgoId="x1")
    err = api_error(c.futures_create_algo_order, symbol=SYMBOL, side="SELL",
                    type="STOP_MARKET", triggerPrice="58000", closePosition="true")
    assert err.code == -4130
    c.futures_cancel_algo_order(clientAlgoId="x1")
    err = api_error(c.futures_cancel_algo_order, clientAlgoId="x1")
    assert err.code == -2011
    err = api_error(c.futures_get_algo_order, clientAlgoId="nope")
    assert err.code == -2013


def test_liquidation_and_adl_markers(sim, account):
    c = account.client
    open_long(c)
    ws = ws_for(sim, c)
    try:
        sim._call("POST", "/_sim/liquidate", {"api_key": account.api_key, "symbol": SYMBOL})
        frames = recv_json_until(ws, lambda fs: [f for f in fs if f.get("e") == "ORDER_TRADE_UPDATE"
                                                 and f["o"]["X"] == "FILLED"])
    finally:
        ws.close()
    fill = [f["o"] for f in frames if f.get("e") == "ORDER_TRADE_UPDATE"
            and f["o"]["X"] == "FILLED"][0]
    assert fill["c"].startswith("autoclose-") and fill["x"] == "CALCULATED"
    open_long(c)
    sim._call("POST", "/_sim/liquidate", {"api_key": account.api_key, "symbol": SYMBOL,
                                          "kind": "adl"})
    orders = c.futures_get_all_orders(symbol=SYMBOL)
    assert orders[-1]["clientOrderId"] == "adl_autoclose" and orders[-1]["status"] == "FILLED"
    with pytest.raises(SimulatorError) as info:
        sim._call("POST", "/_sim/liquidate", {"api_key": account.api_key, "symbol": SYMBOL})
    assert info.value.status == 409


def test_margin_call_and_funding_events_and_income(sim, account):
    c = account.client
    open_long(c)
    ws = ws_for(sim, c)
    try:
        sim._call("POST", "/_sim/margin_call", {"api_key": account.api_key})
        sim._call("POST", "/_sim/funding", {"symbol": SYMBOL, "rate": "0.0001"})
        frames = recv_json_until(ws, lambda fs: [f for f in fs if f.get("e") == "ACCOUNT_UPDATE"
                                                 and f["a"]["m"] == "FUNDING_FEE"])
    finally:
        ws.close()
    call = [f for f in frames if f.get("e") == "MARGIN_CALL"][0]
    assert call["p"][0]["s"] == SYMBOL and D(call["p"][0]["pa"]) == D("0.010")
    assert {"s", "ps", "pa", "mt", "iw", "mp", "up", "mm"} <= set(call["p"][0])
    fee = [f for f in frames if f.get("e") == "ACCOUNT_UPDATE"][-1]["a"]
    assert D(fee["B"][0]["bc"]) == D("-0.06") and fee["P"] == []   # 0.01 * 60000 * 0.0001
    income = c.futures_income_history(incomeType="FUNDING_FEE", symbol=SYMBOL)
    assert len(income) == 1 and D(income[0]["income"]) == D("-0.06")
    assert income[0]["asset"] == "USDT" and income[0]["tranId"]


def test_paper_venue_reads(sim, account):
    """What clients such as ccxt read besides trading: 24 h tickers (no statistics are
    kept: open/high/low are the last price), leverage brackets, every algo order."""
    c = account.client
    row = c.futures_ticker(symbol=SYMBOL)
    assert D(row["lastPrice"]) == D("60000") and row["volume"] == "0"
    [bracket] = c.futures_leverage_bracket(symbol=SYMBOL)
    assert bracket["brackets"][0]["initialLeverage"] == 125
    open_long(c)
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                triggerPrice="59000", closePosition="true", clientAlgoId="all-1")
    c.futures_cancel_algo_order(clientAlgoId="all-1")
    rows = c.futures_get_all_algo_orders(symbol=SYMBOL)
    assert [(r["clientAlgoId"], r["algoStatus"]) for r in rows] == [("all-1", "CANCELED")]
    info = {s["symbol"]: s for s in c.futures_exchange_info()["symbols"]}
    assert "TRAILING_STOP_MARKET" in info[SYMBOL]["orderTypes"]


def test_a_replay_fires_a_leg(sim, account, tmp_path):
    c = account.client
    open_long(c)
    c.futures_create_algo_order(symbol=SYMBOL, side="SELL", type="STOP_MARKET",
                                triggerPrice="59000", closePosition="true",
                                workingType="MARK_PRICE", clientAlgoId="sl-replay")
    csv = tmp_path / "dip.csv"
    csv.write_text("open_time_ms,open,high,low,close,volume\n"
                   "0,60000,60100,58500,59500,1\n")     # falling: open, high, low, close
    sim.replay(SYMBOL, csv, seconds_per_candle=0.2)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if c.futures_get_algo_order(clientAlgoId="sl-replay")["algoStatus"] == "FINISHED":
            break
        time.sleep(0.05)
    assert c.futures_get_algo_order(clientAlgoId="sl-replay")["algoStatus"] == "FINISHED"
    assert all(D(p["positionAmt"]) == 0 for p in c.futures_position_information(symbol=SYMBOL))
    while sim.state()["replays"][SYMBOL]["running"] and time.monotonic() < deadline + 5:
        time.sleep(0.05)             # let it end before the next test sets the price
