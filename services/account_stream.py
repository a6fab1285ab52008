"""One account stream per API key: REST snapshot, then the exchange's own push.

The loop (one green thread per key, shared by all the user's sockets):

1. get the exchange client from TradingService; open the user data stream
   (Binance listenKey); then take a REST snapshot of balance, positions and open
   orders (events that arrive meanwhile wait in the socket) and push what changed;
   after a reconnect, hand the ledger the fills of the gap; a request the venue's
   rate governor holds back waits for its budget with the stream kept open;
2. state ``live``; apply order and account events at once (``source: "stream"``),
   complete what account events lack (available balance, a new position's leverage
   and liquidation price) by REST at most every ``event_refresh_s`` and only when the
   venue's rate governor has budget for it (``source: "rest"``), and revalue open
   positions from the shared mark price streams of the TickerHub (``source:
   "stream"``); only when a held symbol gets no tick for ``MARK_STALE_S`` are
   positions polled, every ``event_refresh_s``;
3. when the stream cannot be opened or drops: state ``reconnecting``/``polling``,
   poll balance, positions and orders by REST at the bounded rate, and retry the
   stream with exponential backoff and jitter;
4. when REST fails too: state ``down`` and the last known values are pushed once
   with ``stale: true``, never replaced by invented ones.

While polling, every REST endpoint is called at most once per ``poll_interval_s`` per
key, and while many accounts poll at once the interval stretches so that all of them
together stay within the StreamManager's polling budget (a share of the venue's).

This file is the reconnect loop (connect, snapshot, consume, back off). The stream
owns its collaborators, each built with what it needs and used through its public
methods: ``refresher`` (``services.account_refresh.RestRefresher``: snapshot, gap
fill, completion, polling), ``pusher`` (``services.account_push.AccountPusher``:
account events, REST results, fills), ``marks`` (``services.account_push.MarkFollower``:
mark price ticks) and ``reporter`` (``services.position_report.PositionReporter``:
positions to the ledger).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from clock import now_ms
from exchanges.base import ExchangeClient, UserStream
from exchanges.errors import AuthFailed, ExchangeError, ThrottledLocally
from exchanges.types import (
    AccountEvent,
    Fill,
    FillEvent,
    FundingFee,
    MarginCall,  # risk alerts (helper protect2)
    OrderEvent,
    Position,
    ProtectionLegUpdate,
    StreamExpired,
)
from services.account_push import MARK_STALE_S, AccountPusher, MarkFollower, TickerSource
from services.account_refresh import RestRefresher, StreamSettings, held_for_s
from services.account_state import AccountState
from services.position_report import OnPositions, PositionReporter
from services.push import DirectPush, Push
from services.retry import Policy, Retrier

logger = logging.getLogger(__name__)

STARTING = "starting"  # a stream's state before its first connection attempt ended

Publish = Callable[[dict[str, object]], None]
MAX_BATCH = 200  # frames taken in one go during a burst
# Binance: "A single connection to stream.binance.com is only valid for 24 hours"
MAX_CONNECTION_S = 23.5 * 3600
# the loop away from its socket this long (handling a burst, a REST completion): the
# positions it holds may lag the frames waiting there, so they are not lent out
LIVE_STALE_S = 1.0
__all__ = ["AccountStream", "StreamSettings", "Publish", "MARK_STALE_S"]


class AccountStream:
    """Follows one account and publishes CONTRACT.md envelopes through ``publish``.

    Args:
        state: the account's in-memory state (owned by this stream).
        get_client: returns the (cached) exchange client for the key; raises
            ExchangeError or ValueError (undecryptable secret).
        realized_pnl: returns the ledger's realized PnL of the key
            (``services.ledger.Realized``).
        publish: called with each envelope to emit; also with ``stream_status``
            dicts (``{"type": "stream_status", "user_id", "key_id", "exchange",
            "state", "since"}``).
        on_fill: called with each Fill seen on the stream (the ledger records it), and
            with each FundingFee when ``on_funding`` is not given (the write-behind's
            ``submit_fill`` queues it as one).
        on_funding: called with each FundingFee seen on the stream (the write-behind's
            ``submit_funding``).
        on_order: called with each order update seen on the stream (write-behind).
        on_positions: called with ``(positions, as_of ms, complete)`` when a REST
            snapshot or an account event changed a position's side, size, entry price,
            leverage or margin type: the open ones plus those closed since the last
            call (size 0); ``complete`` on a stream's first call, when other stored
            symbols are closed too (write-behind; mark price moves are not reported).
        audience: ``audience(user_id, kind)`` is False when nobody would receive a
            ``kind`` push of this user (no subscriber anywhere): its payload is then
            not built; the state builds it when a subscriber asks (``cached``).
        poll_scale: factor (>= 1) stretching the polling interval while many
            accounts poll at once, so that the fallback's total REST rate stays bounded.
        sleep: cooperative sleep (``socketio.sleep``).
        on_reconnected: ``on_reconnected(key_id, positions, fill_symbols)`` after a
            reconnect went live (the reconciler runs for the account), with the
            positions of the snapshot just taken (list[Position]) and the symbols whose
            fills the gap fill just fetched (set[str]), so that it need not ask again.
        tickers: the shared TickerHub; while every open position's symbol gets mark
            price ticks, positions, pnl and balance are revalued from them and no
            periodic REST polling happens. None: poll while positions are open.
        on_positions_read: called with the positions (list[Position]) each time a REST
            call (snapshot, event completion, poll) read them from the venue, after
            ``on_positions`` (protection: the risk watcher takes them, no second call).
        admission: held around each connect (user stream and snapshot), e.g. a
            semaphore shared by the process's streams, so that a storm of starting
            streams connects a bounded number at a time; the others wait their turn
            (None: no bound).
    """

    def __init__(self, state: AccountState, get_client: Callable[[], ExchangeClient],
                 realized_pnl: Callable[[], object], publish: Publish,
                 on_fill: Callable[[object], None], sleep: Callable[[float], None],
                 settings: StreamSettings = StreamSettings(), tickers: TickerSource | None = None,
                 on_reconnected: Callable[[int, list[Position], set[str]], None] | None = None,
                 on_order: Callable[[object], None] | None = None,
                 poll_scale: Callable[[], float] = lambda: 1.0,
                 audience: Callable[[int, str], bool] | None = None,
                 on_positions: OnPositions | None = None,
                 push: Push | None = None,
                 on_funding: Callable[[object], None] | None = None,
                 on_leg: Callable[[object], None] | None = None,
                 admission: AbstractContextManager[Any] | None = None,
                 on_positions_read: Callable[[list[Position]], None] | None = None) -> None:
        self.state = state
        self._admission = admission if admission is not None else nullcontext()
        self._push = push or DirectPush(publish, audience)
        self._get_client = get_client
        self._realized_pnl = realized_pnl
        self._publish = publish
        self._on_fill = on_fill
        self._sleep = sleep
        self.settings = settings
        # "starting" until the first connection attempt ends: never sent (a new
        # subscriber would see "reconnecting" flash before "live"); the first real
        # state is published to the user's room when it is reached
        self.status = STARTING
        self.since = now_ms()
        self.running = True
        self._quiet = False
        self.stream: UserStream | None = None
        self.events_seen = 0
        # reconnects: services.retry's policy with this stream's base and cap
        self._backoff = Retrier({ExchangeError: Policy(settings.backoff_base_s, settings.backoff_max_s)})
        self._on_reconnected = on_reconnected
        self._on_order = on_order
        # a funding fee (the ledger stores it); without it the fill sink gets it
        self._on_funding = on_funding or on_fill
        self._on_leg = on_leg  # a protection leg's update (services.protection)
        self._connected_at = self._last_event_at = 0.0
        self._keepalive_at = 0.0
        # monotonic time the loop last left its socket's recv (None: waiting in it)
        self._away_since: float | None = 0.0
        self.pusher = AccountPusher(state, self._push)
        self.marks = MarkFollower(state, self._push, tickers)
        self.reporter = PositionReporter(state, on_positions)
        self.refresher = RestRefresher(
            state, settings, self.pusher, sleep=sleep, poll_scale=poll_scale,
            live=lambda: self.stream is not None, running=lambda: self.running,
            record_fill=self._fill, positions_changed=self._positions_changed,
            on_down=lambda: self._set_status("down"), positions_read=on_positions_read)

    # ---- public ------------------------------------------------------------------
    def stop(self, quiet: bool = False) -> None:
        """Ask the loop to end and close the socket (the loop exits within one recv).
        ``quiet``: a restart follows, so no ``stream_status`` ``down`` is pushed."""
        self.running = False
        self._quiet = quiet
        self.marks.stop()
        if self.stream is not None:
            self.stream.close()

    @property
    def refreshes_held(self) -> int:
        """REST requests of this stream the venue's rate governor held back."""
        return self.refresher.held

    def refresh_realized(self) -> None:
        """Re-read the ledger's realized PnL and push ``pnl`` if it changed."""
        self.pusher.refresh_realized(self._realized_pnl)

    def push_changed(self, kinds: tuple[str, ...]) -> None:
        """Push ``kinds`` when a change made by the server itself (protection legs)
        changed their content (``source: "rest"``, now)."""
        self.pusher.changed(kinds, "rest", now_ms())

    def live_positions(self) -> list[Position] | None:
        """The open positions as the venue's push reported them (no I/O), or None when
        they may not be current: the stream is not ``live`` on its socket (connecting,
        polling, down), has no snapshot yet, or its loop has been away from the socket
        for more than ``LIVE_STALE_S`` (frames may be waiting unread). A list, even
        empty, means: this is every open position the venue has pushed as of the last
        frame handled (a frame still in flight is not in it)."""
        if self.status != "live" or self.stream is None or not self.running:
            return None
        away = self._away_since
        if away is not None and time.monotonic() - away > LIVE_STALE_S:
            return None
        positions = self.state.positions
        if positions is None:
            return None
        return [p for p in list(positions.values()) if p.size != 0]

    def run(self) -> None:
        """The stream loop; returns when ``stop()`` was called."""
        next_stream_try = 0.0
        while self.running:
            try:
                client = self._get_client()
                if self.stream is None and time.monotonic() >= next_stream_try:
                    with self._admission:  # a storm's streams connect a bounded number at once
                        if not self.running:
                            break
                        self._connect(client)
                    self._backoff.succeeded()
                if self.stream is not None:
                    self._consume(client)
                else:
                    self.refresher.poll(client)
                    self._set_status("polling")
                    # wake for the next poll or the next stream attempt, whichever is first
                    self._sleep(max(0.05, min(self.refresher.interval / 4,
                                              next_stream_try - time.monotonic())))
            except AuthFailed as e:
                logger.warning("account stream auth failed key_id=%s code=%s",
                               self.state.key_id, e.code)
                self._drop_stream()
                self._set_status("down")
                self._sleep(self.settings.backoff_max_s)
            except ExchangeError as e:
                self._drop_stream()
                if not self.running:
                    break  # stop() closed the socket under us
                if isinstance(e, ThrottledLocally):
                    # the venue's budget is used up: neither a poll nor a reconnect could
                    # go before it allows (counted in the governor's refused_locally)
                    delay = held_for_s(e)
                    logger.debug("account stream held by the rate governor key_id=%s "
                                 "retry_in_s=%.1f", self.state.key_id, delay)
                    next_stream_try = max(next_stream_try, time.monotonic() + delay)
                    self._sleep(delay)
                    continue
                delay = self._backoff.failed(e)
                logger.warning("account stream error key_id=%s kind=%s code=%s retry_in_s=%.1f",
                               self.state.key_id, type(e).__name__, e.code, delay)
                next_stream_try = time.monotonic() + delay
                if self.status not in ("down", "polling"):  # no flapping while polling
                    self._set_status("reconnecting")
                self._sleep(min(delay, self.settings.poll_interval_s))
            except Exception:  # isolation boundary: one account's bug must not stop the loop
                logger.exception("account stream crashed key_id=%s", self.state.key_id)
                self._drop_stream()
                self._sleep(self.settings.backoff_max_s)
        self._drop_stream()
        if not self._quiet:
            self._set_status("down")

    # ---- internals -----------------------------------------------------------------
    def _connect(self, client: ExchangeClient) -> None:
        """Stream first, snapshot second (an event that happens in between waits in the
        socket and is applied after it), then, on a reconnect, the gap fill; only
        then ``live``. A snapshot or gap-fill request the rate governor holds back
        waits for the venue's budget with the stream kept open (closing it would
        spend a new listenKey and a new snapshot on the next try)."""
        symbols = self.refresher.symbols_of_interest()  # before the snapshot replaces them
        stream = client.user_stream()
        stream.connect()
        self.stream = stream
        now = time.monotonic()
        self._keepalive_at = now + stream.keepalive_interval_s
        self._connected_at = self._last_event_at = now
        self.refresher.snapshot(client)
        # read at every (re)connect, not once per state: a state kept across a stop
        # heard of no ledger change while no stream of it ran
        self.state.realized_pnl = self._realized_pnl()  # type: ignore[assignment]
        self.pusher.changed(("pnl",), "rest", now_ms())
        reconnect = self.state.resume_from_ms is not None
        if reconnect:
            symbols |= self.refresher.symbols_of_interest()
            self.refresher.gap_fill(client, symbols)
        self.state.resume_from_ms = now_ms()
        self._set_status("live")
        # the one INFO line of a stream's start (started, client built, user stream
        # connected and socket connected are DEBUG: five lines a user in a storm cost
        # about 3 % of its server CPU)
        logger.info("account stream live key_id=%s exchange=%s user_id=%s reconnect=%s",
                    self.state.key_id, self.state.exchange, self.state.user_id, reconnect)
        if reconnect and self._on_reconnected is not None:
            self._on_reconnected(self.state.key_id, list((self.state.positions or {}).values()),
                                 symbols)

    def _consume(self, client: ExchangeClient) -> None:
        assert self.stream is not None
        # wake when the rate bound lets a pending refresh go
        self._away_since = None  # in recv: whatever arrives is handled at once
        try:
            events = self.stream.recv(self.refresher.wait_s(self.settings.recv_timeout_s))
        finally:
            self._away_since = time.monotonic()
        # a burst: take what has already arrived (up to MAX_BATCH frames) and push each
        # changed type once for the lot instead of once per frame; never wait for one
        # more frame (that wait yields to every other green thread first: under load
        # it held a fill already received for tens of ms)
        dropped: ExchangeError | None = None
        for _ in range(MAX_BATCH):
            if not events or not self.running:
                break
            try:
                more = self.stream.recv_waiting()
            except ExchangeError as e:  # apply what was received before the drop first
                dropped = e
                break
            if not more:
                break
            events += more
        if not self.running:
            return
        changed: set[str] = set()
        as_of = 0
        now = time.monotonic()
        for event in events:
            self.events_seen += 1
            self._last_event_at = now
            if isinstance(event, OrderEvent):
                self.state.apply_order(event.order)
                if self._on_order is not None:
                    self._on_order(event.order)
                changed.add("orders")
                as_of = max(as_of, event.event_time)
                if event.fill is not None:
                    self._fill(event.fill)
            elif isinstance(event, FillEvent):
                self._fill(event.fill)
                as_of = max(as_of, event.event_time)
            elif isinstance(event, AccountEvent):  # pushed now; REST completes it later
                applied, incomplete = self.state.apply_account_event(event)
                changed |= applied
                self.refresher.make_due(incomplete)
                if "positions" in applied:
                    self._positions_changed()
                as_of = max(as_of, event.event_time)
            elif isinstance(event, FundingFee):  # a ledger row; pnl moves once stored
                self._on_funding(event)
            elif isinstance(event, (ProtectionLegUpdate, MarginCall)):  # + risk alerts
                if self._on_leg is not None:
                    self._on_leg(event)
            elif isinstance(event, StreamExpired):
                logger.info("stream credential expired key_id=%s", self.state.key_id)
                self._drop_stream()
                self._set_status("reconnecting")
                return
        self.pusher.flush_fills(as_of or now_ms())
        if changed:
            self.pusher.changed(tuple(changed), "stream", as_of or now_ms())
        if dropped is not None:
            raise dropped
        if as_of:
            self.state.resume_from_ms = max(self.state.resume_from_ms or 0, as_of)
        refresher = self.refresher
        stale_marks = self.marks.stale()
        if (stale_marks or (refresher.due and time.monotonic() >= refresher.completion_at)) \
                and now >= refresher.held_until:
            kinds = ("balance", "positions") if stale_marks else tuple(sorted(refresher.due))
            logger.debug("account refresh key_id=%s kinds=%s reason=%s", self.state.key_id,
                         ",".join(kinds), "marks_stale" if stale_marks else "event")
            refresher.refresh_unless_held(client, kinds, as_of or None)
        if now - self._last_event_at > self.settings.quiet_check_s \
                and now >= refresher.held_until:
            logger.info("quiet account stream checked by rest key_id=%s", self.state.key_id)
            if refresher.refresh_unless_held(client, ("balance", "positions", "orders"), None):
                self._last_event_at = now
        if now - self._connected_at > MAX_CONNECTION_S:
            logger.info("account stream renewed before the 24 h limit key_id=%s", self.state.key_id)
            self._drop_stream()
            self._set_status("reconnecting")
            return
        if time.monotonic() >= self._keepalive_at:
            try:
                self.stream.keepalive()
                self._keepalive_at = time.monotonic() + self.stream.keepalive_interval_s
            except ThrottledLocally as e:  # well inside the key's validity: try again soon
                self._keepalive_at = time.monotonic() + (e.retry_after_ms or 1000) / 1000

    def _drop_stream(self) -> None:
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.close()

    def _fill(self, fill: Fill) -> None:
        """A fill seen on the stream or by the gap fill: to the ledger (``on_fill``),
        and queued for the next ``fills`` push unless this trade id was pushed
        already."""
        recorded = self._on_fill(fill)  # the ledger's copy: may carry a leg's reason
        self.state.fills.add(recorded if isinstance(recorded, Fill) else fill)

    def _positions_changed(self) -> None:
        """The positions' set or shape may have changed: report them to the ledger and
        follow the mark price of exactly the symbols held."""
        self.reporter.report()
        self.marks.sync()

    def _set_status(self, status: str) -> None:
        """Publish ``stream_status`` when the stream's state changes."""
        if status == self.status:
            return
        self.status, self.since = status, now_ms()
        self._publish({"type": "stream_status", "user_id": self.state.user_id,
                       "key_id": self.state.key_id, "exchange": self.state.exchange,
                       "state": status, "since": self.since})
