"""The push side of an account stream, as two collaborators the stream owns:

- ``AccountPusher``: account events, REST results and the ledger's realized PnL are
  offered to the push layer at once (compared with the last envelope there), the
  fills the stream queued on the state (``state.fills``) are pushed as one ``fills``
  envelope per batch, ``stale`` envelopes are sent as built;
- ``MarkFollower``: follows the mark price of exactly the symbols held (the shared
  ``services.tickers.TickerHub``), revalues the account on each tick and offers what
  moved as a mark-driven change (conflated per connection by the push layer).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from clock import now_ms
from exchanges.types import Ticker
from services.account_state import AccountState
from services.push import Push

logger = logging.getLogger(__name__)

# no mark tick for this long: poll positions by REST instead (checked on each wake of
# the account stream, so noticed within MARK_STALE_S + its recv timeout)
MARK_STALE_S = 5.0


class AccountPusher:
    """Every push of one account (``state``) that is not a mark price move, through
    ``push`` (``services.push.Push``)."""

    def __init__(self, state: AccountState, push: Push) -> None:
        self._state = state
        self._push = push

    def changed(self, kinds: tuple[str, ...], source: str, as_of: int) -> None:
        """An account event or a REST result changed ``kinds`` (``source`` ``stream``
        | ``rest``, exchange time ``as_of`` ms UTC): offered at once to whoever
        listens, compared with the last envelope first."""
        for kind in kinds:
            self._push.offer(self._state, kind, source, as_of, False)

    def refresh_realized(self, read: Callable[[], object]) -> None:
        """Re-read the ledger's realized PnL (``read()``: ``services.ledger.Realized``)
        and push ``pnl`` if it changed; a failed read keeps the last value."""
        state = self._state
        try:
            state.realized_pnl = read()  # type: ignore[assignment]
        except SQLAlchemyError as e:  # the database is away: keep the last value
            logger.warning("realized pnl read failed key_id=%s kind=%s", state.key_id,
                           type(e).__name__)
            return
        except Exception:  # isolation boundary: a ledger read failure must not kill the stream
            logger.exception("realized pnl read failed key_id=%s", state.key_id)
            return
        self.changed(("pnl",), "rest", now_ms())

    def send(self, env: dict[str, Any]) -> None:
        """Send an envelope already built (a ``stale`` one) now, ``sent_at`` now."""
        env["sent_at"] = now_ms()
        self._push.deliver(self._state, env)

    def flush_fills(self, as_of: int) -> None:
        """Push the fills queued on the state (``state.fills.add``, once per trade id)
        as one ``fills`` envelope (never conflated); nothing when none is queued.
        ``as_of`` ms UTC."""
        env = self._state.fills.envelope(as_of)
        if env is not None:
            self._push.deliver(self._state, env)


class TickerSource(Protocol):
    """What ``MarkFollower`` needs of ``services.tickers.TickerHub``."""

    def subscribe(self, exchange: str, testnet: bool, symbol: str, subscriber: str,
                  on_tick: Callable[[Ticker], Callable[[], None] | None]) -> object:
        """Hand ``symbol``'s mark price ticks to ``on_tick``."""

    def unsubscribe(self, exchange: str, testnet: bool, symbol: str,
                    subscriber: str) -> None:
        """Stop handing ``symbol``'s ticks to ``subscriber``."""

    def unsubscribe_all(self, subscriber: str) -> None:
        """Stop handing any tick to ``subscriber``."""

    def mark_age_s(self, exchange: str, testnet: bool, symbol: str) -> float:
        """Seconds since ``symbol``'s shared stream last received a tick (inf: none)."""


class MarkFollower:
    """Mark price revaluation of one account (``state``) from the shared ticker
    streams (``tickers``; None: no mark prices, held positions count as stale).

    ``tick_seen`` maps each followed symbol to the monotonic time of its last tick (or
    of its subscription: a grace period until the first one)."""

    def __init__(self, state: AccountState, push: Push, tickers: TickerSource | None) -> None:
        self._state = state
        self._push = push
        self._tickers = tickers
        self._stopped = False
        self.subscriber = f"key:{state.key_id}:{id(self):x}"
        self.tick_seen: dict[str, float] = {}

    def on_tick(self, tick: Ticker) -> Callable[[], None] | None:
        """A mark price tick of a held symbol: revalue and push ``pnl`` now; returns
        the push of the other types that moved (positions, balance) for the TickerHub
        to run once every holder got its ``pnl`` (None when nothing else moved or the
        follower was stopped)."""
        self.tick_seen[tick.symbol] = time.monotonic()
        if self._stopped:
            return None
        state = self._state
        if state.unknown:
            state.mark_known(tick.symbol)
        kinds = state.apply_mark(tick.symbol, tick.mark_price)
        if not kinds:
            return None
        offer, as_of = self._push.offer, tick.ts
        offer(state, "pnl", "stream", as_of, True)

        def rest() -> None:
            for kind in kinds:
                if kind != "pnl":
                    offer(state, kind, "stream", as_of, True)
        return rest

    def sync(self) -> None:
        """Follow the mark price of exactly the symbols with an open position."""
        if self._tickers is None:
            return
        state = self._state
        held = state.position_symbols()
        for symbol in held - set(self.tick_seen):
            self.tick_seen[symbol] = time.monotonic()  # grace until the first tick
            self._tickers.subscribe(state.exchange, state.testnet, symbol,
                                    self.subscriber, self.on_tick)
        for symbol in set(self.tick_seen) - held:
            del self.tick_seen[symbol]
            self._tickers.unsubscribe(state.exchange, state.testnet, symbol, self.subscriber)

    def stale(self) -> bool:
        """True when some held symbol's mark price is older than ``MARK_STALE_S``:
        neither this account got a tick of it (or subscribed to it) within that time
        nor is the symbol's shared stream receiving ticks. A stream that is alive but
        slow to hand a tick to every holder (a busy server) is not stale: polling
        REST for every account then would only make it slower."""
        state = self._state
        if self._tickers is None:
            return bool(state.positions)
        now = time.monotonic()
        ex, testnet = state.exchange, state.testnet
        return any(now - self.tick_seen.get(s, 0.0) > MARK_STALE_S
                   and self._tickers.mark_age_s(ex, testnet, s) > MARK_STALE_S
                   for s in state.position_symbols())

    def stop(self) -> None:
        """Follow nothing more; a tick still under way is not applied."""
        self._stopped = True
        if self._tickers is not None:
            self._tickers.unsubscribe_all(self.subscriber)
