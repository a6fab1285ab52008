"""Map python-binance and ``requests`` exceptions to ``exchanges.errors`` classes.

This is the only place where Binance error codes are interpreted. Callers use
:func:`binance_errors` around every library call::

    with binance_errors():
        raw = client.futures_account()

which re-raises the library's exception as a typed ``ExchangeError`` ``from`` the
original. Sources: Binance USD-M "Error Codes" page
(developers.binance.com/docs/derivatives/usds-margined-futures/error-code) and the
"General Info" page (HTTP 4xx/418/429/5xx semantics, ``Retry-After``).
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

import requests
from binance.exceptions import BinanceAPIException, BinanceRequestException

from exchanges.binance.spec import BINANCE
from exchanges.errors import (
    AuthFailed,
    ExchangeError,
    ExchangeTimeout,
    ExchangeUnavailable,
    InvalidOrder,
    IpBanned,
    RateLimited,
    mapped_errors,
    transport_error,
)

EXCHANGE = BINANCE.name
_MAX_MESSAGE = 300

# Binance error code -> class, for replies whose HTTP status is not decisive on its own.
CODE_TABLE: Mapping[int, type[ExchangeError]] = BINANCE.error_codes  # in the venue's spec


def retry_after_ms(response: requests.Response | None) -> int | None:
    """The reply's ``Retry-After`` header (integer seconds, per Binance "General
    Info") in milliseconds, or ``None`` when absent or not a number."""
    if response is None:
        return None
    value = response.headers.get("Retry-After") if response.headers is not None else None
    if value is None:
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None
    return max(0, int(seconds * 1000))


def _from_api_exception(e: BinanceAPIException) -> ExchangeError:
    status = int(e.status_code) if e.status_code is not None else None
    code = e.code if isinstance(e.code, int) and e.code != 0 else None
    message = str(e.message or "")[:_MAX_MESSAGE]
    if status == 418:
        return IpBanned(EXCHANGE, code, message, status, retry_after_ms(e.response))
    if status == 429 or code == -1003:
        return RateLimited(EXCHANGE, code, message, status, retry_after_ms(e.response))
    cls = CODE_TABLE.get(code) if code is not None else None
    if cls is not None:
        return cls(EXCHANGE, code, message, status)
    if status == 401:
        return AuthFailed(EXCHANGE, code, message, status)
    if status == 408:
        return ExchangeTimeout(EXCHANGE, code, message, status)
    if status is None or status >= 500 or code is None:
        # 5xx: "the request's execution status is UNKNOWN"; a body without a code is
        # not a Binance reply we understand (proxy page, bad JSON).
        return ExchangeUnavailable(EXCHANGE, code, message, status)
    return InvalidOrder(EXCHANGE, code, message, status)


def to_exchange_error(e: BaseException) -> ExchangeError:
    """Return the ``ExchangeError`` for a library exception (does not raise).

    Table (first match wins):
      HTTP 418 -> IpBanned; HTTP 429 or -1003 -> RateLimited (``retry_after_ms`` from
      ``Retry-After``); -1022/-2014/-2015 or HTTP 401 -> AuthFailed; -1021 -> ClockSkew;
      -2019 -> InsufficientBalance; -2013/-2011 -> OrderNotFound; -1007/HTTP 408 ->
      ExchangeTimeout; -1125 (listenKey gone), -1001, HTTP 5xx, a reply without a code,
      an unparseable 2xx body, connection errors -> ExchangeUnavailable;
      ``requests`` timeouts (including a read timeout surfacing as ConnectionError)
      -> ExchangeTimeout; any other 4xx -> InvalidOrder with Binance's code and msg.
    Other exception types map to ExchangeUnavailable.
    """
    if isinstance(e, ExchangeError):
        return e
    if isinstance(e, BinanceAPIException):
        return _from_api_exception(e)
    if isinstance(e, BinanceRequestException):
        return ExchangeUnavailable(EXCHANGE, None, str(e.message)[:_MAX_MESSAGE])
    return transport_error(EXCHANGE, e, _MAX_MESSAGE)


_CAUGHT = (BinanceAPIException, BinanceRequestException, requests.RequestException,
           ValueError, OSError)


def binance_errors() -> AbstractContextManager[None]:
    """Context manager translating python-binance / requests exceptions raised in its
    body into ``exchanges.errors`` classes (``raise ... from e``)."""
    return mapped_errors(EXCHANGE, _CAUGHT, to_exchange_error)
