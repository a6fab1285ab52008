"""Build an ``ExchangeClient`` for a venue from credentials and endpoints; the adapter
classes come from the venue's spec (``exchanges.venues``)."""
from __future__ import annotations

from exchanges.base import ExchangeClient, MarketStream
from exchanges.governor import RateGovernor
from exchanges.types import VenueEndpoints
from exchanges.venues import SUPPORTED_EXCHANGES, load, venue

__all__ = ["SUPPORTED_EXCHANGES", "create_client", "create_market_stream"]


def create_client(exchange: str, api_key: str, api_secret: str, testnet: bool,
                  endpoints: VenueEndpoints, timeout_s: float = 10.0,
                  governor: RateGovernor | None = None) -> ExchangeClient:
    """Return a ready client for ``exchange`` talking to ``endpoints``, its REST calls
    admitted by the venue's shared ``governor`` when one is given.

    No network I/O happens here (python-binance's construction-time ping is off;
    pybit's ``HTTP`` does none).
    Raises UnsupportedExchange for a venue without an adapter.
    """
    cls = load(venue(exchange).client_class)
    client: ExchangeClient = cls(api_key, api_secret, testnet=testnet, endpoints=endpoints,
                                 timeout_s=timeout_s, governor=governor)
    return client


def create_market_stream(exchange: str, symbol: str, endpoints: VenueEndpoints,
                         timeout_s: float = 10.0) -> MarketStream:
    """A not yet connected public price stream of ``symbol`` on ``exchange``.
    Raises UnsupportedExchange for a venue without one."""
    stream: MarketStream = load(venue(exchange).market_stream_class)(symbol, endpoints.ws_url,
                                                                     timeout_s)
    return stream
