"""The protection domain: stop-loss, take-profit and trailing stop legs of a position
(CONTRACT.md "Protection"). ``service.ProtectionService`` is the entry point;
``index.TriggerIndex`` the ordered trigger levels of the server-mode rules;
``guard.ServerGuard`` feeds them the shared market stream's ticks; ``rules`` holds the
request checks; ``view`` the answer's shape."""
from services.protection.index import Rule, TickResult, TriggerIndex
from services.protection.service import ProtectionService

__all__ = ["ProtectionService", "Rule", "TickResult", "TriggerIndex"]
