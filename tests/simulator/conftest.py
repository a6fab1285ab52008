"""Fixtures for the simulator suite: one simulator process per test module and a fresh
funded account (with a real python-binance Client) per test."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable

import pytest

from tests.support.simulator import SimulatorProcess, start_simulator


@pytest.fixture(scope="module")
def sim() -> SimulatorProcess:
    """A simulator subprocess shared by the tests of one module (random walk off)."""
    proc = start_simulator()
    try:
        yield proc
    finally:
        proc.stop()


@dataclass
class Account:
    """A funded simulator account and a real python-binance Client for it."""

    api_key: str
    api_secret: str
    client: object


@pytest.fixture
def new_account(sim: SimulatorProcess) -> Callable[..., Account]:
    """Factory: ``new_account(usdt="10000")`` -> Account with distinct keys."""
    def make(usdt: str = "10000") -> Account:
        key = "k" + uuid.uuid4().hex
        secret = "s" + uuid.uuid4().hex
        sim.create_account(key, secret, balances={"USDT": usdt})
        return Account(key, secret, sim.binance_client(key, secret))
    return make


@pytest.fixture
def account(new_account: Callable[..., Account], sim: SimulatorProcess) -> Account:
    """A fresh account; faults are cleared after the test."""
    acct = new_account()
    yield acct
    sim.clear_faults()
