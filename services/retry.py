"""One retry policy for everything that waits after a failure, chosen by the failure's
class (as freqtrade's ``exchange/common.py`` ``retrier`` chooses its back-off by
``TemporaryError`` / ``DDosProtection``).

``POLICIES`` maps an exception class to its ``Policy``; the most specific class in the
failure's method resolution order wins, and a class with no policy is not retried
(``policy_for`` returns None). Every delay is exponential with "equal jitter" (half
fixed, half random, so loops that failed together do not come back together: AWS
Architecture Blog, "Exponential Backoff And Jitter") and never shorter than what the
other side asked for (``Retry-After``: ``retry_after_ms`` of an exchange's
``RateLimited``, ``retry_after_s`` of an FCM refusal).

Who uses it: the account and market stream loops (``Retrier``, their reconnects), the
write-behind (``database_unavailable`` failures, through tenacity's loop with this
module's wait), the notification worker (FCM's 429 / 5xx, the attempt count kept in
the outbox row). Seconds throughout.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.exc import InterfaceError, OperationalError

from exchanges.errors import AuthFailed, ExchangeError, ExchangeRejected, RateLimited
from services.notify.fcm import FcmRetryable


@dataclass(frozen=True)
class Policy:
    """``base_s * 2 ** (failures - 1)`` capped at ``max_s``, with equal jitter."""

    base_s: float
    max_s: float

    def delay(self, failures: int, at_least_s: float = 0.0) -> float:
        """The wait after ``failures`` (>= 1) failures in a row, never under ``at_least_s``."""
        cap: float = min(self.max_s, self.base_s * 2.0 ** (max(1, failures) - 1))
        return max(cap * (0.5 + random.random() / 2), at_least_s)


DATABASE = Policy(0.1, 5.0)  # the database unreachable (the write-behind, retried until stop)
FCM = Policy(1.0, 600.0)  # FCM 429 / 5xx / no answer (about 1 h over the worker's 12 tries)

# the defaults by failure class (a loop may carry its own table: ``Retrier(policies)``)
POLICIES: Mapping[type[BaseException], Policy | None] = {
    ExchangeError: Policy(1.0, 30.0),      # a venue unreachable, a 5xx, a dropped stream
    AuthFailed: None,                      # a refused key: trying again changes nothing
    ExchangeRejected: None,                # a refused order: the same request fails again
    RateLimited: Policy(1.0, 60.0),        # 429 / 418 / the local governor: and Retry-After
    OperationalError: DATABASE,
    InterfaceError: DATABASE,
    FcmRetryable: FCM,
}


def policy_for(e: BaseException,
               policies: Mapping[type[BaseException], Policy | None] = POLICIES) -> Policy | None:
    """The policy of the most specific class of ``e`` in ``policies``; None: not retried
    (no class of ``e`` is in the table, or the most specific one maps to None)."""
    for cls in type(e).__mro__:
        if cls in policies:
            return policies[cls]
    return None


def asked_wait_s(e: BaseException) -> float:
    """What the other side asked us to wait, seconds (0 when it did not say)."""
    ms = getattr(e, "retry_after_ms", None)
    if ms:
        return float(ms) / 1000
    return float(getattr(e, "retry_after_s", None) or 0.0)


class Retrier:
    """The failures in a row of one loop and the wait each asks for.

    ``failed(e)``: count one more failure; returns the wait before the next try by
    ``e``'s policy (at least what ``e`` asked for); raises ``e`` again when its class
    has no policy (not a failure to retry). ``succeeded()``: start again at the base.
    """

    def __init__(self, policies: Mapping[type[BaseException], Policy | None] = POLICIES) -> None:
        self.policies = policies
        self.failures = 0

    def failed(self, e: BaseException) -> float:
        """See the class."""
        policy = policy_for(e, self.policies)
        if policy is None:
            raise e
        self.failures += 1
        return policy.delay(self.failures, asked_wait_s(e))

    def succeeded(self) -> None:
        """A try worked: the next failure waits the base delay again."""
        self.failures = 0
