"""Binance USD-M futures adapter: REST client, user data stream, wire mapping, errors.

``BinanceFuturesClient`` implements ``exchanges.base.ExchangeClient`` on python-binance's
synchronous REST client; ``BinanceUserStream`` implements ``exchanges.base.UserStream``
on ``websocket-client``. ``mapping`` holds the pure JSON -> ``exchanges.types``
functions and ``errors`` the one exception translation.
``spec`` holds the venue's facts (``exchanges.spec.VenueSpec``). The adapter modules
load on first use, so that reading the spec does not import the exchange library.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"BinanceFuturesClient": "client", "BinanceUserStream": "stream"}
__all__ = ["BinanceFuturesClient", "BinanceUserStream"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"exchanges.binance.{_LAZY[name]}"), name)
    raise AttributeError(name)
