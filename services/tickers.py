"""TickerHub: one upstream market stream per (exchange, testnet, symbol), shared by
every subscriber, stopped when the last one leaves.

Subscribers are Socket.IO connections (they get ``ticker`` envelopes in room
``ticker_<exchange>_<SYMBOL>``, mainnet only, as CONTRACT.md fixes the room name)
and account streams (they get a callback with each tick to revalue positions).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from clock import now_ms
from exchanges.base import MarketStream
from exchanges.errors import ExchangeError
from exchanges.types import Ticker
from services.lifecycle import StopFlag
from services.retry import Policy, Retrier
from services.serialize import dec

logger = logging.getLogger(__name__)

VenueSymbol = tuple[str, bool, str]  # (exchange, testnet, SYMBOL)
OpenStream = Callable[[str, bool, str], MarketStream]
YIELD_EVERY_S = 0.002  # a tick's delivery yields to other green threads this often


def ticker_room(exchange: str, symbol: str) -> str:
    """CONTRACT.md room of a symbol's tickers."""
    return f"ticker_{exchange}_{symbol}"


class _Upstream:
    def __init__(self, key: VenueSymbol) -> None:
        self.key = key
        self.subscribers: dict[str, Callable[[Ticker], object] | None] = {}
        self.running = True
        self.stream: MarketStream | None = None
        self.last: Ticker | None = None
        self.seq = 0
        self.state = "reconnecting"
        self.ticks = 0
        self.frame_at = 0.0  # monotonic time the last tick was received
        self.delivering = False  # a tick is being handed to the subscribers
        self.pending: Ticker | None = None  # the newest tick received meanwhile
        self.skipped = 0  # ticks replaced by a newer one before their turn


class TickerHub:
    """Owns the market streams.

    Args:
        open_stream: builds a not yet connected MarketStream for (exchange, testnet, symbol).
        publish: emits an envelope (``{"type": "ticker", ...}``) to its room.
        spawn: starts a background task; sleep: cooperative sleep.
    """

    def __init__(self, open_stream: OpenStream, publish: Callable[[dict], None],
                 spawn: Callable, sleep: Callable[[float], None],
                 backoff_max_s: float = 30.0) -> None:
        self._open = open_stream
        self._publish = publish
        self._spawn = spawn
        self._sleep = sleep
        self._backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._upstreams: dict[VenueSymbol, _Upstream] = {}
        self.stopping = StopFlag(sleep)  # set by stop_all(): the upstream loops end

    def subscribe(self, exchange: str, testnet: bool, symbol: str, subscriber: str,
                  on_tick: Callable[[Ticker], object] | None = None) -> Ticker | None:
        """Add ``subscriber`` (``sid:<sid>`` or ``key:<id>``) to the symbol's stream,
        starting it if needed; returns the last tick known (None if none yet)."""
        key = (exchange, testnet, symbol)
        with self._lock:
            up = self._upstreams.get(key)
            started = up is None
            if up is None:
                up = self._upstreams[key] = _Upstream(key)
            up.subscribers[subscriber] = on_tick
        if started:
            self._spawn(self._run, up)
            logger.info("market stream started exchange=%s testnet=%s symbol=%s", *key)
        return up.last

    def unsubscribe(self, exchange: str, testnet: bool, symbol: str, subscriber: str) -> None:
        """Remove ``subscriber``; the stream stops when it was the last."""
        key = (exchange, testnet, symbol)
        with self._lock:
            up = self._upstreams.get(key)
            if up is None:
                return
            up.subscribers.pop(subscriber, None)
            if up.subscribers:
                return
            del self._upstreams[key]
        up.running = False
        if up.stream is not None:
            up.stream.close()
        logger.info("market stream stopped exchange=%s testnet=%s symbol=%s", *key)

    def unsubscribe_all(self, subscriber: str) -> None:
        """Remove ``subscriber`` from every stream."""
        with self._lock:
            keys = [k for k, up in self._upstreams.items() if subscriber in up.subscribers]
        for key in keys:
            self.unsubscribe(*key, subscriber)

    def mark_age_s(self, exchange: str, testnet: bool, symbol: str) -> float:
        """Seconds since the symbol's stream last received a tick; 0 while one is
        being delivered (the stream is alive, its subscribers are only slow to get
        their turn); infinity when there is no live stream of it."""
        up = self._upstreams.get((exchange, testnet, symbol))
        if up is None or up.state != "live":
            return float("inf")
        if up.delivering:
            return 0.0
        return time.monotonic() - up.frame_at

    def envelope(self, exchange: str, symbol: str) -> dict | None:
        """The last mainnet ticker envelope of ``symbol`` (``source: "cache"``)."""
        with self._lock:
            up = self._upstreams.get((exchange, False, symbol))
        if up is None or up.last is None:
            return None
        return dict(self._envelope(up, up.last), source="cache")

    def stats(self) -> dict:
        """``{"streams", "by_state", "subscribers", "ticks", "skipped"}`` (``skipped``:
        ticks replaced by a newer one before their delivery)."""
        with self._lock:
            ups = list(self._upstreams.values())
        by_state: dict[str, int] = {}
        for up in ups:
            by_state[up.state] = by_state.get(up.state, 0) + 1
        return {"streams": len(ups), "by_state": by_state,
                "subscribers": sum(len(u.subscribers) for u in ups),
                "ticks": sum(u.ticks for u in ups),
                "skipped": sum(u.skipped for u in ups)}

    def stop_all(self) -> None:
        """Stop every stream (shutdown): each upstream loop ends within a second (its
        back-off waits are cut short)."""
        self.stopping.set()
        with self._lock:
            ups = list(self._upstreams.values())
            self._upstreams.clear()
        for up in ups:
            up.running = False
            if up.stream is not None:
                up.stream.close()

    # ---- the upstream loop -----------------------------------------------------
    def _run(self, up: _Upstream) -> None:
        backoff = Retrier({ExchangeError: Policy(1.0, self._backoff_max_s)})
        while up.running:
            try:
                stream = self._open(*up.key)
                stream.connect()
                up.stream, up.state, up.frame_at = stream, "live", time.monotonic()
                backoff.succeeded()
                while up.running:
                    for tick in stream.recv(1.0):
                        self._offer(up, tick)
            except ExchangeError as e:
                up.state = "reconnecting"
                delay = backoff.failed(e)
                if up.running:
                    logger.warning("market stream error exchange=%s symbol=%s kind=%s retry_in_s=%.1f",
                                   up.key[0], up.key[2], type(e).__name__, delay)
                    self.stopping.wait(delay)
            except Exception:  # isolation boundary: one symbol's bug must not stop the hub
                logger.exception("market stream crashed exchange=%s symbol=%s", up.key[0], up.key[2])
                self.stopping.wait(self._backoff_max_s)
            finally:
                if up.stream is not None:
                    up.stream.close()
                    up.stream = None
        up.state = "down"

    def _offer(self, up: _Upstream, tick: Ticker) -> None:
        """A tick just received: handed out at once by a delivery task, or, while the
        previous one is still being handed out, kept as the next one; a newer tick
        replaces it (``skipped``). So a round that takes longer than the ticks come
        (a busy server, many holders) delivers the newest mark price next, not a queue
        of older ones, and the reader goes on reading meanwhile."""
        up.frame_at = time.monotonic()
        with self._lock:
            if up.delivering:
                if up.pending is not None:
                    up.skipped += 1
                up.pending = tick
                return
            up.delivering, up.pending = True, tick
        self._spawn(self._deliver_pending, up)
        self._sleep(0)  # the delivery takes this tick before the reader reads the next

    def _deliver_pending(self, up: _Upstream) -> None:
        """The delivery task: hand out the pending tick until none is left."""
        while True:
            with self._lock:
                tick, up.pending = up.pending, None
                if tick is None or not up.running:
                    up.delivering = False
                    return
            try:
                self._deliver(up, tick)
            except Exception:  # isolation boundary: the next tick must still go out
                logger.exception("tick delivery failed exchange=%s symbol=%s", up.key[0], up.key[2])

    def _deliver(self, up: _Upstream, tick: Ticker) -> None:
        """Every tick reaches the callbacks (they learn the stream is alive and revalue
        only on a change); sockets get an envelope only when a price changed.

        Fair to every holder: each tick starts at a random place in the list of
        callbacks (nobody is always last), and the loop yields to the other green
        threads (the sockets' writers among them) every ``YIELD_EVERY_S`` of work,
        so no delivery holds the hub for long. A callback may return a callable: the
        less urgent part of its work, run after every callback had its turn (an
        account stream pushes ``pnl`` first, positions and balance after)."""
        up.ticks += 1
        changed = up.last is None or (up.last.mark_price, up.last.last_price, up.last.bid,
                                      up.last.ask) != (tick.mark_price, tick.last_price,
                                                       tick.bid, tick.ask)
        if changed:
            up.last = tick
            up.seq += 1
        with self._lock:
            subscribers = list(up.subscribers.items())
        callbacks = [cb for _, cb in subscribers if cb is not None]
        if changed and not up.key[1] and any(cb is None for _, cb in subscribers):
            env = self._envelope(up, tick)
            env["sent_at"] = now_ms()
            self._publish(env)
        if not callbacks:
            return
        start = random.randrange(len(callbacks))
        later = self._run_all(callbacks[start:] + callbacks[:start], tick)
        if later:
            self._run_all(later, None)

    def _run_all(self, calls: list, arg) -> list:  # type: ignore[no-untyped-def]
        """Call each (with ``arg`` unless None), yielding every ``YIELD_EVERY_S``;
        returns what the calls returned that is callable."""
        later = []
        sliced_at = time.perf_counter()
        for call in calls:
            try:
                rest = call(arg) if arg is not None else call()
                if rest is not None:
                    later.append(rest)
            except Exception:  # isolation boundary: one subscriber's failure does not stop the next
                logger.exception("tick subscriber failed")
            if time.perf_counter() - sliced_at > YIELD_EVERY_S:
                self._sleep(0)
                sliced_at = time.perf_counter()
        return later

    @staticmethod
    def _envelope(up: _Upstream, tick: Ticker) -> dict:
        exchange, testnet, symbol = up.key
        return {"type": "ticker", "user_id": None, "key_id": None, "exchange": exchange,
                "testnet": testnet, "seq": up.seq, "as_of": tick.ts, "sent_at": 0,
                "source": "stream", "stale": False,
                "data": {"symbol": symbol, "last_price": dec(tick.last_price),
                         "mark_price": dec(tick.mark_price), "bid": dec(tick.bid),
                         "ask": dec(tick.ask), "ts": tick.ts}}
