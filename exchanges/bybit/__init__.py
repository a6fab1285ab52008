"""Bybit v5 linear (USDT perpetual) adapter: REST client, private stream, wire mapping, errors.

``BybitLinearClient`` implements ``exchanges.base.ExchangeClient`` on pybit's
``unified_trading.HTTP``; ``BybitUserStream`` implements ``exchanges.base.UserStream``
on ``websocket-client``. ``mapping`` holds the pure JSON -> ``exchanges.types``
functions and ``errors`` the one exception translation.
``spec`` holds the venue's facts (``exchanges.spec.VenueSpec``). Nothing is imported
here, so that reading the spec does not import the exchange library.
"""
