"""What a new subscriber is sent first: the snapshot, or the continuation of the
copy it already holds (``since`` on subscribe, CONTRACT.md "Resume on subscribe").

States (balance, positions, pnl, orders): only the latest matters. Same epoch and
``seq`` current: nothing is re-sent; same epoch and an older ``seq``: the current
envelope; anything else: the current snapshot (``resumed: false``).

Fills are events. Same epoch and a ``seq`` still in the key's kept log: the
envelopes after it, as they were sent (same ``seq``). ``{"time": T}`` (also across
a server restart): every fill of the key with exchange time >= T, from the ledger
plus the fills not yet durable, oldest first, in one envelope at the current
``seq``. Otherwise: an empty snapshot and ``resumed: false`` (the client may ask
again with ``time``).

A key whose stream runs in another process (this one follows it through Redis):
``{"time": T}`` is replayed from the ledger alone (``remote_fills``), at the epoch
and ``seq`` of the key's fills last received here; an ``{"epoch", "seq"}`` position
cannot be continued here (the kept log is the owner's): an empty snapshot,
``resumed: false``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from services.account_state import AccountState
from services.fill_feed import FillFeed

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """What to send one subscriber of ``state``'s ``kind`` before live pushes.

    ``prepare`` (may be None) runs first, in a background task, outside any lock
    (the ledger read of a fills replay); ``wait_live``: run it once the stream is
    live, so that the fills its gap fill finds are in the replay and not pushed to
    this subscriber a second time; ``first`` is called when the live pushes start
    (see ws.fanout.Fanout.attach). ``error`` is set by ``prepare`` when it failed."""

    state: AccountState
    kind: str
    first: Callable[[], list[dict]]
    prepare: Callable[[], None] | None = None
    wait_live: bool = False
    error: str | None = None


class ResumeService:
    """Plans the first envelopes of a subscription (reads the ledger for fills)."""

    def __init__(self, feed: FillFeed) -> None:
        self._feed = feed

    def plan(self, states: list[AccountState], kinds: list[str],
             since: dict[str, dict] | None) -> tuple[dict[str, bool], list[Plan]]:
        """``(resumed per kind, plans)`` for the keys' states. ``since`` maps a kind to
        ``{"epoch", "seq"}`` and/or (fills) ``{"time"}``; it names one key's position,
        so it is given with one state only."""
        resumed: dict[str, bool] = {}
        plans: list[Plan] = []
        for state in states:
            for kind in kinds:
                pos = (since or {}).get(kind)
                if kind == "fills":
                    ok, plan = self._fills(state, pos)
                else:
                    ok, plan = self._state(state, kind, pos)
                resumed[kind] = resumed.get(kind, True) and ok
                plans.append(plan)
        return resumed, plans

    @staticmethod
    def _state(state: AccountState, kind: str, pos: dict | None):  # type: ignore[no-untyped-def]
        def snapshot() -> list[dict]:
            return state.cached([kind])

        if (not pos or pos.get("epoch") != state.epoch or pos.get("seq") is None
                or state.last(kind) is None or pos["seq"] > state.seq(kind)):
            return False, Plan(state, kind, snapshot)
        seq = pos["seq"]

        def continued() -> list[dict]:
            if seq == state.seq(kind) and not state.pending(kind):
                return []  # the client holds the current value
            return state.cached([kind])
        return True, Plan(state, kind, continued)

    def _fills(self, state: AccountState, pos: dict | None):  # type: ignore[no-untyped-def]
        def empty() -> list[dict]:
            return [state.fills.snapshot([])]

        if not pos:
            return False, Plan(state, "fills", empty)
        if pos.get("epoch") == state.epoch and pos.get("seq") is not None \
                and state.fills.after(pos["seq"]) is not None:
            seq = pos["seq"]
            return True, Plan(state, "fills", lambda: state.fills.after(seq) or [])
        if pos.get("time") is None:
            return False, Plan(state, "fills", empty)
        since_ms = pos["time"]
        durable: list[dict] = []

        def prepare() -> None:
            try:
                durable.extend(self._feed.since(state.key_id, since_ms))
            except SQLAlchemyError as e:
                logger.warning("fills replay read failed key_id=%s kind=%s", state.key_id,
                               type(e).__name__)
                plan.error = "the fills of the ledger could not be read; try again"

        def replay() -> list[dict]:
            rows: dict[tuple[str, str], dict] = {(r["symbol"], r["trade_id"]): r for r in durable}
            for r in state.fills.recent():  # pushed, maybe not yet written by the ledger
                if r["time"] >= since_ms:
                    rows.setdefault((r["symbol"], r["trade_id"]), r)
            return [state.fills.snapshot(sorted(rows.values(),
                                                key=lambda r: (r["time"], r["trade_id"])))]
        plan = Plan(state, "fills", replay, prepare, wait_live=True)
        return True, plan

    def ledger_fills(self, key_id: int, since_ms: int) -> list[dict]:
        """The ledger's fills of ``key_id`` with exchange time >= ``since_ms`` (ms UTC),
        oldest first (``FillFeed.since``). Raises SQLAlchemyError."""
        return self._feed.since(key_id, since_ms)

    def remote_fills(self, mirror, exchange: str, testnet: bool,  # type: ignore[no-untyped-def]
                     pos: dict | None,
                     settle: Callable[[], AccountState | None] = lambda: None,
                     ) -> tuple[bool, Plan]:
        """``(resumed, plan)`` of the ``fills`` of a key whose stream runs in another
        process. ``mirror``: the key's ``ws.remote_state.RemoteState`` (``key_id``,
        ``user_id``, ``position(kind)``). ``pos`` with ``time`` T (ms UTC): every
        fill of the key in the ledger with exchange time >= T, oldest first, in one
        envelope (``source: "cache"``; its ``epoch`` is the owner's last received
        here, else ``"ledger"``); live fills follow through the key's room (a client
        de-duplicates by ``trade_id``). Otherwise an empty snapshot (not resumed).

        ``settle()`` runs before the ledger is read (in the background task): it
        waits until the key's stream is live somewhere (its owner answered, or this
        process took the stream over from a dead owner and its gap fill is done) and
        returns the local AccountState in the second case: the fills the gap fill
        found and not yet written by the ledger are added from it."""
        rows: list[dict] = []
        local: list[AccountState] = []

        def envelope() -> list[dict]:
            if local:
                return [local[0].fills.snapshot(rows)]
            epoch, seq = mirror.position("fills")
            now = int(time.time() * 1000)
            return [{"type": "fills", "user_id": mirror.user_id, "key_id": mirror.key_id,
                     "exchange": exchange, "testnet": testnet, "epoch": epoch or "ledger",
                     "seq": seq, "as_of": now, "sent_at": now, "source": "cache",
                     "stale": False, "data": rows}]

        if not pos or pos.get("time") is None:
            return False, Plan(mirror, "fills", envelope)  # type: ignore[arg-type]
        since_ms = pos["time"]

        def prepare() -> None:
            state = settle()
            try:
                found = {(r["symbol"], r["trade_id"]): r
                         for r in self._feed.since(mirror.key_id, since_ms)}
            except SQLAlchemyError as e:
                logger.warning("fills replay read failed key_id=%s kind=%s", mirror.key_id,
                               type(e).__name__)
                plan.error = "the fills of the ledger could not be read; try again"
                return
            if state is not None:
                local.append(state)
                for r in state.fills.recent():
                    if r["time"] >= since_ms:
                        found.setdefault((r["symbol"], r["trade_id"]), r)
            rows.extend(sorted(found.values(), key=lambda r: (r["time"], r["trade_id"])))
        plan = Plan(mirror, "fills", envelope, prepare, wait_live=True)  # type: ignore[arg-type]
        return True, plan
