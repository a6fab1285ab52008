"""Socket.IO handlers (namespace ``/``): connect, subscribe, unsubscribe, disconnect.

Thin: each validates, calls the hub or a service, and acks CONTRACT.md's shape.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import current_app, request
from flask_socketio import ConnectionRefusedError, SocketIO, join_room, leave_room
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from api.errors import to_api_error
from exchanges.errors import ExchangeError
from services.account_kinds import USER_TYPES
from services.account_stream import STARTING
from services.errors import NotFound, Unauthorized, ValidationFailed
from services.notify.alerts import AlertService
from services.schemas.requests import TickerSubscribe
from services.schemas.socketio import Subscribe, Unsubscribe
from services.tickers import ticker_room
from ws.hub import room

logger = logging.getLogger(__name__)

LIVE_WAIT_S = 10.0  # a fills replay waits this long at most for a starting stream's gap fill
# a subscriber of a key streamed in another process: how long its first envelope of a
# type waits for the owner's answer to ``want`` (milliseconds when it is alive) or for
# this process to take the stream over from a dead owner (its heartbeat outlives it by
# leases.ALIVE_MS, 4 s, and the lease is tried every second), before a REST snapshot
OWNER_WAIT_S = 6.0
OWNER_POLL_S = 0.5
NOT_CONNECTED = {"ok": False, "error": {"code": "unauthorized", "message": "not connected"}}


def _svc():  # type: ignore[no-untyped-def]
    return current_app.extensions["pushsrv"]


def _error_ack(e: Exception) -> dict:
    err = to_api_error(e)
    if err is None:
        logger.exception("socket handler failed sid=%s", request.sid)
        return {"ok": False, "error": {"code": "internal_error", "message": "internal error"}}
    return {"ok": False, **err.body()}


def register_handlers(socketio: SocketIO) -> None:
    """Attach the Socket.IO event handlers to ``socketio`` (one per app, made by
    ``create_app``; call before ``socketio.init_app``, which hands the handlers
    registered so far to the ``socketio.Server`` it creates)."""
    @socketio.on("connect")
    def on_connect(auth=None):  # type: ignore[no-untyped-def]
        token = (auth or {}).get("token") if isinstance(auth, dict) else None
        token = token or request.args.get("token")
        try:
            user_id, _ = _svc().tokens.verify(token)
        except Unauthorized as e:
            # message "unauthorized" (CONTRACT.md); connect_error's data says why, so an
            # app knows to refresh (token_expired) or to log in again (invalid_token,
            # missing_token)
            why = ("missing_token" if not token else
                   "token_expired" if e.code == "token_expired" else "invalid_token")
            raise ConnectionRefusedError("unauthorized", {"code": why}) from None
        _svc().hub.add(request.sid, user_id,
                       socketio.server.manager.eio_sid_from_sid(request.sid, "/"))
        join_room(room("user", user_id))
        logger.debug("socket connected user_id=%s sid=%s", user_id, request.sid)

    @socketio.on("subscribe")
    def on_subscribe(data=None):  # type: ignore[no-untyped-def]
        svc = _svc()
        conn = svc.hub.get(request.sid)
        if conn is None:
            return NOT_CONNECTED
        try:
            req = Subscribe.model_validate(data if isinstance(data, dict) else {})
            key_id = req.key_id
            # the user's own kinds (alerts) need no key; the others follow keys
            key_kinds = [k for k in req.types if k not in USER_TYPES]
            if req.since and key_id is None and any(k not in USER_TYPES for k in req.since):
                raise ValidationFailed("key_id_required", "since requires key_id", "key_id")
            key_ids, streams, keys = [], [], {}
            # the key lookups (cached), the stream leases and starts: at most
            # SUBSCRIBE_CONCURRENCY at once; in a storm the others wait their turn here
            with svc.hub.admission:
                if svc.hub.get(request.sid) is None:
                    return NOT_CONNECTED  # left while waiting
                if key_kinds:  # the user's own kinds (alerts) need no key
                    key_ids = [key_id] if key_id else [k.id for k in svc.keys.list(conn.user_id)]
                    if not key_ids:
                        raise NotFound("key_not_found", "the user has no API key", "key_id")
                    streams = [svc.streams.ensure(conn.user_id, k) for k in key_ids]
                    keys = {k: svc.keys.get(conn.user_id, k)
                            for k, s in zip(key_ids, streams, strict=True) if s is None}
        except Exception as e:  # every subscribe gets an ack; _error_ack logs a bug's traceback
            return _error_ack(e)
        for kind in req.types:
            join_room(room(kind, conn.user_id))
        conn.types.update(req.types)
        conn.key_ids.update(key_ids)
        conn.hz.update(req.rates())
        local = [s for s in streams if s is not None]
        since = {k: p.model_dump(exclude_none=True) for k, p in (req.since or {}).items()}
        resumed, plans = svc.resume.plan([s.state for s in local], key_kinds, since)
        if "alerts" in req.types:  # the user's alerts: replayed from their table
            resumed["alerts"] = AlertService.resumable(since.get("alerts"))
            socketio.start_background_task(_send_alerts, svc, socketio, conn, since.get("alerts"))
        # a stream still starting says nothing yet: its first state (live, or
        # reconnecting/polling when the exchange cannot be reached) reaches the user's
        # room when it is known
        statuses = [{"key_id": s.state.key_id, "exchange": s.state.exchange,
                     "state": s.status, "since": s.since} for s in local if s.status != STARTING]
        # keys whose stream runs in another process: a REST snapshot for this socket
        remote = [(conn.user_id, key, kind) for key in keys.values()
                  for kind in key_kinds if kind != "fills"]
        for key in keys.values():  # its fills and stream states come through Redis
            svc.hub.watch(conn, key.id)
            if "fills" in key_kinds:  # a replay from the ledger (``since`` time), else empty
                mirror = svc.hub.remote(key.id, conn.user_id)
                ok, plan = svc.resume.remote_fills(
                    mirror, key.exchange, key.testnet, since.get("fills"),
                    settle=_settler(svc, socketio, key.id, mirror))
                resumed["fills"] = resumed.get("fills", True) and ok
                plans.append(plan)
        socketio.start_background_task(_send_snapshot, svc, socketio, conn, plans,
                                       statuses, remote)
        ack = {"ok": True, "subscribed": sorted(conn.types),
               "rooms": [room(t, conn.user_id) for t in sorted(conn.types)]}
        if req.since is not None:  # per type: was the client's copy continued
            ack["resumed"] = {kind: resumed.get(kind, False) for kind in req.types}
        return ack

    @socketio.on("unsubscribe")
    def on_unsubscribe(data=None):  # type: ignore[no-untyped-def]
        svc = _svc()
        conn = svc.hub.get(request.sid)
        if conn is None:
            return NOT_CONNECTED
        try:
            req = Unsubscribe.model_validate(data if isinstance(data, dict) else {})
        except ValidationError as e:
            return _error_ack(e)
        for kind in req.types:
            leave_room(room(kind, conn.user_id))
            conn.types.discard(kind)
        svc.hub.fanout.detach(request.sid, kinds=set(req.types))
        return {"ok": True, "subscribed": sorted(conn.types)}

    def _ticker_request(data):  # type: ignore[no-untyped-def]
        """``(svc, conn, request)`` or ``(None, None, not-ok ack)``."""
        svc = _svc()
        conn = svc.hub.get(request.sid)
        if conn is None:
            return None, None, NOT_CONNECTED
        try:
            return svc, conn, TickerSubscribe.model_validate(data if isinstance(data, dict) else {})
        except ValidationError as e:
            return None, None, _error_ack(e)

    @socketio.on("subscribe_ticker")
    def on_subscribe_ticker(data=None):  # type: ignore[no-untyped-def]
        svc, conn, req = _ticker_request(data)
        if svc is None:
            return req
        cached = []
        for symbol in req.symbols:
            join_room(ticker_room(req.exchange, symbol))
            conn.tickers.add((req.exchange, symbol))
            svc.tickers.subscribe(req.exchange, False, symbol, f"sid:{request.sid}")
            env = svc.tickers.envelope(req.exchange, symbol)
            if env is not None:
                cached.append(env)
        socketio.start_background_task(svc.hub.send_to, request.sid, cached)
        return {"ok": True, "subscribed": sorted(s for e, s in conn.tickers if e == req.exchange),
                "rooms": [ticker_room(req.exchange, s) for s in req.symbols]}

    @socketio.on("unsubscribe_ticker")
    def on_unsubscribe_ticker(data=None):  # type: ignore[no-untyped-def]
        svc, conn, req = _ticker_request(data)
        if svc is None:
            return req
        for symbol in req.symbols:
            leave_room(ticker_room(req.exchange, symbol))
            conn.tickers.discard((req.exchange, symbol))
            svc.tickers.unsubscribe(req.exchange, False, symbol, f"sid:{request.sid}")
        return {"ok": True, "subscribed": sorted(s for e, s in conn.tickers if e == req.exchange)}

    @socketio.on("disconnect")
    def on_disconnect(*_args):  # type: ignore[no-untyped-def]
        svc = _svc()
        conn, last = svc.hub.remove(request.sid)
        if conn is None:
            return
        logger.debug("socket disconnected user_id=%s sid=%s last=%s", conn.user_id,
                    request.sid, last)
        if conn.tickers:
            svc.tickers.unsubscribe_all(f"sid:{request.sid}")
        if last:
            svc.streams.stop_user(conn.user_id)
            if not svc.streams.keeps(conn.user_id):  # a kept stream still uses its client
                svc.trading.clear_user_cache(conn.user_id)


def _settler(svc, socketio: SocketIO, key_id: int, mirror):  # type: ignore[no-untyped-def]
    """For a fills replay of a key this process follows: a function that waits (at
    most ``LIVE_WAIT_S``) until the key's stream is live somewhere, so that the
    ledger holds the fills made while it ran nowhere (a dead owner): its owner
    answers our ``want`` (returns None), or this process took the stream over and
    it is live (returns its AccountState)."""
    heard = mirror.received

    def settle():  # type: ignore[no-untyped-def]
        svc.hub.ask_owner(key_id)
        deadline = time.monotonic() + LIVE_WAIT_S
        while time.monotonic() < deadline:
            stream = svc.streams.get(key_id)
            if stream is not None:
                if stream.status in ("live", "down"):
                    return stream.state
            elif mirror.received > heard:
                return None
            socketio.sleep(0.05)
        return None
    return settle


def _first_of_remote(svc, socketio: SocketIO, user_id: int, key, kind: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The first envelope of ``kind`` for a subscriber of ``key`` whose stream runs in
    another process (``PushHub.follow``'s ``snapshot``), without asking the exchange
    when the stream's own values can be had: the newest envelope already received from
    the owner (``source: "cache"``); else, waiting at most ``OWNER_WAIT_S``, the
    owner's answer to ``want`` (returns [] and ``follow`` sends it) or, when this
    process took the stream over meanwhile (a dead owner), its cached envelope ([]
    when it is live without one yet: its snapshot reaches the subscriber through the
    channel). Only when none comes, a REST snapshot (``seq`` 0; raises ExchangeError).

    Why: a REST snapshot per type of every such subscriber spent about 55 of the
    venue's per-minute weight (Binance: account 5, positionRisk 5 twice, openOrders of
    every symbol 40) on values the owner holds; in a failover those calls and the
    survivor's take-over snapshots of the same keys share one window, and the
    take-overs the governor held back left their clients without pushes until the
    next minute (docs/push-stream.md, "Failover")."""
    mirror = svc.hub.remote(key.id, user_id)
    held = mirror.newest(kind)
    if held is not None:
        return [dict(held, source="cache")]
    deadline = time.monotonic() + OWNER_WAIT_S
    while time.monotonic() < deadline:
        stream = svc.streams.get(key.id)
        if stream is not None and stream.state.user_id == user_id:  # taken over here
            cached: list[dict[str, Any]] = stream.state.cached([kind])
            if cached or stream.status != STARTING:
                return cached
            socketio.sleep(OWNER_POLL_S)
        # woken by the owner's envelope, else every OWNER_POLL_S a look for a take-over
        # (a storm's thousands of waiting subscribers: no fast polling)
        elif mirror.wait_newest(kind, min(OWNER_POLL_S, deadline - time.monotonic())):
            return []  # the owner answered: ``follow`` sends it
    # none came (or the stream taken over here is still held back by the venue's rate
    # budget): a REST snapshot, as a subscriber of a stream running here gets nothing
    # better meanwhile either (its stream's cached value when it has one)
    return [svc.snapshots.envelope(user_id, key, kind)]


def _send_alerts(svc, socketio: SocketIO, conn, since: dict | None) -> None:  # type: ignore[no-untyped-def]
    """After the ack: the ``alerts`` replay (or empty snapshot) of the connection's
    user; live alerts come through the room joined before it (a client de-duplicates
    by ``id``)."""
    try:
        _, envelopes = svc.notify.alerts.replay(conn.user_id, since)
    except SQLAlchemyError as e:
        logger.warning("alerts replay read failed user_id=%s kind=%s", conn.user_id,
                       type(e).__name__)
        socketio.emit("error", {"code": "replay_unavailable",
                                "message": "the alerts could not be read; try again"}, to=conn.sid)
        return
    if svc.hub.get(conn.sid) is not None:
        svc.hub.send_to(conn.sid, envelopes)


def _send_snapshot(svc, socketio: SocketIO, conn, plans: list, statuses: list[dict],  # type: ignore[no-untyped-def]
                   remote: list[tuple]) -> None:
    """After the ack: each type's first envelopes (snapshot or resume) and then its
    live pushes, the stream states, and REST snapshots of keys streamed elsewhere
    (with a message queue followed by their live pushes from the queue, conflated
    per ``max_hz`` like the local ones)."""
    for plan in sorted(plans, key=lambda p: p.wait_live):  # a replay's wait delays no other
        if plan.prepare is not None:
            if plan.wait_live:
                stream = svc.streams.get(plan.state.key_id)
                deadline = time.monotonic() + LIVE_WAIT_S
                while stream is not None and stream.status not in ("live", "down") \
                        and time.monotonic() < deadline:
                    socketio.sleep(0.05)
            plan.prepare()
            if plan.error:
                svc.hub.emit_to(conn.sid, "error",
                                {"code": "replay_unavailable", "message": plan.error})
        svc.hub.attach(conn, plan.state, plan.kind, plan.first)
    for user_id, key, kind in remote:
        try:
            svc.hub.follow(conn, key.id, kind,
                           lambda u=user_id, k=key, t=kind: _first_of_remote(svc, socketio, u, k, t))
        except ExchangeError as e:
            svc.hub.emit_to(conn.sid, "error", {"code": "snapshot_unavailable", "message": str(e)})
    for status in statuses:
        svc.hub.emit_to(conn.sid, "stream_status", status)
