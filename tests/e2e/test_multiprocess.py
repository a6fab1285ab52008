"""Two server processes behind Redis: rooms shared through the message queue, one
owner per account stream, taken over when the owner dies; ``max_hz`` applied on the
process that does not run the stream."""
from __future__ import annotations

import time
from decimal import Decimal

from tests.e2e.conftest import Account, Listener, queued_pair
from tests.e2e.test_push_continuity import FillsListener, _market


def _stats(acct: Account, server) -> dict:  # type: ignore[no-untyped-def]
    import requests
    return requests.get(server.url + "/admin/stats", timeout=10,
                        headers={"X-Admin-Token": server.admin_token}).json()


def test_two_processes_share_rooms_and_take_over_a_dead_owners_stream(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    with queued_pair(sim, pg_server, redis_url, tmp_path, LEASE_TTL_S="3") as (a, b, listeners):
        acct = Account(a, sim)
        sim.set_price("BTCUSDT", "60000")
        la = Listener(a.url, acct.token)
        listeners.append(la)
        assert la.call("subscribe", {"types": ["orders", "balance"]})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        lb = Listener(b.url, acct.token)
        listeners.append(lb)
        assert lb.call("subscribe", {"types": ["orders", "balance"]})["ok"]
        lb.wait_for("balance")                       # B's snapshot (REST: A owns the stream)
        assert _stats(acct, a)["streams"]["running"] == 1
        assert _stats(acct, b)["streams"] == {**_stats(acct, b)["streams"], "running": 0, "followed": 1}

        acct.server = b                              # the order goes through process B
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                      "type": "LIMIT", "quantity": "0.010", "price": "50000"})
        assert r.status_code == 201, r.text
        coid = r.json()["trade"]["client_order_id"]
        for lst in (la, lb):                         # A's stream, pushed to both processes
            lst.wait_for("orders", lambda d: any(o["client_order_id"] == coid for o in d["data"]))

        a.kill()                                     # the owner dies without releasing
        mark = lb.mark()
        lb.wait_for("stream_status", lambda d: d["state"] == "live", since=mark, timeout=20)
        stats = _stats(acct, b)["streams"]
        assert stats["running"] == 1 and stats["takeovers"] == 1
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                      "type": "LIMIT", "quantity": "0.010", "price": "50100"})
        coid2 = r.json()["trade"]["client_order_id"]
        lb.wait_for("orders", lambda d: any(o["client_order_id"] == coid2 for o in d["data"]),
                    since=mark)


class TimedListener(FillsListener):
    """A FillsListener that also notes when (monotonic s) each event arrived."""

    def _handler(self, name: str):  # type: ignore[no-untyped-def]
        record = super()._handler(name)

        def handle(data):  # type: ignore[no-untyped-def]
            data["_arrived"] = time.monotonic()  # test-side only
            record(data)
        return handle


def test_max_hz_applies_on_the_process_that_does_not_run_the_stream(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    with queued_pair(sim, pg_server, redis_url, tmp_path) as (a, b, listeners):
        acct = Account(a, sim)
        sim.set_price("XRPUSDT", "1.0000")
        sim.set_price("ETHUSDT", "3000")
        entry = Decimal(_market(acct, "XRPUSDT", "BUY", "100")["entry_price"])
        la = TimedListener(a.url, acct.token)        # A runs the stream (default max_hz)
        listeners.append(la)
        assert la.call("subscribe", {"types": ["pnl"], "key_id": acct.key_id})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        lb = TimedListener(b.url, acct.token)        # B follows it through Redis
        listeners.append(lb)
        assert lb.call("subscribe", {"types": ["pnl", "fills"], "key_id": acct.key_id,
                                     "max_hz": 2})["ok"]
        lb.wait_for("pnl")                           # B's REST snapshot
        assert _stats(acct, b)["streams"]["running"] == 0
        time.sleep(1.0)
        mark_a, mark_b = la.mark(), lb.mark()
        started = time.monotonic()
        prices = [f"1.{i:04d}" for i in range(1, 31)]
        for i, price in enumerate(prices):           # 30 moves in about 3 s
            sim.set_price("XRPUSDT", price)
            if i == 15:                              # a fill: an account event
                acct.server = b
                _market(acct, "ETHUSDT", "BUY", "0.010")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        want = (Decimal(prices[-1]) - entry) * 100
        lb.wait_for("pnl", lambda d: any(Decimal(p["unrealized_pnl"]) == want for p in
                                         d["data"]["positions"] if p["symbol"] == "XRPUSDT"),
                    since=mark_b, timeout=5)         # the newest value always arrives
        time.sleep(0.6)
        got_b = [e for e in lb.got("pnl", since=mark_b) if e["source"] == "stream"]
        got_a = [e for e in la.got("pnl", since=mark_a) if e["source"] == "stream"]
        assert len(got_a) >= 15, len(got_a)          # the stream pushed most moves (A: 10/s)
        # at most 2 mark-driven pushes a second on B, plus the fill's own (timer slack: +2)
        assert 3 <= len(got_b) <= 2 * (elapsed + 0.6) + 3, (len(got_b), elapsed)
        assert len({e["epoch"] for e in got_b}) == 1
        assert [e["seq"] for e in got_b] == sorted({e["seq"] for e in got_b})  # never a repeat
        # the last pnl B got has the newest value (a REST refresh on A may have carried it
        # first, the tick then changing nothing: its source is then "rest")
        last = [p for p in lb.got("pnl", since=mark_b)[-1]["data"]["positions"]
                if p["symbol"] == "XRPUSDT"]
        assert Decimal(last[0]["unrealized_pnl"]) == want  # nothing conflated away at the end
        # the fill and the pnl it changed reach B at once, not held for B's 0.5 s interval
        fill = lb.wait_for("fills", lambda d: d["data"], since=mark_b, timeout=5)
        moved = lb.wait_for("pnl", lambda d: any(p["symbol"] == "ETHUSDT"
                                                 for p in d["data"]["positions"]), since=mark_b)
        assert moved["_arrived"] - fill["_arrived"] < 0.3, moved["_arrived"] - fill["_arrived"]
        assert fill["_arrived"] - started < elapsed + 1


def test_a_stream_moves_to_the_process_holding_its_sockets_and_only_cross_pushes_use_redis(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    """A runs the key's stream, B follows it: B's pushes crossed Redis, A's did not.
    When A's last socket of the user leaves, A releases the lease and tells B, which
    takes the stream over at once (the lease upkeep alone would take up to a third of
    LEASE_TTL_S, here 20 s); B's socket then gets its pushes with nothing crossing."""
    with queued_pair(sim, pg_server, redis_url, tmp_path, LEASE_TTL_S="60") as (a, b, listeners):
        acct = Account(a, sim)
        sim.set_price("XRPUSDT", "1.0000")
        entry = Decimal(_market(acct, "XRPUSDT", "BUY", "100")["entry_price"])
        la = Listener(a.url, acct.token)
        listeners.append(la)
        assert la.call("subscribe", {"types": ["pnl"], "key_id": acct.key_id})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        lb = Listener(b.url, acct.token)
        listeners.append(lb)
        assert lb.call("subscribe", {"types": ["pnl"], "key_id": acct.key_id})["ok"]
        lb.wait_for("pnl")
        time.sleep(0.5)
        for price in ("1.0100", "1.0200", "1.0300"):
            sim.set_price("XRPUSDT", price)
            time.sleep(0.3)
        want = (Decimal("1.0300") - entry) * 100
        for lst in (la, lb):
            lst.wait_for("pnl", lambda d: any(Decimal(p["unrealized_pnl"]) == want
                                              for p in d["data"]["positions"]))
        fa, fb = (_stats(acct, s)["push"]["fanout"] for s in (a, b))
        assert fa["relayed"] == 0 and fa["pushed"] >= 3, fa
        assert fb["relayed_fraction"] == 1.0 and fb["relay"]["watched"] == 1, fb
        assert fa["relay"]["interest"] == 1 and fa["relay"]["published"] >= 3, fa

        la.close()                                   # A's last socket of the user leaves
        moved = time.monotonic()
        mark = lb.mark()
        lb.wait_for("stream_status", lambda d: d["state"] == "live", since=mark, timeout=15)
        assert time.monotonic() - moved < 10          # handed over, not found by the upkeep
        sb = _stats(acct, b)
        assert sb["streams"]["running"] == 1 and sb["streams"]["takeovers"] == 1
        relayed_before = sb["push"]["fanout"]["relayed"]
        sim.set_price("XRPUSDT", "1.0500")
        want = (Decimal("1.0500") - entry) * 100
        lb.wait_for("pnl", lambda d: any(Decimal(p["unrealized_pnl"]) == want
                                         for p in d["data"]["positions"]), since=mark)
        sb = _stats(acct, b)["push"]["fanout"]
        assert sb["relayed"] == relayed_before and sb["relay"]["watched"] == 0, sb
        assert _stats(acct, a)["streams"]["running"] == 0


def test_a_follower_gets_its_first_envelopes_from_the_owner_and_asks_the_exchange_nothing(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    """A subscriber on the process that does not run the key's stream gets the owner's
    current envelopes (its answer to ``want``), not a REST snapshot of its own: those
    spent about 55 of the venue's per-minute weight per subscriber, which in a failover
    held the survivor's take-overs back until the next window (bench.scaleout)."""
    with queued_pair(sim, pg_server, redis_url, tmp_path) as (a, b, listeners):
        acct = Account(a, sim)
        kinds = ["balance", "positions", "orders"]
        la = Listener(a.url, acct.token)
        listeners.append(la)
        assert la.call("subscribe", {"types": kinds, "key_id": acct.key_id})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        owner = {k: la.wait_for(k) for k in kinds}

        def calls() -> int:
            return sum(g.get("requests", 0) for g in _stats(acct, b)["rate_limits"].values())
        before = calls()
        lb = Listener(b.url, acct.token)
        listeners.append(lb)
        started = time.monotonic()
        assert lb.call("subscribe", {"types": kinds, "key_id": acct.key_id})["ok"]
        for kind in kinds:
            env = lb.wait_for(kind, timeout=5)
            assert env["source"] == "cache", env           # not "rest" (seq 0)
            assert env["epoch"] == owner[kind]["epoch"] and env["seq"] >= owner[kind]["seq"] >= 1
        assert time.monotonic() - started < 3              # the owner answered at once
        assert _stats(acct, b)["streams"]["running"] == 0
        assert calls() == before                           # B asked the exchange nothing
