"""CCXT 4.5's ``binanceusdm`` and ``bybit`` unified calls against the simulator, as a
paper venue: the only change to a ccxt client is where its URLs point (and its
client-side throttle is off: ccxt sleeps before each call to stay under the real
venue's limits, about 12 s over this module, and that is not under test here). Markets,
tickers, balance, market/limit/stop orders, positions, open and closed orders (plain
and trigger), cancel all, trades. Skipped when ccxt is not installed (it is a dev
dependency: requirements-dev.txt)."""
from __future__ import annotations

import uuid

import pytest

ccxt = pytest.importorskip("ccxt")

SYMBOL = "BTC/USDT:USDT"


def point_at(exchange, sim):  # type: ignore[no-untyped-def]
    """Every REST base URL of ``exchange`` on the simulator (paths kept)."""
    api = exchange.urls["api"]
    for key, url in list(api.items()):
        if not isinstance(url, str):
            continue
        for host in ("https://fapi.binance.com", "https://api.binance.com",
                     "https://api.{hostname}"):
            url = url.replace(host, sim.url)
        api[key] = url
    return exchange


@pytest.fixture(params=["binanceusdm", "bybit"])
def ex(request, sim):  # type: ignore[no-untyped-def]
    key, secret = "cx" + uuid.uuid4().hex[:16], "s" + uuid.uuid4().hex
    sim.create_account(key, secret)
    sim.set_price("BTCUSDT", "60000")
    exchange = point_at(getattr(ccxt, request.param)({"apiKey": key, "secret": secret,
                                                              "enableRateLimit": False}), sim)
    exchange.load_markets()
    yield exchange
    sim.set_price("BTCUSDT", "60000")


def test_markets_tickers_balance(ex):
    assert SYMBOL in ex.markets and ex.markets[SYMBOL]["linear"]
    assert ex.fetch_ticker(SYMBOL)["last"] == 60000.0
    assert SYMBOL in ex.fetch_tickers([SYMBOL])
    assert ex.fetch_balance()["USDT"]["total"] == 10000.0


def test_orders_positions_and_cancel_all(ex, sim):
    ex.create_order(SYMBOL, "market", "buy", 0.01)
    [pos] = [p for p in ex.fetch_positions() if p["contracts"]]
    assert (pos["symbol"], pos["side"], pos["contracts"]) == (SYMBOL, "long", 0.01)
    limit = ex.create_order(SYMBOL, "limit", "sell", 0.01, 65000)
    assert [o["id"] for o in ex.fetch_open_orders(SYMBOL)] == [limit["id"]]
    ex.cancel_all_orders(SYMBOL)
    assert ex.fetch_open_orders(SYMBOL) == []
    assert len(ex.fetch_my_trades(SYMBOL)) == 1


def test_stop_order_waits_fires_and_closes(ex, sim):
    ex.create_order(SYMBOL, "market", "buy", 0.01)
    stop = ex.create_order(SYMBOL, "market", "sell", 0.01, None,
                           {"stopLossPrice": 59000, "reduceOnly": True})
    [held] = ex.fetch_open_orders(SYMBOL, None, None, {"trigger": True})
    assert held["id"] == stop["id"] and held["triggerPrice"] == 59000.0
    # Binance keeps algo orders apart; Bybit's order/realtime lists every kind by default
    plain = [o["id"] for o in ex.fetch_open_orders(SYMBOL)]
    assert plain == ([] if ex.id == "binanceusdm" else [stop["id"]])
    sim.set_price("BTCUSDT", "58900")
    assert not [p for p in ex.fetch_positions() if p["contracts"]]
    closed = ex.fetch_closed_orders(SYMBOL, None, None, {"trigger": True})
    assert closed[-1]["status"] == "closed" and closed[-1]["triggerPrice"] == 59000.0
    trades = ex.fetch_my_trades(SYMBOL)
    assert len(trades) == 2 and trades[-1]["side"] == "sell" and trades[-1]["fee"]["cost"] > 0


def test_cancel_all_trigger_orders(ex):
    ex.create_order(SYMBOL, "market", "buy", 0.01)
    ex.create_order(SYMBOL, "market", "sell", 0.01, None,
                    {"stopLossPrice": 59000, "reduceOnly": True})
    ex.cancel_all_orders(SYMBOL, {"trigger": True})
    assert ex.fetch_open_orders(SYMBOL, None, None, {"trigger": True}) == []
