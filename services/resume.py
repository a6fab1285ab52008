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
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from sqlalchemy.exc import SQLAlchemyError

from services.account_state import AccountState
from services.fill_feed import FillFeed

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """What to send one subscriber of ``state``'s ``kind`` before live pushes;
    ``first`` is called when its live pushes start (see ws.fanout.Fanout.attach)."""

    state: AccountState
    kind: str
    first: Callable[[], list[dict]]


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
                    ok, first = self._fills(state, pos)
                else:
                    ok, first = self._state(state, kind, pos)
                resumed[kind] = resumed.get(kind, True) and ok
                plans.append(Plan(state, kind, first))
        return resumed, plans

    @staticmethod
    def _state(state: AccountState, kind: str, pos: dict | None):  # type: ignore[no-untyped-def]
        def snapshot() -> list[dict]:
            return state.cached([kind])

        if (not pos or pos.get("epoch") != state.epoch or pos.get("seq") is None
                or state.last(kind) is None or pos["seq"] > state.seq(kind)):
            return False, snapshot
        seq = pos["seq"]

        def continued() -> list[dict]:
            if seq == state.seq(kind) and not state.pending(kind):
                return []  # the client holds the current value
            return state.cached([kind])
        return True, continued

    def _fills(self, state: AccountState, pos: dict | None):  # type: ignore[no-untyped-def]
        def empty() -> list[dict]:
            return [state.fills_snapshot([])]

        if not pos:
            return False, empty
        if pos.get("epoch") == state.epoch and pos.get("seq") is not None \
                and state.fills_after(pos["seq"]) is not None:
            seq = pos["seq"]
            return True, lambda: state.fills_after(seq) or []
        if pos.get("time") is None:
            return False, empty
        since_ms = pos["time"]
        try:
            durable = self._feed.since(state.key_id, since_ms)
        except SQLAlchemyError as e:
            logger.warning("fills replay read failed key_id=%s kind=%s", state.key_id,
                           type(e).__name__)
            return False, empty

        def replay() -> list[dict]:
            rows: dict[tuple[str, str], dict] = {(r["symbol"], r["trade_id"]): r for r in durable}
            for r in state.recent_fills():  # pushed, maybe not yet written by the ledger
                if r["time"] >= since_ms:
                    rows.setdefault((r["symbol"], r["trade_id"]), r)
            return [state.fills_snapshot(sorted(rows.values(),
                                                key=lambda r: (r["time"], r["trade_id"])))]
        return True, replay
