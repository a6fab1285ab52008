"""Pure mapping of protection legs, margin calls, funding and liquidation/ADL markers,
from the documented payloads in tests/fixtures (see SOURCES.json) and variations of
them, for both venues."""
from __future__ import annotations

import copy
import json
from decimal import Decimal as D
from pathlib import Path

import pytest

from exchanges.binance import mapping as bm
from exchanges.bybit import mapping as ym
from exchanges.binance.errors import to_exchange_error
from exchanges.errors import ExchangeUnavailable, UseAlgoOrderApi
from exchanges.legs import check_leg_args, closing_side
from exchanges.binance.spec import BINANCE
from exchanges.bybit.spec import BYBIT
from exchanges.errors import InvalidOrder
from exchanges.types import (
    AccountEvent, FillEvent, FundingFee, MarginCall, OrderEvent, ProtectionKind,
    ProtectionLegUpdate, ProtectionStatus, WorkingType,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load(name: str):
    return json.loads((FIXTURES / name).read_text())


# ---- Binance -----------------------------------------------------------------------

def test_binance_algo_update_doc_example():
    [ev] = bm.parse_user_event(load("binance/ws_ALGO_UPDATE_doc_TAKE_PROFIT_CANCELED.json"))
    assert isinstance(ev, ProtectionLegUpdate) and ev.event_time == 1750515742303
    leg = ev.leg
    assert (leg.kind, leg.status, leg.symbol) == (ProtectionKind.TAKE_PROFIT,
                                                  ProtectionStatus.CANCELED, "BNBUSDT")
    assert (leg.client_order_id, leg.order_id) == ("Q5xaq5EGKgXXa0fD7fs0Ip", "2148719")
    assert leg.trigger_price == D("750") and leg.working_type is WorkingType.CONTRACT_PRICE
    assert leg.position_side == "LONG" and leg.order_side == "SELL"
    assert leg.triggered_order_id is None and leg.filled_quantity == 0


@pytest.mark.parametrize("raw,aq,want", [
    ("NEW", "0", ProtectionStatus.NEW), ("TRIGGERING", "0", ProtectionStatus.TRIGGERED),
    ("TRIGGERED", "0", ProtectionStatus.TRIGGERED), ("FINISHED", "0.01", ProtectionStatus.FILLED),
    ("FINISHED", "0", ProtectionStatus.EXPIRED), ("EXPIRED", "0", ProtectionStatus.EXPIRED),
    ("REJECTED", "0", ProtectionStatus.EXPIRED)])
def test_binance_algo_statuses(raw, aq, want):
    msg = copy.deepcopy(load("binance/ws_ALGO_UPDATE_doc_TAKE_PROFIT_CANCELED.json"))
    msg["o"].update(X=raw, aq=aq, ai="778" if raw != "NEW" else "")
    leg = bm.parse_algo_update(msg).leg
    assert leg.status is want
    assert leg.triggered_order_id == (None if raw == "NEW" else "778")


def test_binance_trailing_algo_update_and_unknown_status():
    msg = copy.deepcopy(load("binance/ws_ALGO_UPDATE_doc_TAKE_PROFIT_CANCELED.json"))
    msg["o"].update({"o": "TRAILING_STOP_MARKET", "S": "BUY", "tp": "0", "cr": "1.5",
                     "X": "NEW"})
    leg = bm.parse_algo_update(msg).leg
    assert leg.kind is ProtectionKind.TRAILING_STOP and leg.position_side == "SHORT"
    assert leg.callback_rate == D("1.5") and leg.trigger_price is None
    msg["o"]["X"] = "SOMETHING_NEW"
    with pytest.raises(ExchangeUnavailable):
        bm.parse_algo_update(msg)


def test_binance_new_algo_order_reply_doc_example():
    leg = bm.parse_algo_order(load("binance/rest_fapi_v1_algoOrder_POST_doc.json"))
    assert (leg.kind, leg.status, leg.order_id) == (ProtectionKind.TAKE_PROFIT,
                                                    ProtectionStatus.NEW, "2146760")
    assert leg.trigger_price == D("750.000") and leg.callback_rate is None
    assert leg.activation_price is None and leg.updated_at == 1750485492076


def test_binance_margin_call_doc_example():
    [call] = bm.parse_user_event(load("binance/ws_MARGIN_CALL_doc.json"))
    assert isinstance(call, MarginCall)
    assert (call.symbol, call.position_side, call.position_amount) == ("ETHUSDT", "LONG",
                                                                       D("1.327"))
    assert call.mark_price == D("187.17127") and call.maintenance_margin == D("1.614445")
    assert call.unrealized_pnl == D("-1.166074") and call.cross_wallet_balance == D("3.16812045")
    assert call.margin_type == "cross" and call.event_time == 1587727187525


def test_binance_funding_fee_account_update():
    msg = copy.deepcopy(load("binance/ws_ACCOUNT_UPDATE_real_BTCUSDT.json"))
    msg["a"].update(m="FUNDING_FEE", P=[])
    msg["a"]["B"][0]["bc"] = "-0.01234"
    events = bm.parse_user_event(msg)
    assert isinstance(events[0], AccountEvent) and events[0].reason == "FUNDING_FEE"
    [fee] = [e for e in events if isinstance(e, FundingFee)]
    assert fee.amount == D("-0.01234") and fee.symbol == "" and fee.asset == msg["a"]["B"][0]["a"]
    assert fee.time_ms == msg["T"] and fee.id == f"FUNDING_FEE-{fee.asset}-{msg['T']}"
    msg["a"]["m"] = "ORDER"
    assert not any(isinstance(e, FundingFee) for e in bm.parse_user_event(msg))


def test_binance_income_rows():
    rows = [{"symbol": "BTCUSDT", "incomeType": "FUNDING_FEE", "income": "-0.5", "asset": "USDT",
             "info": "", "time": 20, "tranId": 9, "tradeId": ""},
            {"symbol": "BTCUSDT", "incomeType": "COMMISSION", "income": "-0.1", "asset": "USDT",
             "info": "", "time": 5, "tranId": 8, "tradeId": "1"},
            {"symbol": "ETHUSDT", "incomeType": "FUNDING_FEE", "income": "0.25", "asset": "USDT",
             "info": "", "time": 10, "tranId": 7, "tradeId": ""}]
    fees = bm.parse_income_funding(rows)
    assert [(f.symbol, f.amount, f.id) for f in fees] == [("ETHUSDT", D("0.25"), "7"),
                                                          ("BTCUSDT", D("-0.5"), "9")]


@pytest.mark.parametrize("cid,x,reason", [
    ("autoclose-1700000000000", "CALCULATED", "liquidation"), ("adl_autoclose", "TRADE", "adl"),
    ("web_abc", "TRADE", None)])
def test_binance_fill_reason(cid, x, reason):
    msg = copy.deepcopy(load("binance/ws_ORDER_TRADE_UPDATE_real_SUSHIUSDT_FILLED.json"))
    msg["o"].update(c=cid, x=x)
    [ev] = bm.parse_user_event(msg)
    assert isinstance(ev, OrderEvent) and ev.fill is not None and ev.fill.reason == reason


def test_binance_minus_4120_is_typed():
    from binance.exceptions import BinanceAPIException

    class Resp:
        status_code, headers = 400, {}
        text = ('{"code":-4120,"msg":"Order type not supported for this endpoint. Please use '
                'the Algo Order API endpoints instead."}')
    err = to_exchange_error(BinanceAPIException(Resp(), 400, Resp.text))
    assert isinstance(err, UseAlgoOrderApi) and isinstance(err, InvalidOrder)
    assert err.code == -4120


# ---- Bybit -------------------------------------------------------------------------

def leg_frame(**row):
    msg = copy.deepcopy(load("bybit/ws_private_order.json"))
    msg["data"][0].update({"orderType": "Market", "orderLinkId": "", "qty": "0",
                           "stopOrderType": "StopLoss", "triggerPrice": "59000.00",
                           "triggerBy": "MarkPrice", "orderStatus": "Untriggered",
                           "reduceOnly": True, "closeOnTrigger": True, "side": "Sell",
                           "timeInForce": "IOC", **row})
    return msg


def test_bybit_untriggered_leg_is_a_leg_update_only():
    [ev] = ym.parse_private_event(leg_frame())
    assert isinstance(ev, ProtectionLegUpdate)
    leg = ev.leg
    assert (leg.kind, leg.status, leg.position_side) == (ProtectionKind.STOP_LOSS,
                                                         ProtectionStatus.NEW, "LONG")
    assert leg.trigger_price == D("59000") and leg.working_type is WorkingType.MARK_PRICE
    assert leg.client_order_id == f"{leg.symbol}-stop_loss" and leg.triggered_order_id is None


@pytest.mark.parametrize("status,want,order_event", [
    ("Triggered", ProtectionStatus.TRIGGERED, False), ("Filled", ProtectionStatus.FILLED, True),
    ("Deactivated", ProtectionStatus.CANCELED, False),
    ("Rejected", ProtectionStatus.EXPIRED, False)])
def test_bybit_leg_states(status, want, order_event):
    events = ym.parse_private_event(leg_frame(orderStatus=status, stopOrderType="TakeProfit",
                                              triggerBy="LastPrice", cumExecQty="0.01"))
    legs = [e.leg for e in events if isinstance(e, ProtectionLegUpdate)]
    assert [l.status for l in legs] == [want] and legs[0].kind is ProtectionKind.TAKE_PROFIT
    assert legs[0].working_type is WorkingType.CONTRACT_PRICE
    assert any(isinstance(e, OrderEvent) for e in events) is order_event


def test_bybit_plain_order_is_not_a_leg():
    events = ym.parse_private_event(load("bybit/ws_private_order.json"))
    assert events and all(isinstance(e, OrderEvent) for e in events)


@pytest.mark.parametrize("exec_type,reason", [("BustTrade", "liquidation"), ("AdlTrade", "adl"),
                                              ("Trade", None)])
def test_bybit_execution_reasons(exec_type, reason):
    msg = copy.deepcopy(load("bybit/ws_private_execution.json"))
    msg["data"][0]["execType"] = exec_type
    [ev] = ym.parse_private_event(msg)
    assert isinstance(ev, FillEvent) and ev.fill.reason == reason


def test_bybit_funding_execution():
    msg = copy.deepcopy(load("bybit/ws_private_execution.json"))
    msg["data"][0].update(execType="Funding", execFee="0.0123", feeCurrency="USDT")
    [ev] = ym.parse_private_event(msg)
    assert isinstance(ev, FundingFee) and ev.amount == D("-0.0123")
    assert ev.id == msg["data"][0]["execId"] and ev.symbol == msg["data"][0]["symbol"]


def test_bybit_leg_ids_round_trip():
    assert ym.parse_leg_id(ym.bybit_leg_id("BTCUSDT", ProtectionKind.TRAILING_STOP)) == (
        "BTCUSDT", ProtectionKind.TRAILING_STOP)
    assert ym.parse_leg_id("t-123") is None and ym.parse_leg_id("nonsense") is None


# ---- shared checks -------------------------------------------------------------------

def test_leg_argument_checks():
    spec = BINANCE.protection
    assert closing_side("LONG") == "SELL" and closing_side("SHORT") == "BUY"
    check_leg_args("binance", spec, ProtectionKind.STOP_LOSS, "LONG", D("1"), None, None,
                   WorkingType.MARK_PRICE)
    bad = [(ProtectionKind.STOP_LOSS, None, None), (ProtectionKind.TAKE_PROFIT, D("1"), D("1")),
           (ProtectionKind.TRAILING_STOP, None, D("0.05")),
           (ProtectionKind.TRAILING_STOP, None, D("10.5")),
           (ProtectionKind.TRAILING_STOP, D("1"), D("1"))]
    for kind, trigger, rate in bad:
        with pytest.raises(InvalidOrder) as info:
            check_leg_args("binance", spec, kind, "LONG", trigger, rate, None,
                           WorkingType.MARK_PRICE)
        assert info.value.code is None
    # Bybit has no callback range of its own: any positive rate becomes a distance
    check_leg_args("bybit", BYBIT.protection, ProtectionKind.TRAILING_STOP, "SHORT", None,
                   D("25"), None, WorkingType.CONTRACT_PRICE)
    with pytest.raises(ValueError):
        closing_side("BOTH")
