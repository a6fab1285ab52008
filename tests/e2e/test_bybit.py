"""A Bybit account and a Binance account of one user stream side by side."""
from __future__ import annotations

import uuid
from decimal import Decimal


def test_bybit_and_binance_keys_stream_side_by_side(account, listen, sim) -> None:  # type: ignore[no-untyped-def]
    bybit_key, bybit_secret = "byk" + uuid.uuid4().hex, "bys" + uuid.uuid4().hex
    sim.create_account(bybit_key, bybit_secret, balances={"USDT": "5000"})
    r = account.post("/api/exchange/keys", {"exchange": "bybit", "api_key": bybit_key,
                                            "api_secret": bybit_secret, "label": "bybit"})
    assert r.status_code == 201, r.text
    bybit_id = r.json()["id"]
    bad = account.post("/api/exchange/keys", {"exchange": "bybit", "api_key": "nope",
                                              "api_secret": "x", "testnet": True})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "exchange_auth_failed"
    assert bad.json()["error"]["exchange_code"] == 10003, bad.json()  # Bybit's own code, not pybit's text

    sim.set_price("XRPUSDT", "1.0000")
    lst = listen(account.token)
    ack = lst.call("subscribe", {"types": ["balance", "positions", "pnl", "orders"]})
    assert ack["ok"], ack
    for key_id in (account.key_id, bybit_id):
        lst.wait_for("stream_status", lambda d, k=key_id: d["key_id"] == k and d["state"] == "live")
        lst.wait_for("balance", lambda d, k=key_id: d["key_id"] == k)
    bybit_balance = [d for n, d in lst.all if n == "balance" and d["key_id"] == bybit_id][0]
    assert bybit_balance["exchange"] == "bybit"
    assert Decimal(bybit_balance["data"]["total_wallet_balance"]) == Decimal("5000")

    mark = lst.mark()
    r = account.post("/api/orders", {"key_id": bybit_id, "symbol": "XRPUSDT", "side": "BUY",
                                     "type": "MARKET", "quantity": "100"})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text
    pos = lst.wait_for("positions", lambda d: d["key_id"] == bybit_id and len(d["data"]) == 1,
                       since=mark)
    assert pos["exchange"] == "bybit" and pos["data"][0]["side"] == "LONG"
    assert pos["data"][0]["size"] == "100"
    mark = lst.mark()
    sim.set_price("XRPUSDT", "1.0500")
    entry = Decimal(r.json()["trade"]["entry_price"])
    pnl = lst.wait_for("pnl", lambda d: d["key_id"] == bybit_id and d["data"]["positions"] and
                       Decimal(d["data"]["unrealized_pnl"]) == (Decimal("1.05") - entry) * 100,
                       since=mark)
    assert pnl["source"] == "stream"
    # the Binance key's pushes stay its own
    assert all(d["exchange"] == "binance" for n, d in lst.all
               if n in ("balance", "positions") and d["key_id"] == account.key_id)
