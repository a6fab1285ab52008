"""Binance USD-M futures adapter: REST client, user data stream, wire mapping, errors.

``BinanceFuturesClient`` implements ``exchanges.base.ExchangeClient`` on python-binance's
synchronous REST client; ``BinanceUserStream`` implements ``exchanges.base.UserStream``
on ``websocket-client``. ``mapping`` holds the pure JSON -> ``exchanges.types``
functions and ``errors`` the one exception translation.
"""
from exchanges.binance.client import BinanceFuturesClient
from exchanges.binance.stream import BinanceUserStream

__all__ = ["BinanceFuturesClient", "BinanceUserStream"]
