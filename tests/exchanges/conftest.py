"""Fixtures shared by the adapter tests: a simulator process per module and its
endpoints, and a fresh funded account per test."""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from exchanges.types import VenueEndpoints
from tests.support.simulator import start_simulator

SYMBOL = "BTCUSDT"
PRICE = Decimal("50000")


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    proc = start_simulator()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def endpoints(sim) -> VenueEndpoints:  # type: ignore[no-untyped-def]
    return VenueEndpoints(rest_url=sim.url, ws_url=sim.ws_url)


@pytest.fixture
def account(sim):  # type: ignore[no-untyped-def]
    """A fresh funded account per test: (api_key, api_secret); BTCUSDT at PRICE."""
    key, secret = "k" + uuid.uuid4().hex[:20], "s" + uuid.uuid4().hex
    sim.create_account(key, secret, balances={"USDT": "10000"})
    sim.set_price(SYMBOL, str(PRICE))
    yield key, secret
    sim.clear_faults()
