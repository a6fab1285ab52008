"""Fault injection, the server clock and REST request accounting (protocol-neutral).

Fault kinds (``POST /_sim/faults``), each optionally limited to one ``api_key``:

- ``http_429`` / ``http_418`` / ``http_5xx``: the next ``count`` REST requests (default
  1), or every request for ``duration_s``, fail with 429 (+ Retry-After) / 418
  (+ Retry-After) / 503. The protocol layer shapes the body.
- ``latency``: each matching REST request waits ``ms`` before it is handled (until
  cleared, or for ``count`` requests / ``duration_s``).
- ``timeout``: the request IS executed, but its reply is held back ``ms`` (default
  30000) so the client times out and the request's fate is unknown to it (default
  ``count`` 1).
- ``drop_ws``: closes the matching WebSocket connections now (not stored).
- ``expire_listen_key``: expires the matching stream credentials now (not stored).
- ``clock_skew``: the server clock runs ``ms`` ahead (negative: behind; default -5000,
  so an unsynced client's timestamps look "ahead of the server" and get -1021 whatever
  its recvWindow). Lasts until cleared, for ``duration_s``, or for the next ``count``
  REST requests (of ``api_key`` when given; each request samples the clock once, any
  endpoint, ``/fapi/v1/time`` included). The latest matching fault wins. Without
  ``api_key`` it also shifts event times and ``/_sim/state``.
- ``reject_orders``: the next ``count`` new orders (default 1) are refused; how is up
  to the protocol layer (Binance: FOK/IOC come back EXPIRED, others -2010).

Immediate kinds run hooks that protocol layers register with ``add_hook``.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

FAULT_KINDS = frozenset({"http_429", "http_418", "http_5xx", "latency", "timeout", "drop_ws",
                         "expire_listen_key", "clock_skew", "reject_orders"})
IMMEDIATE_KINDS = frozenset({"drop_ws", "expire_listen_key"})
HTTP_ERROR_KINDS = ("http_429", "http_418", "http_5xx")
# Kinds that default to "one request" when neither count nor duration_s is given.
ONE_SHOT_KINDS = frozenset({"http_429", "http_418", "http_5xx", "timeout", "reject_orders"})


@dataclass
class Fault:
    """An active fault. ``count``: remaining uses (None = unlimited); ``until``:
    monotonic deadline in s (None = none); ``ms``: the fault's duration parameter."""

    fault_id: int
    kind: str
    api_key: str | None
    count: int | None
    until: float | None
    ms: int | None
    created_ms: int

    def alive(self, mono: float) -> bool:
        """True while uses and time remain."""
        return (self.count is None or self.count > 0) and (self.until is None or mono < self.until)

    def matches(self, api_key: str | None) -> bool:
        """True when the fault targets everyone or exactly ``api_key``."""
        return self.api_key is None or self.api_key == api_key

    def to_json(self) -> dict[str, Any]:
        """JSON view for ``/_sim/state`` (remaining seconds rounded up)."""
        remaining = None if self.until is None else max(0, math.ceil(self.until - time.monotonic()))
        return {"id": self.fault_id, "kind": self.kind, "api_key": self.api_key,
                "count": self.count, "remaining_s": remaining, "ms": self.ms,
                "created": self.created_ms}


@dataclass(frozen=True)
class RestPlan:
    """What the faults do to one REST request: sleep ``delay_before_ms``, then either
    answer ``error`` (a kind of HTTP_ERROR_KINDS, with ``retry_after_s``) or handle the
    request with the server clock shifted by ``skew_ms`` and sleep ``delay_after_ms``
    before replying."""

    error: str | None = None
    retry_after_s: int = 1
    delay_before_ms: int = 0
    delay_after_ms: int = 0
    skew_ms: int = 0


class FaultRegistry:
    """The active faults plus the hooks that carry out immediate ones."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._hooks: dict[str, list[Callable[[str | None], int]]] = {}

    def add_hook(self, kind: str, hook: Callable[[str | None], int]) -> None:
        """Register ``hook(api_key or None) -> affected count`` for an immediate kind."""
        self._hooks.setdefault(kind, []).append(hook)

    def add(self, kind: str, count: int | None = None, duration_s: float | None = None,
            ms: int | None = None, api_key: str | None = None) -> dict[str, Any]:
        """Add a fault (or run an immediate one). Returns its JSON view plus, for
        immediate kinds, ``affected``. Raises ValueError on bad arguments."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {sorted(FAULT_KINDS)}")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ValueError("count must be a positive integer")
        if duration_s is not None and (not isinstance(duration_s, (int, float)) or duration_s <= 0):
            raise ValueError("duration_s must be a positive number")
        if ms is not None and not isinstance(ms, int):
            raise ValueError("ms must be an integer")
        if kind == "latency" and ms is None:
            raise ValueError("latency needs ms")
        created = int(time.time() * 1000)
        if kind in IMMEDIATE_KINDS:
            affected = sum(hook(api_key) for hook in self._hooks.get(kind, []))
            logger.info("fault applied kind=%s api_key=%s affected=%d", kind, mask(api_key), affected)
            return {"id": None, "kind": kind, "api_key": api_key, "affected": affected,
                    "created": created}
        if count is None and duration_s is None and kind in ONE_SHOT_KINDS:
            count = 1
        if kind == "timeout" and ms is None:
            ms = 30000
        if kind == "clock_skew" and ms is None:
            ms = -5000
        until = time.monotonic() + duration_s if duration_s is not None else None
        fault = Fault(next(self._ids), kind, api_key, count, until, ms, created)
        self._faults.append(fault)
        logger.info("fault added id=%d kind=%s api_key=%s count=%s duration_s=%s ms=%s",
                    fault.fault_id, kind, mask(api_key), count, duration_s, ms)
        return fault.to_json()

    def clear(self) -> int:
        """Remove every stored fault; returns how many there were."""
        removed = len(self._faults)
        self._faults.clear()
        logger.info("faults cleared removed=%d", removed)
        return removed

    def active(self) -> list[Fault]:
        """Alive faults (dead ones are dropped)."""
        mono = time.monotonic()
        self._faults = [f for f in self._faults if f.alive(mono)]
        return list(self._faults)

    def take(self, kind: str, api_key: str | None) -> Fault | None:
        """The first alive fault of ``kind`` matching ``api_key``, one use consumed."""
        if not self._faults:
            return None
        mono = time.monotonic()
        for fault in self._faults:
            if fault.kind == kind and fault.matches(api_key) and fault.alive(mono):
                if fault.count is not None:
                    fault.count -= 1
                return fault
        return None

    def skew_ms(self, api_key: str | None = None, consume: bool = False) -> int:
        """Clock shift in ms: the latest alive clock_skew fault for everyone (or for
        ``api_key``), else 0. ``consume`` uses up one ``count`` (one REST request)."""
        if not self._faults:
            return 0
        mono = time.monotonic()
        for fault in reversed(self._faults):
            if fault.kind == "clock_skew" and fault.alive(mono) and (
                    fault.api_key is None or (api_key is not None and fault.api_key == api_key)):
                if consume and fault.count is not None:
                    fault.count -= 1
                return fault.ms or 0
        return 0

    def plan_rest(self, api_key: str | None) -> RestPlan:
        """Consume the faults that apply to one REST request of ``api_key``."""
        if not self._faults:
            return RestPlan()
        delay_before = 0
        latency = self.take("latency", api_key)
        if latency is not None:
            delay_before = latency.ms or 0
        for kind in HTTP_ERROR_KINDS:
            fault = self.take(kind, api_key)
            if fault is not None:
                if fault.ms:
                    retry = math.ceil(fault.ms / 1000)
                elif fault.until is not None:
                    retry = math.ceil(fault.until - time.monotonic())
                else:
                    retry = 1
                return RestPlan(kind, max(1, retry), delay_before)
        timeout = self.take("timeout", api_key)
        delay_after = (timeout.ms or 0) if timeout is not None else 0
        return RestPlan(None, 1, delay_before, delay_after,
                        self.skew_ms(api_key, consume=True))

    def snapshot(self) -> list[dict[str, Any]]:
        """JSON views of the alive faults."""
        return [f.to_json() for f in self.active()]


class Clock:
    """The server clock: wall time plus the clock_skew fault, in ms."""

    def __init__(self, faults: FaultRegistry) -> None:
        self._faults = faults

    def now_ms(self, skew_ms: int | None = None) -> int:
        """Server time in ms since the epoch: wall time plus ``skew_ms`` (default: the
        clock_skew fault that applies to everyone)."""
        if skew_ms is None:
            skew_ms = self._faults.skew_ms()
        return int(time.time() * 1000) + skew_ms


class RequestStats:
    """REST request counters: per api key and endpoint since start, and the request
    weight used per client IP per wall-clock minute (Binance counts weight per IP).

    ``ip_weight_limit``: weight per IP per minute beyond which Binance requests are
    refused (0: never). ``weight_history``: ``{"<venue> <ip>": {minute (epoch s):
    weight}}`` of the last 30 minutes (Bybit requests weigh 1 each)."""

    def __init__(self, ip_weight_limit: int = 0) -> None:
        self.counts: dict[str, dict[str, int]] = {}
        self.ip_weight_limit = ip_weight_limit
        self.weight_history: dict[str, dict[int, int]] = {}

    def record(self, api_key: str | None, ip: str, endpoint: str, weight: int = 1,
               venue: str = "binance") -> int:
        """Count one request of ``weight``; returns the IP's weight on ``venue`` in the
        current minute."""
        per_key = self.counts.setdefault(api_key or "_anonymous", {})
        per_key[endpoint] = per_key.get(endpoint, 0) + 1
        minute = int(time.time() // 60) * 60
        history = self.weight_history.setdefault(f"{venue} {ip}", {})
        history[minute] = history.get(minute, 0) + weight
        if len(history) > 30:
            del history[min(history)]
        return history[minute]


def mask(api_key: str | None) -> str:
    """An api key for logs: ``...`` plus its last 4 characters (``-`` for none)."""
    if not api_key:
        return "-"
    return "..." + api_key[-4:]
