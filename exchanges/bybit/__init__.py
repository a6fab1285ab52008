"""Bybit v5 linear (USDT perpetual) adapter: REST client, private stream, wire mapping, errors.

``BybitLinearClient`` implements ``exchanges.base.ExchangeClient`` on pybit's
``unified_trading.HTTP``; ``BybitUserStream`` implements ``exchanges.base.UserStream``
on ``websocket-client``. ``mapping`` holds the pure JSON -> ``exchanges.types``
functions and ``errors`` the one exception translation.
"""
from exchanges.bybit.client import BybitLinearClient
from exchanges.bybit.stream import BybitUserStream

__all__ = ["BybitLinearClient", "BybitUserStream"]
