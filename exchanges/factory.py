"""Build an ``ExchangeClient`` for a venue from credentials and endpoints."""
from __future__ import annotations

from exchanges.base import ExchangeClient, MarketStream
from exchanges.errors import UnsupportedExchange
from exchanges.governor import RateGovernor
from exchanges.types import VenueEndpoints

SUPPORTED_EXCHANGES = ("binance", "bybit")

# Venues where the open orders of every symbol cost more than asking symbol by symbol
# (Binance USD-M openOrders: 40 without a symbol, 1 with one); the polling fallback
# then asks per known symbol and for everything every ``FULL_ORDERS_EVERY`` rounds.
OPEN_ORDERS_PER_SYMBOL = {"binance": True, "bybit": False}
FULL_ORDERS_EVERY = 10

# The IP weight of one REST refresh of balance, positions and open orders (what the
# polling fallback does per account), on average: Binance account 5 + positionRisk 5 +
# openOrders per known symbol 1 (say 2 symbols) or, one round in 10, of every symbol 40;
# Bybit three requests of weight 1.
POLL_ROUND_WEIGHT = {"binance": 16, "bybit": 3}


def create_client(exchange: str, api_key: str, api_secret: str, testnet: bool,
                  endpoints: VenueEndpoints, timeout_s: float = 10.0,
                  governor: RateGovernor | None = None) -> ExchangeClient:
    """Return a ready client for ``exchange`` talking to ``endpoints``, its REST calls
    admitted by the venue's shared ``governor`` when one is given.

    No network I/O happens here (python-binance's construction-time ping is off;
    pybit's ``HTTP`` does none).
    Raises UnsupportedExchange for a venue without an adapter.
    """
    if exchange == "binance":
        from exchanges.binance.client import BinanceFuturesClient
        return BinanceFuturesClient(api_key, api_secret, testnet=testnet,
                                    endpoints=endpoints, timeout_s=timeout_s, governor=governor)
    if exchange == "bybit":
        from exchanges.bybit.client import BybitLinearClient
        return BybitLinearClient(api_key, api_secret, testnet=testnet,
                                 endpoints=endpoints, timeout_s=timeout_s, governor=governor)
    raise UnsupportedExchange(f"no adapter for exchange {exchange!r}")


def create_market_stream(exchange: str, symbol: str, endpoints: VenueEndpoints,
                         timeout_s: float = 10.0) -> MarketStream:
    """A not yet connected public price stream of ``symbol`` on ``exchange``.
    Raises UnsupportedExchange for a venue without one."""
    if exchange == "binance":
        from exchanges.binance.market import BinanceMarkPriceStream
        return BinanceMarkPriceStream(symbol, endpoints.ws_url, timeout_s)
    if exchange == "bybit":
        from exchanges.bybit.market import BybitTickerStream
        return BybitTickerStream(symbol, endpoints.ws_url, timeout_s)
    raise UnsupportedExchange(f"no market stream for exchange {exchange!r}")
