"""Unit tests of account pushes between server processes (ws.relay): received
envelopes are conflated per connection (``max_hz``) like local ones, an account event
is never held back, a connection never gets a repeated or older ``seq``, a new epoch
resets; the per-key routing: a push to a connection of the process running the stream
never goes through Redis, a process with no subscriber for a key receives nothing of
it, the owner publishes only while another process follows the key and starts with
its current values; ``fills`` and ``stream_status`` also go per key, tickers stay local.
No network: the pub/sub backend is in memory (several hubs on one ``MemoryRedis``
are several processes)."""
from __future__ import annotations

import json
from decimal import Decimal

import socketio

from exchanges.types import Position
from services.account_state import AccountState
from services.ledger import Realized
from tests.server.test_conflation import Clock, FakeServer, Timers
from ws.fanout import Fanout
from ws.packet import Packet
from ws.redis_bus import RedisRelayManager, make_client_manager
from ws.relay import KeyRelay
from ws.remote_state import RemoteState


def _sender() -> AccountState:
    """The state of the process running the stream (builds the envelopes)."""
    state = AccountState(1, 7, "binance", False)
    state.set_positions([Position("XRPUSDT", "LONG", Decimal("100"), Decimal("1"), Decimal("1"),
                                  Decimal("0"), Decimal("10"), Decimal("0.5"), "cross")])
    state.realized_pnl = Realized(Decimal(0), Decimal(0))  # type: ignore[assignment]
    return state


def _move(state: AccountState, price: str) -> dict:
    """A mark price move on the sender: its pnl envelope, as published."""
    assert "pnl" in state.apply_mark("XRPUSDT", Decimal(price))
    env = state.envelope("pnl", "stream", 1)
    assert env is not None
    return json.loads(json.dumps(env))  # what the queue hands to the other process


def _setup():  # type: ignore[no-untyped-def]
    server, clock, timers = FakeServer(), Clock(), Timers()
    fan = Fanout(server, spawn=timers.spawn, sleep=lambda s: None, clock=clock)
    timers.fan = fan
    return server, clock, timers, fan, RemoteState(7, 1)


def _got(server: FakeServer, eio_sid: str) -> list[tuple[int, str]]:
    return [(env["seq"], env["data"]["unrealized_pnl"]) for sid, _, env in server.sent
            if sid == eio_sid]


def test_wait_newest_wakes_when_the_owners_envelope_arrives_and_times_out_without_one() -> None:
    import threading
    mirror, sender = RemoteState(7, 1), _sender()
    assert mirror.wait_newest("pnl", 0.05) is False            # nothing held: times out
    env = _move(sender, "1.10")
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(mirror.wait_newest("pnl", 10)))
    waiter.start()
    mirror.receive(env)                                         # the owner's answer
    waiter.join(5)
    assert woke == [True] and mirror.newest("pnl") == env
    assert mirror.wait_newest("balance", 0) is False            # per type


def test_received_mark_pushes_are_conflated_to_max_hz_and_the_newest_arrives() -> None:
    server, clock, timers, fan, remote = _setup()
    sender = _sender()
    fan.attach("slow", "e-slow", remote, "pnl", 2.0, lambda: [])   # 0.5 s apart
    fan.attach("fast", "e-fast", remote, "pnl", None, lambda: [])
    start = clock.now
    for i in range(1, 31):                      # 10 moves a second for 3 s
        fan.receive(remote, _move(sender, f"1.{i:02d}"), mark=True)
        clock.now += 0.1
        fan.run_due()
    clock.now += 0.5
    fan.run_due()
    slow, fast = _got(server, "e-slow"), _got(server, "e-fast")
    assert len(fast) == 30                      # no bound: every one
    assert slow[-1] == (30, "30")               # the newest value always arrives
    assert len(slow) <= 2 * (clock.now - start) + 1, slow   # at most 2 a second
    assert len(slow) >= 5
    assert [s for s, _ in slow] == sorted({s for s, _ in slow})  # never a repeat or older
    assert len(timers) == 0


def test_a_received_account_event_goes_at_once_and_no_seq_is_repeated_or_older() -> None:
    server, clock, timers, fan, remote = _setup()
    sender = _sender()
    fan.attach("slow", "e-slow", remote, "pnl", 1.0, lambda: [])
    first = _move(sender, "1.01")
    fan.receive(remote, first, mark=True)       # due: sent at once
    clock.now += 0.1
    held = _move(sender, "1.02")
    fan.receive(remote, held, mark=True)        # inside its 1 s: held
    assert _got(server, "e-slow") == [(1, "1")]
    sender.set_positions([])                    # closed: an account event
    event = json.loads(json.dumps(sender.envelope_if_changed("pnl", "stream", 2)))
    fan.receive(remote, event, mark=False)
    assert [env["seq"] for _, _, env in server.sent] == [1, 3]
    assert server.sent[-1][2]["data"]["positions"] == []
    fan.receive(remote, event, mark=False)      # the same one again (a repeat)
    fan.receive(remote, held, mark=False)       # an older one, late
    clock.now += 2
    fan.run_due()                               # the held mark push is superseded
    assert [env["seq"] for _, _, env in server.sent] == [1, 3]


def test_a_new_epoch_resets_the_sequence_of_every_connection() -> None:
    server, clock, timers, fan, remote = _setup()
    old = _sender()
    fan.attach("a", "e-a", remote, "pnl", 2.0, lambda: [])
    for price in ("1.01", "1.02", "1.03"):
        fan.receive(remote, _move(old, price), mark=False)
    assert [env["seq"] for _, _, env in server.sent] == [1, 2, 3]
    new = _sender()                             # the stream moved: another epoch, seq 1
    snap = json.loads(json.dumps(new.envelope_if_changed("pnl", "rest", 5)))
    fan.receive(remote, snap, mark=False)
    assert [(env["epoch"], env["seq"]) for _, _, env in server.sent][-1] == (new.epoch, 1)
    fan.receive(remote, _move(old, "1.04"), mark=False)   # the old owner, late: a reset too
    fan.receive(remote, _move(new, "1.05"), mark=False)
    assert [(env["epoch"], env["seq"]) for _, _, env in server.sent][-2:] == [
        (old.epoch, 4), (new.epoch, 2)]
    assert remote.epoch == new.epoch and remote.seq("pnl") == 2


def test_a_subscriber_of_the_process_running_the_stream_starts_from_its_snapshot() -> None:
    """Its snapshot comes from the local state; the mirror moves there (adopt), so
    the envelope of that seq arriving from the queue is not sent to it again, while
    another subscriber of the old epoch still gets it."""
    server, clock, timers, fan, remote = _setup()
    state = _sender()
    fan.attach("old", "e-old", remote, "pnl", None, lambda: [])
    before = _sender()                           # an earlier epoch (another process)
    for price in ("1.01", "1.02"):
        fan.receive(remote, _move(before, price), mark=False)
    env = state.envelope("pnl", "stream", 1)     # built here, not yet received back

    def first() -> list[dict]:
        out = state.cached(["pnl"])
        remote.adopt(state.position("pnl"), "pnl", state.last("pnl"))
        return out
    fan.attach("new", "e-new", remote, "pnl", None, first)
    fan.receive(remote, env, mark=True)          # this process's own emit, back
    got = [(sid, e["epoch"] == state.epoch, e["seq"], e["source"]) for sid, _, e in server.sent]
    assert got == [("e-old", False, 1, "stream"), ("e-old", False, 2, "stream"),
                   ("e-new", True, 1, "cache"), ("e-old", True, 1, "stream")]


class _MemoryPubSub(socketio.PubSubManager):
    """python-socketio's pub/sub manager on a list (the shared room channel)."""

    def __init__(self) -> None:
        super().__init__(channel="test")
        self.published: list[dict] = []

    def _publish(self, data) -> None:  # type: ignore[no-untyped-def]
        self.published.append(json.loads(json.dumps(data)))


class MemoryRedis:
    """Redis pub/sub in memory: channel -> subscribed buses; ``log`` every publish."""

    def __init__(self) -> None:
        self.subs: dict[str, set] = {}
        self.log: list[tuple[str, dict]] = []

    def key_messages(self) -> list[tuple[str, dict]]:
        return [(c, m) for c, m in self.log if ":key:" in c]


class MemoryBus:
    """``ws.redis_bus.RedisBus``'s interface over a ``MemoryRedis`` (delivery at once)."""

    def __init__(self, redis: MemoryRedis) -> None:
        self.redis = redis
        self.got: list[str] = []  # channels of the messages this process received
        self._handlers = None

    def publish(self, channel: str, data: bytes) -> int:
        self.redis.log.append((channel, json.loads(data)))
        receivers = list(self.redis.subs.get(channel, ()))
        for bus in receivers:
            bus.got.append(channel)
            bus._handlers[0](channel, data)
        return len(receivers)

    def numsub(self, channels: list[str]) -> dict[str, int]:
        return {c: len(self.redis.subs.get(c, ())) for c in channels}

    def subscribe(self, channel: str) -> None:
        self.redis.subs.setdefault(channel, set()).add(self)
        if self._handlers is not None:
            self._handlers[1](channel)

    def unsubscribe(self, channel: str) -> None:
        self.redis.subs.get(channel, set()).discard(self)

    def start(self, on_message, on_subscribed) -> None:  # type: ignore[no-untyped-def]
        self._handlers = (on_message, on_subscribed)


class Process:
    """One server process: a python-socketio Server on the shared room channel, its
    PushHub with a KeyRelay on ``redis``, and a fanout on a fake clock."""

    def __init__(self, redis: MemoryRedis, clock: Clock) -> None:
        from ws.hub import PushHub

        self.manager = _MemoryPubSub()
        server = socketio.Server(client_manager=self.manager, async_mode="threading",
                                 serializer=Packet)
        self.sent: list[tuple[str, str, dict]] = []

        def send(eio_sid, pkt) -> None:  # type: ignore[no-untyped-def]
            event, env = json.loads(pkt.encode()[2:])
            self.sent.append((eio_sid, event, env))
        server._send_eio_packet = send  # type: ignore[method-assign]

        class SIO:
            def __init__(self) -> None:
                self.server = server

            def emit(self, event, data, to=None) -> None:  # type: ignore[no-untyped-def]
                server.emit(event, data, to=to)

            def start_background_task(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
                fn(*args)

            def sleep(self, s) -> None:  # type: ignore[no-untyped-def]
                pass

        self.bus = MemoryBus(redis)
        self.relay = KeyRelay(self.bus, "pushsrv-test", sleep=lambda s: None)
        self.hub = PushHub(SIO(), relay=self.relay)  # type: ignore[arg-type]
        self.hub._fanout = Fanout(server, spawn=lambda fn: None, sleep=lambda s: None,
                                  clock=clock, on_push=self.hub._count)
        self.relay.start()

    def connect(self, eio_sid: str, user_id: int, key_id: int, hz: float | None = None):  # type: ignore[no-untyped-def]
        sid = self.manager.connect(eio_sid, "/")
        for name in (f"pnl_{user_id}", f"fills_{user_id}", f"user_{user_id}"):
            self.manager.enter_room(sid, "/", name, eio_sid=eio_sid)
        conn = self.hub.add(sid, user_id, eio_sid)
        conn.types.update({"pnl", "fills"})
        conn.key_ids.add(key_id)
        if hz is not None:
            conn.hz["pnl"] = hz
        return conn

    def got(self, eio_sid: str, event: str = "pnl") -> list[int]:
        return [env["seq"] for sid, ev, env in self.sent if sid == eio_sid and ev == event]


def _running(proc: Process, state: AccountState) -> None:
    """``state``'s stream runs in ``proc`` (what StreamManager's on_local tells)."""
    state.note_unseen("pnl", "rest", 0)          # known: built for the first snapshot
    proc.hub.stream_local(state.key_id, state)


def test_a_push_to_a_connection_of_the_process_running_the_stream_never_goes_through_redis() -> None:
    redis, clock = MemoryRedis(), Clock()
    a = Process(redis, clock)
    state = _sender()
    _running(a, state)
    conn = a.connect("e-a", 1, 7)
    a.hub.attach(conn, state, "pnl", lambda: state.cached(["pnl"]))
    for i in range(1, 6):
        state.apply_mark("XRPUSDT", Decimal(f"1.{i:02d}"))
        a.hub.offer(state, "pnl", "stream", 1, True)
        clock.now += 0.2                          # 10 Hz default: each one due
    assert a.got("e-a") == [1, 2, 3, 4, 5, 6]    # snapshot + 5 moves
    assert redis.key_messages() == []            # nothing of the key crossed Redis
    assert a.manager.published == []             # nor the shared room channel
    assert a.relay.stats()["published"] == 0 and a.hub.fanout.stats()["relayed"] == 0


def test_only_a_process_with_a_subscriber_for_a_key_receives_it_and_conflates_it() -> None:
    redis, clock = MemoryRedis(), Clock()
    a, b, c = Process(redis, clock), Process(redis, clock), Process(redis, clock)
    s7, s8 = _sender(), AccountState(2, 8, "binance", False)
    s8.set_positions(list(s7.positions.values()))
    s8.realized_pnl = s7.realized_pnl
    _running(a, s7)
    _running(a, s8)
    slow, fast = b.connect("e-slow", 1, 7, hz=2.0), b.connect("e-fast", 1, 7, hz=50.0)
    for conn in (slow, fast):                     # B follows key 7 (a REST snapshot first)
        b.hub.follow(conn, 7, "pnl", lambda: [])
    c.connect("e-c", 3, 9)                        # C: a connection, of no key A runs
    assert a.relay.interested(7) and not a.relay.interested(8)
    redis.log.clear()
    b.bus.got.clear()
    b.sent.clear()                                # (each got the current value on follow)
    for i in range(1, 11):                        # 10 moves in 1 s on both keys
        for state in (s7, s8):
            state.apply_mark("XRPUSDT", Decimal(f"1.{i:02d}"))
            a.hub.offer(state, "pnl", "stream", 1, True)
        clock.now += 0.1
        b.hub.fanout.run_due()
    clock.now += 0.5
    b.hub.fanout.run_due()
    assert {ch for ch, _ in redis.key_messages()} == {"pushsrv-test:key:7"}  # key 8: nobody
    assert len(redis.key_messages()) == 10
    assert b.bus.got == ["pushsrv-test:key:7"] * 10
    assert [ch for ch in c.bus.got if ":key:" in ch] == []  # C got nothing of any key
    fast_seqs, slow_seqs = b.got("e-fast"), b.got("e-slow")
    assert len(fast_seqs) == 10 and fast_seqs == sorted(set(fast_seqs))
    assert 2 <= len(slow_seqs) <= 3 and slow_seqs[-1] == fast_seqs[-1]  # 2 a second, newest last
    assert all("mark" not in env and "h" not in env for _, _, env in b.sent)
    assert b.hub.fanout.stats()["relayed_fraction"] == 1.0


def test_the_owner_starts_with_the_current_values_and_stops_when_the_last_follower_leaves() -> None:
    redis, clock = MemoryRedis(), Clock()
    a, b = Process(redis, clock), Process(redis, clock)
    state = _sender()
    _running(a, state)
    state.apply_mark("XRPUSDT", Decimal("1.50"))  # changed before anyone followed
    a.hub.offer(state, "pnl", "stream", 1, True)   # no subscriber anywhere: noted, not built
    assert redis.key_messages() == []
    conn = b.connect("e-b", 1, 7)
    b.hub.follow(conn, 7, "pnl", lambda: [])       # B watches: its want reaches A
    assert [m["e"]["data"]["unrealized_pnl"] for _, m in redis.key_messages()] == ["50"]
    assert [env["data"]["unrealized_pnl"] for _, ev, env in b.sent if ev == "pnl"] == ["50"]
    b.hub.remove(conn.sid)                         # B's last connection of the key leaves
    redis.log.clear()
    for price in ("1.60", "1.70"):
        state.apply_mark("XRPUSDT", Decimal(price))
        a.hub.offer(state, "pnl", "stream", 1, True)
    assert len(redis.key_messages()) == 1          # reached nobody: the interest ended
    assert not a.relay.interested(7)


def test_a_follower_takes_over_the_stream_and_the_old_owner_follows_it() -> None:
    redis, clock = MemoryRedis(), Clock()
    a, b = Process(redis, clock), Process(redis, clock)
    old = _sender()
    _running(a, old)
    ca = a.connect("e-a", 1, 7)
    a.hub.attach(ca, old, "pnl", lambda: old.cached(["pnl"]))
    cb = b.connect("e-b", 1, 7)
    b.hub.follow(cb, 7, "pnl", lambda: [])
    a.hub.stream_local(7, None)                    # A lost the lease: it follows now
    new = _sender()
    _running(b, new)                               # B runs the stream
    assert not b.relay.watching(7) and a.relay.watching(7) and b.relay.interested(7)
    new.apply_mark("XRPUSDT", Decimal("1.10"))
    b.hub.offer(new, "pnl", "stream", 1, True)
    assert [(e["epoch"], e["seq"]) for _, ev, e in a.sent if ev == "pnl"][-1] == (new.epoch, 1)
    assert [(e["epoch"], e["seq"]) for _, ev, e in b.sent if ev == "pnl"][-1] == (new.epoch, 1)


def test_a_released_key_is_taken_over_by_the_process_following_it_and_no_other() -> None:
    redis, clock = MemoryRedis(), Clock()
    a, b, c = Process(redis, clock), Process(redis, clock), Process(redis, clock)
    taken: dict[str, list[int]] = {"b": [], "c": []}
    b.hub.on_released = taken["b"].append
    c.hub.on_released = taken["c"].append
    state = _sender()
    _running(a, state)
    b.hub.follow(b.connect("e-b", 1, 7), 7, "pnl", lambda: [])
    c.connect("e-c", 2, 8)
    a.hub.stream_released(7)                       # A's last subscriber of the key left
    assert taken == {"b": [7], "c": []}
    a.hub.stream_released(8)                       # nobody follows key 8: no message
    assert [m["op"] for ch, m in redis.log if ch.endswith(":relay")].count("released") == 1


def test_fills_and_stream_status_go_per_key_to_followers_only_and_tickers_stay_local() -> None:
    redis, clock = MemoryRedis(), Clock()
    a, b, c = Process(redis, clock), Process(redis, clock), Process(redis, clock)
    state = _sender()
    _running(a, state)
    a.connect("e-a", 1, 7)
    b.hub.watch(b.connect("e-b", 1, 7), 7)          # B's socket subscribed to key 7
    c.connect("e-c", 1, 8)                          # C: the same user, another key
    fills = {"type": "fills", "user_id": 1, "key_id": 7, "epoch": state.epoch, "seq": 1,
             "data": [{"trade_id": "t1"}]}
    a.hub.deliver(state, fills)
    a.hub.publish({"type": "stream_status", "user_id": 1, "key_id": 7, "exchange": "binance",
                   "state": "live", "since": 1})
    a.hub.publish({"type": "ticker", "exchange": "binance", "data": {"symbol": "XRPUSDT"}})
    for proc in (a, b):
        assert sorted(ev for _, ev, _ in proc.sent) == ["fills", "stream_status"]
    assert c.sent == [] and [ch for ch in c.bus.got if ":key:" in ch] == []
    assert [(ch, m["e"]["type"]) for ch, m in redis.key_messages()] == [
        ("pushsrv-test:key:7", "pnl"),             # B's want: the current value first
        ("pushsrv-test:key:7", "fills"), ("pushsrv-test:key:7", "stream_status")]
    status = next(env for _, ev, env in b.sent if ev == "stream_status")
    assert status == {"key_id": 7, "exchange": "binance", "state": "live", "since": 1}
    for proc in (a, b, c):                          # nothing on the shared channel
        assert proc.manager.published == []


def test_the_client_manager_keeps_the_url_and_channel_and_a_bounded_pool() -> None:
    manager = make_client_manager("redis://127.0.0.1:6379/3", "pushsrv-x", 7, 3.0)
    assert isinstance(manager, RedisRelayManager) and isinstance(manager, socketio.PubSubManager)
    assert manager.redis_url == "redis://127.0.0.1:6379/3" and manager.channel == "pushsrv-x"
    manager._redis_connect()
    pool = manager.redis.connection_pool
    assert type(pool).__name__ == "BlockingConnectionPool" and pool.max_connections == 7
    assert make_client_manager(None, "pushsrv") is None


def test_the_relay_reader_subscribes_again_within_about_a_second_of_redis_return(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real ``redis-server`` of this test (a free port; killed for 3 s and started
    again on the same port, empty): the reader's back-off is capped at 1 s, so the
    key channel is subscribed again about a second after Redis returns (it was 5 s),
    announced with ``want``, and the hub is told when the connection was lost
    (``on_resubscribed``: it replays the fills published meanwhile from the ledger)."""
    import shutil
    import socket
    import subprocess
    import threading
    import time
    from pathlib import Path

    import pytest

    from services.leases import redis_client
    from tests.support.server import free_port
    from ws.redis_bus import RedisBus

    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.skip("redis-server not installed")
    port = free_port()

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--logfile", str(tmp_path / "r.log")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                    return proc
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    def spawn(fn, *args):  # type: ignore[no-untyped-def]
        threading.Thread(target=fn, args=args, daemon=True).start()

    url = f"redis://127.0.0.1:{port}/0"
    proc = start()
    relay = KeyRelay(RedisBus(url, redis_client(url, socket_timeout_s=2), spawn, time.sleep), "t")
    told: list[tuple[int, int]] = []
    relay.on_resubscribed = lambda key_id, lost_at: told.append((key_id, lost_at))
    try:
        relay.start()
        relay.watch(7)
        deadline = time.monotonic() + 5
        while relay.bus.numsub([relay.channel(7)])[relay.channel(7)] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert told == []                              # a first subscribe is no resubscribe
        proc.kill()
        proc.wait(5)
        killed_ms = int(time.time() * 1000)
        deadline = time.monotonic() + 10               # the reader retries meanwhile
        while relay.bus.reconnects < 4:                # until it naps at its cap: 0.25,
            assert time.monotonic() < deadline         # 0.5, 1.0, 1.0 s (MAX_BACKOFF_S)
            time.sleep(0.02)
        proc = start()
        back = time.monotonic()
        while not told:
            assert time.monotonic() - back < 2.5, "not subscribed again within 2.5 s"
            time.sleep(0.02)
        assert told[0][0] == 7 and killed_ms - 1000 <= told[0][1] <= killed_ms + 1000
        assert relay.bus.numsub([relay.channel(7)])[relay.channel(7)] == 1
    finally:
        relay.stop()
        proc.kill()
        proc.wait(5)
