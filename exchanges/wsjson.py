"""A JSON-over-WebSocket connection on ``websocket-client`` (blocking sockets, so
cooperative under eventlet's monkey patching), shared by the venues' streams.

Every stream here skips websocket-client's UTF-8 validation: it is pure Python, it
took a quarter of the server's CPU in the ledger benchmark, and ``json.loads``
refuses a frame that is not valid UTF-8 anyway."""
from __future__ import annotations

import array
import fcntl
import json
import logging
import termios
import traceback
from typing import Any

import websocket

from exchanges.egress import bound_socket
from exchanges.errors import ExchangeTimeout, ExchangeUnavailable

logger = logging.getLogger(__name__)

MIN_WAIT_S = 0.001


HEADER_READ = 4096  # bytes asked of the socket at once while reading the handshake reply


class HeaderReader:
    """The socket websocket-client reads its handshake reply through: websocket-client
    reads the status line and headers one byte per ``recv`` (under eventlet each one a
    green socket call: about 5 % of a reconnect storm's server CPU went to those
    single-byte reads), so each read here takes what has arrived (up to
    ``HEADER_READ`` bytes) and hands it out byte by byte. Bytes read past the reply
    (a first frame sent right behind it) stay here and are handed out first;
    ``unwrap`` gives the plain socket back once none is left. Everything else is the
    socket's (``__getattr__``)."""

    def __init__(self, sock: Any) -> None:
        self.raw = sock
        self._buf = b""
        self._at = 0

    @property
    def buffered(self) -> int:
        """Bytes read from the socket and not handed out yet."""
        return len(self._buf) - self._at

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes: from what is held, else from one socket read of up to
        ``max(bufsize, HEADER_READ)`` bytes (b"" when the peer closed). Raises what the
        socket's ``recv`` raises (its timeout included)."""
        if self._at >= len(self._buf):
            self._buf, self._at = self.raw.recv(max(bufsize, HEADER_READ)), 0
        out = self._buf[self._at:self._at + bufsize]
        self._at += len(out)
        return out

    def gettimeout(self) -> float | None:
        """The socket's timeout (websocket-client asks it before every read)."""
        return self.raw.gettimeout()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def unwrap(ws: websocket.WebSocket) -> None:
    """Give ``ws`` its plain socket back once its ``HeaderReader`` holds no byte (frames
    are then read straight from the socket, and ``FIONREAD`` sees every unread one)."""
    sock = getattr(ws, "sock", None)
    if isinstance(sock, HeaderReader) and not sock.buffered:
        ws.sock = sock.raw


def create_connection(url: str, timeout_s: float, source_address: str | None = None,
                      **options: Any) -> websocket.WebSocket:
    """``websocket.create_connection`` with UTF-8 validation off, from
    ``source_address`` when one is given (``exchanges.egress``; then the handshake
    reply is read through a ``HeaderReader``). Raises what websocket-client raises, and
    OSError from the bound connect."""
    if source_address:
        options["socket"] = HeaderReader(bound_socket(url, timeout_s, source_address))
    ws = websocket.create_connection(url, timeout=timeout_s, skip_utf8_validation=True,
                                     **options)
    unwrap(ws)
    return ws


def drop_frames(exc: BaseException | None) -> None:
    """Clear the locals of the finished frames in ``exc``'s tracebacks and those of the
    exceptions it was raised from (``traceback.clear_frames``). An idle stream's read
    ends in a timeout every few seconds; websocket-client raises its own exception from
    the socket's, and a frame holding the exception it raised from is a reference cycle
    that only the garbage collector frees: at 1,000 streams those frames, tracebacks
    and exceptions were most of the young generation each collection had to walk."""
    seen = 0
    while exc is not None and seen < 8:
        traceback.clear_frames(exc.__traceback__)
        exc, seen = exc.__context__, seen + 1


def set_wait(ws: websocket.WebSocket, timeout_s: float) -> None:
    """Give ``ws`` a read timeout of ``timeout_s`` seconds, at least ``MIN_WAIT_S``: a
    caller whose deadline has just passed asks for 0 or less, and a zero socket timeout
    would be non-blocking mode, whose EAGAIN (BlockingIOError) reads as a lost
    connection and costs a reconnect."""
    ws.settimeout(max(MIN_WAIT_S, timeout_s))


class JsonWebSocket:
    """One WebSocket whose text frames are JSON: the one frame reader of every venue
    stream (public and private).

    Args:
        exchange: venue name for the errors raised.
        what: a short label (``"mark price stream"``) for error and log messages.
        multithread: websocket-client's ``enable_multithread`` (a lock around send and
            recv), for a socket that another green thread sends on (pings).
    """

    def __init__(self, exchange: str, what: str, multithread: bool = True) -> None:
        self._exchange = exchange
        self._what = what
        self._multithread = multithread
        self._ws: websocket.WebSocket | None = None

    @property
    def connected(self) -> bool:
        """True while the socket is open (as far as we know without I/O)."""
        return self._ws is not None and bool(self._ws.connected)

    def connect(self, url: str, timeout_s: float, source_address: str | None = None) -> None:
        """Open ``url`` (from ``source_address`` when given). Raises ExchangeTimeout, or
        ExchangeUnavailable (``http_status`` the handshake's status when the server
        refused it)."""
        options = {"enable_multithread": True} if self._multithread else {}
        try:
            self._ws = create_connection(url, timeout_s, source_address, **options)
        except (TimeoutError, websocket.WebSocketTimeoutException) as e:
            raise ExchangeTimeout(self._exchange, None, f"{self._what} handshake timed out") from e
        except websocket.WebSocketBadStatusException as e:
            raise ExchangeUnavailable(self._exchange, None, f"{self._what} handshake refused",
                                      getattr(e, "status_code", None)) from e
        except (websocket.WebSocketException, OSError) as e:
            raise ExchangeUnavailable(self._exchange, None,
                                      f"{self._what} connect failed: {type(e).__name__}") from e

    def waiting(self) -> bool:
        """True when bytes of a next frame have already arrived: in TLS's decrypted
        buffer or in the kernel's receive buffer (``FIONREAD``; websocket-client reads
        exactly the bytes of the frame it parses, so what the kernel holds is the next
        frames). Asked without I/O and without yielding to other green threads, so a
        reader can take the frames of a burst one after the other and stop when none
        is left, instead of waiting a timeout for one more. False when not connected."""
        ws = self._ws
        sock = ws.sock if ws is not None else None
        if sock is None:
            return False
        if isinstance(sock, HeaderReader):  # bytes read along with the handshake reply
            if sock.buffered:
                return True
            assert ws is not None
            unwrap(ws)
            sock = sock.raw
        pending = getattr(sock, "pending", None)  # ssl.SSLSocket: decrypted, unread bytes
        try:
            if pending is not None and pending() > 0:
                return True
            count = array.array("i", [0])
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
        except (OSError, ValueError):  # closed under us: the next recv says so
            return False
        return count[0] > 0

    def send_json(self, payload: dict[str, Any]) -> None:
        """Send one text frame. Raises ExchangeUnavailable when the socket is gone."""
        ws = self._ws
        if ws is None:
            raise ExchangeUnavailable(self._exchange, None, f"{self._what} not connected")
        try:
            ws.send(json.dumps(payload))
        except (websocket.WebSocketException, OSError, AttributeError) as e:
            raise ExchangeUnavailable(self._exchange, None,
                                      f"{self._what} send failed: {type(e).__name__}") from e

    def recv_json(self, timeout_s: float) -> Any | None:
        """The next JSON frame, or None on timeout or a non-data frame.

        Raises ExchangeUnavailable when the socket is closed, broken or sends
        something that is not JSON.
        """
        ws = self._ws
        if ws is None:
            raise ExchangeUnavailable(self._exchange, None, f"{self._what} not connected")
        try:
            set_wait(ws, timeout_s)
            opcode, data = ws.recv_data()
            if isinstance(getattr(ws, "sock", None), HeaderReader):
                unwrap(ws)
        except (TimeoutError, websocket.WebSocketTimeoutException) as e:
            drop_frames(e)
            return None
        except (websocket.WebSocketException, OSError, AttributeError) as e:
            # AttributeError: websocket-client drops ws.sock when closed concurrently.
            raise ExchangeUnavailable(self._exchange, None,
                                      f"{self._what} connection lost: {type(e).__name__}") from e
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            raise ExchangeUnavailable(self._exchange, None,
                                      f"{self._what} closed by server code={code}")
        if opcode not in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise ExchangeUnavailable(self._exchange, None,
                                      f"{self._what} sent a non-JSON frame") from e

    def close(self) -> None:
        """Close the socket; never raises (a failure is logged at debug)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close(timeout=1)
            except Exception as e:  # isolation boundary: close must not raise
                logger.debug("%s %s close failed err=%s", self._exchange, self._what,
                             type(e).__name__)
