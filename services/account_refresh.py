"""The REST side of an account stream: the snapshot on (re)connect, the gap fill
after a reconnect, the completion of what account events lack while live, and the
polling fallback while the stream is down, each within the venue's rate budget.

``RestRefresher`` is a collaborator the stream (``services.account_stream``) owns and
tells what it needs to know through the callables it is built with.
"""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from clock import now_ms
from exchanges.base import ExchangeClient
from exchanges.errors import ExchangeError, ThrottledLocally
from exchanges.types import Fill, Order, Position
from exchanges.venues import venue
from services.account_kinds import STATE_TYPES
from services.account_push import AccountPusher
from services.account_state import AccountState

logger = logging.getLogger(__name__)

T = TypeVar("T")
GAP_SLACK_MS = 5_000  # the gap fill starts this much before the last event seen


def held_for_s(e: ThrottledLocally) -> float:
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
    # ... and not before this long after the event that made it due: the other
    # accounts' frames of the same burst (a price move filling many at once) are
    # handled and their pushes sent before this account's REST round trip
    completion_delay_s: float = 0.1


class RestRefresher:
    """REST snapshot, gap fill, event completion and polling of one account.

    Args:
        state: the account's state (REST results replace its values).
        settings: the stream's timing.
        pusher: pushes what a REST result changed, and the last known values marked
            ``stale`` when the exchange cannot be reached.
        sleep: cooperative sleep (seconds).
        poll_scale: factor (>= 1) stretching the polling interval while many accounts
            poll at once.
        live: True while the stream's exchange push is connected (REST then only
            completes account events, every ``event_refresh_s``).
        running: False once the stream was asked to stop.
        record_fill: takes each fill the gap fill finds (the ledger, then the next
            ``fills`` push).
        positions_changed: called after a REST snapshot replaced the positions.
        positions_read: called after that with the positions read (list[Position]).
        on_down: called when a REST call failed (the stream's state becomes ``down``).

    ``due``: the types an account event left incomplete (a refresh completes them);
    ``held``: requests the rate governor held back (counted for ``/admin/stats``).
    """

    def __init__(self, state: AccountState, settings: StreamSettings, pusher: AccountPusher,
                 *, sleep: Callable[[float], None], poll_scale: Callable[[], float],
                 live: Callable[[], bool], running: Callable[[], bool],
                 record_fill: Callable[[Fill], None], positions_changed: Callable[[], None],
                 on_down: Callable[[], None],
                 positions_read: Callable[[list[Position]], None] | None = None) -> None:
        self._state = state
        self._positions_read = positions_read
        self._settings = settings
        self._pusher = pusher
        self._sleep = sleep
        self._poll_scale = poll_scale
        self._live = live
        self._running = running
        self._record_fill = record_fill
        self._positions_changed = positions_changed
        self._on_down = on_down
        self._last_call: dict[str, float] = {}  # endpoint -> monotonic time of its last call
        self._order_rounds = 0
        self.due: set[str] = set()  # kinds an account event made stale
        self._due_since = 0.0  # monotonic time ``due`` became non-empty
        self.held_until = 0.0  # the rate governor held a refresh back until then (monotonic)
        self.held = 0

    def symbols_of_interest(self) -> set[str]:
        """Symbols with an open position or an open order."""
        state = self._state
        return state.position_symbols() | {o.symbol for o in (state.orders or {}).values()}

    def snapshot(self, client: ExchangeClient) -> None:
        """Balance, positions and open orders by REST now (a (re)connect), each
        request waiting out the rate governor as often as it holds it back."""
        for kind in ("balance", "positions", "orders"):
            self.when_allowed(partial(self.poll, client, kinds=(kind,), force=True))

    def gap_fill(self, client: ExchangeClient, symbols: set[str]) -> None:
        """Hand ``record_fill`` every fill of ``symbols`` since the last event seen
        before the drop (the stream does not replay a gap), then push them; the
        ledger's upsert by trade id makes a fill seen twice count once."""
        since = (self._state.resume_from_ms or now_ms()) - GAP_SLACK_MS
        found = 0
        for symbol in sorted(symbols):
            for fill in self.when_allowed(partial(client.get_fills, symbol, start_time=since)):
                self._record_fill(fill)
                found += 1
        self._pusher.flush_fills(now_ms())
        logger.info("gap fill key_id=%s symbols=%s fills=%s", self._state.key_id,
                    len(symbols), found)

    def when_allowed(self, call: Callable[[], T]) -> T:
        """``call()``, waiting out the rate governor's Retry-After (with jitter) as
        often as it holds the request back (ThrottledLocally: nothing was sent).
        Re-raises it once the stream was stopped."""
        while True:
            try:
                return call()
            except ThrottledLocally as e:
                if not self._running():
                    raise
                self.held += 1
                self._sleep(held_for_s(e))

    def refresh_unless_held(self, client: ExchangeClient, kinds: tuple[str, ...],
                            event_time: int | None) -> bool:
        """``poll`` for a live stream: when the venue's budget is used up
        (ThrottledLocally) the refresh waits (``held_until``), the stream stays. True
        if it ran."""
        try:
            self.poll(client, kinds=kinds, event_time=event_time)
            return True
        except ThrottledLocally as e:
            self.held_until = time.monotonic() + held_for_s(e)
            self.held += 1
            return False

    @property
    def interval(self) -> float:
        """Seconds between two calls of one endpoint: ``event_refresh_s`` while live,
        else the polling interval stretched by ``poll_scale``."""
        if self._live():
            return self._settings.event_refresh_s
        return self._settings.poll_interval_s * self._poll_scale()

    def make_due(self, kinds: set[str]) -> None:
        """An account event left ``kinds`` incomplete: a refresh completes them, not
        before ``completion_delay_s`` from the first of them (see ``completion_at``)."""
        if kinds and not self.due:
            self._due_since = time.monotonic()
        self.due |= kinds

    @property
    def completion_at(self) -> float:
        """Monotonic time from which the pending completion may go (``due``)."""
        return self._due_since + self._settings.completion_delay_s

    def wait_s(self, longest: float) -> float:
        """How long a live stream may wait for a frame (at most ``longest`` s) before
        the pending completion (``due``) may go."""
        if not self.due:
            return longest
        now = time.monotonic()
        return min(longest, max(0.0, self.held_until - now, self.completion_at - now, min(
            self._last_call.get(k, -1e9) + self.interval - now for k in self.due)))

    def _due(self, endpoint: str, force: bool) -> bool:
        now = time.monotonic()
        if not force and now - self._last_call.get(endpoint, -1e9) < self.interval:
            return False
        self._last_call[endpoint] = now
        return True

    def poll(self, client: ExchangeClient,
             kinds: tuple[str, ...] = ("balance", "positions", "orders"),
             force: bool = False, event_time: int | None = None) -> None:
        """REST refresh of ``kinds``, each at most once per ``interval`` unless
        ``force``; what changed is pushed (``source: "rest"``, ``event_time`` or now).

        On an exchange error the state becomes ``down`` (``on_down``), the last known
        values are pushed once with ``stale: true`` and the error is re-raised. A
        request the rate governor held back (ThrottledLocally: nothing was sent) is
        re-raised without that: the exchange was not found unreachable, the refresh is
        only late."""
        state = self._state
        changed: list[str] = []
        try:
            if "balance" in kinds and self._due("balance", force):
                state.set_balance(client.get_balance())
                self.due.discard("balance")
                changed.append("balance")
            if "positions" in kinds and self._due("positions", force):
                read = client.get_positions()
                state.set_positions(read)
                self.due.discard("positions")
                self._positions_changed()
                if self._positions_read is not None:
                    self._positions_read(read)
                changed += ["positions", "pnl"]
            if "orders" in kinds and self._due("orders", force):
                state.set_orders(self.open_orders(client))
                changed.append("orders")
        except ExchangeError as e:
            self._pusher.changed(tuple(changed), "rest", event_time or now_ms())
            if isinstance(e, ThrottledLocally):
                raise
            logger.warning("account rest call failed key_id=%s kind=%s code=%s",
                           state.key_id, type(e).__name__, e.code)
            self._on_down()
            stale_kinds = tuple(k for k in STATE_TYPES if k not in changed)
            for env in state.mark_stale(stale_kinds):
                self._pusher.send(env)
            raise
        self._pusher.changed(tuple(changed), "rest", event_time or now_ms())

    def open_orders(self, client: ExchangeClient) -> list[Order]:
        """Open orders by REST: of every symbol on the first snapshot and one round in
        the venue's ``full_orders_every``; otherwise, where that is cheaper
        (``open_orders_per_symbol``: Binance weighs 40 against 1 per symbol), only of
        the symbols held or with open orders, when there are at most 5 (an order
        placed elsewhere in a new symbol while the stream is down shows at the next
        full round)."""
        self._order_rounds += 1
        symbols = sorted(self.symbols_of_interest())
        spec = venue(self._state.exchange)
        if (self._state.orders is None or not spec.open_orders_per_symbol
                or self._order_rounds % spec.full_orders_every == 0 or len(symbols) > 5):
            return client.get_open_orders()
        return [o for s in symbols for o in client.get_open_orders(s)]
