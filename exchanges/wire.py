"""Parsing helpers shared by the venues' ``mapping`` modules: exact decimals and
millisecond timestamps from JSON values, table lookups, and the ``parser`` decorator
that turns a malformed reply into ExchangeUnavailable. Pure functions, no I/O."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from functools import wraps
from typing import Any, TypeVar

from exchanges.errors import ExchangeUnavailable

ZERO = Decimal(0)
F = TypeVar("F", bound=Callable[..., Any])
V = TypeVar("V")


def parser(exchange: str, also: tuple[type[Exception], ...] = ()) -> Callable[[F], F]:
    """A decorator turning KeyError/ValueError/TypeError/InvalidOperation/AttributeError
    (and ``also``) in a parser into ExchangeUnavailable of ``exchange`` (the reply was
    not the documented shape)."""
    caught: tuple[type[Exception], ...] = (KeyError, ValueError, TypeError, InvalidOperation,
                                           AttributeError, *also)

    def decorate(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ExchangeUnavailable:
                raise
            except caught as e:
                raise ExchangeUnavailable(
                    exchange, None, f"unparseable reply in {fn.__name__}: {type(e).__name__} {e}",
                ) from e
        return wrapper  # type: ignore[return-value]
    return decorate


def dec(value: Any) -> Decimal:
    """A decimal string (or int) as Decimal. ``None``/``""`` -> 0. Raises ValueError for
    a float (it would not be exact), InvalidOperation for a non-number."""
    if value is None or value == "":
        return ZERO
    if isinstance(value, float):
        raise ValueError("float in a decimal field")
    return Decimal(str(value))


def ms(value: Any) -> int:
    """A ms timestamp that may arrive as int or numeric string. ``None``/``""`` -> 0."""
    if value is None or value == "":
        return 0
    return int(value)


def lookup(table: Mapping[Any, V], raw: Any, what: str) -> V:
    """``table[raw]``; a value the table does not list raises ValueError naming
    ``what``."""
    try:
        return table[raw]
    except KeyError:
        raise ValueError(f"unknown {what} {raw!r}") from None
