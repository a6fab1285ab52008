"""Bybit v5 linear (USDT perpetuals): the venue's facts (``exchanges.spec.VenueSpec``).

Sources (bybit-exchange.github.io/docs/v5/...): ``rate-limit.mdx`` (600 requests per
5 s per IP, HTTP 403 beyond it; every request counts 1; the per-UID per-endpoint
limits answer retCode 10006), ``ws/connect.mdx`` (a client ping every 20 s, idle
connections dropped after 10 min), ``error.mdx`` (the table below). Default URLs:
CONTRACT.md "Where the server finds the exchanges".
"""
from __future__ import annotations

from exchanges.errors import (
    AuthFailed, ClockSkew, ExchangeTimeout, ExchangeUnavailable, InsufficientBalance,
    InvalidOrder, OrderNotFound, RateLimited,
)
from exchanges.spec import Endpoint, ProtectionSpec, RateLimit, VenueSpec
from exchanges.types import VenueEndpoints, WorkingType

BYBIT = VenueSpec(
    name="bybit",
    mainnet=VenueEndpoints("https://api.bybit.com", "wss://stream.bybit.com"),
    testnet=VenueEndpoints("https://api-testnet.bybit.com", "wss://stream-testnet.bybit.com"),
    # pybit does not hand back the X-Bapi-Limit-Status headers without changing every
    # call's return shape, so no used weight is read for Bybit
    rate_limit=RateLimit(weight=600, window_s=5.0, used_weight_header=None),
    endpoints={
        "time": Endpoint("GET", "/v5/market/time"),
        "symbol_rules": Endpoint("GET", "/v5/market/instruments-info"),
        "ticker": Endpoint("GET", "/v5/market/tickers"),
        "credentials": Endpoint("GET", "/v5/account/wallet-balance"),
        "balance": Endpoint("GET", "/v5/account/wallet-balance"),
        "positions": Endpoint("GET", "/v5/position/list"),          # per page
        "open_orders": Endpoint("GET", "/v5/order/realtime"),       # per page
        "open_orders_all": Endpoint("GET", "/v5/order/realtime"),   # settleCoin, per page
        "order": Endpoint("GET", "/v5/order/realtime"),
        "order_history": Endpoint("GET", "/v5/order/history"),
        "order_create": Endpoint("POST", "/v5/order/create"),
        "order_cancel": Endpoint("POST", "/v5/order/cancel"),
        "fills": Endpoint("GET", "/v5/execution/list"),             # per page
        "trading_stop": Endpoint("POST", "/v5/position/trading-stop"),
        "funding": Endpoint("GET", "/v5/execution/list"),           # execType=Funding, per page
    },
    settle_assets=("USDT",),
    open_orders_per_symbol=False,
    poll_round_weight=3,   # wallet-balance + position/list + order/realtime, 1 each
    stream_keepalive_s=20.0,
    error_codes={
        10003: AuthFailed,           # API key is invalid.
        10004: AuthFailed,           # Error sign, please check your signature generation algorithm.
        10005: AuthFailed,           # Permission denied, please check your API key permissions.
        10007: AuthFailed,           # User authentication failed.
        10010: AuthFailed,           # Unmatched IP, please check your API key's bound IP addresses.
        10002: ClockSkew,            # The request time exceeds the time window range.
        10006: RateLimited,          # Too many visits. Exceeded the API Rate Limit.
        10018: RateLimited,          # Exceeded the IP Rate Limit.
        10000: ExchangeTimeout,      # Server Timeout (fate unknown).
        10016: ExchangeUnavailable,  # Server error.
        110004: InsufficientBalance,  # Wallet balance is insufficient.
        110007: InsufficientBalance,  # Available balance is insufficient.
        110012: InsufficientBalance,  # Insufficient available balance.
        110001: OrderNotFound,       # Order does not exist.
        110008: OrderNotFound,       # The order has been completed or cancelled.
        110010: OrderNotFound,       # The order has been cancelled.
        # Conditional orders and position TP/SL (any other retCode is InvalidOrder too;
        # listed for the record): 110092 expect Rising, but trigger_price <= current;
        # 110093 expect Falling, but trigger_price >= current.
        110092: InvalidOrder,
        110093: InvalidOrder,
    },
    unknown_symbol_code=10001,   # params error: symbol invalid
    # position/trading-stop.mdx: TP/SL/trailing are position attributes (tpslMode=Full:
    # the whole position); trailingStop is a price distance; tp/slTriggerBy
    # LastPrice/MarkPrice/IndexPrice.
    protection=ProtectionSpec(
        trailing_by="distance", callback_rate_min=None, callback_rate_max=None,
        working_types=(WorkingType.MARK_PRICE, WorkingType.CONTRACT_PRICE),
        trailing_closes_position=True, legs_are_position_attributes=True, max_open_legs=3),
    client_class="exchanges.bybit.client:BybitLinearClient",
    market_stream_class="exchanges.bybit.market:BybitTickerStream",
)
