"""The push side of an account stream: mark price ticks revalue the account and
offer what moved to the push layer (conflated there), account events and REST
results are offered at once, fills are queued and pushed as one ``fills`` envelope
per batch, and the stream's state changes go out as ``stream_status``.

``AccountPusher`` is a part of ``services.account_stream.AccountStream``; it uses
the stream's ``state``, ``running``, ``_push``, ``_publish``, ``_tickers``,
``_tick_seen``, ``_subscriber``, ``_on_fill`` and ``_realized_pnl``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from exchanges.types import Ticker
from services.account_state import now_ms

logger = logging.getLogger(__name__)

# no mark tick for this long: poll positions by REST instead (checked on each wake of
# the account stream, so noticed within MARK_STALE_S + its recv timeout)
MARK_STALE_S = 5.0


class AccountPusher:
    """Mark price revaluation and every push of one account stream."""

    def on_tick(self, tick: Ticker) -> Callable[[], None] | None:
        """A mark price tick of a held symbol: revalue and push ``pnl`` now; returns
        the push of the other types that moved (positions, balance) for the TickerHub
        to run once every holder got its ``pnl`` (None when nothing else moved)."""
        self._tick_seen[tick.symbol] = time.monotonic()
        if not self.running:
            return None
        if self.state.unknown:
            self.state.mark_known(tick.symbol)
        kinds = self.state.apply_mark(tick.symbol, tick.mark_price)
        if not kinds:
            return None
        state, offer, as_of = self.state, self._push.offer, tick.ts
        offer(state, "pnl", "stream", as_of, True)

        def rest() -> None:
            for kind in kinds:
                if kind != "pnl":
                    offer(state, kind, "stream", as_of, True)
        return rest

    def _sync_tickers(self) -> None:
        """Follow the mark price of exactly the symbols with an open position."""
        if self._tickers is None:
            return
        held = self.state.position_symbols()
        for symbol in held - set(self._tick_seen):
            self._tick_seen[symbol] = time.monotonic()  # grace until the first tick
            self._tickers.subscribe(self.state.exchange, self.state.testnet, symbol,
                                    self._subscriber, self.on_tick)
        for symbol in set(self._tick_seen) - held:
            del self._tick_seen[symbol]
            self._tickers.unsubscribe(self.state.exchange, self.state.testnet, symbol,
                                      self._subscriber)

    def _marks_stale(self) -> bool:
        """True when some held symbol's mark price is older than ``MARK_STALE_S``:
        neither this account got a tick of it (or subscribed to it) within that time
        nor is the symbol's shared stream receiving ticks. A stream that is alive but
        slow to hand a tick to every holder (a busy server) is not stale: polling
        REST for every account then would only make it slower."""
        if self._tickers is None:
            return bool(self.state.positions)
        now = time.monotonic()
        ex, testnet = self.state.exchange, self.state.testnet
        return any(now - self._tick_seen.get(s, 0.0) > MARK_STALE_S
                   and self._tickers.mark_age_s(ex, testnet, s) > MARK_STALE_S
                   for s in self.state.position_symbols())

    def refresh_realized(self) -> None:
        """Re-read the ledger's realized PnL and push ``pnl`` if it changed."""
        try:
            self.state.realized_pnl = self._realized_pnl()  # type: ignore[assignment]
        except SQLAlchemyError as e:  # the database is away: keep the last value
            logger.warning("realized pnl read failed key_id=%s kind=%s", self.state.key_id,
                           type(e).__name__)
            return
        except Exception:  # isolation boundary: a ledger read failure must not kill the stream
            logger.exception("realized pnl read failed key_id=%s", self.state.key_id)
            return
        self._emit(("pnl",), "rest", now_ms())

    def push_changed(self, kinds: tuple[str, ...]) -> None:
        """Push ``kinds`` when a change made by the server itself (protection legs)
        changed their content (``source: "rest"``, now)."""
        self._emit(kinds, "rest", now_ms())

    def _emit(self, kinds: tuple[str, ...], source: str, as_of: int) -> None:
        """An account event or a REST result changed ``kinds``: pushed at once to
        whoever listens (compared with the last envelope first)."""
        for kind in kinds:
            self._push.offer(self.state, kind, source, as_of, False)

    def _send(self, env: dict) -> None:
        env["sent_at"] = now_ms()
        self._push.deliver(self.state, env)

    def _fill(self, fill) -> None:  # type: ignore[no-untyped-def]
        """A fill seen on the stream or by the gap fill: to the ledger, and queued for
        the next ``fills`` push unless this trade id was pushed already."""
        fill = self._on_fill(fill) or fill  # the ledger's copy: may carry a leg's reason
        self.state.add_fill(fill)

    def _flush_fills(self, as_of: int) -> None:
        """Push the queued fills as one ``fills`` envelope (never conflated)."""
        env = self.state.fills_envelope(as_of)
        if env is not None:
            self._push.deliver(self.state, env)

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        self.status, self.since = status, now_ms()
        self._publish({"type": "stream_status", "user_id": self.state.user_id,
                       "key_id": self.state.key_id, "exchange": self.state.exchange,
                       "state": status, "since": self.since})
