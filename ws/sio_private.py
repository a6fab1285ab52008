"""Every use of python-socketio's private API, in one place.

The fan-out writes ready-made packets straight into a connection's send queue, as
python-socketio's own room emit does, and asks whether a room has members without
copying it; the Redis client manager (``ws.redis_bus.RedisRelayManager``) overrides three
private methods of ``socketio.RedisManager``. None of these is public API, so each is
pinned by ``tests/server/test_sio_private.py`` against the versions in
``requirements.lock`` (python-socketio 5.18.1, python-engineio 4.15.1): an upgrade that
changes one fails there, not in production.
"""
from __future__ import annotations

from typing import Any

# the socketio.RedisManager methods ws.redis_bus.RedisRelayManager overrides (the contract
# test checks that the pinned version still has and calls each)
OVERRIDDEN_REDIS_MANAGER_METHODS = ("_handle_emit", "_redis_listen_with_retries", "_redis_connect")


def send_packet(server: Any, eio_sid: str, packet: Any) -> None:
    """Queue ``packet`` (an ``engineio.packet.Packet`` MESSAGE carrying an encoded
    Socket.IO packet, built once and shared by every receiver) for the Engine.IO
    connection ``eio_sid`` of ``server`` (a ``socketio.Server``), with no room lookup
    and no re-encoding: ``Server._send_eio_packet``, what a room emit ends in."""
    server._send_eio_packet(eio_sid, packet)


def room_occupied(server: Any, name: str, namespace: str = "/") -> bool:
    """True when at least one connection of this process is in room ``name`` of
    ``namespace``. O(1): reads ``manager.rooms`` (the public
    ``manager.get_participants`` copies the room on every call)."""
    return bool(server.manager.rooms.get(namespace, {}).get(name))
