"""The venue registry: every supported venue has a spec, and the factory, the rate
governors, the configuration and the error mapping take their facts from it (each
test swaps a spec field and watches the reader follow)."""
from __future__ import annotations

import contextlib
from dataclasses import replace
from decimal import Decimal

import pytest

from exchanges import venues
from exchanges.binance.spec import BINANCE
from exchanges.bybit.spec import BYBIT
from exchanges.errors import UnsupportedExchange
from exchanges.factory import SUPPORTED_EXCHANGES, create_client, create_market_stream
from exchanges.governor import Governors, RateGovernor
from exchanges.rest_base import GovernedRestClient
from exchanges.spec import Endpoint, RateLimit
from exchanges.types import OrderRequest, VenueEndpoints
from exchanges.venues import VENUES, load, venue

ENDPOINTS = VenueEndpoints("http://127.0.0.1:9", "ws://127.0.0.1:9")


def test_every_supported_venue_has_a_spec_whose_adapters_load() -> None:
    assert SUPPORTED_EXCHANGES == ("binance", "bybit") == tuple(VENUES)
    for name, spec in VENUES.items():
        assert venue(name) is spec and spec.name == name
        client_cls = load(spec.client_class)
        assert issubclass(client_cls, GovernedRestClient) and client_cls.exchange == name
        assert hasattr(load(spec.market_stream_class), "recv")
        assert spec.rate_limit.weight > 0 and spec.rate_limit.window_s > 0
        assert spec.margin_asset("BTCUSDT") == "USDT" and spec.margin_asset("BTCUSD") is None


def test_an_unknown_venue_is_unsupported_everywhere() -> None:
    with pytest.raises(UnsupportedExchange):
        venue("kraken")
    with pytest.raises(UnsupportedExchange):
        create_client("kraken", "k", "s", False, ENDPOINTS)
    with pytest.raises(UnsupportedExchange):
        create_market_stream("kraken", "BTCUSDT", ENDPOINTS)
    with pytest.raises(UnsupportedExchange):
        Governors().get("kraken", False)


def test_the_factory_builds_the_class_the_spec_names(monkeypatch) -> None:
    monkeypatch.setitem(VENUES, "binance", replace(
        BINANCE, client_class=BYBIT.client_class, market_stream_class=BYBIT.market_stream_class))
    client = create_client("binance", "k", "s", False, ENDPOINTS)
    try:
        assert type(client).__name__ == "BybitLinearClient"
    finally:
        client.close()
    assert type(create_market_stream("binance", "BTCUSDT", ENDPOINTS)).__name__ == "BybitTickerStream"


def test_governors_take_the_specs_limit_and_window(monkeypatch) -> None:
    assert (Governors().get("binance", False).weight_limit,
            Governors().get("binance", False).window_s) == (2400, 60.0)
    monkeypatch.setitem(VENUES, "bybit", replace(BYBIT, rate_limit=RateLimit(7, 3.0)))
    gov = Governors().get("bybit", True)
    assert (gov.weight_limit, gov.window_s) == (7, 3.0)
    # EXCHANGE_WEIGHT_LIMITS replaces the weight, the window stays the spec's
    gov = Governors(weight_limits={"bybit": 9}).get("bybit", False)
    assert (gov.weight_limit, gov.window_s) == (9, 3.0)


def test_the_configuration_takes_urls_and_names_from_the_registry(monkeypatch) -> None:
    import config
    for spec in VENUES.values():
        for setting, url in spec.url_settings().items():
            assert config.REAL_VENUE_URLS[setting] == url
        cfg = config.Config()
        assert cfg.venue(spec.name, False) == spec.mainnet
        assert cfg.venue(spec.name, True) == spec.testnet
    assert config.REAL_VENUE_URLS["BINANCE_REST_URL"] == "https://fapi.binance.com"  # CONTRACT.md
    assert len(config.REAL_VENUE_URLS) == 4 * len(VENUES)
    with pytest.raises(config.ConfigError, match=r"<binance\|bybit>"):
        config._weight_limits("kraken=5")
    monkeypatch.setitem(VENUES, "kraken", replace(BYBIT, name="kraken"))
    assert config._weight_limits("kraken=5") == {"kraken": 5}


def test_the_error_mapping_reads_the_specs_code_table() -> None:
    from exchanges.binance import errors as binance_errors
    from exchanges.bybit import errors as bybit_errors
    assert binance_errors.CODE_TABLE is BINANCE.error_codes
    assert bybit_errors.CODE_TABLE is BYBIT.error_codes
    assert binance_errors.EXCHANGE == "binance" and bybit_errors.EXCHANGE == "bybit"


def test_a_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        BINANCE.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        BINANCE.endpoints["balance"] = BINANCE.endpoints["order"]  # type: ignore[index]
    with pytest.raises(TypeError):
        BINANCE.error_codes[1] = UnsupportedExchange  # type: ignore[index]


@pytest.mark.parametrize("spec", list(VENUES.values()), ids=list(VENUES))
def test_poll_round_weight_is_the_endpoints_arithmetic(spec) -> None:
    """One polling round: balance + positions + open orders; where asking per symbol
    is cheaper, 2 known symbols per round and every symbol one round in
    ``full_orders_every``."""
    w = spec.weight
    fixed = w("balance") + w("positions")
    if spec.open_orders_per_symbol:
        n = spec.full_orders_every
        orders = ((n - 1) * 2 * w("open_orders") + w("open_orders_all")) / n
    else:
        orders = w("open_orders_all")
    assert spec.poll_round_weight == round(fixed + orders)


def test_the_registry_is_the_only_list_of_venues() -> None:
    assert venues.SUPPORTED_EXCHANGES is SUPPORTED_EXCHANGES


class RecordingGovernor(RateGovernor):
    """Admits everything and records each request's weight."""

    def __init__(self, exchange: str) -> None:
        super().__init__(exchange, weight_limit=10**9)
        self.weights: list[int] = []

    def before(self, priority: str = "query", weight: int = 1) -> None:
        self.weights.append(weight)


def _renumbered(spec):  # type: ignore[no-untyped-def]
    """``spec`` with every endpoint weighing a different number (100, 101, ...)."""
    return replace(spec, endpoints={name: Endpoint(e.method, e.path, 100 + i)
                                    for i, (name, e) in enumerate(spec.endpoints.items())})


SHARED_CALLS = [  # ExchangeClient call -> the spec endpoints it asks, in order
    (lambda c: c.validate_credentials(), ["credentials"]),
    (lambda c: c.get_balance(), ["balance"]),
    (lambda c: c.get_positions(), ["positions"]),
    (lambda c: c.get_open_orders(), ["open_orders_all"]),
    (lambda c: c.get_open_orders("BTCUSDT"), ["open_orders"]),
    (lambda c: c.get_fills("BTCUSDT"), ["fills"]),
    (lambda c: c.get_symbol_rules("BTCUSDT"), ["symbol_rules"]),
    (lambda c: c.server_time(), ["time"]),
]
SL = lambda c: c.place_protection_leg("BTCUSDT", "LONG", "stop_loss", "c-1",  # noqa: E731
                                      trigger_price=Decimal("1"))
CALLS = {
    "binance": SHARED_CALLS + [
        (lambda c: c.get_order("BTCUSDT", order_id="1"), ["order"]),
        (lambda c: c.create_order(ORDER_REQUEST), ["order_create"]),
        (lambda c: c.cancel_order("BTCUSDT", order_id="1"), ["order_cancel"]),
        (lambda c: c.get_ticker("BTCUSDT"), ["mark_price", "ticker_price", "book_ticker"]),
        (lambda c: c.user_stream().connect(), ["listen_key"]),
        (SL, ["algo_order_create"]),
        (lambda c: c.cancel_protection_leg("BTCUSDT", "c-1"),
         ["algo_order_cancel", "algo_order"]),
        (lambda c: c.open_protection_legs(), ["open_algo_orders_all"]),
        (lambda c: c.open_protection_legs("BTCUSDT"), ["open_algo_orders"]),
        (lambda c: c.get_protection_leg("BTCUSDT", "c-1"), ["algo_order"]),
        (lambda c: c.get_funding_fees("BTCUSDT"), ["income"]),
    ],
    # Bybit looks an order up in realtime, then history, and reads each order it
    # creates or cancels back (its acknowledgement carries the ids only)
    "bybit": SHARED_CALLS + [
        (lambda c: c.get_order("BTCUSDT", order_id="1"), ["order", "order_history"]),
        (lambda c: c.create_order(ORDER_REQUEST), ["order_create", "order", "order_history"]),
        (lambda c: c.cancel_order("BTCUSDT", order_id="1"),
         ["order_cancel", "order", "order_history"]),
        (lambda c: c.get_ticker("BTCUSDT"), ["ticker"]),
        # the empty reply lists no leg: set, then one read-back (no pauses here)
        (SL, ["trading_stop", "open_orders"]),
        (lambda c: c.cancel_protection_leg("BTCUSDT", "BTCUSDT-stop_loss"), ["open_orders"]),
        (lambda c: c.open_protection_legs(), ["open_orders_all"]),
        (lambda c: c.get_protection_leg("BTCUSDT", "BTCUSDT-take_profit"),
         ["open_orders", "order_history"]),
        (lambda c: c.get_funding_fees("BTCUSDT"), ["funding"]),
    ],
}
ORDER_REQUEST = OrderRequest("BTCUSDT", "BUY", "MARKET", Decimal("0.01"), "c-1")


@pytest.mark.parametrize("name", list(CALLS))
def test_each_request_weighs_what_the_spec_says(monkeypatch, name) -> None:
    """Every call's weights come from the client's spec: renumber the spec's endpoints
    and the governor sees the new numbers. The library's calls answer an empty reply;
    what the mapping makes of it does not matter here."""
    spec = _renumbered(VENUES[name])
    cls = load(spec.client_class)
    monkeypatch.setattr(cls, "spec", spec)
    monkeypatch.setattr("exchanges.bybit.client.LOOKUP_DELAYS_S", ())
    monkeypatch.setattr("websocket.create_connection", _refuse)
    gov = RecordingGovernor(name)
    client = cls("key", "secret", False, ENDPOINTS, 1, governor=gov)
    lib = client._client if name == "binance" else client._http
    empty = {} if name == "binance" else {"retCode": 0, "result": {"list": []}, "time": 1}
    for attr in dir(lib):
        if attr.startswith(("futures_", "get_", "place_", "cancel_", "set_")) and \
                callable(getattr(lib, attr)):
            monkeypatch.setattr(lib, attr, lambda *a, **kw: empty)
    client._clock_synced = True
    try:
        for call, endpoints in CALLS[name]:
            gov.weights.clear()
            with contextlib.suppress(Exception):
                call(client)
            assert gov.weights == [spec.weight(e) for e in endpoints], endpoints
    finally:
        client.close()
    assert {e for _, es in CALLS[name] for e in es} == set(spec.endpoints)  # all covered


def _refuse(*a, **kw):  # type: ignore[no-untyped-def]
    raise OSError("no network in this test")
