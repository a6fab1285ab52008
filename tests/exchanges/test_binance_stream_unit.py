"""BinanceUserStream without a network: a scripted socket and a stubbed library client."""
from __future__ import annotations

import json

import pytest
import websocket

from exchanges.binance.stream import BinanceUserStream
from exchanges.errors import AuthFailed, ExchangeUnavailable
from exchanges.types import OrderEvent, StreamExpired

TEXT, CLOSE = websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_CLOSE

FILLED = {"e": "ORDER_TRADE_UPDATE", "E": 2, "T": 1, "o": {
    "s": "BTCUSDT", "c": "c1", "S": "BUY", "o": "MARKET", "f": "GTC", "q": "1", "p": "0",
    "ap": "10", "x": "TRADE", "X": "FILLED", "i": 5, "l": "1", "z": "1", "L": "10",
    "n": "0.004", "N": "USDT", "T": 1, "t": 9, "m": False, "R": False, "rp": "0"}}


class FakeWS:
    def __init__(self, script):
        self.script = list(script)
        self.connected = True
        self.timeouts = []
        self.closed = False

    def settimeout(self, t):
        self.timeouts.append(t)

    def recv_data(self):
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self, timeout=None):
        self.closed = True
        raise OSError("already gone")     # close() must swallow this


class FakeLib:
    def __init__(self, fail_post=None):
        self.calls = []
        self.fail_post = fail_post

    def futures_stream_get_listen_key(self):
        self.calls.append("post")
        if self.fail_post:
            raise self.fail_post
        return "LK1234567890"

    def futures_stream_keepalive(self, listenKey):
        self.calls.append(("put", listenKey))

    def futures_stream_close(self, listenKey):
        self.calls.append(("delete", listenKey))
        raise ConnectionError("down")     # close() must swallow this


@pytest.fixture
def connected(monkeypatch):
    def make(script):
        ws, lib, urls = FakeWS(script), FakeLib(), []
        monkeypatch.setattr(websocket, "create_connection",
                            lambda url, timeout, **kw: urls.append((url, timeout)) or ws)
        s = BinanceUserStream(lib, "ws://sim:1/", timeout_s=4, key_hint="ab...")
        s.connect()
        return s, ws, lib, urls
    return make


def frame(obj):
    return TEXT, json.dumps(obj).encode()


def test_connect_url_and_events(connected):
    s, ws, lib, urls = connected([
        frame(FILLED),
        websocket.WebSocketTimeoutException("timed out"),
        frame({"e": "error", "m": "x"}),
        frame({"e": "TRADE_LITE", "E": 1}),
        frame({"e": "listenKeyExpired", "E": "77", "listenKey": "LK"}),
    ])
    assert urls == [("ws://sim:1/private/ws?listenKey=LK1234567890", 4)]
    assert s.keepalive_interval_s == 30 * 60
    [ev] = s.recv(1.5)
    assert isinstance(ev, OrderEvent) and ev.fill.trade_id == "9"
    assert s.recv(0.1) == []
    assert s.recv(0.1) == []
    assert s.recv(0.1) == []
    assert s.recv(0.1) == [StreamExpired(77)]
    assert ws.timeouts == [1.5, 0.1, 0.1, 0.1, 0.1]
    s.keepalive()
    assert lib.calls == ["post", ("put", "LK1234567890")]


def test_server_close_frame_raises(connected):
    s, *_ = connected([(CLOSE, (1000).to_bytes(2, "big") + b"bye")])
    with pytest.raises(ExchangeUnavailable, match="code=1000"):
        s.recv(1)


@pytest.mark.parametrize("exc", [websocket.WebSocketConnectionClosedException("gone"),
                                 ConnectionResetError(104, "reset")])
def test_broken_socket_raises(connected, exc):
    s, *_ = connected([exc])
    with pytest.raises(ExchangeUnavailable):
        s.recv(1)


def test_non_json_frame_raises(connected):
    s, *_ = connected([(TEXT, b"<html>")])
    with pytest.raises(ExchangeUnavailable):
        s.recv(1)


def test_close_swallows_errors_and_releases_key(connected):
    s, ws, lib, _ = connected([])
    s.close()
    assert ws.closed and lib.calls[-1] == ("delete", "LK1234567890")
    with pytest.raises(ExchangeUnavailable):
        s.recv(1)
    s.close()    # idempotent


def test_recv_before_connect_raises():
    with pytest.raises(ExchangeUnavailable):
        BinanceUserStream(FakeLib(), "ws://x").recv(0.1)


def test_listen_key_auth_error_mapped():
    import requests
    from binance.exceptions import BinanceAPIException
    r = requests.Response()
    r.status_code, r._content = 401, b'{"code":-2015,"msg":"Invalid API-key"}'
    s = BinanceUserStream(FakeLib(fail_post=BinanceAPIException(r, 401, r.text)), "ws://x")
    with pytest.raises(AuthFailed):
        s.connect()


def test_handshake_refused(monkeypatch):
    def refuse(url, timeout, **kw):
        raise websocket.WebSocketBadStatusException("Handshake status %d %s", 404, "Not Found")
    monkeypatch.setattr(websocket, "create_connection", refuse)
    s = BinanceUserStream(FakeLib(), "ws://x")
    with pytest.raises(ExchangeUnavailable):
        s.connect()


@pytest.mark.parametrize("status, posts", [(503, 1), (400, 2)])
def test_a_refused_handshake_holds_the_listen_key_only_on_a_server_error(monkeypatch, status, posts):
    """5xx: the key is fine, the next connect reuses it; 4xx: the key may not be,
    the next connect POSTs a new one."""
    from exchanges.binance.stream import ListenKeyHold

    def refuse(url, timeout, **kw):  # type: ignore[no-untyped-def]
        raise websocket.WebSocketBadStatusException("Handshake status %d", status)
    monkeypatch.setattr(websocket, "create_connection", refuse)
    lib, hold = FakeLib(), ListenKeyHold()
    for _ in range(2):
        with pytest.raises(ExchangeUnavailable) as e:
            BinanceUserStream(lib, "ws://sim:1/", hold=hold).connect()
        assert e.value.http_status == status
    assert lib.calls == ["post"] * posts


def test_a_held_listen_key_is_not_reused_once_it_is_old() -> None:
    from exchanges.binance.stream import ListenKeyHold
    now = [100.0]
    hold = ListenKeyHold(clock=lambda: now[0])
    hold.hold("LK1", posted_at=100.0)
    assert hold.take() == ("LK1", 100.0) and hold.take() is None  # given out once
    hold.hold("LK1", posted_at=100.0)  # a reuse that failed again keeps the POST time
    now[0] += ListenKeyHold.REUSE_S + 1
    assert hold.take() is None


def test_recv_waiting_reads_only_frames_already_here(connected):
    """``recv_waiting`` asks the socket (FIONREAD) before reading: with nothing in the
    kernel's buffer it returns [] without a read or a wait; with bytes there it reads
    the next frame, skipping ignored ones."""
    import socket

    s, ws, _, _ = connected([frame({"e": "error", "m": "x"}), frame(FILLED)])
    here, peer = socket.socketpair()
    ws.sock = here
    try:
        assert s.recv_waiting() == []
        assert ws.timeouts == [] and len(ws.script) == 2   # nothing read, no wait set
        peer.sendall(b"x")                                  # bytes of a next frame arrived
        [ev] = s.recv_waiting()
        assert isinstance(ev, OrderEvent) and ev.fill.trade_id == "9"
        assert ws.script == [] and ws.timeouts == [0.001, 0.001]
    finally:
        here.close()
        peer.close()
    ws.sock = None
    assert s.recv_waiting() == []                           # no socket: nothing waits
