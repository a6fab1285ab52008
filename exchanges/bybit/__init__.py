"""Bybit v5 linear (USDT perpetual) adapter: REST client, private stream, wire mapping, errors.

``BybitLinearClient`` implements ``exchanges.base.ExchangeClient`` on pybit's
``unified_trading.HTTP``; ``BybitUserStream`` implements ``exchanges.base.UserStream``
on ``websocket-client``. ``mapping`` holds the pure JSON -> ``exchanges.types``
functions and ``errors`` the one exception translation.
``spec`` holds the venue's facts (``exchanges.spec.VenueSpec``). The adapter modules
load on first use, so that reading the spec does not import the exchange library.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"BybitLinearClient": "client", "BybitUserStream": "stream"}
__all__ = ["BybitLinearClient", "BybitUserStream"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"exchanges.bybit.{_LAZY[name]}"), name)
    raise AttributeError(name)
