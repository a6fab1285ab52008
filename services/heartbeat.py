"""A process's liveness key in Redis, kept alive by a small child process.

``RedisLeases`` takes over at once a lease whose owner's ``<prefix>:alive:<owner>`` key
is gone (a process killed with -9). That key used to be set by a green task: when the
event loop stalled for seconds (5,000 connects at once on an overloaded machine) the
beat came late, the key expired and the other process took this live one's streams
over (17 and 97 ``stream lease lost`` in two 10,000-connection storms). A native
thread survives a stalled loop but not a held GIL: the server's garbage collector
paused one process for 5.3 s at a load of 20 (``gc_max_ms`` in ``bench.scaleout``),
and a thread's beat waited for it. So the beat runs in a child process (``python -I
services/heartbeat.py``, the standard library only, about 14 MB RSS): it says "the
process is alive", not "its loop (or its GIL) is free". A loop that stalls for good
is caught by the leases' own TTL (nothing renews them).

The child ends when its parent does: it reads its standard input, whose only writer
is the parent, and exits at end of file (the kernel closes the pipe of a process
killed with -9), and it checks before every beat that its parent is still the same
process. So a process killed with -9 loses its key within ``alive_ms``, as before.

It sets the key with redis-py and reports each beat on its standard output
(``1`` or ``0 <error type>``, a line each); the parent reads what is there when asked
(``status()``), without waiting. Its settings, the password among them, go through
its standard input, never its command line (``ps`` shows that).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

HEARTBEAT_S = 1.0  # a beat every second ...
HEARTBEAT_TIMEOUT_S = 2.0  # ... each waiting at most this long to connect and for its reply


def _native(module: str) -> Any:
    """The standard library's ``module`` even when eventlet monkey-patched the process
    (``eventlet.patcher.original``): the pipes to the child are read without waiting
    and must not be registered with eventlet's hub."""
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched(module):
        return patcher.original(module)
    return __import__(module)


@dataclass(frozen=True)
class HeartbeatStatus:
    """What the heartbeat did as far as its reports were read: ``beats`` and
    ``failures`` since it started, ``error`` the error type of the last beat when it
    failed (None when it succeeded), ``failed_at`` the parent's ``time.monotonic()``
    seconds when the last failure was read (None: none yet), ``running`` whether the
    child process is alive."""

    beats: int
    failures: int
    error: str | None
    failed_at: float | None
    running: bool


class RedisBeat:
    """``SET key 1 PX alive_ms`` with redis-py on a connection of its own (``settings``:
    the dict ``beat_settings`` makes; the child is not monkey-patched, so redis-py's
    plain sockets are what it uses). A failed beat drops the connection and the next
    one connects again (redis-py's pool). Raises ``redis.RedisError`` (unreachable,
    late, refused: a wrong password, a read-only replica)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import redis  # in the child only: the parent imports this module without it
        self.s = settings
        timeout_s = settings["timeout_s"]
        self._client = redis.Redis.from_url(settings["url"], socket_timeout=timeout_s,
                                            socket_connect_timeout=timeout_s)

    def beat(self) -> None:
        """Set the key once (see the class)."""
        self._client.set(self.s["key"], "1", px=self.s["alive_ms"])

    def close(self) -> None:
        """Close the connection."""
        self._client.close()


def beat_settings(url: str, key: str, alive_ms: int, interval_s: float = HEARTBEAT_S,
                  timeout_s: float = HEARTBEAT_TIMEOUT_S) -> dict[str, Any]:
    """The child's settings: the Redis ``url`` (any that ``redis.from_url`` reads; it
    goes through the child's standard input, never its command line), the key, its
    life in milliseconds, the beat interval and each beat's timeout in seconds."""
    return {"url": url, "key": key, "alive_ms": int(alive_ms), "interval_s": float(interval_s),
            "timeout_s": float(timeout_s)}


class HeartbeatProcess:
    """Keeps ``settings["key"]`` alive from a child process (see the module doc).

    ``start()`` once (the first beat at once); ``stop()`` ends the child (the key then
    expires by itself); ``status()`` reads the child's reports so far; ``restart()``
    starts a new child when the last one died (killed by an operator or the OOM
    killer: the watching task calls it).
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self._proc: Any = None
        self._out_fd: int | None = None
        self._pending = b""
        self._beats = self._failures = 0
        self._error: str | None = None
        self._failed_at: float | None = None

    def start(self) -> None:
        """Start the child (a second call while it runs does nothing). Raises OSError
        when it cannot be started."""
        if self._proc is not None and self._proc.poll() is None:
            return
        subprocess, os_ = _native("subprocess"), _native("os")
        self._close_pipes()
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-u", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            close_fds=True)
        self._proc.stdin.write((json.dumps(self.settings) + "\n").encode())
        self._proc.stdin.flush()  # the pipe stays open: its end is the child's end
        self._out_fd = self._proc.stdout.fileno()
        os_.set_blocking(self._out_fd, False)

    def restart(self) -> bool:
        """Start a new child if the last one is gone; True if one was started."""
        if self._proc is None or self._proc.poll() is None:
            return False
        self.start()
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        """End the child: close its input (it exits at once) and wait up to
        ``timeout_s`` seconds, then kill it."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout_s)
        except Exception:  # subprocess.TimeoutExpired (of the native module)
            proc.kill()
            proc.wait(timeout_s)
        self.status()  # the last reports
        self._close_pipes()

    def status(self) -> HeartbeatStatus:
        """The child's reports read so far (see ``HeartbeatStatus``); never waits."""
        if self._out_fd is not None:
            os_ = _native("os")
            while True:
                try:
                    chunk = os_.read(self._out_fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if not chunk:
                    break
                self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            for line in lines:
                if line == b"1":
                    self._beats += 1
                    self._error = None
                elif line.startswith(b"0"):
                    self._failures += 1
                    self._error = line[2:].decode(errors="replace") or "Error"
                    self._failed_at = time.monotonic()
        running = self._proc is not None and self._proc.poll() is None
        return HeartbeatStatus(self._beats, self._failures, self._error, self._failed_at, running)

    @property
    def pid(self) -> int | None:
        """The child's process id (None before ``start()``)."""
        return self._proc.pid if self._proc is not None else None

    def _close_pipes(self) -> None:
        if self._proc is not None:
            for f in (self._proc.stdin, self._proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        self._out_fd, self._pending = None, b""


def _report(line: bytes) -> None:
    try:
        os.write(1, line)
    except (BlockingIOError, BrokenPipeError):  # the parent is not reading: drop it
        pass


def main() -> None:
    """The child: beat until the parent closes our input or is gone. Ctrl-C in a
    terminal reaches the whole process group: the parent may take its time to stop
    gracefully (its leases are still its own meanwhile), so the child ignores it and
    ends with its parent's end of the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = json.loads(sys.stdin.buffer.readline())
    parent = os.getppid()
    done = threading.Event()

    def watch_input() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        done.set()  # end of file: the parent closed it, or died

    threading.Thread(target=watch_input, daemon=True).start()
    os.set_blocking(1, False)
    beat = RedisBeat(settings)
    while not done.is_set() and os.getppid() == parent:
        began = time.monotonic()
        try:
            beat.beat()
            _report(b"1\n")
        except Exception as e:  # isolation boundary: reported, the next beat retries
            _report(b"0 %s\n" % type(e).__name__.encode())
        done.wait(max(0.0, settings["interval_s"] - (time.monotonic() - began)))
    beat.close()


if __name__ == "__main__":
    main()
