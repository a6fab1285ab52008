"""``VenueSpec``: every fact about one venue that code outside its adapter asks for, in
one declarative, frozen table per venue (after ccxt's ``describe()``, hummingbot's
``binance_perpetual_constants.py`` and freqtrade's ``_ft_has``).

Each venue's table is in its package (``exchanges/binance/spec.py``,
``exchanges/bybit/spec.py``) and all of them are registered in ``exchanges.venues``.
Code asks the table (``venue(name).weight("account")``,
``venue(name).open_orders_per_symbol``), never ``if exchange == "binance"``.

This module imports nothing of an adapter, so every adapter module may import its
own spec without a cycle.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from exchanges.errors import ExchangeError
from exchanges.types import VenueEndpoints, WorkingType


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint: ``method``, ``path`` (under the venue's REST base URL) and
    its ``weight`` on the venue's per-IP limit (``RateLimit``)."""

    method: str
    path: str
    weight: int = 1


@dataclass(frozen=True)
class RateLimit:
    """The venue's per-IP request budget: ``weight`` per ``window_s`` seconds (windows
    aligned to the wall clock), and the reply header that reports the weight used in
    the current window (None: the venue does not report it, or the adapter cannot read
    it)."""

    weight: int
    window_s: float
    used_weight_header: str | None = None


@dataclass(frozen=True)
class ProtectionSpec:
    """How a venue holds protection legs (stop-loss, take-profit, trailing stop).

    Fields:
        trailing_by: ``"callback_rate"`` (the venue trails by a percentage: Binance
            ``callbackRate``) or ``"distance"`` (by a price distance: Bybit
            ``trailingStop``; the adapter converts a rate into a distance).
        callback_rate_min, callback_rate_max: the venue's range of a trailing stop's
            callback rate in percent (Binance New Algo Order: "min 0.1, max 10 where
            1 for 1%"), ``None`` when the venue has none of its own (Bybit: any
            distance of at least one tick).
        working_types: the trigger prices a leg may watch.
        trailing_closes_position: True when the trailing leg is close-all (Bybit
            ``tpslMode=Full``); False when it is a reduce-only order for the position's
            size at placement (Binance: ``closePosition`` is only for STOP_MARKET and
            TAKE_PROFIT_MARKET), so a position that grows is only partly covered.
        legs_are_position_attributes: True when the venue keeps the legs on the
            position (Bybit trading-stop: one of each kind per position, no client id;
            the adapter names them ``"<symbol>-<kind>"``).
        max_open_legs: open conditional orders per symbol the venue allows (Binance
            MAX_NUM_ALGO_ORDERS, 10 at the time of writing; Bybit: one per kind).
    """

    trailing_by: str
    callback_rate_min: Decimal | None
    callback_rate_max: Decimal | None
    working_types: tuple[WorkingType, ...]
    trailing_closes_position: bool
    legs_are_position_attributes: bool
    max_open_legs: int


def _frozen(mapping: Mapping) -> Mapping:  # type: ignore[type-arg]
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class VenueSpec:
    """What one venue is and allows.

    Fields:
        name: the venue's name in the API, the database and the configuration
            (``"binance"``); also the prefix of its URL settings (``BINANCE_REST_URL``).
        mainnet, testnet: the real default REST and WebSocket base URLs (CONTRACT.md
            "Where the server finds the exchanges"; the environment overrides them).
        rate_limit: the per-IP request budget the venue's ``RateGovernor`` enforces.
        endpoints: ``{name: Endpoint}`` of every REST call the adapter makes; the
            adapter passes ``weight(name)`` to its governor.
        settle_assets: the assets the contracts settle in, which the account totals
            are counted in (``USDT``).
        open_orders_per_symbol: asking the open orders symbol by symbol costs less
            than asking for every symbol at once (Binance: 1 against 40), so the
            polling fallback asks per known symbol, and for everything one round in
            ``full_orders_every``.
        full_orders_every: see ``open_orders_per_symbol``.
        poll_round_weight: the average weight of one REST refresh of balance,
            positions and open orders (the polling fallback's round per account),
            from ``endpoints``' weights; the spec's test checks the arithmetic.
        stream_keepalive_s: how often the private stream must be kept alive
            (Binance: listenKey PUT; Bybit: a ping frame), seconds.
        error_codes: ``{venue error code: ExchangeError subclass}`` for replies whose
            HTTP status is not decisive on its own; the adapter's ``errors`` module is
            the only reader.
        unknown_symbol_code: the code the venue answers for a symbol it does not list
            (the adapter raises InvalidOrder with it without asking again).
        protection: the venue's ProtectionSpec (None: the adapter places no legs).
        client_class, market_stream_class: ``"module:Class"`` of the adapter's
            ``ExchangeClient`` and public ``MarketStream`` (imported on first use by
            ``exchanges.venues``).
    """

    name: str
    mainnet: VenueEndpoints
    testnet: VenueEndpoints
    rate_limit: RateLimit
    endpoints: Mapping[str, Endpoint]
    settle_assets: tuple[str, ...]
    open_orders_per_symbol: bool
    poll_round_weight: int
    stream_keepalive_s: float
    client_class: str
    market_stream_class: str
    full_orders_every: int = 10
    error_codes: Mapping[int, type[ExchangeError]] = field(default_factory=dict)
    unknown_symbol_code: int | None = None
    protection: ProtectionSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", _frozen(self.endpoints))
        object.__setattr__(self, "error_codes", _frozen(self.error_codes))

    def weight(self, endpoint: str) -> int:
        """The weight of ``endpoint`` (a key of ``endpoints``) on the per-IP limit.
        Raises KeyError for an endpoint the table does not list."""
        return self.endpoints[endpoint].weight

    def margin_asset(self, symbol: str) -> str | None:
        """The settle asset of ``symbol`` (``BTCUSDT`` -> ``USDT``), None when it
        settles in none of ``settle_assets``."""
        return next((a for a in self.settle_assets if symbol.endswith(a)), None)

    def url_settings(self) -> dict[str, str]:
        """``{"<NAME>[_TESTNET]_REST_URL" / "..._WS_URL": default URL}``: the venue's
        settings and their real defaults (CONTRACT.md)."""
        prefix = self.name.upper()
        return {f"{prefix}_REST_URL": self.mainnet.rest_url, f"{prefix}_WS_URL": self.mainnet.ws_url,
                f"{prefix}_TESTNET_REST_URL": self.testnet.rest_url,
                f"{prefix}_TESTNET_WS_URL": self.testnet.ws_url}
