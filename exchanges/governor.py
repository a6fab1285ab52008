"""Rate-limit governor: one per venue (exchange, network) and egress IP, shared by
every API key's client in the process.

Binance USD-M counts request weight per IP per minute (``X-MBX-USED-WEIGHT-1M``,
limit 2400) and answers 429 (then 418, an IP ban) with ``Retry-After`` when it is
exceeded ("Repeatedly violating rate limits and/or failing to back off after
receiving 429s will result in an automated IP ban" - Binance USD-M "General Info").
So: queries stop at ``query_share`` of the limit, keeping the rest for orders and
cancels; after a 429/418 nothing is sent until ``Retry-After`` has passed, and the
callers get a local RateLimited at once instead of hitting the exchange again.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from exchanges.errors import IpBanned, RateLimited

ORDER = "order"   # order placement and cancel: may use the whole budget
QUERY = "query"   # snapshots, polls, lookups: only ``query_share`` of it


class RateGovernor:
    """Admission control for one venue's REST calls.

    Args:
        exchange: venue name for the errors raised.
        weight_limit: requests weight allowed per minute (Binance USD-M: 2400).
        query_share: fraction of the limit queries may use (orders get the rest).
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(self, exchange: str, weight_limit: int = 2400, query_share: float = 0.8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.exchange = exchange
        self.weight_limit = weight_limit
        self.query_share = query_share
        self._clock = clock
        self._lock = threading.Lock()
        self._blocked_until = 0.0
        self._banned = False
        self._used = 0
        self._used_minute = -1
        self.refused_locally = 0
        self.limited_by_exchange = 0
        self.requests = 0

    def before(self, priority: str = QUERY) -> None:
        """Admit one request or raise RateLimited/IpBanned (nothing is sent).

        ``retry_after_ms`` says when to try again."""
        now = self._clock()
        with self._lock:
            if now < self._blocked_until:
                self.refused_locally += 1
                wait_ms = int((self._blocked_until - now) * 1000) + 1
                cls = IpBanned if self._banned else RateLimited
                raise cls(self.exchange, None, "backing off after the exchange's rate limit",
                          None, wait_ms)
            minute = int(time.time() // 60)
            used = self._used if minute == self._used_minute else 0
            if priority != ORDER and used >= self.weight_limit * self.query_share:
                self.refused_locally += 1
                wait_ms = int((60 - time.time() % 60) * 1000) + 1
                raise RateLimited(self.exchange, None, "query budget of this minute used up",
                                  None, wait_ms)
            self.requests += 1

    def after(self, used_weight: int | None) -> None:
        """Record the weight the exchange reported after a reply (None: unknown)."""
        if used_weight is None:
            return
        with self._lock:
            self._used, self._used_minute = used_weight, int(time.time() // 60)

    def on_limited(self, error: RateLimited) -> None:
        """The exchange answered 429/418: send nothing until its Retry-After passes
        (60 s when it gave none)."""
        wait_s = (error.retry_after_ms or 60_000) / 1000
        with self._lock:
            self.limited_by_exchange += 1
            self._blocked_until = max(self._blocked_until, self._clock() + wait_s)
            self._banned = isinstance(error, IpBanned) or self._banned

    def stats(self) -> dict:
        """``{"requests", "used_weight_1m", "weight_limit", "blocked_for_ms", "banned",
        "refused_locally", "limited_by_exchange"}``."""
        now = self._clock()
        with self._lock:
            blocked_ms = max(0, int((self._blocked_until - now) * 1000))
            used = self._used if int(time.time() // 60) == self._used_minute else 0
            return {"requests": self.requests, "used_weight_1m": used,
                    "weight_limit": self.weight_limit, "blocked_for_ms": blocked_ms,
                    "banned": self._banned and blocked_ms > 0,
                    "refused_locally": self.refused_locally,
                    "limited_by_exchange": self.limited_by_exchange}


class Governors:
    """The governors of this process, one per (exchange, testnet), made on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_venue: dict[tuple[str, bool], RateGovernor] = {}

    def get(self, exchange: str, testnet: bool) -> RateGovernor:
        """The venue's governor."""
        with self._lock:
            gov = self._by_venue.get((exchange, testnet))
            if gov is None:
                gov = self._by_venue[(exchange, testnet)] = RateGovernor(exchange)
            return gov

    def stats(self) -> dict:
        """``{"<exchange>[-testnet]": governor stats}``."""
        with self._lock:
            items = list(self._by_venue.items())
        return {f"{ex}{'-testnet' if tn else ''}": g.stats() for (ex, tn), g in items}
