"""The registry of supported venues: ``VENUES`` (name -> ``VenueSpec``) and
``venue(name)``. Adding a venue is a spec in its package and one line here."""
from __future__ import annotations

import importlib
from typing import Any

from exchanges.binance.spec import BINANCE
from exchanges.bybit.spec import BYBIT
from exchanges.errors import UnsupportedExchange
from exchanges.spec import VenueSpec

VENUES: dict[str, VenueSpec] = {spec.name: spec for spec in (BINANCE, BYBIT)}
SUPPORTED_EXCHANGES: tuple[str, ...] = tuple(VENUES)


def venue(name: str) -> VenueSpec:
    """The spec of venue ``name``. Raises UnsupportedExchange for a venue without one."""
    spec = VENUES.get(name)
    if spec is None:
        raise UnsupportedExchange(f"no adapter for exchange {name!r}")
    return spec


def load(dotted: str) -> Any:
    """The object named ``"package.module:Name"`` (a spec's ``client_class`` or
    ``market_stream_class``), importing its module on first use."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)
