"""Shared mark price streams: ticker pushes, PnL from ticks, no periodic polling."""
from __future__ import annotations

import time
from decimal import Decimal


def test_subscribe_ticker_pushes_price_moves_and_shares_one_upstream(account, listen, sim) -> None:  # type: ignore[no-untyped-def]
    first, second = listen(account.token), listen(account.token)
    for lst in (first, second):
        ack = lst.call("subscribe_ticker", {"exchange": "binance", "symbols": ["ETHUSDT"]})
        assert ack == {"ok": True, "subscribed": ["ETHUSDT"], "rooms": ["ticker_binance_ETHUSDT"]}
    mark = first.mark()
    sim.set_price("ETHUSDT", "3456.78")
    tick = first.wait_for("ticker", lambda d: d["data"]["mark_price"] == "3456.78", since=mark)
    assert tick["exchange"] == "binance" and tick["data"]["symbol"] == "ETHUSDT"
    book = first.wait_for("ticker", lambda d: d["data"]["bid"] == "3456.77", since=mark)
    assert book["data"]["ask"] == "3456.79" and book["data"]["last_price"] is None
    assert tick["source"] == "stream" and tick["as_of"] > 0
    second.wait_for("ticker", lambda d: d["data"]["mark_price"] == "3456.78")
    streams = [s for s in sim.state()["streams"] if "ethusdt@markprice" in str(s).lower()]
    assert len(streams) == 1, streams
    ack = first.call("unsubscribe_ticker", {"exchange": "binance", "symbols": ["ETHUSDT"]})
    assert ack == {"ok": True, "subscribed": []}
    bad = first.call("subscribe_ticker", {"exchange": "kraken", "symbols": ["ETHUSDT"]})
    assert bad["ok"] is False and bad["error"]["field"] == "exchange"


def test_pnl_follows_mark_ticks_without_rest_polling(account, listen, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("XRPUSDT", "1.0000")
    lst = listen(account.token)
    lst.call("subscribe", {"types": ["positions", "pnl", "balance"]})
    lst.wait_for("stream_status", lambda d: d["state"] == "live")
    since_live = lst.mark()
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "XRPUSDT", "side": "SELL",
                                     "type": "MARKET", "quantity": "100"})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text
    entry = Decimal(r.json()["trade"]["entry_price"])
    # shown from the stream at once; settled once REST completed what the event lacks
    lst.wait_for("positions", lambda d: len(d["data"]) == 1 and d["data"][0]["leverage"])
    time.sleep(1.5)  # let the account settle into stream mode
    before = dict(sim.state()["requests"].get(account.api_key, {}))
    mark = lst.mark()
    for price in ("0.9900", "0.9800", "0.9700"):
        sim.set_price("XRPUSDT", price)
        expected = (entry - Decimal(price)) * 100  # short: gains when the price falls
        pnl = lst.wait_for("pnl", lambda d, e=expected: Decimal(d["data"]["unrealized_pnl"]) == e,
                           since=mark)
        assert pnl["source"] == "stream"
        bal = lst.wait_for("balance", lambda d, e=expected: Decimal(d["data"]["total_unrealized_pnl"]) == e,
                           since=mark)
        assert bal["source"] == "stream"
    time.sleep(2.0)
    after = sim.state()["requests"].get(account.api_key, {})
    polled = {k: after.get(k, 0) - before.get(k, 0) for k in after
              if after.get(k, 0) != before.get(k, 0) and "listenKey" not in k}
    assert polled == {}, f"REST calls while the streams were live: {polled}"
    # the REST completion of the fill's account event ran without dropping the stream
    # (a zero socket timeout once read as a lost connection and forced a reconnect)
    statuses = [d["state"] for n, d in lst.all[since_live:] if n == "stream_status"]
    assert statuses == [], statuses
