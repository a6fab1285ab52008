"""Binance USD-M futures: the venue's facts (``exchanges.spec.VenueSpec``).

Sources (developers.binance.com/docs/derivatives/usds-margined-futures/...):
"General Info" (REQUEST_WEIGHT 2400 per minute per IP, reported in
``X-MBX-USED-WEIGHT-1M``; 429/418 with ``Retry-After``), each endpoint's own page for
its "Request Weight" (openOrders: 1 with a symbol, 40 without; New Order: 0 on the IP
limit, it counts on the order-count limits), "User Data Streams" (a listenKey lives
60 minutes, a PUT extends it; we PUT every 30), "Error Codes" (the table below),
"New Algo Order" / "Cancel Algo Order" / "Query Algo Order" / "Current All Algo Open
Orders" (weights and the callbackRate range) and the 2025-11-06 change log (conditional
types move to the Algo Service on 2025-12-09; -4120 on ``/fapi/v1/order``).
Default URLs: CONTRACT.md "Where the server finds the exchanges".
"""
from __future__ import annotations

from decimal import Decimal

from exchanges.errors import (
    AuthFailed, ClockSkew, ExchangeTimeout, ExchangeUnavailable, InsufficientBalance,
    InvalidOrder, OrderNotFound, RateLimited, UseAlgoOrderApi,
)
from exchanges.spec import Endpoint, ProtectionSpec, RateLimit, VenueSpec
from exchanges.types import VenueEndpoints, WorkingType

BINANCE = VenueSpec(
    name="binance",
    mainnet=VenueEndpoints("https://fapi.binance.com", "wss://fstream.binance.com"),
    testnet=VenueEndpoints("https://testnet.binancefuture.com", "wss://fstream.binancefuture.com"),
    rate_limit=RateLimit(weight=2400, window_s=60.0, used_weight_header="X-MBX-USED-WEIGHT-1M"),
    endpoints={
        "time": Endpoint("GET", "/fapi/v1/time", 1),
        "symbol_rules": Endpoint("GET", "/fapi/v1/exchangeInfo", 1),
        "credentials": Endpoint("GET", "/fapi/v3/balance", 5),
        "balance": Endpoint("GET", "/fapi/v2/account", 5),
        "positions": Endpoint("GET", "/fapi/v2/positionRisk", 5),
        "open_orders": Endpoint("GET", "/fapi/v1/openOrders", 1),         # of one symbol
        "open_orders_all": Endpoint("GET", "/fapi/v1/openOrders", 40),    # of every symbol
        "order": Endpoint("GET", "/fapi/v1/order", 1),
        "order_create": Endpoint("POST", "/fapi/v1/order", 0),   # counts on the order limits
        "order_cancel": Endpoint("DELETE", "/fapi/v1/order", 1),
        "fills": Endpoint("GET", "/fapi/v1/userTrades", 5),
        "mark_price": Endpoint("GET", "/fapi/v1/premiumIndex", 1),
        "ticker_price": Endpoint("GET", "/fapi/v2/ticker/price", 1),
        "book_ticker": Endpoint("GET", "/fapi/v1/ticker/bookTicker", 2),
        "listen_key": Endpoint("POST", "/fapi/v1/listenKey", 1),         # PUT and DELETE: 1
        # Algo Service (New Algo Order: "0 on IP rate limit"; Cancel / Query Algo
        # Order: 1; Current All Algo Open Orders: 1 with a symbol, 40 without).
        "algo_order_create": Endpoint("POST", "/fapi/v1/algoOrder", 0),
        "algo_order_cancel": Endpoint("DELETE", "/fapi/v1/algoOrder", 1),
        "algo_order": Endpoint("GET", "/fapi/v1/algoOrder", 1),
        "open_algo_orders": Endpoint("GET", "/fapi/v1/openAlgoOrders", 1),
        "open_algo_orders_all": Endpoint("GET", "/fapi/v1/openAlgoOrders", 40),
        "income": Endpoint("GET", "/fapi/v1/income", 30),              # Get Income History
    },
    settle_assets=("USDT",),
    open_orders_per_symbol=True,
    full_orders_every=10,
    # account 5 + positionRisk 5 + openOrders per known symbol 1 (say 2 symbols) or,
    # one round in 10, of every symbol 40: (9 * 12 + 50) / 10 = 15.8
    poll_round_weight=16,
    stream_keepalive_s=30 * 60.0,
    error_codes={
        -1022: AuthFailed,          # Signature for this request is not valid.
        -2014: AuthFailed,          # API-key format invalid.
        -2015: AuthFailed,          # Invalid API-key, IP, or permissions for action.
        -1003: RateLimited,         # Too many requests.
        -1021: ClockSkew,           # Timestamp for this request is outside of the recvWindow.
        -1001: ExchangeUnavailable,  # Internal error; unable to process your request.
        -1007: ExchangeTimeout,     # Timeout waiting for response from backend; status unknown.
        -1125: ExchangeUnavailable,  # This listenKey does not exist: the stream must reconnect.
        -2019: InsufficientBalance,  # Margin is insufficient.
        -2013: OrderNotFound,       # Order does not exist. (GET /fapi/v1/order)
        -2011: OrderNotFound,       # Unknown order sent. (DELETE /fapi/v1/order)
        # Conditional orders (the Algo Service since 2025-12-09):
        -4120: UseAlgoOrderApi,     # Order type not supported for this endpoint. Please
                                    # use the Algo Order API endpoints instead.
        -2021: InvalidOrder,        # Order would immediately trigger.
        -2007: InvalidOrder,        # Invalid callBack rate.
        -4130: InvalidOrder,        # An open stop or take profit order with GTE and
                                    # closePosition in the direction is existing.
        -4509: InvalidOrder,        # TIF GTE can only be used with open positions or
                                    # open orders.
        -2022: InvalidOrder,        # ReduceOnly Order is rejected.
    },
    unknown_symbol_code=-1121,   # Invalid symbol.
    protection=ProtectionSpec(
        trailing_by="callback_rate", callback_rate_min=Decimal("0.1"),
        callback_rate_max=Decimal("10"),
        working_types=(WorkingType.MARK_PRICE, WorkingType.CONTRACT_PRICE),
        trailing_closes_position=False, legs_are_position_attributes=False,
        max_open_legs=10),
    client_class="exchanges.binance.client:BinanceFuturesClient",
    market_stream_class="exchanges.binance.market:BinanceMarkPriceStream",
)
