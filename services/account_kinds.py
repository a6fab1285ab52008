"""The kinds of account data a key's push carries (CONTRACT.md, "Resume on subscribe").

``balance``, ``positions``, ``pnl`` and ``orders`` are states: each envelope is the
whole current value, so only the latest matters (conflated, served as a REST snapshot
by GET /api/account/{kind}, marked stale when the venue is unreachable). ``fills`` are
events: every one is sent, and a resume replays them from the ledger.

Standard library only, so that the request schemas, the services, ``api/`` and ``ws/``
all read the kinds from here without an import cycle.
"""
from __future__ import annotations

from typing import Literal, get_args

StateKind = Literal["balance", "positions", "pnl", "orders"]
AccountKind = Literal[StateKind, "fills"]

# every state kind, in the order envelopes and metrics list them
STATE_TYPES: tuple[str, ...] = get_args(StateKind)
# every account kind a subscription may name: the states, then ``fills``
ACCOUNT_TYPES: tuple[str, ...] = get_args(AccountKind)
