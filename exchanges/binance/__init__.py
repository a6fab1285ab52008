"""Binance USD-M futures adapter: REST client, user data stream, wire mapping, errors.

``BinanceFuturesClient`` implements ``exchanges.base.ExchangeClient`` on python-binance's
synchronous REST client; ``BinanceUserStream`` implements ``exchanges.base.UserStream``
on ``websocket-client``. ``mapping`` holds the pure JSON -> ``exchanges.types``
functions and ``errors`` the one exception translation.
``spec`` holds the venue's facts (``exchanges.spec.VenueSpec``). Nothing is imported
here, so that reading the spec does not import the exchange library.
"""
