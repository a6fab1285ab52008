"""Many concurrent lookups of single keys served by one batched read.

A reconnect storm makes hundreds of green threads each ask the database for one row
at the same moment (a user's API keys, a key's realized PnL). ``Coalescer.get(key)``
lets the first caller wait ``wait_s`` for others to join, reads every key asked for
meanwhile with one call of ``load_many`` (at most ``max_batch`` keys), and hands each
caller its value; the others wait for that read instead of taking a pool connection
each.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Batch(Generic[K, V]):
    def __init__(self) -> None:
        self.keys: set[K] = set()
        self.closed = False
        self.values: dict[K, V] = {}
        self.error: BaseException | None = None
        self.done = threading.Event()


class Coalescer(Generic[K, V]):
    """``get(key)``: ``load_many(keys)[key]`` (None when absent), read together with
    the keys other callers asked for within ``wait_s`` seconds.

    ``load_many(list of keys) -> {key: value}`` may raise: every caller of that batch
    gets the exception. ``sleep``: cooperative sleep (eventlet's under the server).
    ``reads``: the number of ``load_many`` calls; ``asked``: of ``get``.
    """

    def __init__(self, load_many: Callable[[list[K]], dict[K, V]],
                 sleep: Callable[[float], None] = time.sleep, wait_s: float = 0.002,
                 max_batch: int = 500) -> None:
        self._load_many = load_many
        self._sleep = sleep
        self._wait_s = wait_s
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._batch: _Batch[K, V] | None = None
        self.reads = 0
        self.asked = 0

    def get(self, key: K) -> V | None:
        """The value of ``key`` (None: ``load_many`` returned none). Raises what
        ``load_many`` raised."""
        with self._lock:
            self.asked += 1
            batch = self._batch
            leader = batch is None or batch.closed or len(batch.keys) >= self._max_batch
            if leader:
                batch = self._batch = _Batch()
            assert batch is not None
            batch.keys.add(key)
        if leader:
            if self._wait_s > 0:
                self._sleep(self._wait_s)  # let the lookups of the same moment join
            with self._lock:
                batch.closed = True
                keys = list(batch.keys)
            try:
                batch.values = self._load_many(keys)
                self.reads += 1
            except BaseException as e:  # every caller of the batch gets it
                batch.error = e
            finally:
                batch.done.set()
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        return batch.values.get(key)
