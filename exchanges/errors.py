"""Typed exchange errors: the class tells the caller what to do.

Every adapter maps its library's exceptions here once, at the adapter boundary,
with ``raise ... from e``. Callers retry on classes, never on message substrings.

Hierarchy::

    ExchangeError(exchange, code, message, http_status)
      AuthFailed            bad/expired key or signature (Binance -2014/-2015/-1022, HTTP 401;
                            Bybit 10003/10004/10005, HTTP 401)
      RateLimited           HTTP 429 / Binance -1003 / Bybit 10006; ``retry_after_ms``
        IpBanned            HTTP 418 (Binance IP ban); ``retry_after_ms``
      ClockSkew             Binance -1021, Bybit 10002: timestamp outside recvWindow
      ExchangeUnavailable   connection refused, HTTP 5xx, unparseable reply
        ExchangeTimeout     no answer in time: the request's fate is unknown
      ExchangeRejected      the exchange understood and refused the request
        InsufficientBalance Binance -2019, Bybit 110004/110007
        InvalidOrder        Binance -1102/-1111/-1121/-2022/-4xxx, Bybit 10001/110xxx
        OrderNotFound       Binance -2013/-2011, Bybit 110001
          ProtectionLegNotFound  a held leg (Binance algo order, Bybit TP/SL) unknown
                            or already final
        UseAlgoOrderApi     Binance -4120: a conditional type sent to /fapi/v1/order
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import requests
from urllib3.exceptions import ReadTimeoutError

logger = logging.getLogger(__name__)


class ExchangeError(Exception):
    """Base of all exchange errors.

    Attributes:
        exchange: ``"binance"`` or ``"bybit"``.
        code: the exchange's own error code (Binance negative int, Bybit retCode),
            or ``None`` when there is none (network errors).
        message: the exchange's message, never containing secrets.
        http_status: the HTTP status of the reply, or ``None``.
    """

    def __init__(self, exchange: str, code: int | None, message: str,
                 http_status: int | None = None) -> None:
        super().__init__(f"{exchange} error {code}: {message}")
        self.exchange = exchange
        self.code = code
        self.message = message
        self.http_status = http_status


class AuthFailed(ExchangeError):
    """The API key, secret or signature was refused. Do not retry."""


class RateLimited(ExchangeError):
    """The exchange asks us to slow down.

    Attributes:
        retry_after_ms: how long to wait before the next request, in milliseconds
            (from ``Retry-After`` seconds or Bybit's reset timestamp), or ``None``.
        per_account: True when the limit is the account's own (Bybit 10006: per UID
            and endpoint), not the IP's: other accounts may go on.
    """

    def __init__(self, exchange: str, code: int | None, message: str,
                 http_status: int | None = None, retry_after_ms: int | None = None,
                 per_account: bool = False) -> None:
        super().__init__(exchange, code, message, http_status)
        self.retry_after_ms = retry_after_ms
        self.per_account = per_account


class ThrottledLocally(RateLimited):
    """Refused before sending (nothing reached the exchange): the venue's rate budget
    (``exchanges.governor``), its back-off after a 429, or this account's own back-off
    holds requests until ``retry_after_ms`` has passed."""


class IpBanned(RateLimited):
    """HTTP 418: the IP is banned until ``retry_after_ms`` passes. Never retry earlier."""


class ClockSkew(ExchangeError):
    """The request timestamp fell outside recvWindow: resample the clock offset, retry once."""


class ExchangeUnavailable(ExchangeError):
    """The exchange could not be reached or answered 5xx: keep the last value, mark it stale."""


class ExchangeTimeout(ExchangeUnavailable):
    """No answer in time. For an order the outcome is unknown: hand it to reconciliation."""


class ExchangeRejected(ExchangeError):
    """The exchange understood the request and refused it (HTTP 422 to our clients)."""


class InsufficientBalance(ExchangeRejected):
    """Not enough margin for the order."""


class InvalidOrder(ExchangeRejected):
    """Order parameters broke a trading rule (precision, min notional, reduce-only...)."""


class OrderNotFound(ExchangeRejected):
    """The exchange does not know the order (or it is already closed, for a cancel)."""


class ProtectionLegNotFound(OrderNotFound):
    """The exchange does not hold that protection leg (unknown, fired, or canceled):
    query it (``get_protection_leg``) to learn which."""


class UseAlgoOrderApi(InvalidOrder):
    """Binance -4120 "Order type not supported for this endpoint. Please use the Algo
    Order API endpoints instead": since 2025-12-09 STOP/STOP_MARKET/TAKE_PROFIT/
    TAKE_PROFIT_MARKET/TRAILING_STOP_MARKET go to ``POST /fapi/v1/algoOrder``. A bug of
    ours, never retried as is."""


class UnsupportedExchange(ValueError):
    """The factory was asked for an exchange it has no adapter for."""


def transport_error(exchange: str, e: BaseException, max_message: int = 300) -> ExchangeError:
    """The ExchangeError for an exception that is not the venue's answer: a
    ``requests`` timeout (including a read timeout surfacing as ConnectionError) ->
    ExchangeTimeout (fate unknown); connection errors, other ``requests`` errors,
    ValueError, OSError and anything else -> ExchangeUnavailable. Does not raise."""
    if isinstance(e, requests.Timeout):
        # Includes ConnectTimeout: treated as "fate unknown", the conservative side.
        return ExchangeTimeout(exchange, None, f"timeout: {type(e).__name__}")
    if isinstance(e, requests.ConnectionError):
        if e.args and isinstance(e.args[0], ReadTimeoutError):
            # requests raises ConnectionError(ReadTimeoutError) when the body stalls.
            return ExchangeTimeout(exchange, None, "timeout while reading the reply")
        return ExchangeUnavailable(exchange, None, f"connection error: {type(e).__name__}")
    if isinstance(e, (requests.RequestException, ValueError, OSError)):
        return ExchangeUnavailable(exchange, None, f"{type(e).__name__}: {str(e)[:max_message]}")
    return ExchangeUnavailable(exchange, None, f"unexpected {type(e).__name__}")


@contextmanager
def mapped_errors(exchange: str, catch: tuple[type[BaseException], ...],
                  to_error: Callable[[BaseException], ExchangeError]) -> Iterator[None]:
    """Re-raise an exception of a ``catch`` class from the body as ``to_error(e)``
    (``raise ... from e``, logged at debug); ExchangeErrors pass through. The adapters'
    ``binance_errors()`` / ``bybit_errors()`` are this with their library's classes."""
    try:
        yield
    except ExchangeError:
        raise
    except catch as e:
        err = to_error(e)
        logger.debug("%s error mapped kind=%s code=%s status=%s", exchange,
                     type(err).__name__, err.code, err.http_status)
        raise err from e
