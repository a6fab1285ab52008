"""Rate-limit governor: one per venue (exchange, network) and egress IP, shared by
every API key's client in the process.

Binance USD-M counts request weight per IP per minute (``X-MBX-USED-WEIGHT-1M``,
limit 2400; each endpoint has its weight, e.g. 5 for the account, 40 for the open
orders of every symbol) and answers 429 (then 418, an IP ban) with ``Retry-After``
when it is exceeded ("Repeatedly violating rate limits and/or failing to back off
after receiving 429s will result in an automated IP ban" - Binance USD-M "General
Info"). Bybit v5 allows 600 requests per 5 s per IP (HTTP 403 beyond it, "wait at
least 10 minutes") besides its per-UID per-endpoint limits (retCode 10006, which
``GovernedRestClient`` keeps to the one key).

So: each request's weight is counted here before it is sent, and the exchange's own
figure (when it reports one) is taken when higher; queries stop at ``query_share``
of the limit, keeping the rest for orders and cancels; after a 429/418/403 nothing
is sent until ``Retry-After`` has passed, and the callers get a local RateLimited at
once instead of hitting the exchange again.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from exchanges.egress import egress_for
from exchanges.errors import IpBanned, RateLimited, ThrottledLocally
from exchanges.venues import venue

ORDER = "order"   # order placement and cancel: may use the whole budget
QUERY = "query"   # snapshots, polls, lookups: only ``query_share`` of it



class RateGovernor:
    """Admission control for one venue's REST calls.

    Args:
        exchange: venue name for the errors raised.
        weight_limit: request weight allowed per window (Binance USD-M: 2400).
        window_s: the window, aligned to the wall clock like the exchange's (60 s).
        query_share: fraction of the limit queries may use (orders get the rest).
        clock: seconds, monotonic (injectable for tests); ``wall``: seconds since the
            epoch (the windows).
        egress: the local source address whose budget this is (None: the host's
            default route); the clients it admits bind to it.
    """

    def __init__(self, exchange: str, weight_limit: int = 2400, window_s: float = 60.0,
                 query_share: float = 0.8, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, egress: str | None = None) -> None:
        self.exchange = exchange
        self.egress = egress
        self.weight_limit = weight_limit
        self.window_s = window_s
        self.query_share = query_share
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._blocked_until = 0.0
        self._banned = False
        self._window = -1
        self._local = 0      # weight admitted here in the current window
        self._reported = 0   # the highest weight the exchange reported in it
        self.refused_locally = 0
        self.limited_by_exchange = 0
        self.requests = 0

    def _roll(self) -> int:
        window = int(self._wall() // self.window_s)
        if window != self._window:
            self._window, self._local, self._reported = window, 0, 0
        return window

    def before(self, priority: str = QUERY, weight: int = 1) -> None:
        """Admit one request of ``weight`` or raise ThrottledLocally (IpBanned during a
        ban); nothing is sent. ``retry_after_ms`` says when to try again."""
        now = self._clock()
        with self._lock:
            if now < self._blocked_until:
                self.refused_locally += 1
                wait_ms = int((self._blocked_until - now) * 1000) + 1
                cls = IpBanned if self._banned else ThrottledLocally
                raise cls(self.exchange, None, "backing off after the exchange's rate limit",
                          None, wait_ms)
            window = self._roll()
            budget = self.weight_limit * (1.0 if priority == ORDER else self.query_share)
            if weight and max(self._local, self._reported) + weight > budget:
                self.refused_locally += 1
                wait_ms = int(((window + 1) * self.window_s - self._wall()) * 1000) + 1
                what = "weight" if priority == ORDER else "query budget"
                raise ThrottledLocally(self.exchange, None, f"{what} of this window used up",
                                       None, wait_ms)
            self._local += weight
            self.requests += 1

    def after(self, used_weight: int | None) -> None:
        """Record the weight the exchange reported after a reply (None: unknown)."""
        if used_weight is None:
            return
        with self._lock:
            self._roll()
            self._reported = max(self._reported, used_weight)

    def on_limited(self, error: RateLimited) -> None:
        """The exchange answered 429/418 (Bybit: 403): send nothing until its
        Retry-After passes (60 s when it gave none)."""
        wait_s = (error.retry_after_ms or 60_000) / 1000
        with self._lock:
            self.limited_by_exchange += 1
            self._blocked_until = max(self._blocked_until, self._clock() + wait_s)
            self._banned = isinstance(error, IpBanned) or self._banned

    def query_weight_per_s(self) -> float:
        """The weight per second queries may use on average."""
        return self.weight_limit * self.query_share / self.window_s

    def stats(self) -> dict[str, Any]:
        """``{"requests", "used_weight", "weight_limit", "window_s", "blocked_for_ms",
        "banned", "refused_locally", "limited_by_exchange"}``; ``used_weight`` is of
        the current window."""
        now = self._clock()
        with self._lock:
            self._roll()
            blocked_ms = max(0, int((self._blocked_until - now) * 1000))
            return {"requests": self.requests, "used_weight": max(self._local, self._reported),
                    "weight_limit": self.weight_limit, "window_s": self.window_s,
                    "blocked_for_ms": blocked_ms, "banned": self._banned and blocked_ms > 0,
                    "refused_locally": self.refused_locally,
                    "limited_by_exchange": self.limited_by_exchange}


class Governors:
    """The governors of this process, one per (exchange, testnet, egress address), made
    on first use with the venue's ``VenueSpec.rate_limit`` (its weight and window).

    Args:
        egress_ips: the host's source addresses for exchange traffic (``EGRESS_IPS``);
            each account is assigned one (``exchanges.egress.egress_for``). Empty: one
            governor per venue, on the default route.
        weight_limits: ``{exchange: weight per window}`` replacing the spec's figure (``EXCHANGE_WEIGHT_LIMITS``: when an exchange changes its limit, or
            in tests against a simulator that does not enforce one).
    """

    def __init__(self, egress_ips: Sequence[str] = (),
                 weight_limits: Mapping[str, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._egress_ips = tuple(egress_ips)
        self._weight_limits = dict(weight_limits or {})
        self._by_venue: dict[tuple[str, bool, str | None], RateGovernor] = {}

    def get(self, exchange: str, testnet: bool, egress: str | None = None) -> RateGovernor:
        """The governor of the venue's traffic from ``egress`` (None: default route).
        Raises UnsupportedExchange for a venue without a spec."""
        with self._lock:
            gov = self._by_venue.get((exchange, testnet, egress))
            if gov is None:
                limit = venue(exchange).rate_limit
                gov = self._by_venue[(exchange, testnet, egress)] = RateGovernor(
                    exchange, weight_limit=self._weight_limits.get(exchange, limit.weight),
                    window_s=limit.window_s, egress=egress)
            return gov

    def for_key(self, exchange: str, testnet: bool, slot: int) -> RateGovernor:
        """The governor of an account's egress address on the venue (``slot``: the
        account's stable integer, its owner's user id, ``exchanges.egress.egress_for``;
        the governor's ``egress`` is the address the account's clients bind to)."""
        return self.get(exchange, testnet, egress_for(slot, self._egress_ips))

    def stats(self) -> dict[str, Any]:
        """``{"<exchange>[-testnet][@<egress address>]": governor stats}``."""
        with self._lock:
            items = list(self._by_venue.items())
        return {f"{ex}{'-testnet' if tn else ''}{'@' + eg if eg else ''}": g.stats()
                for (ex, tn, eg), g in items}
