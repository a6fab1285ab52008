"""Continuity across server processes: a kill -9 and restart (new epoch, fills
resumed from the ledger by time) and a stream moving to another process behind the
message queue (new epoch there, starting at seq 1)."""
from __future__ import annotations

import time
import uuid

from cryptography.fernet import Fernet
from sqlalchemy import create_engine, func, select

from models import Fill
from tests.e2e.conftest import Account, queued_pair, wait_until
from tests.e2e.test_push_continuity import FillsListener, _market
from tests.support.server import start_server


def _pinned_env() -> dict:
    """Secrets pinned so that a restarted server accepts the same tokens and keys."""
    return {"SECRET_KEY": uuid.uuid4().hex, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "ADMIN_TOKEN": uuid.uuid4().hex, "RECONCILE_INTERVAL_S": "0"}


def test_fills_resume_by_time_after_kill_and_restart(sim, database_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = _pinned_env()
    first = start_server(database_url, sim.url, sim.ws_url, tmp_path, extra_env=env)
    second = None
    try:
        acct = Account(first, sim)
        sim.set_price("ETHUSDT", "3000")
        lst = FillsListener(first.url, acct.token)
        assert lst.call("subscribe", {"types": ["fills", "pnl"], "key_id": acct.key_id})["ok"]
        lst.wait_for("stream_status", lambda d: d["state"] == "live")
        t0 = int(time.time() * 1000) - 1
        _market(acct, "ETHUSDT", "BUY", "0.010")
        _market(acct, "ETHUSDT", "BUY", "0.020")
        wait_until(lambda: len([r for e in lst.got("fills") for r in e["data"]]) == 2)
        pnl = lst.got("pnl")[-1]
        engine = create_engine(database_url)
        with engine.connect() as c:      # durable before the crash
            wait_until(lambda: c.execute(select(func.count()).select_from(Fill).where(
                Fill.key_id == acct.key_id)).scalar() == 2)
        engine.dispose()
        lst.client.disconnect()
        first.kill()                     # kill -9: nothing is flushed or said goodbye

        second = start_server(database_url, sim.url, sim.ws_url, tmp_path, extra_env=env)
        acct.server = second
        back = FillsListener(second.url, acct.token)
        try:
            ack = back.call("subscribe", {"types": ["fills", "pnl"], "key_id": acct.key_id,
                                          "since": {"fills": {"time": t0},
                                                    "pnl": {"epoch": pnl["epoch"],
                                                            "seq": pnl["seq"]}}})
            assert ack["resumed"] == {"fills": True, "pnl": False}, ack
            replay = back.wait_for("fills", lambda d: d["data"], timeout=15)
            want = {str(f["trade_id"]) for f in sim.state(acct.api_key)["fills"]}
            times = [r["time"] for r in replay["data"]]
            assert times == sorted(times) and min(times) >= t0               # oldest first
            assert {r["trade_id"] for r in replay["data"]} == want and len(replay["data"]) == 2
            assert replay["epoch"] != pnl["epoch"]                   # a new process: new epoch
            fresh = back.wait_for("pnl")
            assert fresh["epoch"] == replay["epoch"] and fresh["seq"] == 1
            back.wait_for("stream_status", lambda d: d["state"] == "live")
            mark = back.mark()
            _market(acct, "ETHUSDT", "SELL", "0.030")
            live = back.wait_for("fills", lambda d: d["source"] == "stream", since=mark)
            assert live["epoch"] == replay["epoch"] and live["seq"] == 1  # no gap, no repeat
            assert live["data"][0]["trade_id"] not in want
        finally:
            back.close()
    finally:
        first.stop()
        if second is not None:
            second.stop()




def test_a_stream_moving_to_another_process_starts_a_new_epoch(sim, pg_server, redis_url,  # type: ignore[no-untyped-def]
                                                               tmp_path) -> None:
    with queued_pair(sim, pg_server, redis_url, tmp_path, LEASE_TTL_S="3") as (a, b, listeners):
        acct = Account(a, sim)
        la = FillsListener(a.url, acct.token)
        listeners.append(la)
        assert la.call("subscribe", {"types": ["balance"], "key_id": acct.key_id})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        lb = FillsListener(b.url, acct.token)
        listeners.append(lb)
        assert lb.call("subscribe", {"types": ["balance"], "key_id": acct.key_id})["ok"]
        acct.server = b
        _market(acct, "ETHUSDT", "BUY", "0.010")   # A's stream pushes to B through Redis
        via_a = lb.wait_for("balance", lambda d: d["source"] == "stream")
        a.kill()
        mark = lb.mark()
        lb.wait_for("stream_status", lambda d: d["state"] == "live", since=mark, timeout=20)
        moved = lb.wait_for("balance", lambda d: d["epoch"] != via_a["epoch"], since=mark)
        assert moved["seq"] == 1 and moved["source"] == "rest"     # a complete snapshot
