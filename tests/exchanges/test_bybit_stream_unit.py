"""BybitUserStream without a network: a scripted socket."""
from __future__ import annotations

import json
from decimal import Decimal as D
from pathlib import Path

import pytest
import websocket

from exchanges.bybit import stream as stream_mod
from exchanges.bybit.stream import BybitUserStream, auth_signature
from exchanges.errors import AuthFailed, ExchangeTimeout, ExchangeUnavailable
from exchanges.types import AccountEvent, FillEvent, OrderEvent

TEXT, CLOSE = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_CLOSE
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bybit"
SERVER_NOW = 1_700_000_000_000


def load(name: str):
    with open(FIXTURES / name) as f:
        return json.load(f)


def frame(obj):
    return TEXT, json.dumps(obj).encode()


AUTH_OK = frame({"success": True, "ret_msg": "", "op": "auth", "conn_id": "c1"})


class FakeWS:
    """Replays ``script`` from recv_data; a ``"SUB_OK"`` item answers the last subscribe
    with its req_id."""

    def __init__(self, script):
        self.script = list(script)
        self.connected = True
        self.sent: list[dict] = []
        self.timeouts: list[float] = []
        self.closed = False

    def settimeout(self, t):
        self.timeouts.append(t)

    def send(self, text):
        if self.closed:
            raise websocket.WebSocketConnectionClosedException("closed")
        self.sent.append(json.loads(text))

    def recv_data(self):
        item = self.script.pop(0) if self.script else websocket.WebSocketTimeoutException("t")
        if item == "SUB_OK":
            req_id = [m for m in self.sent if m["op"] == "subscribe"][-1]["req_id"]
            return frame({"success": True, "ret_msg": "", "op": "subscribe", "conn_id": "c1",
                          "req_id": req_id})
        if isinstance(item, Exception):
            raise item
        return item

    def close(self, timeout=None):
        self.closed = True
        raise OSError("already gone")      # close() must swallow this


@pytest.fixture
def make(monkeypatch):
    def make(script, connect=True):
        ws, urls = FakeWS(script), []
        monkeypatch.setattr(websocket, "create_connection",
                            lambda url, timeout, **kw: urls.append((url, timeout, kw)) or ws)
        s = BybitUserStream("key1", "secret1", "ws://sim:1/", timeout_s=4,
                            server_now_ms=lambda: SERVER_NOW, key_hint="ke...")
        if connect:
            s.connect()
        return s, ws, urls
    return make


def test_connect_auth_and_subscribe_frames(make):
    s, ws, urls = make([AUTH_OK, "SUB_OK"])
    assert urls == [("ws://sim:1/v5/private", 4, {"skip_utf8_validation": True,
                                                  "enable_multithread": True})]
    auth, sub = ws.sent
    expires = SERVER_NOW + 5000
    assert auth == {"op": "auth", "args": ["key1", expires, auth_signature("secret1", expires)]}
    assert sub["op"] == "subscribe" and sub["args"] == ["order", "execution", "position", "wallet"]
    assert len(sub["req_id"]) == 36
    assert s.keepalive_interval_s == 20
    assert s.connected


def test_auth_signature_vector():
    """EXCHANGE_PROTOCOLS.md §5.2 local vector."""
    assert auth_signature("testsecret", 1700000001000) == \
        "26df689652787d6e2816d6ac43239f177f3a452676ef6c0a64e80828cb7144c7"


def test_auth_refused_is_auth_failed_and_closes(make):
    s, ws, _ = make([frame({"success": False, "ret_msg": "error:invalid signature", "op": "auth"})],
                    connect=False)
    with pytest.raises(AuthFailed, match="invalid signature"):
        s.connect()
    assert ws.closed and not s.connected


def test_subscribe_refused_is_unavailable(make):
    s, ws, _ = make([AUTH_OK, frame({"success": False, "ret_msg": "bad topic", "op": "subscribe"})],
                    connect=False)
    with pytest.raises(ExchangeUnavailable, match="bad topic"):
        s.connect()


def test_no_auth_reply_times_out(make, monkeypatch):
    s, ws, _ = make([], connect=False)
    s._timeout_s = 0.05
    with pytest.raises(ExchangeTimeout):
        s.connect()
    assert ws.closed


def test_events_and_ignored_frames(make):
    s, ws, _ = make([
        frame({"op": "pong", "args": ["1"], "conn_id": "c1", "req_id": ""}),   # early pong
        AUTH_OK, "SUB_OK",
        frame(load("ws_private_order.json")),
        websocket.WebSocketTimeoutException("timed out"),
        frame(load("ws_private_execution.json")),
        frame({"req_id": "", "op": "pong", "args": ["1675418560633"], "conn_id": "c1"}),
        frame(load("ws_private_position.json")),
        frame(load("ws_private_wallet.json")),
        frame({"topic": "greeks", "data": []}),
    ])
    [o] = s.recv(1.5)
    assert isinstance(o, OrderEvent) and o.order.order_id == "5cf98598-39a7-459e-97bf-76ca765ee020"
    assert s.recv(0.1) == []
    [f] = s.recv(0.1)
    assert isinstance(f, FillEvent) and f.fill.fee == D("26.3725275")
    assert s.recv(0.1) == []
    [p] = s.recv(0.1)
    assert isinstance(p, AccountEvent) and p.positions[0].symbol == "BTCUSDT"
    [w] = s.recv(0.1)
    assert isinstance(w, AccountEvent) and w.wallets[0].wallet_balance == D("0.00102964")
    assert s.recv(0.1) == []
    assert ws.timeouts[-7:] == [1.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]


def test_topic_frame_before_subscribe_ack_is_kept(make):
    s, ws, _ = make([AUTH_OK, frame(load("ws_private_wallet.json")), "SUB_OK"])
    [w] = s.recv(0.1)
    assert isinstance(w, AccountEvent) and w.reason == "wallet"


def test_ping_sent_from_recv_when_due_and_wait_capped(make, monkeypatch):
    s, ws, _ = make([AUTH_OK, "SUB_OK"])
    clock = [1000.0]
    monkeypatch.setattr(stream_mod.time, "monotonic", lambda: clock[0])
    s._last_ping = 1000.0 - 5
    assert s.recv(60) == []
    assert ws.timeouts[-1] == pytest.approx(15)      # never waits past the next ping
    assert [m for m in ws.sent if m["op"] == "ping"] == []
    clock[0] += 15
    assert s.recv(60) == []
    assert ws.sent[-1] == {"op": "ping"}
    assert ws.timeouts[-1] == pytest.approx(20)


def test_keepalive_sends_ping(make):
    s, ws, _ = make([AUTH_OK, "SUB_OK"])
    s.keepalive()
    assert ws.sent[-1] == {"op": "ping"}


def test_server_close_frame_raises(make):
    s, *_ = make([AUTH_OK, "SUB_OK", (CLOSE, (1000).to_bytes(2, "big") + b"bye")])
    with pytest.raises(ExchangeUnavailable, match="code=1000"):
        s.recv(1)


@pytest.mark.parametrize("exc", [websocket.WebSocketConnectionClosedException("gone"),
                                 ConnectionResetError(104, "reset")])
def test_broken_socket_raises(make, exc):
    s, *_ = make([AUTH_OK, "SUB_OK", exc])
    with pytest.raises(ExchangeUnavailable):
        s.recv(1)


def test_non_json_frame_raises(make):
    s, *_ = make([AUTH_OK, "SUB_OK", (TEXT, b"<html>")])
    with pytest.raises(ExchangeUnavailable):
        s.recv(1)


def test_close_swallows_errors_and_is_idempotent(make):
    s, ws, _ = make([AUTH_OK, "SUB_OK"])
    s.close()
    assert ws.closed
    with pytest.raises(ExchangeUnavailable):
        s.recv(1)
    with pytest.raises(ExchangeUnavailable):
        s.keepalive()
    s.close()


def test_recv_before_connect_raises():
    with pytest.raises(ExchangeUnavailable):
        BybitUserStream("k", "s", "ws://x").recv(0.1)


def test_handshake_refused(monkeypatch):
    def refuse(url, timeout, **kw):
        raise websocket.WebSocketBadStatusException("Handshake status %d %s", 404, "Not Found")
    monkeypatch.setattr(websocket, "create_connection", refuse)
    with pytest.raises(ExchangeUnavailable):
        BybitUserStream("k", "s", "ws://x").connect()


def test_connection_refused(monkeypatch):
    def refuse(url, timeout, **kw):
        raise ConnectionRefusedError(111, "refused")
    monkeypatch.setattr(websocket, "create_connection", refuse)
    with pytest.raises(ExchangeUnavailable):
        BybitUserStream("k", "s", "ws://x").connect()


def test_recv_waiting_reads_only_frames_already_here(make):
    """``recv_waiting``: a topic frame kept from the subscribe handshake first; then
    frames only while bytes wait in the socket (FIONREAD), pongs skipped; [] without a
    read or a wait when none has arrived."""
    import socket

    s, ws, _ = make([AUTH_OK, frame(load("ws_private_wallet.json")), "SUB_OK",
                     frame({"req_id": "", "op": "pong", "args": ["1"], "conn_id": "c1"}),
                     frame(load("ws_private_execution.json"))])
    [kept] = s.recv_waiting()
    assert isinstance(kept, AccountEvent)
    here, peer = socket.socketpair()
    ws.sock = here
    try:
        waits = len(ws.timeouts)
        assert s.recv_waiting() == []
        assert len(ws.timeouts) == waits and len(ws.script) == 2   # nothing read
        peer.sendall(b"x")
        [f] = s.recv_waiting()
        assert isinstance(f, FillEvent) and ws.script == []
        assert ws.timeouts[waits:] == [0.001, 0.001]
    finally:
        here.close()
        peer.close()
