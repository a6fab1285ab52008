"""The kinds of account data a key's push carries (CONTRACT.md, "Resume on subscribe").

``balance``, ``positions``, ``pnl`` and ``orders`` are states: each envelope is the
whole current value, so only the latest matters (conflated, served as a REST snapshot
by GET /api/account/{kind}, marked stale when the venue is unreachable). ``fills`` are
events: every one is sent, and a resume replays them from the ledger. ``alerts``
(third round) are events of the user (``key_id`` optional), replayed from the
``alerts`` table.

Standard library only, so that the request schemas, the services, ``api/`` and ``ws/``
all read the kinds from here without an import cycle.
"""
from __future__ import annotations

from typing import Literal, get_args

StateKind = Literal["balance", "positions", "pnl", "orders"]
AccountKind = Literal[StateKind, "fills", "alerts"]

# every state kind, in the order envelopes and metrics list them
STATE_TYPES: tuple[str, ...] = get_args(StateKind)
# every account kind a subscription may name: the states, then ``fills`` and ``alerts``
ACCOUNT_TYPES: tuple[str, ...] = get_args(AccountKind)
# kinds that belong to the user, not to one key (``alerts``: services.notify.alerts);
# events like ``fills`` (never conflated, replayable with ``since``)
USER_TYPES: tuple[str, ...] = ("alerts",)
EVENT_TYPES: tuple[str, ...] = ("fills", "alerts")
