"""Each adapter implements every method of ``exchanges.base``'s protocols with the
declared parameters: what ``isinstance`` against a runtime-checkable Protocol cannot
tell (it only looks for the names)."""
from __future__ import annotations

import inspect

import pytest

from exchanges.base import ExchangeClient
from exchanges.binance.client import BinanceFuturesClient
from exchanges.bybit.client import BybitLinearClient


def _protocol_methods(proto: type) -> dict:
    """The public methods a Protocol declares, by name."""
    return {n: v for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}


@pytest.mark.parametrize("adapter", [BinanceFuturesClient, BybitLinearClient])
def test_adapter_implements_every_protocol_method_with_its_parameters(adapter: type) -> None:
    declared = _protocol_methods(ExchangeClient)
    assert declared, "the protocol declares methods"
    for name, method in declared.items():
        impl = getattr(adapter, name, None)
        assert callable(impl), f"{adapter.__name__} lacks {name}"
        want = [p for p in inspect.signature(method).parameters if p != "self"]
        got = [p for p in inspect.signature(impl).parameters if p != "self"]
        assert got[:len(want)] == want, f"{adapter.__name__}.{name}: parameters {got} instead of {want}"
