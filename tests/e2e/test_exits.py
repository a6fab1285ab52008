"""Closing positions: duplicate-exit guard, FOK chase, slippage bound, FIFO PnL."""
from __future__ import annotations

from decimal import Decimal

from tests.e2e.conftest import wait_until


def _open_long(account, qty: str = "0.010", symbol: str = "BTCUSDT") -> dict:  # type: ignore[no-untyped-def]
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": symbol, "side": "BUY",
                                     "type": "MARKET", "quantity": qty})
    assert r.status_code == 201 and r.json()["trade"]["status"] == "open", r.text
    return r.json()["trade"]


def _final_exit(account, exit_id: int) -> dict:  # type: ignore[no-untyped-def]
    return wait_until(lambda: (lambda e: e if e["status"] != "working" else None)(
        account.get(f"/api/exits/{exit_id}").json()["exit"]))


def test_close_fills_once_and_closes_the_trades_fifo(account, sim, listen) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    first = _open_long(account)
    sim.set_price("BTCUSDT", "61000")
    second = _open_long(account)
    sim.set_price("BTCUSDT", "62000")
    body = {"key_id": account.key_id, "symbol": "BTCUSDT"}
    r1, r2 = account.post("/api/positions/close", body), account.post("/api/positions/close", body)
    assert r1.status_code == 202 and r2.status_code == 202
    assert r1.json()["started"] is True
    exit_id = r1.json()["exit"]["id"]
    if r2.json()["started"] is False:           # the guard returned the working exit
        assert r2.json()["exit"]["id"] == exit_id
    else:                                       # the first had already finished
        assert _final_exit(account, exit_id)["status"] == "filled"
    done = _final_exit(account, exit_id)
    assert done["status"] == "filled" and done["attempts"] == 1 and done["quantity"] == "0.02"
    trades = {t["client_order_id"]: t for t in account.get("/api/trades?status=closed").json()}
    t1, t2 = trades[first["client_order_id"]], trades[second["client_order_id"]]
    exit_price = Decimal(done["exit_price"])
    assert exit_price == Decimal("61999.9")     # the best bid: price - 1 tick
    for t in (t1, t2):
        assert Decimal(t["exit_price"]) == exit_price and t["closed_at"]
    gross1 = (exit_price - Decimal(t1["entry_price"])) * Decimal("0.01")
    assert gross1 - Decimal(t1["fees"]) - Decimal("0.5") < Decimal(t1["realized_pnl"]) < gross1
    assert account.get(f"/api/account/positions?key_id={account.key_id}").json()["data"] == []
    again = account.post("/api/positions/close", body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_position"


def test_fok_rejected_three_times_then_filled_one_tick_worse_each_time(account, sim) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("ETHUSDT", "3400")
    _open_long(account, "0.010", "ETHUSDT")
    sim.add_fault(kind="reject_orders", api_key=account.api_key, count=3)
    r = account.post("/api/positions/close", {"key_id": account.key_id, "symbol": "ETHUSDT"})
    done = _final_exit(account, r.json()["exit"]["id"])
    assert done["status"] == "filled" and done["attempts"] == 4
    # best bid 3399.99, then 3 ticks of 0.01 worse
    assert Decimal(done["first_price"]) == Decimal("3399.99")
    assert Decimal(done["last_price"]) == Decimal("3399.96")
    assert account.get("/api/trades?status=exit_failed").json() == []


def test_slippage_bound_gives_up_and_reports(account, sim, listen) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("ETHUSDT", "3400")
    trade = _open_long(account, "0.010", "ETHUSDT")
    lst = listen(account.token)
    sim.add_fault(kind="reject_orders", api_key=account.api_key, count=20)
    r = account.post("/api/positions/close", {"key_id": account.key_id, "symbol": "ETHUSDT"})
    done = _final_exit(account, r.json()["exit"]["id"])
    sim.clear_faults()
    assert done["status"] == "failed" and "slippage" in done["reason"]
    assert done["attempts"] == 4   # 0, 1, 2 and 3 ticks worse; 4 would break the bound
    assert Decimal(done["first_price"]) - Decimal(done["last_price"]) == Decimal("0.03")
    failed = account.get("/api/trades?status=exit_failed").json()
    assert [t["client_order_id"] for t in failed] == [trade["client_order_id"]]
    assert "slippage" in failed[0]["error_message"]
    err = lst.wait_for("error", lambda d: d["code"] == "exit_failed")
    assert str(done["id"]) in err["message"]
    pos = account.get(f"/api/account/positions?key_id={account.key_id}").json()["data"]
    assert pos and pos[0]["symbol"] == "ETHUSDT"  # the position is still open
