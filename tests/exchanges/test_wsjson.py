"""The venue streams' WebSocket reader (``exchanges.wsjson``): the handshake reply
read through a ``HeaderReader`` (a socket read per arrival, not per byte), and a frame
the server sent right behind the reply is neither lost nor hidden from ``waiting``."""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading

import pytest

from exchanges import wsjson
from exchanges.wsjson import HeaderReader, JsonWebSocket

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def text_frame(payload: dict) -> bytes:
    data = json.dumps(payload).encode()
    assert len(data) < 126
    return bytes([0x81, len(data)]) + data


class Server:
    """One-connection WebSocket server: answers the upgrade (with ``extra`` headers),
    then sends ``first`` in the same write as the reply and ``later`` when told."""

    def __init__(self, first: bytes = b"", extra_headers: int = 12) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.first, self.extra = first, extra_headers
        self.go_on = threading.Event()
        self.later = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
            reply = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
                     + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 20) for i in range(self.extra))
                     + b"\r\n")
            conn.sendall(reply + self.first)
            self.go_on.wait(5)
            if self.later:
                conn.sendall(self.later)
            self.go_on.clear()
            self.go_on.wait(5)

    def close(self) -> None:
        self.go_on.set()
        self.thread.join(5)
        self.listener.close()


class CountingSocket:
    """A socket that counts its ``recv`` calls (what the handshake costs in reads)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.recvs = sock, 0

    def recv(self, n: int) -> bytes:
        self.recvs += 1
        return self.sock.recv(n)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.sock, name)


@pytest.fixture
def counted(monkeypatch):  # type: ignore[no-untyped-def]
    made: list[CountingSocket] = []

    def bound(url: str, timeout_s: float, source_address: str) -> CountingSocket:
        host, port = url.split("//")[1].split("/")[0].split(":")
        made.append(CountingSocket(socket.create_connection((host, int(port)), timeout_s,
                                                           source_address=(source_address, 0))))
        return made[0]
    monkeypatch.setattr(wsjson, "bound_socket", bound)
    return made


def test_the_handshake_reply_takes_a_read_per_arrival_not_per_byte(counted):  # type: ignore[no-untyped-def]
    server = Server(extra_headers=12)  # a reply of about 500 bytes
    ws = JsonWebSocket("binance", "user stream", multithread=False)
    try:
        ws.connect(f"ws://127.0.0.1:{server.port}/ws", 5, source_address="127.0.0.1")
        assert ws.connected
        assert counted[0].recvs <= 3  # was one per byte of the reply
        assert ws._ws is not None and ws._ws.sock is counted[0]  # nothing held: the plain socket
        assert not ws.waiting()
        server.later = text_frame({"e": "later"})
        server.go_on.set()
        assert ws.recv_json(5) == {"e": "later"}
    finally:
        ws.close()
        server.close()


def test_a_frame_sent_with_the_reply_is_waiting_and_read_first(counted):  # type: ignore[no-untyped-def]
    server = Server(first=text_frame({"e": "first"}) + text_frame({"e": "second"}))
    ws = JsonWebSocket("binance", "user stream", multithread=False)
    try:
        ws.connect(f"ws://127.0.0.1:{server.port}/ws", 5, source_address="127.0.0.1")
        assert ws._ws is not None and isinstance(ws._ws.sock, HeaderReader)
        assert ws.waiting()  # held bytes count, though the kernel has none
        assert ws.recv_json(5) == {"e": "first"}
        assert ws.waiting()
        assert ws.recv_json(5) == {"e": "second"}
        assert ws._ws.sock is counted[0]  # drained: the plain socket again
        assert not ws.waiting()
        server.later = text_frame({"e": "third"})
        server.go_on.set()
        assert ws.recv_json(5) == {"e": "third"}
    finally:
        ws.close()
        server.close()
