"""Bybit v5 orders, executions and positions through the real pybit HTTP."""
from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from pybit.exceptions import InvalidRequestError

SYMBOL = "BTCUSDT"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bybit"


def fixture_keys(name: str) -> set[str]:
    """Keys of ``result.list[0]`` of a fixture file."""
    return set(json.loads((FIXTURES / name).read_text())["result"]["list"][0])


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, "60000")


@pytest.fixture
def bb(sim, account):
    """Real pybit HTTP for the fresh funded account."""
    return sim.bybit_client(account.api_key, account.api_secret)


def place(bb, **kw) -> dict:
    """``place_order`` on linear BTCUSDT; returns ``result``."""
    params = {"category": "linear", "symbol": SYMBOL, **kw}
    return bb.place_order(**params)["result"]


def get_order(bb, order_id: str) -> dict:
    """The order by id through ``/v5/order/realtime``."""
    [row] = bb.get_open_orders(category="linear", symbol=SYMBOL,
                               orderId=order_id)["result"]["list"]
    return row


def rejected_with(code: int, call) -> None:
    with pytest.raises(InvalidRequestError) as info:
        call()
    assert info.value.status_code == code, info.value.message


def test_market_order_fills_into_position_wallet_and_executions(bb):
    ack = place(bb, side="Buy", orderType="Market", qty="0.010", orderLinkId="mkt-1")
    assert set(ack) == {"orderId", "orderLinkId"} and ack["orderLinkId"] == "mkt-1"
    assert UUID_RE.match(ack["orderId"])
    order = get_order(bb, ack["orderId"])          # closed orders are found by id
    assert fixture_keys("rest_v5_order_realtime.json") <= set(order)
    assert (order["orderStatus"], order["cumExecQty"], order["avgPrice"], order["leavesQty"],
            order["timeInForce"], order["orderType"], order["side"]) == \
        ("Filled", "0.010", "60000.1", "0.000", "IOC", "Market", "Buy")
    assert order["cumExecFee"] == "0.3000005"                  # 600.001 * 0.0005
    assert bb.get_open_orders(category="linear", symbol=SYMBOL)["result"]["list"] == []

    [pos] = bb.get_positions(category="linear", settleCoin="USDT")["result"]["list"]
    assert (pos["symbol"], pos["side"], pos["size"], pos["avgPrice"], pos["markPrice"]) == \
        (SYMBOL, "Buy", "0.010", "60000.1", "60000.00")
    assert Decimal(pos["unrealisedPnl"]) == Decimal("-0.001")
    assert Decimal(pos["positionIM"]) == Decimal("30")          # 0.01 * 60000 / 20

    row = bb.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    assert Decimal(row["totalWalletBalance"]) == Decimal("10000") - Decimal("0.3000005")
    assert Decimal(row["totalPerpUPL"]) == Decimal("-0.001")
    assert Decimal(row["totalAvailableBalance"]) == \
        Decimal(row["totalMarginBalance"]) - Decimal("30")

    [fill] = bb.get_executions(category="linear", symbol=SYMBOL)["result"]["list"]
    assert fixture_keys("rest_v5_execution_list.json") <= set(fill)
    assert (fill["orderId"], fill["orderLinkId"], fill["execPrice"], fill["execQty"],
            fill["execFee"], fill["feeRate"], fill["isMaker"], fill["execType"],
            fill["feeCurrency"]) == (ack["orderId"], "mkt-1", "60000.10", "0.010",
                                     "0.3000005", "0.0005", False, "Trade", "USDT")
    assert UUID_RE.match(fill["execId"]) and isinstance(fill["seq"], int)
    assert bb.get_executions(category="linear", orderLinkId="mkt-1")["result"]["list"] == [fill]


def test_limit_rests_then_fills_as_maker_on_price_cross(sim, bb):
    ack = place(bb, side="Buy", orderType="Limit", qty="0.010", price="59000.0")
    assert ack["orderLinkId"] == ""
    [row] = bb.get_open_orders(category="linear", symbol=SYMBOL)["result"]["list"]
    assert (row["orderId"], row["orderStatus"], row["leavesQty"], row["price"],
            row["avgPrice"], row["timeInForce"]) == \
        (ack["orderId"], "New", "0.010", "59000.00", "", "GTC")
    assert bb.get_open_orders(category="linear", settleCoin="USDT")["result"]["list"] == [row]
    wallet = bb.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    assert Decimal(wallet["coin"][0]["totalOrderIM"]) == Decimal("29.5")

    sim.set_price(SYMBOL, "58999.9")
    filled = get_order(bb, ack["orderId"])
    assert (filled["orderStatus"], filled["avgPrice"], filled["cumExecQty"]) == \
        ("Filled", "59000", "0.010")
    [fill] = bb.get_executions(category="linear", orderId=ack["orderId"])["result"]["list"]
    assert (fill["isMaker"], fill["feeRate"], fill["execFee"]) == (True, "0.0002", "0.118")


def test_cancel_by_link_id_then_unknown_is_110001(bb):
    ack = place(bb, side="Sell", orderType="Limit", qty="0.010", price="61000.0",
                orderLinkId="to-cancel")
    res = bb.cancel_order(category="linear", symbol=SYMBOL, orderLinkId="to-cancel")["result"]
    assert res == {"orderId": ack["orderId"], "orderLinkId": "to-cancel"}
    row = get_order(bb, ack["orderId"])
    assert (row["orderStatus"], row["cancelType"], row["leavesQty"]) == \
        ("Cancelled", "CancelByUser", "0.000")
    rejected_with(110001, lambda: bb.cancel_order(category="linear", symbol=SYMBOL,
                                                  orderId=ack["orderId"]))
    rejected_with(110001, lambda: bb.cancel_order(
        category="linear", symbol=SYMBOL, orderId="fd4300ae-7847-404e-b947-b46980a4d140"))
    rejected_with(110001, lambda: bb.cancel_order(category="linear", symbol=SYMBOL,
                                                  orderLinkId="never-sent"))


def test_duplicate_order_link_id_is_110072_even_after_the_first_closed(bb):
    place(bb, side="Buy", orderType="Market", qty="0.002", orderLinkId="dup-1")
    rejected_with(110072, lambda: place(bb, side="Buy", orderType="Market", qty="0.002",
                                        orderLinkId="dup-1"))
    rejected_with(10001, lambda: place(bb, side="Buy", orderType="Market", qty="0.002",
                                       orderLinkId="bad id!"))


@pytest.mark.parametrize("kw, code", [
    ({"side": "Buy", "orderType": "Limit", "qty": "900", "price": "60000.0"}, 110007),
    ({"side": "Sell", "orderType": "Market", "qty": "0.010", "reduceOnly": True}, 110017),
    ({"side": "Buy", "orderType": "Market", "qty": "0.0015"}, 10001),
    ({"side": "Buy", "orderType": "Limit", "qty": "0.010", "price": "60000.05"}, 10001),
    ({"side": "Buy", "orderType": "Market", "qty": "0.001"}, 110094),
    ({"side": "Buy", "orderType": "Limit", "qty": "0.010", "price": "90000.0"}, 110003),
    ({"side": "Buy", "orderType": "Market", "qty": "0.010", "positionIdx": 1}, 10001),
    ({"side": "Buy", "orderType": "Market", "qty": "0.010", "takeProfit": "70000"}, 10001),
    ({"side": "Buy", "orderType": "Limit", "qty": "0.010", "price": "59000.0",
      "timeInForce": "GTD"}, 10001),
])
def test_order_refusals(bb, kw, code):
    rejected_with(code, lambda: place(bb, **kw))
    assert bb.get_order_history(category="linear")["result"]["list"] == []


def test_ioc_and_post_only_expire_as_cancelled(bb):
    ioc = place(bb, side="Buy", orderType="Limit", qty="0.010", price="59000.0",
                timeInForce="IOC")
    post = place(bb, side="Buy", orderType="Limit", qty="0.010", price="60000.1",
                 timeInForce="PostOnly")
    assert (get_order(bb, ioc["orderId"])["orderStatus"],
            get_order(bb, ioc["orderId"])["rejectReason"]) == ("Cancelled",
                                                               "EC_NoImmediateQtyToFill")
    row = get_order(bb, post["orderId"])
    assert (row["orderStatus"], row["rejectReason"], row["timeInForce"]) == \
        ("Cancelled", "EC_PostOnlyWillTakeLiquidity", "PostOnly")


def test_history_paging_and_status_filter(bb):
    ids = [place(bb, side="Buy", orderType="Limit", qty="0.010", price=f"5{i}000.0")["orderId"]
           for i in range(3)]
    bb.cancel_order(category="linear", symbol=SYMBOL, orderId=ids[0])
    first = bb.get_order_history(category="linear", limit=2)["result"]
    assert [r["orderId"] for r in first["list"]] == [ids[2], ids[1]]    # newest first
    assert fixture_keys("rest_v5_order_history.json") <= set(first["list"][0])
    rest = bb.get_order_history(category="linear", limit=2,
                                cursor=first["nextPageCursor"])["result"]
    assert [r["orderId"] for r in rest["list"]] == [ids[0]] and rest["nextPageCursor"] == ""
    cancelled = bb.get_order_history(category="linear", orderStatus="Cancelled")["result"]
    assert [r["orderId"] for r in cancelled["list"]] == [ids[0]]
    assert len(bb.get_open_orders(category="linear", symbol=SYMBOL, openOnly=1)[
        "result"]["list"]) == 1                                         # closed only
    done = bb.cancel_all_orders(category="linear", symbol=SYMBOL)["result"]
    assert done["success"] == "1" and {d["orderId"] for d in done["list"]} == set(ids[1:])


def test_reduce_only_close_realises_pnl(sim, bb):
    place(bb, side="Buy", orderType="Market", qty="0.010")
    sim.set_price(SYMBOL, "61000")
    place(bb, side="Sell", orderType="Market", qty="0.020", reduceOnly=True)
    [row] = bb.get_positions(category="linear", symbol=SYMBOL)["result"]["list"]
    assert (row["side"], row["size"]) == ("", "0.000")
    fees = Decimal("0.3000005") + Decimal("0.3049995")           # 60000.1 / 60999.9 taker
    assert Decimal(row["cumRealisedPnl"]) == Decimal("9.998") - fees
    assert bb.get_positions(category="linear", settleCoin="USDT")["result"]["list"] == []
    close = bb.get_executions(category="linear", symbol=SYMBOL)["result"]["list"][0]
    assert (close["side"], close["execQty"], close["closedSize"]) == ("Sell", "0.010", "0.010")
    order = bb.get_order_history(category="linear", limit=1)["result"]["list"][0]
    # the engine trims a reduce-only order to the position (Bybit truncates it too)
    assert (order["reduceOnly"], order["qty"], order["cumExecQty"]) == (True, "0.010", "0.010")


def test_partial_fill_by_bybit_order_id_then_cancel(sim, bb):
    ack = place(bb, side="Buy", orderType="Limit", qty="0.010", price="59000.0")
    sim.fill(ack["orderId"], quantity="0.004")
    row = get_order(bb, ack["orderId"])
    assert (row["orderStatus"], row["cumExecQty"], row["leavesQty"]) == \
        ("PartiallyFilled", "0.004", "0.006")
    bb.cancel_order(category="linear", symbol=SYMBOL, orderId=ack["orderId"])
    row = get_order(bb, ack["orderId"])
    assert (row["orderStatus"], row["cumExecQty"], row["leavesQty"]) == \
        ("Cancelled", "0.004", "0.000")


def test_reject_orders_fault_acks_then_rejects(sim, bb, account):
    sim.add_fault(kind="reject_orders", api_key=account.api_key)
    ack = place(bb, side="Buy", orderType="Market", qty="0.010", orderLinkId="rej-1")
    row = get_order(bb, ack["orderId"])
    assert (row["orderStatus"], row["rejectReason"], row["cumExecQty"]) == \
        ("Rejected", "EC_Others", "0.000")
    assert bb.get_positions(category="linear", settleCoin="USDT")["result"]["list"] == []
    ok = place(bb, side="Buy", orderType="Market", qty="0.010")
    assert get_order(bb, ok["orderId"])["orderStatus"] == "Filled"
