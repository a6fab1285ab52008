"""Unit tests of the push path: per-connection conflation (ws.fanout) on a fake
clock, and the change detection of mark price moves (services.account_state)."""
from __future__ import annotations

import json
from decimal import Decimal

from socketio.packet import Packet

from exchanges.types import AssetBalance, Balance, Position
from services.account_state import AccountState
from services.ledger import Realized
from ws.fanout import Fanout


class FakeServer:
    """What Fanout uses of python-socketio's Server: its packet class and the send."""

    packet_class = Packet

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict]] = []  # (eio_sid, event, envelope)

    def _send_eio_packet(self, eio_sid: str, pkt) -> None:  # type: ignore[no-untyped-def]
        encoded = pkt.encode()
        assert encoded.startswith("42")  # Engine.IO MESSAGE, Socket.IO EVENT
        event, env = json.loads(encoded[2:])
        self.sent.append((eio_sid, event, env))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """The fan-out's timer task, run by hand: ``spawned`` counts the tasks started,
    ``run()`` fires what is due on the fake clock, ``len()`` the armed channels."""

    def __init__(self) -> None:
        self.spawned = 0
        self.fan: Fanout | None = None

    def spawn(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        self.spawned += 1

    def run(self) -> None:
        assert self.fan is not None
        self.fan.run_due()

    def __len__(self) -> int:
        assert self.fan is not None
        return self.fan.armed()


def _setup():  # type: ignore[no-untyped-def]
    server, clock, timers = FakeServer(), Clock(), Timers()
    fan = Fanout(server, spawn=timers.spawn, sleep=lambda s: None, clock=clock)
    timers.fan = fan
    state = AccountState(1, 7, "binance", False)
    state.set_positions([Position("XRPUSDT", "LONG", Decimal("100"), Decimal("1"), Decimal("1"),
                                  Decimal("0"), Decimal("10"), Decimal("0.5"), "cross")])
    state.realized_pnl = Realized(Decimal(0), Decimal(0))  # type: ignore[assignment]
    state.note_unseen("pnl", "rest", 0)  # known, not built: a subscriber's snapshot builds it
    return server, clock, timers, fan, state


def _run_timers(timers: Timers) -> None:
    timers.run()


def _upnl(env: dict) -> str:
    return env["data"]["unrealized_pnl"]


def test_mark_pushes_are_conflated_per_connection_and_the_newest_always_arrives() -> None:
    server, clock, timers, fan, state = _setup()
    fan.attach("slow", "e-slow", state, "pnl", 2.0, lambda: state.cached(["pnl"]))  # 0.5 s
    fan.attach("fast", "e-fast", state, "pnl", None, lambda: state.cached(["pnl"]))
    assert [(sid, env["seq"], env["source"]) for sid, _, env in server.sent] == [
        ("e-slow", 1, "cache"), ("e-fast", 1, "cache")]
    server.sent.clear()

    def move(price: str) -> None:
        for kind in state.apply_mark("XRPUSDT", Decimal(price)):
            if kind == "pnl":
                fan.offer(state, kind, "stream", 1, mark=True)

    move("1.01")                       # both due: one envelope, sent to both
    clock.now += 0.1
    move("1.02")                       # the slow one is inside its 0.5 s
    clock.now += 0.1
    move("1.03")
    got = [(sid, env["seq"], _upnl(env)) for sid, _, env in server.sent]
    assert got == [("e-slow", 2, "1"), ("e-fast", 2, "1"), ("e-fast", 3, "2"), ("e-fast", 4, "3")]
    assert len(timers) == 1            # one timer for the channel, not one per move
    assert timers.spawned == 1         # one timer task for every channel
    server.sent.clear()
    clock.now = 100.5                  # 0.5 s after the slow one's last push
    _run_timers(timers)
    # the newest value (not the first missed one), with the seq it was built with:
    # the slow connection skips 3 (conflated), never gets a repeat
    assert [(sid, env["seq"], _upnl(env)) for sid, _, env in server.sent] == [("e-slow", 4, "3")]
    assert len(timers) == 0                # nothing more is waiting


def test_when_nobody_is_due_the_envelope_is_not_built_until_the_timer() -> None:
    server, clock, timers, fan, state = _setup()
    fan.attach("a", "e-a", state, "pnl", 1.0, lambda: [])
    for price in ("1.01", "1.02"):
        state.apply_mark("XRPUSDT", Decimal(price))
        fan.offer(state, "pnl", "stream", 1, mark=True)
        clock.now += 0.2
    assert [env["seq"] for _, _, env in server.sent] == [1]  # the first went at once
    for price in ("1.03", "1.04"):
        state.apply_mark("XRPUSDT", Decimal(price))
        fan.offer(state, "pnl", "stream", 1, mark=True)
    assert state.seq("pnl") == 1       # 1.02 .. 1.04 noted, nothing built yet
    clock.now = 101.0
    _run_timers(timers)
    assert [(env["seq"], _upnl(env)) for _, _, env in server.sent] == [(1, "1"), (2, "4")]


def test_an_account_event_is_never_held_back_by_max_hz() -> None:
    server, clock, timers, fan, state = _setup()
    fan.attach("a", "e-a", state, "pnl", 1.0, lambda: [])
    state.apply_mark("XRPUSDT", Decimal("1.01"))
    fan.offer(state, "pnl", "stream", 1, mark=True)
    clock.now += 0.05
    state.set_positions([])            # the position was closed (an account event)
    fan.offer(state, "pnl", "stream", 2, mark=False)
    assert [(env["seq"], env["data"]["positions"]) for _, _, env in server.sent][-1] == (2, [])
    assert len(timers) == 0
    fan.offer(state, "pnl", "rest", 3, mark=False)  # a REST result that changed nothing
    assert len(server.sent) == 2


def test_fills_go_to_every_subscriber_in_sequence_and_a_new_epoch_resets_it() -> None:
    from exchanges.types import Fill
    server, clock, timers, fan, state = _setup()
    fan.attach("a", "e-a", state, "fills", None, lambda: [])
    for i in range(3):
        assert state.fills.add(Fill(str(i), "9", None, "XRPUSDT", "BUY", Decimal("1"),
                                    Decimal("1"), Decimal("0"), "USDT", Decimal("0"), False, i))
        fan.deliver(state, state.fills.envelope(i))
    assert not state.fills.add(Fill("1", "9", None, "XRPUSDT", "BUY", Decimal("1"), Decimal("1"),
                                    Decimal("0"), "USDT", Decimal("0"), False, 1))  # seen already
    assert [env["seq"] for _, _, env in server.sent] == [1, 2, 3]
    assert [e["seq"] for e in state.fills.after(1)] == [2, 3]
    assert state.fills.after(5) is None
    fresh = AccountState(1, 7, "binance", False)   # continuity lost: a new epoch at seq 1
    assert fresh.epoch != state.epoch
    fresh.fills.add(Fill("x", "9", None, "XRPUSDT", "BUY", Decimal("1"), Decimal("1"),
                         Decimal("0"), "USDT", Decimal("0"), False, 9))
    fan.deliver(fresh, fresh.fills.envelope(9))
    assert [(env["epoch"], env["seq"]) for _, _, env in server.sent][-1] == (fresh.epoch, 1)


def test_mark_change_detection_uses_the_numbers_not_the_payloads() -> None:
    state = AccountState(1, 7, "binance", False)
    state.set_balance(Balance(Decimal("1000"), Decimal("0"), Decimal("1000"), Decimal("900"),
                              (AssetBalance("USDT", Decimal("1000"), Decimal("900"), Decimal("0"),
                                            Decimal("1000")),)))
    state.set_positions([Position("XRPUSDT", "LONG", Decimal("100"), Decimal("1"), Decimal("1"),
                                  Decimal("0"), Decimal("10"), Decimal("0.5"), "cross")])
    assert state.apply_mark("XRPUSDT", Decimal("1")) == ()         # the same mark: nothing
    assert state.apply_mark("ETHUSDT", Decimal("3000")) == ()      # not held: nothing
    assert state.apply_mark("XRPUSDT", Decimal("1.5")) == ("positions", "pnl", "balance")
    assert state.balance.total_unrealized_pnl == Decimal("50")
    first = state.envelope("positions", "stream", 1)
    assert first["data"][0]["mark_price"] == "1.5" and first["data"][0]["unrealized_pnl"] == "50"
    # a REST snapshot equal to what the mark path produced is not pushed again
    state.set_positions([Position("XRPUSDT", "LONG", Decimal("100"), Decimal("1"),
                                  Decimal("1.5"), Decimal("50"), Decimal("10"), Decimal("0.5"),
                                  "cross")])
    assert state.envelope_if_changed("positions", "rest", 2) is None
    assert state.seq("positions") == 1


def test_one_timer_task_fires_channels_in_time_order_and_wakes_for_a_sooner_one() -> None:
    import threading

    server, clock, timers, fan, state = _setup()
    other = AccountState(2, 8, "binance", False)
    other.set_positions(list(state.positions.values()))
    other.realized_pnl = state.realized_pnl
    other.note_unseen("pnl", "rest", 0)
    fan.attach("a", "e-a", state, "pnl", 1.0, lambda: [])    # due again at 101.0
    fan.attach("b", "e-b", other, "pnl", 4.0, lambda: [])    # due again at 100.25
    for st in (state, other):                                 # both sent now, both then wait
        st.apply_mark("XRPUSDT", Decimal("1.01"))
        fan.offer(st, "pnl", "stream", 1, mark=True)
    clock.now = 100.1
    woken = fan._wake
    assert isinstance(woken, threading.Event)
    state.apply_mark("XRPUSDT", Decimal("1.02"))
    fan.offer(state, "pnl", "stream", 2, mark=True)           # armed for 101.0
    woken.clear()
    other.apply_mark("XRPUSDT", Decimal("1.02"))
    fan.offer(other, "pnl", "stream", 2, mark=True)           # armed for 100.25: sooner
    assert woken.is_set()                                     # the waiting task re-plans
    assert timers.spawned == 1 and len(timers) == 2
    server.sent.clear()
    clock.now = 100.25
    assert fan.run_due() == 101.0                             # b fired, a is next
    assert [sid for sid, _, _ in server.sent] == ["e-b"]
    clock.now = 101.0
    assert fan.run_due() is None
    assert [sid for sid, _, _ in server.sent] == ["e-b", "e-a"]


def test_the_timer_task_ends_on_stop() -> None:
    import threading

    server, clock, timers, fan, state = _setup()
    task = threading.Thread(target=fan._timer_task, daemon=True)
    task.start()
    fan.stop()
    task.join(2.0)
    assert not task.is_alive()
