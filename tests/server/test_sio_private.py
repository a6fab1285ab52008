"""Contract of the python-socketio private API the server relies on (ws/sio_private.py)
against the pinned versions: an upgrade that renames or changes one fails here."""
from __future__ import annotations

import inspect
from importlib.metadata import version

import socketio
from engineio import packet as eio_packet

from ws.redis_bus import RedisRelayManager
from ws.sio_private import OVERRIDDEN_REDIS_MANAGER_METHODS, room_occupied, send_packet


def test_pinned_versions_are_the_ones_this_contract_was_checked_against() -> None:
    assert version("python-socketio") == "5.18.1"
    assert version("python-engineio") == "4.15.1"


class _Eio:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send_packet(self, eio_sid: str, pkt) -> None:  # type: ignore[no-untyped-def]
        self.sent.append((eio_sid, pkt.encode()))


def test_send_packet_puts_the_encoded_packet_on_the_engineio_connection() -> None:
    server = socketio.Server()
    server.eio = _Eio()  # type: ignore[assignment]
    sio_pkt = server.packet_class(socketio.packet.EVENT, data=["pnl", {"seq": 1}], namespace="/")
    send_packet(server, "eio-1", eio_packet.Packet(eio_packet.MESSAGE, sio_pkt.encode()))
    assert server.eio.sent == [("eio-1", '42["pnl",{"seq":1}]')]  # type: ignore[attr-defined]


def test_room_occupied_follows_enter_and_leave_room() -> None:
    server = socketio.Server()
    server.manager.set_server(server)
    assert not room_occupied(server, "user:1:pnl")
    sid = server.manager.connect("eio-1", "/")
    server.manager.enter_room(sid, "/", "user:1:pnl")
    assert room_occupied(server, "user:1:pnl")
    assert not room_occupied(server, "user:2:pnl")
    server.manager.leave_room(sid, "/", "user:1:pnl")
    assert not room_occupied(server, "user:1:pnl")


def test_redis_manager_still_has_and_calls_each_overridden_private_method() -> None:
    for name in OVERRIDDEN_REDIS_MANAGER_METHODS:
        base = getattr(socketio.RedisManager, name)
        ours = getattr(RedisRelayManager, name)
        assert ours is not base, name  # ours overrides it
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(base).parameters), name
    # the call chain the overrides hook into: the listener thread reads _listen, which
    # iterates _redis_listen_with_retries, and hands each message to _handle_emit
    thread = inspect.getsource(socketio.PubSubManager._thread)
    assert "self._listen()" in thread and "self._handle_emit(" in thread
    assert "self._redis_listen_with_retries()" in inspect.getsource(socketio.RedisManager._listen)
    assert "self._redis_connect()" in inspect.getsource(socketio.RedisManager._publish)
