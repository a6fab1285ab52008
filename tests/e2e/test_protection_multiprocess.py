"""A server-mode rule fired by one process while the key's account stream runs in
another (two processes behind Redis): the stream's live ``fills`` push of the exit's
fill says the rule's ``reason`` (CONTRACT.md "Protection"), read by the exit's id from
the leg row the firing process committed with the exit."""
from __future__ import annotations

from tests.e2e.conftest import Account, queued_pair
from tests.e2e.test_push_continuity import FillsListener

PATH = "/api/positions/protection"


def test_a_rule_fired_by_another_process_tags_the_streams_live_fill(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    # a long sweep: A never arms the rule set through B (only B's guard holds it)
    with queued_pair(sim, pg_server, redis_url, tmp_path, PROTECTION_SWEEP_S="3600") as (a, b, listeners):
        acct = Account(a, sim)
        sim.set_price("BTCUSDT", "60000")
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                      "type": "MARKET", "quantity": "0.010"})
        assert r.status_code == 201, r.text
        la = FillsListener(a.url, acct.token)        # A runs the key's account stream
        listeners.append(la)
        assert la.call("subscribe", {"types": ["fills", "positions"]})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        assert acct.admin("GET", "/admin/stats").json()["streams"]["running"] == 1  # on A
        acct.server = b                              # the rule is set through process B
        r = acct.put(PATH, {"key_id": acct.key_id, "symbol": "BTCUSDT", "mode": "server",
                            "stop_loss": {"trigger_price": "59000"}})
        assert r.status_code == 200, r.text
        mark = la.mark()
        sim.set_price("BTCUSDT", "59500")            # B's guard sees the market, nothing fires
        sim.set_price("BTCUSDT", "58900")            # crosses the stop-loss held by B only
        env = la.wait_for("fills", lambda d: any(f["symbol"] == "BTCUSDT" and f["side"] == "SELL"
                                                 for f in d["data"]), since=mark, timeout=30)
        sell = [f for f in env["data"] if f["symbol"] == "BTCUSDT" and f["side"] == "SELL"]
        assert all(f["reason"] == "stop_loss" for f in sell), sell
        assert sell[0]["client_order_id"].startswith("exit-")
        assert "protection exit started" in b.log()  # B fired it ...
        assert "protection exit started" not in a.log()  # ... and A did not
