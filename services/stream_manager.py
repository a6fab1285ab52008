"""StreamManager: starts, finds and stops the account streams (one per API key).

Streams start on first demand (a subscription), are shared by every socket of the
user, stop when the user's last connection is gone or the key is deleted, and
restart in place when the key changes. With several server processes, a key's
stream runs only in the process holding its lease (services.leases); the others
follow it and take over when the owner dies.

Push continuity: a key's AccountState (its epoch and seq per type) outlives its
stream. It is kept for ``RETAIN_S`` after the stream stops (at most ``RETAIN_MAX``
keys, the oldest dropped first) and reused when the stream starts again in this
process, so the sequence continues. It is dropped, and the next start begins a new
epoch, when continuity cannot be vouched for: the key was deleted, or (several
processes) the lease was released or lost, since another process may have pushed
in between.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from exchanges.governor import Governors
from exchanges.types import Position
from exchanges.venues import venue
from models import Database
from services.account_state import AccountState
from services.account_stream import AccountStream, Publish, StreamSettings
from services.accounts import get_owned_key
from services.client_cache import TradingService
from services.coalesce import Coalescer
from services.heartbeat import HEARTBEAT_S
from services.leases import LocalLeases
from services.lifecycle import StopFlag
from services.security import KeyCipher

logger = logging.getLogger(__name__)


REALIZED_REFRESH_S = 0.2  # realized_pnl reaches the pushes within 1 s of its write
POLLING_KEYS_PER_S = 100  # accounts polled per second in all while streams are down
POLLING_SHARE = 0.5  # of a venue's query budget (its governor) the polling may use
RETAIN_S = 900.0  # a stopped stream's push state is kept this long for a restart
AFTER_OUTAGE_S = 3.0  # after a Redis failure a follower takes no free lease this long
TAKEOVER_SLACK_MS = 2000  # a taken-over stream's gap fill reaches this much further back
RETAIN_MAX = 20_000  # push states kept at most (an AccountState of one account: ~10 KB)
CONNECT_CONCURRENCY = 64  # streams connecting at once (STREAM_CONNECT_CONCURRENCY)


PaceGroup = tuple[str, bool, str | None]  # (exchange, testnet, egress address)


def _lease(key_id: int) -> str:
    return f"stream:{key_id}"


class StreamManager:
    """Owns every AccountStream of this process.

    Args:
        db: the database (API keys are read from it, secrets decrypted with ``cipher``).
        trading: the client cache.
        publish: where envelopes go (the push hub's emit function).
        spawn: starts a background task (``socketio.start_background_task``).
        sleep: cooperative sleep (``socketio.sleep``).
        ledger: provides ``realized_pnl(key_id)``, ``record_fill(user_id, key_id, fill)``,
            ``record_order(key_id, order)`` and ``record_positions(key_id, positions,
            as_of, complete)`` (non-blocking: write-behind).
        tickers: the shared TickerHub for mark prices (None: poll positions).
        on_reconnected: run (as a background task) after a stream reconnected, with
            the key id, the positions of its snapshot and the symbols it gap-filled
            (the reconciler's ``reconcile_key_id``).
        leases: LocalLeases (one process) or RedisLeases (several).
        audience: ``audience(user_id, kind)``, False when no socket would receive
            the push (the hub's ``has_audience``); None: always build pushes.
        governors: the venues' rate governors; the polling fallback is paced to
            ``POLLING_SHARE`` of their query budget (None: ``POLLING_KEYS_PER_S`` only).
        connect_concurrency: streams of this process that connect (user stream and
            REST snapshot) at once; the others wait their turn (a reconnect storm is
            admitted at the pace the process can serve: thousands of connects at once
            left thousands of green threads runnable, and a database connection taken
            by one of them waited that long for its turn to be given back).
        on_positions_read: ``on_positions_read(key_id, positions)`` each time a stream's
            REST call read the key's positions (list[Position]) from the venue (no I/O
            in it; protection's risk watcher takes them instead of asking again).
    """

    def __init__(self, db: Database, cipher: KeyCipher, trading: TradingService,
                 publish: Publish, spawn: Callable, sleep: Callable[[float], None],
                 ledger, settings: StreamSettings = StreamSettings(), tickers=None,  # type: ignore[no-untyped-def]
                 on_reconnected: Callable[[int, list, set], None] | None = None,
                 leases=None, audience: Callable[[int, str], bool] | None = None,
                 governors: Governors | None = None, push=None,  # type: ignore[no-untyped-def]
                 keys=None, on_local: Callable[[int, AccountState | None], None] | None = None,  # type: ignore[no-untyped-def]
                 on_released: Callable[[int], None] | None = None,
                 connect_concurrency: int = CONNECT_CONCURRENCY,
                 on_positions_read: Callable[[int, list[Position]], None] | None = None) -> None:
        self._db = db
        self._on_positions_read = on_positions_read
        self._connecting = threading.BoundedSemaphore(max(1, connect_concurrency))
        self._keys = keys  # services.accounts.KeyCache; None: read the database each time
        self._on_local = on_local
        self._on_released = on_released
        self._cipher = cipher
        self._trading = trading
        self._publish = publish
        self._spawn = spawn
        self._sleep = sleep
        self._ledger = ledger
        self._settings = settings
        self._tickers = tickers
        self._on_reconnected = on_reconnected
        # ``on_leg_update(key_id, ProtectionLegUpdate)``: set by the container (protection)
        self.on_leg_update: Callable[[int, object], None] | None = None
        # a position's protection fields and a key's exchange-held legs as orders rows
        # (``services.protection``), given to every account state; set by the container
        self.protection_of: Callable[[int, str], dict] | None = None
        self.legs_of: Callable[[int], list[dict]] | None = None
        self._leases = leases or LocalLeases()
        # the lease asks of subscribes arriving together: one pipeline (a storm)
        many = getattr(self._leases, "acquire_many", None)
        self._acquiring = (Coalescer(lambda names: dict(zip(names, many(names))), sleep)
                           if many is not None else None)
        self._audience = audience
        self._governors = governors
        self._push = push  # services.push.Push; None: DirectPush over ``publish``
        self._retained: OrderedDict[int, tuple[AccountState, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._streams: dict[int, AccountStream] = {}
        self._groups: dict[int, PaceGroup] = {}  # key_id -> its polling pace group
        self._followed: dict[int, int] = {}  # key_id -> user_id, owned by another process
        # key_id -> user_id: leases taken by ``ensure`` whose stream is not yet
        # registered (``_start`` may wait for the database): renewed meanwhile
        self._leased: dict[int, int] = {}
        # key_id -> user_id: streams kept with no socket (services.notify.standby)
        self._kept: dict[int, int] = {}
        self._kept_users: set[int] = set()  # their users (asked at every last disconnect)
        self._realized_pending: set[int] = set()
        self.started = 0
        self.takeovers = 0
        self.stopping = StopFlag(sleep)  # set by stop_all(): the lease upkeep ends
        self._quiet_until = 0.0  # after a Redis failure: no take-over before (monotonic s)

    def start(self) -> None:
        """Start the lease upkeep, the heartbeat and the take-over of followed keys
        (several processes only: ``leases.distributed``)."""
        if self._leases.distributed:
            try:
                self._leases.heartbeat()  # before any acquire: our leases are not "dead"
            except Exception as e:  # Redis not there yet: the heartbeat loop retries
                logger.warning("lease heartbeat failed error=%s", type(e).__name__)
            self._leases.start_heartbeat()  # a child process: stopped by stop_all()
            self._spawn(self._maintain_leases)
            self._spawn(self._watch_heartbeat)
            self._spawn(self._take_over_followed)

    def ensure(self, user_id: int, key_id: int) -> AccountStream | None:
        """The running stream of ``key_id``, started if needed; None when another
        process holds its lease (this one follows it). Raises NotFound when the key
        is not the user's."""
        with self._lock:
            stream = self._streams.get(key_id)
            if stream is not None and stream.state.user_id == user_id:
                return stream
        self._owned_key(user_id, key_id)
        with self._lock:
            was_followed = key_id in self._followed
        if not self._acquire(_lease(key_id)):
            with self._lock:
                self._followed[key_id] = user_id
            return None
        with self._lock:  # renewed from now on, even while _start waits for the database
            if key_id not in self._streams:
                self._leased[key_id] = user_id
        try:
            return self._start(user_id, key_id, takeover=was_followed)
        except BaseException:
            with self._lock:
                self._leased.pop(key_id, None)
            raise

    def keep(self, keys: dict[int, int]) -> dict[int, int]:
        """Replace the keys (``{key_id: user_id}``) whose streams run with no socket of
        their user: ``stop_user`` leaves them (and the follow of one another process
        runs) alone. Returns the keys no longer kept. Starts nothing (``ensure`` does)."""
        with self._lock:
            dropped = {k: u for k, u in self._kept.items() if keys.get(k) != u}
            self._kept = dict(keys)
            self._kept_users = set(keys.values())
        return dropped

    def keeps(self, user_id: int) -> bool:
        """True when a key of ``user_id`` is kept (``keep``)."""
        with self._lock:
            return user_id in self._kept_users

    def tracks(self, key_id: int) -> bool:
        """True when ``key_id``'s stream runs here, is being started here, or another
        process runs it and this one follows it."""
        with self._lock:
            return key_id in self._streams or key_id in self._leased or key_id in self._followed

    def _acquire(self, name: str) -> bool:
        """``leases.acquire``, batched with the other subscribes of the moment when the
        leases can (``acquire_many``)."""
        if self._acquiring is None:
            return self._leases.acquire(name)
        return bool(self._acquiring.get(name))

    def _owned_key(self, user_id: int, key_id: int):  # type: ignore[no-untyped-def]
        """The key (``get_owned_key``'s answer, from the key cache when there is one).
        Raises NotFound."""
        if self._keys is not None:
            return self._keys.get(user_id, key_id)
        return get_owned_key(self._db, user_id, key_id)

    def _local(self, key_id: int, state: AccountState | None) -> None:
        """Tell ``on_local`` that ``key_id``'s stream now runs here (its state) or no
        longer does (None)."""
        if self._on_local is not None:
            try:
                self._on_local(key_id, state)
            except Exception:  # isolation boundary: the push layer must not stop a stream
                logger.exception("stream owner hook failed key_id=%s", key_id)

    def _take_state(self, user_id: int, key) -> AccountState:  # type: ignore[no-untyped-def]
        """The key's retained push state (its sequence continues), else a new one."""
        now = time.monotonic()
        with self._lock:
            while self._retained:
                oldest_key, (_, stopped_at) = next(iter(self._retained.items()))
                if now - stopped_at < RETAIN_S and len(self._retained) <= RETAIN_MAX:
                    break
                del self._retained[oldest_key]
            held = self._retained.pop(key.id, None)
        if held is not None and held[0].user_id == user_id and held[0].exchange == key.exchange:
            state = held[0]
            state.testnet = key.testnet
            return state
        return AccountState(user_id, key.id, key.exchange, key.testnet)

    def _retain(self, stream: AccountStream, keep: bool) -> None:
        """Keep a stopped stream's push state for a restart (``keep``), or forget it."""
        with self._lock:
            self._retained.pop(stream.state.key_id, None)
            if keep:
                self._retained[stream.state.key_id] = (stream.state, time.monotonic())

    def state_of(self, key_id: int) -> AccountState | None:
        """The push state of ``key_id``: its running stream's, else the retained one."""
        with self._lock:
            stream = self._streams.get(key_id)
            if stream is not None:
                return stream.state
            held = self._retained.get(key_id)
            return held[0] if held else None

    def live_positions(self, key_id: int) -> list[Position] | None:
        """The open positions of ``key_id`` as its account stream running in this
        process holds them (the venue's push; no I/O): ``AccountStream.live_positions``,
        None unless that stream is ``live`` on its socket, current (its loop not away
        from the socket for long) and has a snapshot."""
        with self._lock:
            stream = self._streams.get(key_id)
        return None if stream is None else stream.live_positions()

    def _start(self, user_id: int, key_id: int, takeover: bool = False) -> AccountStream:
        """Start ``key_id``'s stream here. ``takeover``: another process ran it until
        now (perhaps killed): a new push state's stream gap-fills the fills of the
        last ``TAKEOVER_GAP`` (the lease's TTL and the owner's heartbeat: the longest
        its stream may have been gone unnoticed), which reach the ledger and the
        subscribers (a client de-duplicates fills by ``trade_id``)."""
        key = self._owned_key(user_id, key_id)
        state = self._take_state(user_id, key)
        if takeover and state.resume_from_ms is None:
            state.resume_from_ms = int(time.time() * 1000) - self._takeover_gap_ms()
        state.protection_of, state.legs_of = self.protection_of, self.legs_of
        exchange, testnet, api_key = key.exchange, key.testnet, key.api_key
        encrypted = key.api_secret_encrypted
        positions_read = self._on_positions_read
        group = self._pace_group(exchange, testnet, user_id)
        stream = AccountStream(
            state, get_client=lambda: self._trading.get_client(
                user_id, exchange, testnet, api_key, lambda: self._cipher.decrypt(encrypted)),
            realized_pnl=lambda: self._ledger.realized_pnl(key_id),
            publish=self._publish,
            on_fill=lambda fill: self._ledger.record_fill(user_id, key_id, fill),
            on_order=lambda order: self._ledger.record_order(key_id, order),
            on_positions=lambda held, as_of, complete: self._ledger.record_positions(
                key_id, held, as_of, complete),
            sleep=self._sleep, settings=self._settings, tickers=self._tickers,
            on_reconnected=self._reconnected if self._on_reconnected else None,
            poll_scale=lambda: self._poll_scale(group), audience=self._audience,
            push=self._push, on_leg=lambda update: self._leg_update(key_id, update),
            admission=self._connecting,
            on_positions_read=None if positions_read is None
            else lambda read: positions_read(key_id, read))
        with self._lock:
            existing = self._streams.get(key_id)
            if existing is not None:
                self._retained.setdefault(key_id, (state, time.monotonic()))
                return existing
            self._streams[key_id] = stream
            self._groups[key_id] = group
            self._followed.pop(key_id, None)
            self._leased.pop(key_id, None)
            self.started += 1
        self._local(key_id, state)
        self._spawn(stream.run)
        logger.debug("account stream started user_id=%s key_id=%s", user_id, key_id)
        return stream

    def _takeover_gap_ms(self) -> int:
        return int(getattr(self._leases, "ttl_ms", 0) + getattr(self._leases, "alive_ms", 0)
                   + TAKEOVER_SLACK_MS)

    def _pace_group(self, exchange: str, testnet: bool, user_id: int) -> PaceGroup:
        """``(exchange, testnet, egress address)``: the accounts whose polling shares
        one rate governor's budget (egress None without governors or EGRESS_IPS)."""
        egress = (self._governors.for_key(exchange, testnet, user_id).egress
                  if self._governors is not None else None)
        return exchange, testnet, egress

    def _polling_keys_per_s(self, group: PaceGroup) -> float:
        """Accounts of the pace group the polling fallback may refresh per second: at
        most ``POLLING_KEYS_PER_S`` (what this server sustains), and within
        ``POLLING_SHARE`` of the group's per-IP query budget at the spec's ``poll_round_weight``
        per account (Binance: 2400 * 0.8 / 60 * 0.5 / 16 = 1 account a second)."""
        rate = float(POLLING_KEYS_PER_S)
        if self._governors is not None:
            exchange, testnet, egress = group
            budget = self._governors.get(exchange, testnet, egress).query_weight_per_s() \
                * POLLING_SHARE
            rate = min(rate, budget / venue(exchange).poll_round_weight)
        return rate

    def _poll_scale(self, group: PaceGroup) -> float:
        """How much to stretch the polling interval of the group's accounts: with
        ``n`` of them polling, each polls every ``max(1, n / (rate * interval))``
        intervals, ``rate`` being ``_polling_keys_per_s`` (the benchmark showed 1,000
        accounts polled every second saturate the server, and the venue's per-IP
        limit would refuse them)."""
        with self._lock:
            polling = sum(1 for key_id, s in self._streams.items()
                          if s.stream is None and self._groups.get(key_id) == group)
        rate = self._polling_keys_per_s(group)
        return max(1.0, polling / (rate * self._settings.poll_interval_s))

    def _maintain_leases(self) -> None:
        """Renew our leases every third of their TTL (a stream whose lease was lost
        stops; a lease gone with a Redis restart is taken again) until
        ``stop_all()``. After a failed round (Redis down) it retries every
        ``HEARTBEAT_S``, so that the process that ran a stream takes its lease again
        as soon as Redis is back, before a follower does."""
        interval_s = self._leases.ttl_ms / 3000
        wait_s = interval_s
        failing = False
        while not self.stopping.wait(wait_s):
            wait_s = interval_s
            try:
                self._renew_round()
                failing = False
            except Exception as e:  # isolation boundary: Redis or a key lookup failed; retry
                if failing:  # the traceback once per outage, not every second
                    logger.debug("stream lease maintenance failed again error=%s",
                                 type(e).__name__)
                else:
                    logger.exception("stream lease maintenance failed")
                failing = True
                wait_s = min(interval_s, HEARTBEAT_S)

    def _renew_round(self) -> None:
        with self._lock:
            owned = list(self._streams)
            pending = list(self._leased)
        renewed = self._renew_all(owned + pending)
        for key_id, ok in zip(pending, renewed[len(owned):], strict=True):
            if not ok:
                with self._lock:
                    user_id = self._leased.pop(key_id, None)
                    if user_id is not None and key_id not in self._streams:
                        self._followed[key_id] = user_id
        for key_id, ok in zip(owned, renewed[:len(owned)], strict=True):
            if not ok:
                logger.warning("stream lease lost key_id=%s", key_id)
                stream = self._pop(key_id)
                if stream is not None:
                    stream.stop()
                    self._retain(stream, keep=False)  # another process takes over
                    with self._lock:
                        self._followed[key_id] = stream.state.user_id
                    self._local(key_id, None)

    def _watch_heartbeat(self) -> None:
        """Every ``HEARTBEAT_S`` until ``stop_all()``: report the heartbeat's failures
        (``leases.heartbeat_status``; its child process logs nothing) once per outage,
        take no stream over for ``AFTER_OUTAGE_S`` after one (Redis may have come back
        empty: the processes that ran the streams take their leases again first), and
        start a new child when the last one died."""
        failing = False
        seen_failures = 0
        while not self.stopping.wait(HEARTBEAT_S):
            status = self._leases.heartbeat_status()
            if status is None:
                continue
            if not status.running and not self.stopping.is_set():
                try:
                    if self._leases.restart_heartbeat():
                        logger.warning("lease heartbeat process restarted")
                except OSError as e:
                    logger.warning("lease heartbeat process restart failed error=%s",
                                   type(e).__name__)
            if status.failed_at is not None and status.failures != seen_failures:
                seen_failures = status.failures
                self._quiet_until = max(self._quiet_until, status.failed_at + AFTER_OUTAGE_S)
            if status.error is not None and not failing:
                logger.warning("lease heartbeat failed error=%s", status.error)
            elif status.error is None and failing:
                logger.info("lease heartbeat recovered failures=%s", status.failures)
            failing = status.error is not None

    def _take_over_followed(self) -> None:
        """Every ``HEARTBEAT_S`` until ``stop_all()``: try to take over the streams we
        follow (a lease whose owner's heartbeat is gone, or that is free, is taken at
        once)."""
        while not self.stopping.wait(HEARTBEAT_S):
            try:
                with self._lock:
                    followed = list(self._followed.items())
                # just after Redis came back (perhaps empty, every lease free): the
                # processes that ran the streams take their leases again first
                # (``_maintain_leases`` retries every HEARTBEAT_S after a failure)
                if not followed or time.monotonic() < self._quiet_until:
                    continue
                many = getattr(self._leases, "acquire_many", None)
                names = [_lease(k) for k, _ in followed]
                got = many(names) if many is not None else [self._leases.acquire(n)
                                                             for n in names]
                for (key_id, user_id), ok in zip(followed, got, strict=True):
                    if not ok:
                        continue
                    with self._lock:
                        if self._followed.get(key_id) != user_id:
                            continue  # left meanwhile
                    self.takeovers += 1
                    logger.info("stream lease taken over key_id=%s", key_id)
                    self._start(user_id, key_id, takeover=True)
            except Exception as e:  # isolation boundary: Redis or a key lookup failed; retry
                if time.monotonic() >= self._quiet_until:  # once per outage, not every second
                    logger.warning("stream take-over round failed error=%s", type(e).__name__)
                self._quiet_until = time.monotonic() + AFTER_OUTAGE_S

    def _renew_all(self, key_ids: list[int]) -> list[bool]:
        """Renew the leases of ``key_ids``: in batches of one round trip each when the
        leases can (``renew_many``), else one by one."""
        names = [_lease(k) for k in key_ids]
        many = getattr(self._leases, "renew_many", None)
        if many is None:
            return [self._leases.renew(n) for n in names]
        out: list[bool] = []
        for i in range(0, len(names), 500):
            out += many(names[i:i + 500])
        return out

    def _pop(self, key_id: int) -> AccountStream | None:
        with self._lock:
            return self._streams.pop(key_id, None)

    def get(self, key_id: int) -> AccountStream | None:
        """The running stream of ``key_id`` or None."""
        with self._lock:
            return self._streams.get(key_id)

    def stop_key(self, key_id: int) -> bool:
        """Stop the stream of one key (key deleted), in whichever process runs it (its
        lease is dropped); its push state is forgotten. True if one ran here."""
        with self._lock:
            stream = self._streams.pop(key_id, None)
            self._followed.pop(key_id, None)
            self._retained.pop(key_id, None)
        self._leases.force_release(_lease(key_id))
        if stream is None:
            return False
        stream.stop()
        self._local(key_id, None)
        logger.info("account stream stopped key_id=%s", key_id)
        return True

    def restart_key(self, user_id: int, key_id: int) -> bool:
        """The key changed: a stream running here stops and starts again at once with
        the key's new values, on the same push state (subscribers keep receiving,
        the sequence continues; the lease is kept). A stream another process runs
        is told to stop by dropping its lease; this process takes it over (a new
        epoch there). True if a stream was restarted here."""
        with self._lock:
            stream = self._streams.pop(key_id, None)
            followed = self._followed.get(key_id)
        if stream is None:
            if followed is not None:
                self._leases.force_release(_lease(key_id))
            return False
        stream.stop(quiet=True)
        self._retain(stream, keep=True)
        self._start(user_id, key_id)
        logger.info("account stream restarted key_id=%s", key_id)
        return True

    def stop_user(self, user_id: int) -> list[int]:
        """Stop every stream of the user but the kept ones (``keep``); returns the key
        ids stopped."""
        with self._lock:
            keys = [k for k, s in self._streams.items()
                    if s.state.user_id == user_id and self._kept.get(k) != user_id]
            streams = [self._streams.pop(k) for k in keys]
            for k in [k for k, u in self._followed.items()
                      if u == user_id and self._kept.get(k) != user_id]:
                del self._followed[k]
        for stream in streams:
            stream.stop()
            # several processes: once released, another one may push: a new epoch then
            self._retain(stream, keep=not self._leases.distributed)
        if streams and self._leases.distributed:
            release_many = getattr(self._leases, "release_many", None)
            names = [_lease(s.state.key_id) for s in streams]
            try:
                if release_many is not None:
                    release_many(names)
                else:
                    for name in names:
                        self._leases.release(name)
            except Exception as e:  # Redis unreachable: the leases expire by their TTL
                logger.warning("stream lease release failed user_id=%s count=%s error=%s",
                               user_id, len(names), type(e).__name__)
            for key_id in keys:  # a process whose sockets follow the key may take it now
                if self._on_released is not None:
                    try:
                        self._on_released(key_id)
                    except Exception:  # the followers' lease upkeep takes it over anyway
                        logger.exception("stream release hook failed key_id=%s", key_id)
        for key_id in keys:
            self._local(key_id, None)
        if keys:
            logger.info("account streams stopped user_id=%s count=%s", user_id, len(keys))
        return keys

    def take_over(self, key_id: int) -> bool:
        """The process running ``key_id``'s stream released it while this one follows
        it (its sockets are here): take the lease and start the stream now rather
        than at the next lease upkeep. True if the stream now runs here."""
        with self._lock:
            user_id = self._followed.get(key_id)
        if user_id is None or self.stopping.is_set():
            return False
        try:
            if not self._leases.acquire(_lease(key_id)):
                return False  # another follower was first
            self._start(user_id, key_id, takeover=True)
        except Exception:  # NotFound (deleted meanwhile), Redis: the upkeep retries
            logger.warning("stream take-over failed key_id=%s", key_id, exc_info=True)
            return False
        self.takeovers += 1
        logger.info("stream lease handed over key_id=%s", key_id)
        return True

    def _reconnected(self, key_id: int, positions: list, fill_symbols: set) -> None:
        assert self._on_reconnected is not None
        self._spawn(self._on_reconnected, key_id, positions, fill_symbols)

    def protection_changed(self, key_id: int) -> None:
        """A key's protection legs changed (set, removed, fired): its ``positions`` and
        ``orders`` are pushed if their content changed (this process's stream only)."""
        stream = self.get(key_id)
        if stream is not None:
            stream.push_changed(("positions", "orders"))

    def _leg_update(self, key_id: int, update: object) -> None:
        if self.on_leg_update is not None:
            self.on_leg_update(key_id, update)

    def fills_recorded(self, key_id: int) -> None:
        """The ledger made fills of ``key_id`` durable: push the new realized PnL, at
        most once per ``REALIZED_REFRESH_S`` per key (a burst of fills is one read of
        the ledger, not one per write batch)."""
        stream = self.get(key_id)
        if stream is None:
            return
        with self._lock:
            if key_id in self._realized_pending:
                return
            self._realized_pending.add(key_id)

        def refresh() -> None:
            stopped = self.stopping.wait(REALIZED_REFRESH_S)
            with self._lock:
                self._realized_pending.discard(key_id)
            if not stopped and stream.running:  # not after stop_all() or the stream's end
                stream.refresh_realized()
        self._spawn(refresh)

    def stats(self) -> dict:
        """``{"running", "started", "by_state": {state: n}, "events_seen", "refreshes_held"
        (REST calls of live streams and of (re)connect snapshots and gap fills that
        waited for the rate governor's budget), "followed",
        "takeovers", "polling_refresh_s": {"<exchange>[-testnet][@<egress>]": seconds
        between two REST refreshes of one polling account}}``."""
        with self._lock:
            streams = list(self._streams.items())
            groups = dict(self._groups)
        by_state: dict[str, int] = {}
        refresh: dict[str, float] = {}
        for key_id, s in streams:
            by_state[s.status] = by_state.get(s.status, 0) + 1
            group = groups.get(key_id)
            if s.stream is None and group is not None:
                exchange, testnet, egress = group
                name = f"{exchange}{'-testnet' if testnet else ''}{'@' + egress if egress else ''}"
                if name not in refresh:
                    refresh[name] = round(self._settings.poll_interval_s
                                          * self._poll_scale(group), 1)
        with self._lock:
            followed = len(self._followed)
        return {"running": len(streams), "started": self.started, "by_state": by_state,
                "events_seen": sum(s.events_seen for _, s in streams), "followed": followed,
                "refreshes_held": sum(s.refreshes_held for _, s in streams),
                "takeovers": self.takeovers, "polling_refresh_s": refresh}

    def stop_all(self) -> None:
        """Stop every stream, the lease upkeep and the heartbeat process (shutdown); the
        leases are released."""
        self.stopping.set()
        self._leases.stop_heartbeat()
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for s in streams:
            s.stop()
            self._leases.release(_lease(s.state.key_id))
