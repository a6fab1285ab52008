"""Unit tests of the receiving side of account pushes through a message queue
(ws.relay): received envelopes are conflated per connection (``max_hz``) like local
ones, an account event is never held back, a connection never gets a repeated or
older ``seq``, a new epoch resets; ``fills`` and ``stream_status`` pass through to
the rooms. No network: the pub/sub backend is in memory."""
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
from ws.relay import AccountRelay, RedisRelayManager, RemoteState, make_client_manager


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
        remote.adopt(state.epoch, "pnl", state.seq("pnl"), state.last("pnl"))
        return out
    fan.attach("new", "e-new", remote, "pnl", None, first)
    fan.receive(remote, env, mark=True)          # this process's own emit, back
    got = [(sid, e["epoch"] == state.epoch, e["seq"], e["source"]) for sid, _, e in server.sent]
    assert got == [("e-old", False, 1, "stream"), ("e-old", False, 2, "stream"),
                   ("e-new", True, 1, "cache"), ("e-old", True, 1, "stream")]


class _MemoryPubSub(socketio.PubSubManager):
    """A pub/sub manager whose backend is a list (what other processes would get)."""

    def __init__(self) -> None:
        super().__init__(channel="test")
        self.published: list[dict] = []

    def _publish(self, data) -> None:  # type: ignore[no-untyped-def]
        self.published.append(json.loads(json.dumps(data)))


class _Relay(AccountRelay, _MemoryPubSub):
    pass


def _hub_with_two_connections():  # type: ignore[no-untyped-def]
    """A PushHub over a real python-socketio Server with the relay manager; two
    connections of user 1, both in the ``pnl_1``, ``fills_1`` and ``user_1`` rooms."""
    from ws.hub import PushHub

    relay = _Relay()
    server = socketio.Server(client_manager=relay, async_mode="threading", serializer=Packet)
    sent: list[tuple[str, str, dict]] = []

    def send(eio_sid, pkt) -> None:  # type: ignore[no-untyped-def]
        event, env = json.loads(pkt.encode()[2:])
        sent.append((eio_sid, event, env))
    server._send_eio_packet = send  # type: ignore[method-assign]

    class SIO:
        def __init__(self) -> None:
            self.server = server

        def emit(self, event, data, to=None) -> None:  # type: ignore[no-untyped-def]
            server.emit(event, data, to=to)

        def start_background_task(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
            pass

        def sleep(self, s) -> None:  # type: ignore[no-untyped-def]
            pass

    hub = PushHub(SIO())  # type: ignore[arg-type]
    clock = Clock()
    hub._fanout = Fanout(server, spawn=lambda fn: None, sleep=lambda s: None, clock=clock,
                         on_push=hub._count)
    conns = []
    for eio_sid in ("e-slow", "e-fast"):
        sid = relay.connect(eio_sid, "/")
        for name in ("pnl_1", "fills_1", "user_1"):
            relay.enter_room(sid, "/", name, eio_sid=eio_sid)
        conn = hub.add(sid, 1, eio_sid)
        conn.types.update({"pnl", "fills"})
        conns.append(conn)
    conns[0].hz["pnl"] = 2.0
    conns[1].hz["pnl"] = 50.0
    return hub, relay, sent, clock, conns


def test_the_hub_conflates_what_the_queue_brings_and_fills_and_status_pass_through() -> None:
    hub, relay, sent, clock, (slow, fast) = _hub_with_two_connections()
    for conn in (slow, fast):                   # the stream runs in another process
        hub.follow(conn, 7, "pnl", lambda: [])
    sender = _sender()
    for i in range(1, 11):                      # 10 moves in 1 s from the other process
        message = {"method": "emit", "event": "pnl", "data": [_move(sender, f"1.{i:02d}")],
                   "binary": False, "namespace": "/", "room": "pnl_1", "skip_sid": None,
                   "callback": None, "host_id": "other", "mark": True}
        relay._handle_emit(message)
        clock.now += 0.1
        hub.fanout.run_due()
    clock.now += 0.5
    hub.fanout.run_due()
    by = {e: [env["seq"] for sid, ev, env in sent if sid == e and ev == "pnl"]
          for e in ("e-slow", "e-fast")}
    assert len(by["e-fast"]) == 10 and by["e-fast"] == sorted(set(by["e-fast"]))  # no duplicate
    assert 2 <= len(by["e-slow"]) <= 3 and by["e-slow"][-1] == 10
    assert all("mark" not in env for _, _, env in sent)      # the flag never reaches a client
    sent.clear()
    fills = {"type": "fills", "user_id": 1, "key_id": 7, "epoch": sender.epoch, "seq": 1,
             "data": [{"trade_id": "t1"}]}
    relay._handle_emit({"method": "emit", "event": "fills", "data": [fills], "binary": False,
                        "namespace": "/", "room": "fills_1", "skip_sid": None,
                        "callback": None, "host_id": "other"})
    relay._handle_emit({"method": "emit", "event": "stream_status",
                        "data": [{"key_id": 7, "state": "live"}], "binary": False,
                        "namespace": "/", "room": "user_1", "skip_sid": None,
                        "callback": None, "host_id": "other"})
    assert sorted((sid, ev) for sid, ev, _ in sent) == [
        ("e-fast", "fills"), ("e-fast", "stream_status"),
        ("e-slow", "fills"), ("e-slow", "stream_status")]


def test_the_process_running_the_stream_publishes_with_the_mark_flag_once() -> None:
    hub, relay, sent, clock, (slow, fast) = _hub_with_two_connections()
    state = _sender()
    state.note_unseen("pnl", "rest", 0)          # known, built for the first snapshot
    for conn in (slow, fast):
        hub.attach(conn, state, "pnl", lambda: state.cached(["pnl"]))
    assert [(sid, env["seq"], env["source"]) for sid, _, env in sent] == [
        ("e-slow", 1, "cache"), ("e-fast", 1, "cache")]
    sent.clear()
    for price in ("1.01", "1.02"):
        state.apply_mark("XRPUSDT", Decimal(price))
        hub.offer(state, "pnl", "stream", 1, True)
        clock.now += 0.1
    state.set_positions([])
    hub.offer(state, "pnl", "stream", 2, False)                  # an account event
    assert [m["mark"] for m in relay.published] == [True, True, False]
    assert all("mark" not in m["data"][0] for m in relay.published)
    got = [(sid, env["seq"]) for sid, _, env in sent]
    assert got == [("e-slow", 2), ("e-fast", 2), ("e-fast", 3), ("e-slow", 4), ("e-fast", 4)]
    hub.publish({"type": "stream_status", "user_id": 1, "key_id": 7, "exchange": "binance",
                 "state": "live", "since": 1})
    assert relay.published[-1]["event"] == "stream_status" and "mark" not in relay.published[-1]


def test_the_client_manager_keeps_the_url_and_channel() -> None:
    manager = make_client_manager("redis://127.0.0.1:6379/3", "pushsrv-x")
    assert isinstance(manager, RedisRelayManager) and isinstance(manager, socketio.PubSubManager)
    assert manager.redis_url == "redis://127.0.0.1:6379/3" and manager.channel == "pushsrv-x"
    assert make_client_manager(None, "pushsrv") is None
