"""Build an ``ExchangeClient`` for a venue from credentials and endpoints."""
from __future__ import annotations

from exchanges.base import ExchangeClient
from exchanges.errors import UnsupportedExchange
from exchanges.types import VenueEndpoints

SUPPORTED_EXCHANGES = ("binance",)


def create_client(exchange: str, api_key: str, api_secret: str, testnet: bool,
                  endpoints: VenueEndpoints, timeout_s: float = 10.0) -> ExchangeClient:
    """Return a ready client for ``exchange`` talking to ``endpoints``.

    No network I/O happens here (python-binance's construction-time ping is off).
    Raises UnsupportedExchange for a venue without an adapter.
    """
    if exchange == "binance":
        from exchanges.binance.client import BinanceFuturesClient
        return BinanceFuturesClient(api_key, api_secret, testnet=testnet,
                                    endpoints=endpoints, timeout_s=timeout_s)
    raise UnsupportedExchange(f"no adapter for exchange {exchange!r}")
