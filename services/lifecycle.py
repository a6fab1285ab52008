"""What the background loops of one set of services share to start and stop.

``StopFlag``: set once by ``Services.stop()``; a loop checks it and waits on it
instead of sleeping, so it ends within ``StopFlag.STEP_S`` of the stop however long
its period. ``Tasks``: spawns the background tasks through the callable it is given
(``socketio.start_background_task``) and knows which are still running.

No Flask or Socket.IO here: ``spawn`` and ``sleep`` are passed in (threads in the
tests' threading mode, green threads under eventlet).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class StopFlag:
    """A flag the loops watch. ``sleep``: the cooperative sleep (seconds)."""

    STEP_S = 0.05  # a waiting loop notices the flag within this long

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep
        self._set = False

    def set(self) -> None:
        """Ask every loop watching this flag to end."""
        self._set = True

    def is_set(self) -> bool:
        """True once ``set()`` was called."""
        return self._set

    def wait(self, seconds: float, sleep: Callable[[float], None] | None = None) -> bool:
        """Sleep ``seconds`` (in steps of ``STEP_S``, with ``sleep`` or the flag's
        own), less if the flag is set meanwhile. Returns True when the flag is set
        (the loop should end)."""
        nap = sleep or self._sleep
        deadline = time.monotonic() + seconds
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            nap(min(self.STEP_S, left))
        return self._set


class Tasks:
    """The background tasks of one set of services, by name.

    ``spawn(fn, *args)`` starts a background task and returns its handle (a
    ``threading.Thread`` or an eventlet ``GreenThread``); ``sleep`` is the cooperative
    sleep used while waiting for tasks to end.
    """

    def __init__(self, spawn: Callable[..., Any], sleep: Callable[[float], None]) -> None:
        self._spawn = spawn
        self.sleep = sleep
        self._lock = threading.Lock()
        self._running: Counter[str] = Counter()
        self.handles: list[Any] = []  # every handle spawned (the tests check they ended)

    def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Start ``fn(*args)`` as a background task counted under ``name`` until it
        returns or raises; returns the handle ``spawn`` gave."""
        def run() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._running[name] -= 1
        with self._lock:
            self._running[name] += 1
        handle = self._spawn(run)
        with self._lock:
            self.handles = [h for h in self.handles if _alive(h)] + [handle]
        return handle

    def spawner(self, name: str) -> Callable[..., Any]:
        """A ``spawn(fn, *args)`` callable for a service, its tasks counted as ``name``."""
        return lambda fn, *args: self.spawn(name, fn, *args)

    def running(self) -> dict[str, int]:
        """``{name: count}`` of the tasks still running."""
        with self._lock:
            return {name: n for name, n in self._running.items() if n > 0}

    def wait(self, deadline: float, names: set[str] | None = None) -> dict[str, int]:
        """Wait until no task (of ``names``, default all) runs or ``time.monotonic()``
        reaches ``deadline``; returns what still runs (see ``running``)."""
        def left() -> dict[str, int]:
            return {n: c for n, c in self.running().items() if names is None or n in names}
        while left() and time.monotonic() < deadline:
            self.sleep(0.02)
        return left()


def _alive(handle: Any) -> bool:
    if hasattr(handle, "is_alive"):
        return bool(handle.is_alive())
    return not getattr(handle, "dead", True)
