"""exchanges.binance.mapping on recorded/documented Binance payloads.

Fixtures: ``tests/fixtures/binance`` (provenance in ``tests/fixtures/SOURCES.json``).
"""
from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from exchanges.binance import mapping
from exchanges.errors import ExchangeUnavailable
from exchanges.types import AccountEvent, OrderEvent, OrderStatus, StreamExpired

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "binance"


def load(name: str):
    with open(FIXTURES / name) as f:
        return json.load(f)


# ---- orders -------------------------------------------------------------------

def test_order_post_limit_real():
    o = mapping.parse_order(load("real_rest_fapi_v1_order_POST_LIMIT_BTCUSDT.json"))
    assert o.order_id == "4087922044"
    assert o.client_order_id == "x-xcKtGhcu04075babaeb34c55af79ba"
    assert (o.symbol, o.side, o.type, o.time_in_force) == ("BTCUSDT", "SELL", "LIMIT", "GTC")
    assert o.status is OrderStatus.NEW
    assert o.price == D("110001.00")
    assert o.quantity == D("0.200")
    assert o.filled_quantity == D("0")
    assert o.avg_price == D("0")
    assert o.reduce_only is False
    assert o.updated_at == 1739781831932


def test_order_stringified_ints_ccxt_gtx():
    o = mapping.parse_order(load("real_rest_fapi_v1_openOrder_LTCUSDT_GTX.json"))
    assert o.order_id == "664082074"
    assert o.updated_at == 1707907323991
    assert o.time_in_force == "GTX"
    assert (o.side, o.price, o.quantity) == ("BUY", D("50.00"), D("0.200"))


def test_order_get_and_open_orders_doc():
    o = mapping.parse_order(load("rest_fapi_v1_order_GET.json"))
    assert (o.order_id, o.client_order_id, o.type) == ("1573346959", "abc", "TRAILING_STOP_MARKET")
    assert o.quantity == D("0.40") and o.price == D("0") and o.avg_price == D("0")
    assert o.updated_at == 1579276756075
    [oo] = [mapping.parse_order(r) for r in load("rest_fapi_v1_openOrders.json")]
    assert oo.order_id == "1917641" and oo.status is OrderStatus.NEW


def test_order_post_without_avg_price_and_delete():
    o = mapping.parse_order(load("rest_fapi_v1_order_POST.json"))
    assert (o.order_id, o.time_in_force, o.quantity) == ("22542179", "GTD", D("10"))
    assert o.avg_price == D(0)
    c = mapping.parse_order(load("rest_fapi_v1_order_DELETE.json"))
    assert c.status is OrderStatus.CANCELED
    assert (c.order_id, c.client_order_id, c.quantity) == ("283194212", "myOrder1", D("11"))
    assert c.updated_at == 1571110484038


def test_all_orders():
    [o] = [mapping.parse_order(r) for r in load("rest_fapi_v1_allOrders.json")]
    assert o.order_id == "1917641" and o.side == "BUY"


@pytest.mark.parametrize("raw,expected", [
    ("NEW", OrderStatus.NEW), ("PARTIALLY_FILLED", OrderStatus.PARTIALLY_FILLED),
    ("FILLED", OrderStatus.FILLED), ("CANCELED", OrderStatus.CANCELED),
    ("REJECTED", OrderStatus.REJECTED), ("EXPIRED", OrderStatus.EXPIRED),
    ("EXPIRED_IN_MATCH", OrderStatus.EXPIRED),
])
def test_status_table(raw, expected):
    assert mapping.order_status(raw) is expected


def test_unknown_status_is_unparseable():
    raw = load("rest_fapi_v1_order_GET.json") | {"status": "WEIRD"}
    with pytest.raises(ExchangeUnavailable):
        mapping.parse_order(raw)


def test_float_in_decimal_field_rejected():
    raw = load("rest_fapi_v1_order_GET.json") | {"origQty": 0.4}
    with pytest.raises(ExchangeUnavailable):
        mapping.parse_order(raw)


def test_server_time():
    assert mapping.parse_server_time(load("rest_fapi_v1_time.json")) == 1499827319559
    with pytest.raises(ExchangeUnavailable):
        mapping.parse_server_time({})


# ---- fills, balance, positions, rules, ticker -------------------------------------

def test_user_trades():
    [f] = [mapping.parse_fill(r) for r in load("rest_fapi_v1_userTrades.json")]
    assert (f.trade_id, f.order_id, f.client_order_id) == ("698759", "25851813", None)
    assert (f.symbol, f.side) == ("BTCUSDT", "SELL")
    assert f.price == D("7819.01") and f.quantity == D("0.002")
    assert f.fee == D("0.07819010") and f.fee_asset == "USDT"
    assert f.realized_pnl == D("-0.91539999")
    assert f.is_maker is False and f.time == 1569514978020


@pytest.mark.parametrize("name", ["rest_fapi_v2_account.json", "rest_fapi_v3_account.json"])
def test_balance(name):
    b = mapping.parse_balance(load(name))
    assert b.total_wallet_balance == D("126.72469206")
    assert b.total_unrealized_pnl == D("0")
    assert b.total_margin_balance == D("126.72469206")
    assert b.available_balance == D("126.72469206")
    [usdt] = b.assets
    assert usdt.asset == "USDT" and usdt.wallet_balance == D("23.72469206")
    assert usdt.margin_balance == D("23.72469206")
    assert b.updated_at == 1625474304765


def test_balance_drops_zero_assets():
    raw = load("rest_fapi_v2_account.json")
    raw["assets"].append(dict(raw["assets"][0], asset="BNB", walletBalance="0", marginBalance="0.0"))
    assert [a.asset for a in mapping.parse_balance(raw).assets] == ["USDT"]
    assert mapping.parse_balance(raw).assets[0].available_balance == D("126.72469206")


def test_positions_v2_flat_is_skipped_and_nonzero_mapped():
    rows = load("rest_fapi_v2_positionRisk.json")
    assert mapping.parse_positions(rows) == []
    [p] = mapping.parse_positions([dict(rows[0], positionAmt="-0.250", entryPrice="6650.5",
                                        unRealizedProfit="-7.25", liquidationPrice="9000.1")])
    assert (p.symbol, p.side, p.size) == ("BTCUSDT", "SHORT", D("0.250"))
    assert p.leverage == D("10") and p.margin_type == "isolated"
    assert p.mark_price == D("6679.50671178") and p.entry_price == D("6650.5")
    assert p.unrealized_pnl == D("-7.25") and p.liquidation_price == D("9000.1")
    assert p.updated_at == 1625474304765


def test_positions_v3_leverage_computed():
    [p] = mapping.parse_positions(load("rest_fapi_v3_positionRisk.json"))
    assert (p.symbol, p.side, p.size) == ("ADAUSDT", "LONG", D("30"))
    assert p.entry_price == D("0.385") and p.mark_price == D("0.41047590")
    assert p.unrealized_pnl == D("0.76427700")
    assert p.leverage == D("20")   # notional 12.314277 / initialMargin 0.61571385
    assert p.margin_type == "cross"
    assert p.updated_at == 1720736417660


def test_symbol_rules():
    rules = mapping.parse_symbol_rules(load("rest_fapi_v1_exchangeInfo_BTCUSDT_abridged.json"))
    r = rules["BTCUSDT"]
    assert (r.tick_size, r.step_size) == (D("0.01"), D("0.001"))
    assert (r.min_qty, r.max_qty) == (D("0.001"), D("1000"))
    assert r.min_notional == D("0")     # the abridged file has no MIN_NOTIONAL filter


def test_symbol_rules_min_notional():
    raw = load("rest_fapi_v1_exchangeInfo_BTCUSDT_abridged.json")
    raw["symbols"][0]["filters"].append({"filterType": "MIN_NOTIONAL", "notional": "100"})
    assert mapping.parse_symbol_rules(raw)["BTCUSDT"].min_notional == D("100")


def test_ticker():
    book = {"symbol": "BTCUSDT", "bidPrice": "6000.00", "bidQty": "1", "askPrice": "6000.10",
            "askQty": "2", "time": 1589437530012}
    t = mapping.parse_ticker(load("rest_fapi_v1_premiumIndex.json"),
                             load("rest_fapi_v2_ticker_price.json"), book)
    assert t.symbol == "BTCUSDT"
    assert t.mark_price == D("11793.63104562") and t.last_price == D("6000.01")
    assert (t.bid, t.ask) == (D("6000.00"), D("6000.10"))
    assert t.ts == 1597370495002


# ---- user data stream -------------------------------------------------------------

def test_ws_order_trade_update_filled():
    [ev] = mapping.parse_user_event(load("ws_ORDER_TRADE_UPDATE_real_SUSHIUSDT_FILLED.json"))
    assert isinstance(ev, OrderEvent) and ev.event_time == 1719512105354
    o = ev.order
    assert (o.order_id, o.client_order_id) == ("22254789833", "x-wPAX3YpD-240627181505-aG-243914")
    assert (o.symbol, o.side, o.type, o.status) == ("SUSHIUSDT", "SELL", "MARKET", OrderStatus.FILLED)
    assert o.quantity == D("139") and o.filled_quantity == D("139")
    assert o.avg_price == D("0.8465") and o.price == D("0")
    assert o.reduce_only is True and o.updated_at == 1719512105353
    f = ev.fill
    assert f is not None
    assert (f.trade_id, f.order_id, f.client_order_id) == ("444925760", "22254789833", o.client_order_id)
    assert f.price == D("0.8464") and f.quantity == D("31")
    assert f.fee == D("0.00787152") and f.fee_asset == "USDT"
    assert f.realized_pnl == D("0.18290000") and f.is_maker is False
    assert f.time == 1719512105353


def test_ws_order_trade_update_trailing_new_has_no_fill():
    [ev] = mapping.parse_user_event(load("ws_ORDER_TRADE_UPDATE_doc_TRAILING_NEW.json"))
    assert isinstance(ev, OrderEvent) and ev.fill is None
    assert ev.order.status is OrderStatus.NEW and ev.order.type == "TRAILING_STOP_MARKET"
    assert (ev.order.order_id, ev.order.client_order_id) == ("8886774", "TEST")
    assert ev.order.quantity == D("0.001") and ev.event_time == 1568879465651


def test_ws_account_update():
    [ev] = mapping.parse_user_event(load("ws_ACCOUNT_UPDATE_real_BTCUSDT.json"))
    assert isinstance(ev, AccountEvent)
    assert ev.reason == "ORDER" and ev.event_time == 1667881353115
    [w] = ev.wallets
    assert (w.asset, w.wallet_balance, w.cross_wallet_balance) == ("USDT", D("1127.95750089"), D("1040.82091149"))
    [p] = ev.positions
    assert (p.symbol, p.amount, p.entry_price) == ("BTCUSDT", D("-0.089"), D("19700.03933"))
    assert p.unrealized_pnl == D("1.53058860") and p.margin_type == "isolated"


@pytest.mark.parametrize("e_value", ["1736996475556", 1736996475556])
def test_ws_listen_key_expired(e_value):
    raw = load("ws_listenKeyExpired.json") | {"E": e_value}
    assert mapping.parse_user_event(raw) == [StreamExpired(event_time=1736996475556)]


@pytest.mark.parametrize("frame", [
    {"e": "error", "type": "BinanceWebsocketClosed", "m": "closed"},
    {"e": "TRADE_LITE", "E": 1, "s": "BTCUSDT"},
    {"e": "ACCOUNT_CONFIG_UPDATE", "E": 1, "ac": {"s": "BTCUSDT", "l": 25}},
    {"result": None, "id": 1},
])
def test_ws_ignored_frames(frame):
    assert mapping.parse_user_event(frame) == []


def test_ws_stream_wrapper_unwrapped():
    raw = {"stream": "lk", "data": load("ws_listenKeyExpired.json")}
    assert mapping.parse_user_event(raw) == [StreamExpired(event_time=1736996475556)]


def test_ws_broken_known_event_raises():
    with pytest.raises(ExchangeUnavailable):
        mapping.parse_user_event({"e": "ORDER_TRADE_UPDATE", "E": 1, "o": {"s": "BTCUSDT"}})
