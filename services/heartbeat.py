"""A process's liveness key in Redis, kept alive from a native OS thread.

``RedisLeases`` takes over at once a lease whose owner's ``<prefix>:alive:<owner>`` key
is gone (a process killed with -9). That key used to be set by a green thread: when
the event loop stalled for seconds (5,000 connects at once on an overloaded machine)
the beat came late, the key expired and the other process took this live one's streams
over (17 and 97 ``stream lease lost`` in two 10,000-connection storms). Beating from a
native thread says "the process is alive", not "its loop is": a loop that stalls for
good is caught by the leases' own TTL (nothing renews them), a process killed with -9
loses its thread with it and its key expires within ``alive_ms`` as before.

The thread must not touch anything of eventlet's: under monkey patching a green socket,
a green lock (redis-py's pool, ``logging``'s handlers) or a green sleep used from
another OS thread waits on a hub that never runs there. So it speaks RESP itself over a
socket of the original ``socket`` module (``eventlet.patcher.original``), waits on an
original ``threading.Event`` and logs nothing: it records its state
(``HeartbeatStatus``) and the event loop's side reports it.
"""
from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

HEARTBEAT_S = 1.0  # a beat every second ...
HEARTBEAT_TIMEOUT_S = 2.0  # ... each waiting at most this long to connect and for its reply


_PATCHED_AS = {"threading": "thread", "ssl": "socket"}  # eventlet's name for what patches it


def native(module: str) -> ModuleType:
    """The module ``module`` as the standard library has it: the original one when
    eventlet has monkey-patched the process (``eventlet.patcher.original``), else
    the imported one."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched(_PATCHED_AS.get(module, module)):
        return patcher.original(module)  # type: ignore[no-any-return]
    return importlib.import_module(module)


class HeartbeatError(Exception):
    """Redis answered a heartbeat command with an error (``-ERR ...``, a wrong
    password, a read-only replica)."""


@dataclass(frozen=True)
class HeartbeatStatus:
    """What the heartbeat thread did: ``beats`` and ``failures`` since it started,
    ``error`` the error type of the last beat when it failed (None when it
    succeeded), ``failed_at`` the ``time.monotonic()`` seconds of the last failure
    (None: none yet), ``running`` whether the thread is alive."""

    beats: int
    failures: int
    error: str | None
    failed_at: float | None
    running: bool


def _command(*args: str | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode() if isinstance(a, str) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class NativeHeartbeat:
    """Sets ``key`` to ``1`` for ``alive_ms`` milliseconds every ``interval_s``
    seconds from a daemon OS thread, on a connection of its own to the Redis of
    ``url`` (``redis://`` / ``rediss://``, user, password and db as ``redis.from_url``
    reads them; a unix socket path is not supported: ValueError).

    ``start()`` once; ``stop()`` ends the thread (the key then expires by itself);
    ``status()`` says how it went; ``beat()`` sets the key once from the calling
    thread (raises ``OSError`` when Redis cannot be reached or answers late,
    ``HeartbeatError`` when it answers with an error). Not for concurrent ``beat()``
    calls from several threads.
    """

    def __init__(self, url: str, key: str, alive_ms: int, interval_s: float = HEARTBEAT_S,
                 timeout_s: float = HEARTBEAT_TIMEOUT_S) -> None:
        from redis.connection import parse_url  # only needed with MESSAGE_QUEUE_URL
        opts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        if "path" in opts:
            raise ValueError("MESSAGE_QUEUE_URL: a unix socket is not supported by the heartbeat")
        self._host, self._port = opts.get("host") or "localhost", int(opts.get("port") or 6379)
        self._db = int(opts.get("db") or 0)
        self._username, self._password = opts.get("username"), opts.get("password")
        self._tls = "connection_class" in opts  # rediss://
        self.key, self.alive_ms = key, alive_ms
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self._socket = native("socket")
        self._threading = native("threading")
        self._stop = self._threading.Event()
        self._thread: Any = None
        self._sock: Any = None
        self._buf = b""
        self._beats = self._failures = 0
        self._error: str | None = None
        self._failed_at: float | None = None

    def start(self) -> None:
        """Start the thread (its first beat at once); a second call does nothing."""
        if self._thread is not None:
            return
        self._thread = self._threading.Thread(target=self._run, name="lease-heartbeat",
                                              daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = HEARTBEAT_TIMEOUT_S + 1.0) -> None:
        """Tell the thread to end and wait up to ``timeout_s`` seconds for it (it ends
        at once unless a beat is waiting for Redis, at most ``timeout_s`` of the
        constructor)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def status(self) -> HeartbeatStatus:
        """The thread's figures (see ``HeartbeatStatus``)."""
        return HeartbeatStatus(self._beats, self._failures, self._error, self._failed_at,
                               self._thread is not None and self._thread.is_alive())

    def beat(self) -> None:
        """``SET key 1 PX alive_ms`` once (connecting first when needed; a failed beat
        closes the connection, the next one connects again). Raises OSError or
        HeartbeatError."""
        try:
            if self._sock is None:
                self._connect()
            self._call("SET", self.key, "1", "PX", self.alive_ms)
        except BaseException:
            self._close()
            raise

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.beat()
                self._beats += 1
                self._error = None
            except Exception as e:  # isolation boundary: recorded, reported by the loop's side
                self._failures += 1
                self._error = type(e).__name__
                self._failed_at = time.monotonic()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))
        self._close()

    def _connect(self) -> None:
        sock = self._socket.create_connection((self._host, self._port), timeout=self.timeout_s)
        if self._tls:
            ssl = native("ssl")
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
        sock.settimeout(self.timeout_s)
        self._sock, self._buf = sock, b""
        if self._password is not None:
            self._call("AUTH", *([self._username] if self._username else []), self._password)
        if self._db:
            self._call("SELECT", self._db)

    def _call(self, *args: str | int) -> None:
        self._sock.sendall(_command(*args))
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ConnectionError("redis closed the heartbeat connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        if line[:1] == b"-":
            raise HeartbeatError(line[1:].decode(errors="replace"))
        if line[:1] != b"+":  # SET, AUTH and SELECT answer +OK; anything else: not ours
            raise HeartbeatError(f"unexpected reply {line[:40]!r}")

    def _close(self) -> None:
        sock, self._sock, self._buf = self._sock, None, b""
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
