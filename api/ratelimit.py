"""Login attempt limits that hold under concurrency.

Every attempt is counted *before* the password is checked, in two fixed windows of
Flask-Limiter's storage (``extensions.limiter``: process memory, or Redis when
several processes run): one per client address (``LOGIN_RATE_LIMIT``) and one per
username (``LOGIN_USERNAME_RATE_LIMIT``). The increment is atomic in every backend,
so of N concurrent wrong attempts at most the limit reach the password check; the
rest get 429 at once. A successful login gives its two counts back, so only failures
(and attempts still being checked) use up the limit: a user who logs in often is
never held back, an attacker is.

The lockout is bounded by the window (at most its length, e.g. 5 minutes for a
username), and ``Retry-After`` says in whole seconds when the breached window frees.
An unknown username is counted and answered like a wrong password.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from flask import request
from limits import RateLimitItem, parse
from limits.strategies import FixedWindowRateLimiter

from api.errors import ApiError
from extensions import limiter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """One counted login attempt: the (limit, key) pairs to give back on success."""

    counted: tuple[tuple[RateLimitItem, str], ...]


class LoginLimits:
    """Per-address and per-username attempt windows.

    Args:
        per_address: a limits string such as ``"10 per minute"``.
        per_username: likewise, e.g. ``"10 per 5 minutes"``.
        scope: the namespace of the counters (``login``, ``refresh``).
    """

    def __init__(self, per_address: str, per_username: str | None, scope: str = "login") -> None:
        self._address = parse(per_address)
        self._username = parse(per_username) if per_username else None
        self._scope = scope

    def _strategy(self) -> FixedWindowRateLimiter:
        # the storage of the bound app (memory or Redis), chosen in extensions.init_limiter
        return FixedWindowRateLimiter(limiter.storage)

    def begin(self, username: str | None) -> Attempt:
        """Count one attempt from this request's address (and for ``username``).
        Raises ApiError 429 ``rate_limited`` with ``Retry-After`` (seconds until
        the breached window frees) when a window is full."""
        strategy = self._strategy()
        pairs = [(self._address, f"{self._scope}:addr:{request.remote_addr or '-'}")]
        if self._username is not None and username is not None:
            pairs.append((self._username, f"{self._scope}:user:{username}"))
        counted: list[tuple[RateLimitItem, str]] = []
        breached: list[tuple[RateLimitItem, str]] = []
        for item, key in pairs:
            (counted if strategy.hit(item, key) else breached).append((item, key))
        if breached:
            reset = max(strategy.get_window_stats(item, key).reset_time for item, key in breached)
            retry_s = max(1, math.ceil(reset - time.time()))
            which = ",".join("username" if key.startswith(f"{self._scope}:user:") else "address"
                             for _, key in breached)
            logger.info("login attempt refused scope=%s limit=%s retry_after_s=%s",
                        self._scope, which, retry_s)
            raise ApiError("rate_limited", f"too many attempts; retry in {retry_s} s", 429,
                           headers={"Retry-After": str(retry_s)})
        return Attempt(tuple(counted))

    def succeeded(self, attempt: Attempt) -> None:
        """Give back the counts of a successful attempt (so only failures add up)."""
        strategy = self._strategy()
        for item, key in attempt.counted:
            strategy.hit(item, key, cost=-1)
