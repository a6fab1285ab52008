"""Two server processes behind nginx (``deploy.nginx``: the configuration ``make
deploy`` runs) on PostgreSQL + Redis, with real python-socketio clients.

Where a client lands: the balancer hashes the ``affinity`` query argument (else the
client address). Every client here connects from 127.0.0.1, so each picks an
``affinity`` that nginx sends to the process the test wants (read off the
``X-Upstream`` header of a plain request with that argument: the same key hashes to
the same process). The clients still go through nginx: the WebSocket upgrade, the
stickiness (a polling client's requests, each a new HTTP request, all reach the
process holding its Engine.IO session) and the failover (a dead process's clients
reconnect through nginx to the survivor) are what is tested. Connecting straight to
each backend would test none of that.

nginx comes from Debian's packages (``scripts/install-nginx.sh``, run by ``make
test``); without it these tests skip, except under CI=true where they fail.

The Redis outage test runs its own ``redis-server`` on a free port (started and
killed here): the shared Redis on 6379 serves the other tests meanwhile.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from deploy.nginx import Nginx, available
from tests.e2e.conftest import Account, queued_pair, wait_until
from tests.e2e.test_push_continuity import FillsListener
from tests.support.server import free_port

# every client reaches the servers from 127.0.0.1 through nginx (TRUSTED_PROXIES=1 as
# `make deploy` sets it: the address nginx saw, here 127.0.0.1 for all of them): the
# per-address login limit would count all of them as one client
ENV = {"LOGIN_RATE_LIMIT": "1000 per minute", "LEASE_TTL_S": "3", "TRUSTED_PROXIES": "1"}


@pytest.fixture(scope="module")
def nginx_bin() -> str:
    """/usr/sbin/nginx (scripts/install-nginx.sh); skips without it, fails under CI=true."""
    if not available():
        if os.environ.get("CI") == "true":
            pytest.fail("nginx missing (scripts/install-nginx.sh installs it; required in CI)")
        pytest.skip("nginx not installed (sh scripts/install-nginx.sh)")
    return "/usr/sbin/nginx"


@dataclass
class Front:
    """The balancer as a ``server`` for ``Account``: its ``url`` and the admin token."""

    url: str
    admin_token: str


@contextmanager
def balanced(sim, pg_server, redis_url: str, tmp_path: Path, **env: str) -> Iterator[tuple]:  # type: ignore[no-untyped-def]
    """``queued_pair`` (two ``python app.py`` on one new PostgreSQL database behind
    ``redis_url``) with nginx in front. Yields ``(a, b, front, nginx, listeners)``."""
    with queued_pair(sim, pg_server, redis_url, tmp_path, **{**ENV, **env}) as (a, b, listeners):
        backends = [a.url.removeprefix("http://"), b.url.removeprefix("http://")]
        nginx = Nginx(tmp_path / "nginx", f"127.0.0.1:{free_port()}", backends).start()
        try:
            yield a, b, Front(nginx.url, a.admin_token), nginx, listeners
        finally:
            for lst in listeners:
                if lst.client.connected:
                    lst.close()
            nginx.stop()


def affinity_for(front: Front, backend) -> str:  # type: ignore[no-untyped-def]
    """An ``affinity`` value that nginx sends to ``backend`` (a ServerProcess)."""
    want = backend.url.removeprefix("http://")
    for i in range(200):
        key = f"k{i}-{uuid.uuid4().hex[:6]}"
        r = requests.get(f"{front.url}/healthz", params={"affinity": key}, timeout=5)
        if r.status_code == 200 and r.headers.get("X-Upstream") == want:
            return key
    raise AssertionError(f"no affinity key reaches {want}")


class Client(FillsListener):
    """A FillsListener connected through ``url`` with the given transports."""

    def __init__(self, url: str, token: str, transports: list[str] | None = None) -> None:  # type: ignore[no-untyped-def]
        import queue
        import threading

        import socketio
        self.events = queue.Queue()
        self.all = []
        self._lock = threading.Lock()
        self.client = socketio.Client(reconnection=False)
        for name in self.EVENTS:
            self.client.on(name, self._handler(name))
        self.client.connect(url, auth={"token": token}, transports=transports or ["websocket"],
                            wait_timeout=10)


def connect_via(front: Front, key: str, token: str, listeners: list,
                transports: list[str] | None = None) -> Client:
    lst = Client(f"{front.url}/?affinity={key}", token, transports)
    listeners.append(lst)
    return lst


def connections(server) -> list[dict]:  # type: ignore[no-untyped-def]
    """GET /admin/connections of one backend."""
    return requests.get(server.url + "/admin/connections", timeout=10,
                        headers={"X-Admin-Token": server.admin_token}).json()


def stats(server) -> dict:  # type: ignore[no-untyped-def]
    return requests.get(server.url + "/admin/stats", timeout=10,
                        headers={"X-Admin-Token": server.admin_token}).json()


def market(acct: Account, symbol: str, qty: str) -> str:
    """A MARKET BUY through ``acct.server`` (the balancer); its client_order_id."""
    return market_trade(acct, symbol, qty)["client_order_id"]


def market_trade(acct: Account, symbol: str, qty: str) -> dict:
    """A MARKET BUY through ``acct.server``; the trade record of the answer."""
    r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": symbol, "side": "BUY",
                                  "type": "MARKET", "quantity": qty})
    assert r.status_code == 201, r.text
    return r.json()["trade"]


def has_fill(coid: str):  # type: ignore[no-untyped-def]
    return lambda d: any(f["client_order_id"] == coid for f in d["data"])


def trades_once(acct: Account, coids: list[str]) -> list[dict]:
    """Wait until each of ``coids`` is in GET /api/trades exactly once and open (filled);
    returns those rows."""
    def ready():  # type: ignore[no-untyped-def]
        rows = acct.get(f"/api/trades?key_id={acct.key_id}").json()
        mine = [r for r in rows if r["client_order_id"] in coids]
        return mine if len(mine) == len(coids) and all(r["status"] == "open" for r in mine) else None
    rows = wait_until(ready, timeout=30)
    assert sorted(r["client_order_id"] for r in rows) == sorted(coids)  # once each
    return rows


def test_pushes_reach_a_user_whose_sockets_sit_on_both_processes(  # type: ignore[no-untyped-def]
        nginx_bin, sim, pg_server, redis_url, tmp_path) -> None:
    with balanced(sim, pg_server, redis_url, tmp_path) as (a, b, front, nginx, listeners):
        acct = Account(front, sim)                      # register, login, key: through nginx
        on_a = connect_via(front, affinity_for(front, a), acct.token, listeners)
        on_b = connect_via(front, affinity_for(front, b), acct.token, listeners)
        # a polling client: each of its requests is a new HTTP request through nginx; a
        # balancer without stickiness would send some to the process that does not
        # know its session (400 "Invalid session")
        polling = connect_via(front, affinity_for(front, b), acct.token, listeners,
                              transports=["polling"])
        # and one without `affinity`: kept on one process by its address
        by_addr = Client(front.url, acct.token, ["polling"])
        listeners.append(by_addr)
        on = {"a": [c["user_id"] for c in connections(a)], "b": [c["user_id"] for c in connections(b)]}
        assert len(on["a"]) + len(on["b"]) == 4 and len(on["a"]) >= 1 and len(on["b"]) >= 2, on
        assert set(on["a"] + on["b"]) == {acct.user_id}
        for lst in (on_a, on_b, polling, by_addr):
            ack = lst.call("subscribe", {"types": ["orders", "balance", "fills"],
                                         "key_id": acct.key_id})
            assert ack["ok"], ack
        on_a.wait_for("stream_status", lambda d: d["state"] == "live")
        assert stats(a)["streams"]["running"] + stats(b)["streams"]["running"] == 1
        sim.set_price("ETHUSDT", "3000")
        coid = market(acct, "ETHUSDT", "0.010")
        for lst in (on_a, on_b, polling, by_addr):      # one stream, pushed on both processes
            lst.wait_for("fills", has_fill(coid))
            lst.wait_for("balance", lambda d: d["source"] == "stream")
        assert polling.client.transport() == by_addr.client.transport() == "polling"
        trades_once(acct, [coid])
        assert "[error]" not in nginx.error_log(), nginx.error_log()[-2000:]


def test_kill_9_of_one_process_its_clients_resume_on_the_other_through_nginx(  # type: ignore[no-untyped-def]
        nginx_bin, sim, pg_server, redis_url, tmp_path) -> None:
    with balanced(sim, pg_server, redis_url, tmp_path) as (a, b, front, _nginx, listeners):
        acct = Account(front, sim)
        key = affinity_for(front, a)
        first = connect_via(front, key, acct.token, listeners)
        assert first.call("subscribe", {"types": ["balance", "positions", "fills"],
                                        "key_id": acct.key_id})["ok"]
        first.wait_for("stream_status", lambda d: d["state"] == "live")
        assert stats(a)["streams"]["running"] == 1      # A runs the key's stream
        sim.set_price("ETHUSDT", "3000")
        coid1 = market(acct, "ETHUSDT", "0.010")
        fill1 = first.wait_for("fills", has_fill(coid1))
        last_pos = first.wait_for("positions", lambda d: any(p["symbol"] == "ETHUSDT"
                                                             for p in d["data"]))
        fill_time = max(f["time"] for f in fill1["data"])

        a.kill()                                         # kill -9: no lease released
        wait_until(lambda: not first.client.connected, timeout=70)
        # an order while the key's stream runs nowhere: through nginx, which now
        # sends everything to B (A refuses connections)
        coid2 = market(acct, "ETHUSDT", "0.020")
        # the client reconnects through the balancer with the same affinity: A is down,
        # nginx picks B; it resumes with `since` (fills: by exchange time, the contract's
        # way across processes; states: its last envelope)
        t_kill = time.monotonic()
        again = connect_via(front, key, acct.token, listeners)
        assert [c["user_id"] for c in connections(b)] == [acct.user_id]
        ack = again.call("subscribe", {
            "types": ["balance", "positions", "fills"], "key_id": acct.key_id,
            "since": {"fills": {"time": fill_time + 1},
                      "positions": {"epoch": last_pos["epoch"], "seq": last_pos["seq"]}}})
        assert ack["ok"], ack
        again.wait_for("stream_status", lambda d: d["state"] == "live", timeout=20)
        took_s = time.monotonic() - t_kill
        st = stats(b)["streams"]
        assert st["running"] == 1, st                    # B took the stream over
        assert took_s < 15, took_s
        # the survivor's stream pushes a new fill live
        mark = again.mark()
        coid3 = market(acct, "ETHUSDT", "0.010")
        again.wait_for("fills", has_fill(coid3), since=mark)
        trades_once(acct, [coid1, coid2, coid3])         # each recorded exactly once
        # the resume: the fill made while nothing streamed is sent again (from the
        # ledger, once the survivor's stream is live: it took the stream over and its
        # gap fill recorded the fill), the one before the kill is not
        assert ack["resumed"]["fills"] is True, ack
        replay = again.wait_for("fills", has_fill(coid2), timeout=5)
        assert replay["source"] == "cache" and all(f["time"] > fill_time for f in replay["data"])
        assert not any(has_fill(coid1)(d) for d in again.got("fills")), again.got("fills")


class PrivateRedis:
    """A ``redis-server`` of this test on a free port (no persistence)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log = log_dir / f"redis-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--logfile", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.3):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:  # type: ignore[no-untyped-def]
    if not (shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()):
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server missing (required in CI)")
        pytest.skip("redis-server not installed")
    r = PrivateRedis(tmp_path)
    r.start()
    yield r
    r.kill()


def _pnl_at(lst: FillsListener, entry: Decimal, qty: Decimal, price: str, since: int,
            timeout: float) -> dict:
    want = (Decimal(price) - entry) * qty
    return lst.wait_for("pnl", lambda d: any(Decimal(p["unrealized_pnl"]) == want
                                             for p in d["data"]["positions"]
                                             if p["symbol"] == "XRPUSDT"),
                        since=since, timeout=timeout)


def test_redis_outage_local_pushes_go_on_cross_process_pushes_resume(  # type: ignore[no-untyped-def]
        nginx_bin, sim, pg_server, private_redis, tmp_path) -> None:
    with balanced(sim, pg_server, private_redis.url, tmp_path) as (a, b, front, _nginx, listeners):
        acct = Account(front, sim)
        sim.set_price("XRPUSDT", "1.0000")
        sim.set_price("ETHUSDT", "3000")
        entry = Decimal(market_trade(acct, "XRPUSDT", "100")["entry_price"])
        on_a = connect_via(front, affinity_for(front, a), acct.token, listeners)
        assert on_a.call("subscribe", {"types": ["pnl", "fills"], "key_id": acct.key_id})["ok"]
        on_a.wait_for("stream_status", lambda d: d["state"] == "live")
        on_b = connect_via(front, affinity_for(front, b), acct.token, listeners)
        assert on_b.call("subscribe", {"types": ["pnl", "fills"], "key_id": acct.key_id})["ok"]
        assert stats(a)["streams"]["running"] == 1       # A runs it; B follows through Redis
        qty = Decimal(100)
        mark_a, mark_b = on_a.mark(), on_b.mark()
        sim.set_price("XRPUSDT", "1.0100")
        _pnl_at(on_a, entry, qty, "1.0100", mark_a, 15)
        _pnl_at(on_b, entry, qty, "1.0100", mark_b, 15)  # cross-process, before the outage

        private_redis.kill()                             # ~10 s without Redis
        t_down = time.monotonic()
        coids = []
        mark_a = on_a.mark()
        for price in ("1.0200", "1.0300"):               # local pushes go on meanwhile
            sim.set_price("XRPUSDT", price)
            _pnl_at(on_a, entry, qty, price, mark_a, 8)
        acct.server = Front(a.url, a.admin_token)        # an order on A during the outage
        r = acct.post("/api/orders", {"key_id": acct.key_id, "symbol": "ETHUSDT", "side": "BUY",
                                      "type": "MARKET", "quantity": "0.010"})
        assert r.status_code == 201, r.text
        coids.append(r.json()["trade"]["client_order_id"])
        on_a.wait_for("fills", has_fill(coids[0]), since=mark_a, timeout=10)
        time.sleep(max(0.0, 10 - (time.monotonic() - t_down)))
        private_redis.start()                            # empty: leases and channels anew

        # an order right after Redis' return: its fill must reach both clients (checked
        # at the end: python-socketio's listener reconnects with a doubling back-off,
        # 1+2+4+8 s, and what is published before it has subscribed again is lost)
        acct.server = front
        marks = (on_a.mark(), on_b.mark())
        coids.append(market(acct, "ETHUSDT", "0.010"))
        t_order = time.monotonic()

        # the lease is taken again (Redis came back empty; for up to a lease period both
        # may run the stream: the old owner learns at its next renewal), then one owner,
        # the same in two readings 2 s apart (a renewal period is 1 s here)
        def one_owner():  # type: ignore[no-untyped-def]
            first = [s["streams"]["running"] for s in (stats(a), stats(b))]
            time.sleep(2)
            again = [s["streams"]["running"] for s in (stats(a), stats(b))]
            return again if sorted(again) == [0, 1] and again == first else None
        owners = wait_until(one_owner, timeout=30)
        remote = on_b if owners[0] == 1 else on_a        # the client on the other process
        # cross-process pushes resume: the relay's listener resubscribes by itself
        deadline = time.monotonic() + 40
        price = Decimal("1.0400")
        while True:
            mark = remote.mark()
            sim.set_price("XRPUSDT", f"{price:.4f}")
            try:
                _pnl_at(remote, entry, qty, f"{price:.4f}", mark, 3)
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise AssertionError("cross-process pnl pushes did not resume within 40 s "
                                         "of Redis' return")
                price += Decimal("0.0010")
        mark_a, mark_b = on_a.mark(), on_b.mark()
        coids.append(market(acct, "ETHUSDT", "0.010"))   # once resumed: a fill reaches both
        on_a.wait_for("fills", has_fill(coids[2]), since=mark_a, timeout=15)
        on_b.wait_for("fills", has_fill(coids[2]), since=mark_b, timeout=15)
        trades_once(acct, coids)                          # nothing lost in the ledger
        assert on_a.client.connected and on_b.client.connected
        # the fill of coids[1] reaches each client live or, if its process was still
        # cut off when it was pushed, in the replay from the ledger that follows the
        # relay's resubscribe (a client de-duplicates fills by trade_id)
        missed = []
        for name, lst, m in (("A", on_a, marks[0]), ("B", on_b, marks[1])):
            try:
                lst.wait_for("fills", has_fill(coids[1]), since=m, timeout=10)
            except AssertionError:
                missed.append(name)
        assert not missed, (f"a fill pushed just after Redis' return never reached the "
                            f"client(s) on {missed} ({time.monotonic() - t_order:.0f} s later)")
