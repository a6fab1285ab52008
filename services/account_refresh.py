"""The REST side of an account stream: the snapshot on (re)connect, the gap fill
after a reconnect, the completion of what account events lack while live, and the
polling fallback while the stream is down, each within the venue's rate budget.

``RestRefresher`` is a part of ``services.account_stream.AccountStream``; it uses
the stream's ``state``, ``settings``, ``stream``, ``running``, ``_sleep``,
``_poll_scale``, ``_emit``, ``_send``, ``_fill``, ``_flush_fills``,
``_set_status``, ``_report_positions`` and ``_sync_tickers``.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from exchanges.base import ExchangeClient
from exchanges.errors import ExchangeError, ThrottledLocally
from exchanges.venues import venue
from services.account_kinds import STATE_TYPES
from services.account_state import now_ms

logger = logging.getLogger(__name__)

T = TypeVar("T")
GAP_SLACK_MS = 5_000  # the gap fill starts this much before the last event seen


def _held_for_s(e: ThrottledLocally) -> float:
    """How long to wait after the rate governor held a request back: its Retry-After
    (1 s when it gave none) plus up to 25 % jitter, so held streams do not wake as one."""
    return (e.retry_after_ms or 1000) / 1000 * (1 + random.random() / 4)


@dataclass(frozen=True)
class StreamSettings:
    """Timing of a stream, seconds."""

    poll_interval_s: float = 1.0
    # the longest a live stream waits for a frame before its periodic checks (stale
    # marks, the quiet check, keepalive); each wake of an idle stream costs CPU, and
    # every account has one: 3 s cost about a tenth of the server's CPU at 1,000
    # accounts. A pending REST completion shortens the wait to its own time.
    recv_timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    quiet_check_s: float = 300.0  # no account event for this long: check by REST
    # a live stream's REST completion after account events (available balance,
    # liquidation price), at most this often per type: the events themselves are pushed
    # at once, and 2400 weight a minute per IP is shared by every Binance account
    event_refresh_s: float = 5.0


class RestRefresher:
    """REST snapshot, gap fill, event completion and polling of one account."""

    def _symbols_of_interest(self) -> set[str]:
        return self.state.position_symbols() | {o.symbol for o in (self.state.orders or {}).values()}

    def _gap_fill(self, client: ExchangeClient, symbols: set[str]) -> None:
        """Hand the ledger every fill since the last event seen before the drop (the
        stream does not replay a gap); the ledger's upsert by trade id makes a fill
        seen twice count once."""
        since = (self.state.resume_from_ms or now_ms()) - GAP_SLACK_MS
        found = 0
        for symbol in sorted(symbols):
            for fill in self._when_allowed(lambda s=symbol: client.get_fills(s, start_time=since)):
                self._fill(fill)
                found += 1
        self._flush_fills(now_ms())
        logger.info("gap fill key_id=%s symbols=%s fills=%s", self.state.key_id, len(symbols), found)

    def _when_allowed(self, call: Callable[[], T]) -> T:
        """``call()``, waiting out the rate governor's Retry-After (with jitter) as
        often as it holds the request back (ThrottledLocally: nothing was sent).
        Re-raises it once the stream was stopped."""
        while True:
            try:
                return call()
            except ThrottledLocally as e:
                if not self.running:
                    raise
                self.refreshes_held += 1
                self._sleep(_held_for_s(e))

    def _refresh_unless_held(self, client: ExchangeClient, kinds: tuple[str, ...],
                             event_time: int | None) -> bool:
        """``_poll`` for a live stream: when the venue's budget is used up
        (ThrottledLocally) the refresh waits, the stream stays. True if it ran."""
        try:
            self._poll(client, kinds=kinds, event_time=event_time)
            return True
        except ThrottledLocally as e:
            self._refresh_held_until = time.monotonic() + _held_for_s(e)
            self.refreshes_held += 1
            return False

    @property
    def _interval(self) -> float:
        if self.stream is not None:
            return self.settings.event_refresh_s
        return self.settings.poll_interval_s * self._poll_scale()

    def _due(self, endpoint: str, force: bool) -> bool:
        now = time.monotonic()
        if not force and now - self._last_call.get(endpoint, -1e9) < self._interval:
            return False
        self._last_call[endpoint] = now
        return True

    def _poll(self, client: ExchangeClient,
              kinds: tuple[str, ...] = ("balance", "positions", "orders"),
              force: bool = False, event_time: int | None = None) -> None:
        """REST refresh of ``kinds``, each at most once per poll interval.

        On an exchange error the last known values are pushed once with
        ``stale: true``, the state becomes ``down`` and the error is re-raised. A
        request the rate governor held back (ThrottledLocally: nothing was sent) is
        re-raised without that: the exchange was not found unreachable, the refresh is
        only late."""
        changed = []
        try:
            if "balance" in kinds and self._due("balance", force):
                self.state.set_balance(client.get_balance())
                self._refresh_due.discard("balance")
                changed.append("balance")
            if "positions" in kinds and self._due("positions", force):
                self.state.set_positions(client.get_positions())
                self._refresh_due.discard("positions")
                self._report_positions()
                self._sync_tickers()
                changed += ["positions", "pnl"]
            if "orders" in kinds and self._due("orders", force):
                self.state.set_orders(self._open_orders(client))
                changed.append("orders")
        except ExchangeError as e:
            self._emit(tuple(changed), "rest", event_time or now_ms())
            if isinstance(e, ThrottledLocally):
                raise
            logger.warning("account rest call failed key_id=%s kind=%s code=%s",
                           self.state.key_id, type(e).__name__, e.code)
            self._set_status("down")
            stale_kinds = tuple(k for k in STATE_TYPES if k not in changed)
            for env in self.state.mark_stale(stale_kinds):
                self._send(env)
            raise
        self._emit(tuple(changed), "rest", event_time or now_ms())

    def _open_orders(self, client: ExchangeClient) -> list:
        """Open orders by REST: of every symbol on the first snapshot and one round in
        the venue's ``full_orders_every``; otherwise, where that is cheaper
        (``open_orders_per_symbol``: Binance weighs 40 against 1 per symbol), only of
        the symbols held or with open orders, when there are at most 5 (an order
        placed elsewhere in a new symbol while the stream is down shows at the next
        full round)."""
        self._order_rounds += 1
        symbols = sorted(self._symbols_of_interest())
        spec = venue(self.state.exchange)
        if (self.state.orders is None or not spec.open_orders_per_symbol
                or self._order_rounds % spec.full_orders_every == 0 or len(symbols) > 5):
            return client.get_open_orders()
        return [o for s in symbols for o in client.get_open_orders(s)]
