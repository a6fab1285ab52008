"""Normalized account-stream events the ledger stores that ``exchanges.types`` may not
define yet.

TODO(issue 20): ``exchanges.types.FundingFee`` is added by the venue work (branch
``venue``); once it is merged this module only re-exports it and can go.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

try:
    from exchanges.types import FundingFee  # type: ignore[attr-defined]
except ImportError:  # the venue's definition is not merged yet: the same fields
    @dataclass(frozen=True)
    class FundingFee:  # type: ignore[no-redef]
        """A funding payment on a position: ``amount`` signed as the wallet sees it
        (negative paid, positive received) in ``asset``; ``time_ms`` ms UTC; ``id``
        unique per venue and account (Binance income ``tranId`` or
        ``FUNDING_FEE-<asset>-<T>`` from the stream, Bybit ``execId``); ``symbol``
        ``""`` when the venue does not name it."""

        symbol: str
        amount: Decimal
        asset: str
        time_ms: int
        id: str

__all__ = ["FundingFee"]
