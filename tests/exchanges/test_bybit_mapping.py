"""exchanges.bybit.mapping on the documented Bybit v5 payloads.

Fixtures: ``tests/fixtures/bybit`` (provenance in ``tests/fixtures/SOURCES.json``:
bybit-exchange/docs examples).
"""
from __future__ import annotations

import copy
import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from exchanges.bybit import mapping
from exchanges.errors import ExchangeUnavailable
from exchanges.types import AccountEvent, FillEvent, OrderEvent, OrderStatus

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bybit"


def load(name: str):
    with open(FIXTURES / name) as f:
        return json.load(f)


def test_every_fixture_is_covered():
    covered = {
        "rest_v5_account_wallet-balance.json", "rest_v5_execution_list.json",
        "rest_v5_market_instruments-info_linear.json", "rest_v5_market_time.json",
        "rest_v5_order_cancel.json", "rest_v5_order_create.json", "rest_v5_order_history.json",
        "rest_v5_order_realtime.json", "rest_v5_position_list.json",
        "ws_private_execution.json", "ws_private_order.json", "ws_private_position.json",
        "ws_private_wallet.json",
    }
    assert {p.name for p in FIXTURES.glob("*.json")} <= covered


# ---- REST ----------------------------------------------------------------------

def test_server_time_prefers_nanos():
    raw = load("rest_v5_market_time.json")
    assert mapping.parse_server_time(raw) == 1688639403423
    assert mapping.parse_server_time({"result": {"timeSecond": "1688639403"}}) == 1688639403000
    assert mapping.parse_server_time({"result": {}, "time": 5}) == 5
    with pytest.raises(ExchangeUnavailable):
        mapping.parse_server_time({"result": {}})


def test_open_order_realtime():
    [o] = mapping.parse_orders(load("rest_v5_order_realtime.json"))
    assert o.order_id == "fd4300ae-7847-404e-b947-b46980a4d140"
    assert o.client_order_id == "test-000005"
    assert (o.symbol, o.side, o.type, o.status) == ("ETHUSDT", "BUY", "LIMIT", OrderStatus.NEW)
    assert o.price == D("1600.00") and o.quantity == D("0.10")
    assert o.filled_quantity == D("0.00") and o.avg_price == D("0")
    assert o.time_in_force == "GTC" and o.reduce_only is False
    assert o.updated_at == 1684738540561


def test_order_history_cancelled_post_only():
    [o] = mapping.parse_orders(load("rest_v5_order_history.json"))
    assert (o.order_id, o.client_order_id) == ("14bad3a1-6454-43d8-bcf2-5345896cf74d", "YLxaWKMiHU")
    assert (o.symbol, o.side, o.type) == ("BTCUSDT", "BUY", "LIMIT")
    assert o.status is OrderStatus.CANCELED and o.status.is_final
    assert o.price == D("26864.40") and o.quantity == D("0.003")
    assert o.filled_quantity == D("0.000") and o.avg_price == D("0")
    assert o.time_in_force == "GTX"
    assert o.updated_at == 1684476068372


def test_create_and_cancel_acks():
    ack = mapping.result_of(load("rest_v5_order_create.json"))
    assert (ack["orderId"], ack["orderLinkId"]) == ("1321003749386327552", "spot-test-postonly")
    ack = mapping.result_of(load("rest_v5_order_cancel.json"))
    assert ack["orderId"] == "c6f055d9-7f21-4079-913d-e6523a9cfffa"
    assert ack["orderLinkId"] == "linear-004"
    with pytest.raises(ExchangeUnavailable):
        mapping.result_of({"retCode": 0})


@pytest.mark.parametrize("raw,expected", [
    ("New", OrderStatus.NEW), ("PartiallyFilled", OrderStatus.PARTIALLY_FILLED),
    ("Filled", OrderStatus.FILLED), ("Cancelled", OrderStatus.CANCELED),
    ("Rejected", OrderStatus.REJECTED), ("Deactivated", OrderStatus.CANCELED),
    ("PartiallyFilledCanceled", OrderStatus.CANCELED),
    ("Untriggered", OrderStatus.NEW), ("Triggered", OrderStatus.NEW),
])
def test_status_table(raw, expected):
    assert mapping.order_status(raw) is expected


@pytest.mark.parametrize("field,value", [
    ("orderStatus", "Weird"), ("side", "Hold"), ("orderType", "StopMarket"),
    ("qty", 0.1), ("timeInForce", "GTD"),
])
def test_bad_order_fields_are_unparseable(field, value):
    raw = copy.deepcopy(load("rest_v5_order_realtime.json"))
    raw["result"]["list"][0][field] = value
    with pytest.raises(ExchangeUnavailable):
        mapping.parse_orders(raw)


def test_executions_rest():
    [f] = mapping.parse_fills(load("rest_v5_execution_list.json"))
    assert (f.trade_id, f.order_id) == ("e0cbe81d-0f18-5866-9415-cf319b5dab3b",
                                        "8c065341-7b52-4ca9-ac2c-37e31ac55c94")
    assert f.client_order_id is None
    assert (f.symbol, f.side) == ("ETHPERP", "BUY")
    assert f.price == D("1190.15") and f.quantity == D("0.1")
    assert f.fee == D("0.071409")
    assert f.fee_asset == "USDC"          # feeCurrency "" -> the settle coin of ETHPERP
    assert f.realized_pnl == D("0")       # the REST list carries no execPnl
    assert f.is_maker is False and f.time == 1672282722429


def test_executions_skip_funding():
    raw = copy.deepcopy(load("rest_v5_execution_list.json"))
    raw["result"]["list"].append(dict(raw["result"]["list"][0], execType="Funding", execId="x"))
    [f] = mapping.parse_fills(raw)
    assert f.trade_id == "e0cbe81d-0f18-5866-9415-cf319b5dab3b"


def test_wallet_balance():
    b = mapping.parse_balance(load("rest_v5_account_wallet-balance.json"))
    assert b.total_wallet_balance == D("3.00326056")
    assert b.total_unrealized_pnl == D("0")
    assert b.total_margin_balance == D("3.00326056")
    assert b.available_balance == D("3.00326056")
    assert b.updated_at == 1690872862481
    [btc] = b.assets
    assert btc.asset == "BTC"
    assert (btc.wallet_balance, btc.unrealized_pnl, btc.margin_balance) == (D("0"), D("0"), D("0"))
    assert btc.available_balance == D("0")


def test_wallet_balance_coin_available_is_equity_minus_margin():
    raw = copy.deepcopy(load("rest_v5_account_wallet-balance.json"))
    raw["result"]["list"][0]["coin"][0].update(
        coin="USDT", walletBalance="1000", equity="990.5", unrealisedPnl="-9.5",
        totalPositionIM="100.25", totalOrderIM="50", locked="0.25", availableToWithdraw="")
    [usdt] = mapping.parse_balance(raw).assets
    assert usdt.wallet_balance == D("1000") and usdt.margin_balance == D("990.5")
    assert usdt.unrealized_pnl == D("-9.5")
    assert usdt.available_balance == D("840.00")


def test_position_inverse_doc_example():
    [p] = mapping.parse_positions(load("rest_v5_position_list.json"))
    assert (p.symbol, p.side, p.size) == ("BTCUSD", "SHORT", D("300"))
    assert p.entry_price == D("27464.50441675") and p.mark_price == D("28224.50")
    assert p.unrealized_pnl == D("-0.00029413") and p.leverage == D("10")
    assert p.liquidation_price == D("0")     # liqPrice ""
    assert p.margin_type == "cross" and p.updated_at == 1697673600012


def test_position_long_isolated_and_flat_skipped():
    raw = copy.deepcopy(load("rest_v5_position_list.json"))
    row = raw["result"]["list"][0]
    raw["result"]["list"] = [dict(row, symbol="BTCUSDT", side="Buy", size="0.010", tradeMode=1,
                                  liqPrice="45000.5"),
                             dict(row, symbol="ETHUSDT", side="", size="0")]
    [p] = mapping.parse_positions(raw)
    assert (p.symbol, p.side, p.size, p.margin_type) == ("BTCUSDT", "LONG", D("0.010"), "isolated")
    assert p.liquidation_price == D("45000.5")


def test_symbol_rules():
    r = mapping.parse_symbol_rules(load("rest_v5_market_instruments-info_linear.json"))["BTCUSDT"]
    assert (r.tick_size, r.step_size) == (D("0.10"), D("0.001"))
    assert (r.min_qty, r.max_qty) == (D("0.001"), D("1190.000"))
    assert r.min_notional == D("5")


def test_ticker():
    raw = {"retCode": 0, "retMsg": "OK", "time": 1673859087947, "result": {
        "category": "linear", "list": [{"symbol": "BTCUSDT", "lastPrice": "21109.77",
                                        "markPrice": "21110.01", "bid1Price": "21109.5",
                                        "ask1Price": "21110.0", "indexPrice": "21100"}]}}
    t = mapping.parse_ticker(raw)
    assert (t.symbol, t.last_price, t.mark_price) == ("BTCUSDT", D("21109.77"), D("21110.01"))
    assert (t.bid, t.ask, t.ts) == (D("21109.5"), D("21110.0"), 1673859087947)
    raw["result"]["list"][0].update(bid1Price="", ask1Price="")
    assert (mapping.parse_ticker(raw).bid, mapping.parse_ticker(raw).ask) == (None, None)
    raw["result"]["list"] = []
    assert mapping.parse_ticker(raw) is None


# ---- private WebSocket ------------------------------------------------------------

def test_ws_order():
    [ev] = mapping.parse_private_event(load("ws_private_order.json"))
    assert isinstance(ev, OrderEvent) and ev.fill is None
    assert ev.event_time == 1672364262474
    o = ev.order
    assert (o.order_id, o.client_order_id) == ("5cf98598-39a7-459e-97bf-76ca765ee020", "")
    assert (o.symbol, o.side, o.type, o.status) == ("ETH-30DEC22-1400-C", "SELL", "MARKET",
                                                    OrderStatus.FILLED)
    assert o.price == D("0")                 # Market: Bybit's "72.5" is a protection price
    assert o.quantity == D("1") and o.filled_quantity == D("1") and o.avg_price == D("75")
    assert o.time_in_force == "IOC" and o.reduce_only is False
    assert o.updated_at == 1672364262457


def test_ws_execution():
    [ev] = mapping.parse_private_event(load("ws_private_execution.json"))
    assert isinstance(ev, FillEvent) and ev.event_time == 1746270400355
    f = ev.fill
    assert (f.trade_id, f.order_id) == ("0ab1bdf7-4219-438b-b30a-32ec863018f7",
                                        "9aac161b-8ed6-450d-9cab-c5cc67c21784")
    assert f.client_order_id is None and (f.symbol, f.side) == ("BTCUSDT", "SELL")
    assert f.price == D("95900.1") and f.quantity == D("0.5")
    assert f.fee == D("26.3725275") and f.fee_asset == "USDT"
    assert f.realized_pnl == D("0.05") and f.is_maker is False
    assert f.time == 1746270400353


def test_ws_execution_non_trade_skipped():
    raw = copy.deepcopy(load("ws_private_execution.json"))
    raw["data"][0]["execType"] = "Settle"
    assert mapping.parse_private_event(raw) == []


def test_ws_position_flat_and_signed():
    [ev] = mapping.parse_private_event(load("ws_private_position.json"))
    assert isinstance(ev, AccountEvent) and ev.reason == "position"
    assert ev.event_time == 1697682317044 and ev.wallets == ()
    [p] = ev.positions
    assert (p.symbol, p.amount, p.entry_price) == ("BTCUSDT", D("0"), D("0"))
    assert p.unrealized_pnl == D("0") and p.margin_type == "cross"
    raw = copy.deepcopy(load("ws_private_position.json"))
    raw["data"][0].update(side="Sell", size="0.25", entryPrice="28000.5", unrealisedPnl="-1.5")
    [p] = mapping.parse_private_event(raw)[0].positions
    assert (p.amount, p.entry_price, p.unrealized_pnl) == (D("-0.25"), D("28000.5"), D("-1.5"))


def test_ws_wallet():
    [ev] = mapping.parse_private_event(load("ws_private_wallet.json"))
    assert isinstance(ev, AccountEvent) and ev.reason == "wallet"
    assert ev.event_time == 1700034722104 and ev.positions == ()
    [w] = ev.wallets
    assert (w.asset, w.wallet_balance, w.cross_wallet_balance) == ("BTC", D("0.00102964"),
                                                                    D("0.00102964"))


@pytest.mark.parametrize("frame", [
    {"topic": "greeks", "data": [{"baseCoin": "ETH"}]},
    {"op": "pong", "args": ["1"]},
    {"success": True, "op": "subscribe", "req_id": "x"},
])
def test_ws_ignored_frames(frame):
    assert mapping.parse_private_event(frame) == []


def test_ws_topic_with_category_suffix():
    raw = load("ws_private_order.json") | {"topic": "order.option"}
    assert isinstance(mapping.parse_private_event(raw)[0], OrderEvent)


@pytest.mark.parametrize("frame", [
    {"topic": "order", "creationTime": 1, "data": [{"orderId": "1"}]},
    {"topic": "execution", "creationTime": 1, "data": {"execId": "1"}},
    {"topic": "position", "creationTime": 1, "data": [{"symbol": "X", "side": "Up", "size": "1"}]},
])
def test_ws_broken_known_topic_raises(frame):
    with pytest.raises(ExchangeUnavailable):
        mapping.parse_private_event(frame)
