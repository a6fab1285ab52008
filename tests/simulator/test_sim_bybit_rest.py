"""Bybit v5 REST through the real pybit HTTP: signing, timestamps, keys, market data,
wallet and positions (shapes checked against tests/fixtures/bybit/)."""
from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests
from pybit import _helpers
from pybit.exceptions import FailedRequestError, InvalidRequestError
from pybit.unified_trading import HTTP

from exchanges.simulator.bybit_auth import BybitError, sign, verify_request
from exchanges.simulator.engine import Engine

SYMBOL = "BTCUSDT"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bybit"


def fixture_row(name: str) -> dict:
    """``result.list[0]`` of a fixture file."""
    return json.loads((FIXTURES / name).read_text())["result"]["list"][0]


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, "60000")


@pytest.fixture
def bb(sim, account):
    """Real pybit HTTP for the fresh funded account."""
    return sim.bybit_client(account.api_key, account.api_secret)


# ---- signing -------------------------------------------------------------------------
def test_protocol_doc_test_vectors():
    prefix = "1700000000000testkey5000"
    assert sign("testsecret", prefix + "category=linear&settleCoin=USDT") == \
        "a81f5536f55e5c748e179a26ff5bfa56e957740ec7c59616ff942a944a58a69d"
    body = ('{"category": "linear", "symbol": "BTCUSDT", "side": "Buy", "orderType": '
            '"Limit", "qty": "0.001", "price": "50000", "orderLinkId": "link-1"}')
    assert sign("testsecret", prefix + body) == \
        "79dd7e933457b4082a19b2718c7aaf8dc7e2c39bf18cbad4193c28434d40023f"


def test_timestamp_window_bounds():
    engine = Engine()
    engine.create_account("testkey", "testsecret", {"USDT": Decimal(1)})
    server = 1_700_000_010_000

    def check(ts: int) -> int:
        headers = {"X-BAPI-API-KEY": "testkey", "X-BAPI-TIMESTAMP": str(ts),
                   "X-BAPI-RECV-WINDOW": "5000",
                   "X-BAPI-SIGN": sign("testsecret", f"{ts}testkey5000a=1")}
        try:
            verify_request(engine, headers, "a=1", server)
        except BybitError as exc:
            return exc.code
        return 0
    assert [check(server - 5000), check(server + 999)] == [0, 0]
    assert [check(server - 5001), check(server + 1000)] == [10002, 10002]


def test_signed_get_and_post_are_accepted(bb):
    wallet = bb.get_wallet_balance(accountType="UNIFIED")
    assert wallet["retCode"] == 0 and wallet["retMsg"] == "OK" and wallet["retExtInfo"] == {}
    assert isinstance(wallet["time"], int)
    assert wallet["result"]["list"][0]["totalWalletBalance"] == "10000"
    assert bb.set_leverage(category="linear", symbol=SYMBOL, buyLeverage="10",
                           sellLeverage="10")["result"] == {}


def test_rate_limit_headers_on_replies(sim, account):
    session = HTTP(api_key=account.api_key, api_secret=account.api_secret, testnet=False,
                   max_retries=1, retry_delay=0, return_response_headers=True)
    session.endpoint = sim.url
    _, _, headers = session.get_positions(category="linear", symbol=SYMBOL)
    assert int(headers["X-Bapi-Limit"]) >= int(headers["X-Bapi-Limit-Status"]) >= 0
    assert abs(int(headers["X-Bapi-Limit-Reset-Timestamp"]) - time.time() * 1000) < 5000
    assert headers["Content-Type"].startswith("application/json")


def test_bad_signature_is_10004(sim, account):
    bad = sim.bybit_client(account.api_key, "not-the-secret")
    with pytest.raises(InvalidRequestError) as info:
        bad.get_wallet_balance(accountType="UNIFIED")
    assert info.value.status_code == 10004 and info.value.message.startswith("error sign!")
    with pytest.raises(InvalidRequestError) as info:
        bad.place_order(category="linear", symbol=SYMBOL, side="Buy", orderType="Market",
                        qty="0.002")
    assert info.value.status_code == 10004
    assert sim.state(account.api_key)["orders"] == []


def test_unknown_key_is_http_401(sim):
    stranger = sim.bybit_client("no-such-key", "whatever")
    with pytest.raises(FailedRequestError) as info:
        stranger.get_positions(category="linear", settleCoin="USDT")
    assert info.value.status_code == 401
    raw = requests.get(sim.url + "/v5/account/wallet-balance?accountType=UNIFIED", timeout=5)
    assert raw.status_code == 401 and raw.json()["retCode"] == 10003


def test_stale_and_future_timestamps_are_10002(bb, monkeypatch):
    bb.retry_codes = set()            # see the 10002 itself, not pybit's retry
    real = _helpers.generate_timestamp
    monkeypatch.setattr(_helpers, "generate_timestamp", lambda: real() - 20_000)
    with pytest.raises(InvalidRequestError) as info:
        bb.get_wallet_balance(accountType="UNIFIED")
    assert info.value.status_code == 10002 and "req_timestamp" in info.value.message
    monkeypatch.setattr(_helpers, "generate_timestamp", lambda: real() + 3_000)
    with pytest.raises(InvalidRequestError) as info:
        bb.get_wallet_balance(accountType="UNIFIED")
    assert info.value.status_code == 10002
    monkeypatch.setattr(_helpers, "generate_timestamp", real)
    assert bb.get_wallet_balance(accountType="UNIFIED")["retCode"] == 0


def test_default_pybit_retries_10002_then_gives_up(bb, monkeypatch):
    real = _helpers.generate_timestamp
    monkeypatch.setattr(_helpers, "generate_timestamp", lambda: real() - 20_000)
    with pytest.raises(FailedRequestError) as info:
        bb.get_wallet_balance(accountType="UNIFIED")
    assert info.value.status_code == 400 and "Retries exceeded" in info.value.message


def test_missing_or_invalid_params_are_10001(bb):
    for call in (lambda: bb.get_wallet_balance(),
                 lambda: bb.get_positions(category="linear"),
                 lambda: bb.get_positions(category="spot", symbol=SYMBOL),
                 lambda: bb.place_order(category="linear", symbol=SYMBOL, side="Buy",
                                        orderType="Market"),
                 lambda: bb.place_order(category="linear", symbol=SYMBOL, side="Up",
                                        orderType="Market", qty="0.002"),
                 lambda: bb.get_open_orders(category="linear")):
        with pytest.raises(InvalidRequestError) as info:
            call()
        assert info.value.status_code == 10001


def test_unknown_route_is_404(sim):
    resp = requests.get(sim.url + "/v5/no/such/thing", timeout=5)
    assert resp.status_code == 404 and resp.json()["retCode"] == 10017


# ---- market data ---------------------------------------------------------------------
def test_server_time(bb):
    result = bb.get_server_time()["result"]
    now = time.time()
    assert abs(int(result["timeSecond"]) - now) <= 2
    assert int(result["timeNano"]) // 10**9 == int(result["timeSecond"])


def test_instruments_info_from_engine_specs(sim):
    public = sim.bybit_client("unused", "unused")
    rows = public.get_instruments_info(category="linear")["result"]["list"]
    assert [r["symbol"] for r in rows] == ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
    [btc] = public.get_instruments_info(category="linear", symbol=SYMBOL)["result"]["list"]
    assert set(fixture_row("rest_v5_market_instruments-info_linear.json")) <= set(btc)
    assert btc["priceFilter"]["tickSize"] == "0.10" and btc["priceScale"] == "2"
    lot = btc["lotSizeFilter"]
    assert (lot["qtyStep"], lot["minOrderQty"], lot["maxOrderQty"], lot["maxMktOrderQty"],
            lot["minNotionalValue"]) == ("0.001", "0.001", "1000.000", "120.000", "100")
    [xrp] = public.get_instruments_info(category="linear", baseCoin="XRP")["result"]["list"]
    assert xrp["priceFilter"]["tickSize"] == "0.0001" and xrp["lotSizeFilter"]["qtyStep"] == "0.1"
    assert public.get_instruments_info(category="linear", symbol="DOGEUSDT")["result"]["list"] == []
    page = public.get_instruments_info(category="linear", limit=2)["result"]
    assert len(page["list"]) == 2 and page["nextPageCursor"]
    rest = public.get_instruments_info(category="linear", limit=2,
                                       cursor=page["nextPageCursor"])["result"]
    assert [r["symbol"] for r in rest["list"]] == ["XRPUSDT"] and rest["nextPageCursor"] == ""


def test_tickers_follow_the_price(sim):
    public = sim.bybit_client("unused", "unused")
    sim.set_price(SYMBOL, "61234.5")
    [t] = public.get_tickers(category="linear", symbol=SYMBOL)["result"]["list"]
    assert (t["lastPrice"], t["markPrice"], t["indexPrice"], t["bid1Price"],
            t["ask1Price"]) == ("61234.50", "61234.50", "61234.50", "61234.40", "61234.60")
    assert len(public.get_tickers(category="linear")["result"]["list"]) == 3
    with pytest.raises(InvalidRequestError) as info:
        public.get_tickers(category="linear", symbol="NOPEUSDT")
    assert info.value.status_code == 10001


# ---- account and positions -----------------------------------------------------------
def test_wallet_balance_has_the_fixture_shape(bb):
    row = bb.get_wallet_balance(accountType="UNIFIED")["result"]["list"][0]
    fixture = fixture_row("rest_v5_account_wallet-balance.json")
    assert set(fixture) <= set(row)
    [usdt] = row["coin"]
    assert set(fixture["coin"][0]) <= set(usdt)
    assert (row["accountType"], row["totalEquity"], row["totalAvailableBalance"],
            usdt["coin"], usdt["walletBalance"], usdt["equity"]) == \
        ("UNIFIED", "10000", "10000", "USDT", "10000", "10000")
    assert usdt["marginCollateral"] is True
    assert bb.get_wallet_balance(accountType="UNIFIED", coin="BTC")["result"]["list"][0][
        "coin"] == []
    with pytest.raises(InvalidRequestError):
        bb.get_wallet_balance(accountType="CONTRACT")


def test_position_list_flat(bb):
    [row] = bb.get_positions(category="linear", symbol=SYMBOL)["result"]["list"]
    assert set(fixture_row("rest_v5_position_list.json")) <= set(row)
    assert (row["side"], row["size"], row["positionIdx"], row["tradeMode"],
            row["leverage"]) == ("", "0.000", 0, 0, "20")
    assert bb.get_positions(category="linear", settleCoin="USDT")["result"]["list"] == []


def test_set_leverage_unchanged_is_110043(bb):
    with pytest.raises(InvalidRequestError) as info:
        bb.set_leverage(category="linear", symbol=SYMBOL, buyLeverage="20", sellLeverage="20")
    assert info.value.status_code == 110043
    bb.set_leverage(category="linear", symbol=SYMBOL, buyLeverage="5", sellLeverage="5")
    [row] = bb.get_positions(category="linear", symbol=SYMBOL)["result"]["list"]
    assert row["leverage"] == "5"
    for buy, sell in (("5", "6"), ("500", "500"), ("2.5", "2.5")):
        with pytest.raises(InvalidRequestError) as info:
            bb.set_leverage(category="linear", symbol=SYMBOL, buyLeverage=buy, sellLeverage=sell)
        assert info.value.status_code == 10001
