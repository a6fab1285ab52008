"""Fixtures of the adapter tests: the simulator's endpoints, and BTCUSDT at PRICE
whenever an account is created (``sim`` and ``account`` are tests/conftest.py's; an
account unpacks as ``(api_key, api_secret)``)."""
from __future__ import annotations

from decimal import Decimal

import pytest

from exchanges.types import VenueEndpoints

SYMBOL = "BTCUSDT"
PRICE = Decimal("50000")


@pytest.fixture(scope="module")
def endpoints(sim) -> VenueEndpoints:  # type: ignore[no-untyped-def]
    return VenueEndpoints(rest_url=sim.url, ws_url=sim.ws_url)


@pytest.fixture
def sim_prices() -> dict[str, str]:
    """A fresh account finds BTCUSDT at PRICE."""
    return {SYMBOL: str(PRICE)}
