"""Orders through the real python-binance Client: fills, positions, fees, errors."""
from __future__ import annotations

import uuid
from decimal import Decimal as D

import pytest
from binance.exceptions import BinanceAPIException

SYMBOL = "BTCUSDT"
PRICE = D("60000")
TICK = D("0.1")


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, PRICE)


def api_error(fn, **kw) -> BinanceAPIException:
    with pytest.raises(BinanceAPIException) as info:
        fn(**kw)
    return info.value


def limit(client, side, qty, price, tif="GTC", **kw):
    return client.futures_create_order(symbol=SYMBOL, side=side, type="LIMIT", quantity=qty,
                                       price=price, timeInForce=tif, **kw)


def test_exchange_info_filters(account):
    info = account.client.futures_exchange_info()
    by_symbol = {s["symbol"]: s for s in info["symbols"]}
    assert {"BTCUSDT", "ETHUSDT", "XRPUSDT"} <= set(by_symbol)
    filters = {f["filterType"]: f for f in by_symbol["BTCUSDT"]["filters"]}
    assert D(filters["PRICE_FILTER"]["tickSize"]) == D("0.10")
    assert D(filters["LOT_SIZE"]["stepSize"]) == D("0.001")
    assert D(filters["LOT_SIZE"]["minQty"]) == D("0.001")
    assert D(filters["MIN_NOTIONAL"]["notional"]) == D("100")
    assert {"MARKET_LOT_SIZE", "MAX_NUM_ORDERS", "PERCENT_PRICE"} <= set(filters)
    xrp = {f["filterType"]: f for f in by_symbol["XRPUSDT"]["filters"]}
    assert D(xrp["PRICE_FILTER"]["tickSize"]) == D("0.0001")
    assert D(xrp["LOT_SIZE"]["stepSize"]) == D("0.1")
    assert D(xrp["MIN_NOTIONAL"]["notional"]) == D("5")
    eth = {f["filterType"]: f for f in by_symbol["ETHUSDT"]["filters"]}
    assert D(eth["PRICE_FILTER"]["tickSize"]) == D("0.01")
    assert D(eth["MIN_NOTIONAL"]["notional"]) == D("20")


def test_public_prices_follow_set_price(account):
    c = account.client
    assert D(c.futures_symbol_ticker(symbol=SYMBOL)["price"]) == PRICE
    assert D(c.futures_mark_price(symbol=SYMBOL)["markPrice"]) == PRICE
    book = c.futures_orderbook_ticker(symbol=SYMBOL)
    assert (D(book["bidPrice"]), D(book["askPrice"])) == (PRICE - TICK, PRICE + TICK)
    assert isinstance(c.futures_mark_price(), list)


def test_market_order_fills_and_updates_position_balance_trades(account):
    c = account.client
    res = c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.010",
                                 newOrderRespType="RESULT")
    ask = PRICE + TICK
    assert res["status"] == "FILLED" and D(res["executedQty"]) == D("0.010")
    assert D(res["avgPrice"]) == ask
    [pos] = c.futures_position_information(symbol=SYMBOL)
    assert D(pos["positionAmt"]) == D("0.010") and D(pos["entryPrice"]) == ask
    assert D(pos["unRealizedProfit"]) == (PRICE - ask) * D("0.010")
    assert D(pos["markPrice"]) == PRICE and "liquidationPrice" in pos
    fee = ask * D("0.010") * D("0.0005")
    [trade] = c.futures_account_trades(symbol=SYMBOL, orderId=res["orderId"])
    assert D(trade["commission"]) == fee and trade["maker"] is False and trade["buyer"] is True
    assert D(trade["qty"]) == D("0.010") and D(trade["price"]) == ask
    usdt = next(b for b in c.futures_account_balance() if b["asset"] == "USDT")
    assert D(usdt["balance"]) == D("10000") - fee
    margin = PRICE * D("0.010") / 20
    assert D(usdt["availableBalance"]) == D("10000") - fee + (PRICE - ask) * D("0.010") - margin


def test_ack_reply_is_the_accepted_order(account):
    res = account.client.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET",
                                              quantity="0.002")
    assert res["status"] == "NEW" and D(res["executedQty"]) == 0
    got = account.client.futures_get_order(symbol=SYMBOL, orderId=res["orderId"])
    assert got["status"] == "FILLED" and "time" in got


def test_closing_realizes_pnl_into_the_wallet(sim, account):
    c = account.client
    c.futures_create_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity="0.010")
    sim.set_price(SYMBOL, "59000")
    res = c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.010",
                                 newOrderRespType="RESULT")
    trades = c.futures_account_trades(symbol=SYMBOL)
    close = next(t for t in trades if t["orderId"] == res["orderId"])
    entry, exit_ = PRICE - TICK, D("59000") + TICK
    assert D(close["realizedPnl"]) == (entry - exit_) * D("0.010")
    fees = sum(D(t["commission"]) for t in trades)
    wallet = D(c.futures_account()["totalWalletBalance"])
    assert wallet == D("10000") + (entry - exit_) * D("0.010") - fees
    assert c.futures_position_information(symbol=SYMBOL) == []          # v3: only non-zero
    v2 = c.futures_position_information(symbol=SYMBOL, version=2)
    assert D(v2[0]["positionAmt"]) == 0 and v2[0]["leverage"] == "20"
    assert v2[0]["marginType"] == "cross"


def test_limit_rests_then_fills_when_the_price_crosses(sim, account):
    c = account.client
    order = limit(c, "BUY", "0.010", "59000.0", newOrderRespType="RESULT")
    assert order["status"] == "NEW"
    assert [o["orderId"] for o in c.futures_get_open_orders(symbol=SYMBOL)] == [order["orderId"]]
    sim.set_price(SYMBOL, "59500")
    assert c.futures_get_order(symbol=SYMBOL, orderId=order["orderId"])["status"] == "NEW"
    sim.set_price(SYMBOL, "58990")
    got = c.futures_get_order(symbol=SYMBOL, orderId=order["orderId"])
    assert got["status"] == "FILLED" and D(got["avgPrice"]) == D("59000")
    [trade] = c.futures_account_trades(symbol=SYMBOL, orderId=order["orderId"])
    assert trade["maker"] is True
    assert D(trade["commission"]) == D("59000") * D("0.010") * D("0.0002")
    assert c.futures_get_open_orders(symbol=SYMBOL) == []


def test_marketable_limit_fills_as_taker_at_the_ask(account):
    res = limit(account.client, "BUY", "0.010", "60100.0", newOrderRespType="RESULT")
    assert res["status"] == "FILLED" and D(res["avgPrice"]) == PRICE + TICK


def test_partial_fill_via_control_api(sim, account):
    c = account.client
    order = limit(c, "SELL", "0.020", "61000.0")
    sim.fill(order["orderId"], quantity="0.005")
    part = c.futures_get_order(symbol=SYMBOL, orderId=order["orderId"])
    assert part["status"] == "PARTIALLY_FILLED" and D(part["executedQty"]) == D("0.005")
    assert D(c.futures_position_information(symbol=SYMBOL)[0]["positionAmt"]) == D("-0.005")
    sim.fill(order["orderId"])
    done = c.futures_get_order(symbol=SYMBOL, orderId=order["orderId"])
    assert done["status"] == "FILLED" and D(done["executedQty"]) == D("0.020")
    assert len(c.futures_account_trades(symbol=SYMBOL, orderId=order["orderId"])) == 2


def test_cancel_then_cancel_again_is_2011(account):
    c = account.client
    cid = "t-" + uuid.uuid4().hex[:16]
    order = limit(c, "BUY", "0.010", "55000.0", newClientOrderId=cid)
    res = c.futures_cancel_order(symbol=SYMBOL, origClientOrderId=cid)
    assert res["status"] == "CANCELED" and res["orderId"] == order["orderId"]
    assert api_error(c.futures_cancel_order, symbol=SYMBOL, orderId=order["orderId"]).code == -2011


def test_cancel_of_filled_order_is_2011_and_unknown_get_is_2013(account):
    c = account.client
    res = c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.002")
    err = api_error(c.futures_cancel_order, symbol=SYMBOL, orderId=res["orderId"])
    assert (err.status_code, err.code) == (400, -2011)
    assert api_error(c.futures_get_order, symbol=SYMBOL, orderId=12345).code == -2013
    assert api_error(c.futures_get_order, symbol=SYMBOL, origClientOrderId="nope").code == -2013


def test_fok_and_ioc_expire_when_not_fillable(account):
    c = account.client
    fok = limit(c, "BUY", "0.010", "59000.0", tif="FOK", newOrderRespType="RESULT")
    assert fok["status"] == "EXPIRED" and D(fok["executedQty"]) == 0
    ioc = limit(c, "SELL", "0.010", "61000.0", tif="IOC", newOrderRespType="RESULT")
    assert ioc["status"] == "EXPIRED"
    filled = limit(c, "BUY", "0.010", "60000.1", tif="FOK", newOrderRespType="RESULT")
    assert filled["status"] == "FILLED"
    assert c.futures_get_open_orders(symbol=SYMBOL) == []


def test_reduce_only_rejected_when_it_would_increase_and_cut_to_position(account):
    c = account.client
    err = api_error(c.futures_create_order, symbol=SYMBOL, side="SELL", type="MARKET",
                    quantity="0.010", reduceOnly="true")
    assert err.code == -2022
    c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.004")
    assert api_error(c.futures_create_order, symbol=SYMBOL, side="BUY", type="MARKET",
                     quantity="0.001", reduceOnly="true").code == -2022
    res = c.futures_create_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity="0.010",
                                 reduceOnly="true", newOrderRespType="RESULT")
    assert res["status"] == "FILLED" and D(res["executedQty"]) == D("0.004")
    assert c.futures_position_information(symbol=SYMBOL) == []


@pytest.mark.parametrize("kw,code", [
    ({"symbol": "NOPEUSDT"}, -1121),
    ({"price": "60000.05"}, -1111),
    ({"quantity": "0.0105"}, -1111),
    ({"quantity": "0.001", "price": "59000.0"}, -4164),
    ({"quantity": "50"}, -2019),
    ({"price": None}, -1102),
])
def test_order_validation_errors(account, kw, code):
    params = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "quantity": "0.010",
              "price": "59000.0", "timeInForce": "GTC", **kw}
    params = {k: v for k, v in params.items() if v is not None}
    err = api_error(account.client.futures_create_order, **params)
    assert (err.status_code, err.code) == (400, code)


def test_duplicate_client_order_id_among_open_orders_is_4116(account):
    c = account.client
    cid = "dup-" + uuid.uuid4().hex[:12]
    limit(c, "BUY", "0.010", "55000.0", newClientOrderId=cid)
    assert api_error(limit, client=c, side="BUY", qty="0.010", price="55000.0",
                     newClientOrderId=cid).code == -4116


def test_margin_check_counts_open_orders(new_account):
    acct = new_account("100")
    c = acct.client
    limit(c, "BUY", "0.030", "55000.0")            # 1650 notional / 20 = 82.5 margin
    assert api_error(limit, client=c, side="BUY", qty="0.010", price="55000.0").code == -2019


def test_all_orders_user_trades_filters_and_leverage(account):
    c = account.client
    first = c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.002")
    second = c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.003")
    orders = c.futures_get_all_orders(symbol=SYMBOL)
    assert [o["orderId"] for o in orders] == [first["orderId"], second["orderId"]]
    assert [o["orderId"] for o in c.futures_get_all_orders(symbol=SYMBOL, limit=1)] == \
        [second["orderId"]]
    trades = c.futures_account_trades(symbol=SYMBOL)
    assert [t["orderId"] for t in trades] == [first["orderId"], second["orderId"]]
    assert trades[1]["id"] > trades[0]["id"]
    assert [t["id"] for t in c.futures_account_trades(symbol=SYMBOL, fromId=trades[1]["id"])] \
        == [trades[1]["id"]]
    assert c.futures_account_trades(symbol=SYMBOL, startTime=trades[1]["time"] + 10**6) == []
    rate = c.futures_commission_rate(symbol=SYMBOL)
    assert (rate["makerCommissionRate"], rate["takerCommissionRate"]) == ("0.0002", "0.0005")
    assert c.futures_change_leverage(symbol=SYMBOL, leverage=10)["leverage"] == 10
    v2 = c.futures_position_information(symbol=SYMBOL, version=2)
    assert v2[0]["leverage"] == "10"
    assert D(v2[0]["positionAmt"]) == D("0.005")
