"""What every venue's signed REST client does the same way: the clock-skew rule and
admission through the venue's rate governor. Subclasses supply the library error
mapping (``_errors``), ``sync_clock`` and, where the venue reports it, the used
request weight (``_used_weight``)."""
from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Callable, TypeVar

from exchanges.errors import ClockSkew, RateLimited, ThrottledLocally
from exchanges.governor import QUERY, RateGovernor

logger = logging.getLogger(__name__)

T = TypeVar("T")


class GovernedRestClient(ABC):
    """Base of the venue clients. Expects ``exchange``, ``_api_key_hint``,
    ``_clock_synced`` and ``_governor`` (a RateGovernor or None) on the instance."""

    exchange: str
    _api_key_hint: str
    _clock_synced: bool
    _governor: RateGovernor | None
    _account_blocked_until: float = 0.0

    @abstractmethod
    def _errors(self) -> AbstractContextManager[None]:
        """Maps the library's exceptions to ``exchanges.errors`` (raise ... from e)."""

    @abstractmethod
    def sync_clock(self) -> int:
        """Resample the server clock offset; returns it in ms."""

    def _used_weight(self) -> int | None:
        """Request weight the venue reported for the last reply, if it does."""
        return None

    def _signed(self, call: Callable[[], T], retry_on_skew: bool, priority: str = QUERY,
                weight: int = 1) -> T:
        """Run a signed call with error mapping and the clock-skew rule: on ClockSkew
        (Binance -1021, Bybit 10002) resample the offset once and, when
        ``retry_on_skew`` (idempotent GETs and ``create_order`` with its fixed client
        order id only), retry once. recvWindow is never widened. ``weight``: the
        request's weight on the venue's IP limit."""
        if not self._clock_synced:
            self.sync_clock()
        try:
            return self._io(call, priority, weight)
        except ClockSkew:
            logger.warning("clock skew exchange=%s key=%s retry=%s", self.exchange,
                           self._api_key_hint, retry_on_skew)
            self.sync_clock()
            if not retry_on_skew:
                raise
            return self._io(call, priority, weight)

    def _public(self, call: Callable[[], T], weight: int = 1) -> T:
        return self._io(call, QUERY, weight)

    def _io(self, call: Callable[[], T], priority: str, weight: int = 1) -> T:
        """One request through the venue's rate governor (when there is one): refused
        locally while backing off, the reported weight recorded after the reply. A
        limit of this account only (``RateLimited.per_account``: Bybit 10006) holds
        back this client, not the venue."""
        now = time.monotonic()
        if now < self._account_blocked_until:
            raise ThrottledLocally(self.exchange, None, "backing off after this account's rate limit",
                                   None, int((self._account_blocked_until - now) * 1000) + 1)
        gov = self._governor
        if gov is not None:
            gov.before(priority, weight)
        try:
            with self._errors():
                return call()
        except RateLimited as e:
            if e.per_account:
                self._account_blocked_until = time.monotonic() + (e.retry_after_ms or 1000) / 1000
            elif gov is not None:
                gov.on_limited(e)
            raise
        finally:
            if gov is not None:
                gov.after(self._used_weight())
