"""Map pybit and ``requests`` exceptions to ``exchanges.errors`` classes.

This is the only place where Bybit error codes are interpreted. Callers wrap every
library call::

    with bybit_errors(server_now):
        raw = session.get_wallet_balance(accountType="UNIFIED")

which re-raises the library's exception as a typed ``ExchangeError`` ``from`` the
original, carrying Bybit's ``retCode`` as ``code`` and ``retMsg`` as ``message``.

What pybit 5.17.0 raises (``pybit/_http_manager.py``, ``_submit_request``):

- ``InvalidRequestError``: HTTP 200 with ``retCode != 0``; ``status_code`` is the
  retCode, ``message`` the retMsg, ``resp_headers`` the reply headers.
- ``FailedRequestError``: HTTP status != 200 (``status_code`` is the HTTP status,
  ``resp_headers`` set, no body), or an unparseable body (``status_code=409``,
  ``resp_headers=None``), or "retries exceeded" (400; unreachable with our settings,
  see ``exchanges.bybit.client``).
- raw ``requests`` exceptions (``ConnectionError``, ``ReadTimeout``, ``SSLError``...)
  because ``force_retry`` is off; ``PermissionError`` when the key is missing.

Sources: Bybit v5 docs ``error.mdx`` (retCodes) and ``rate-limit.mdx`` (HTTP 403 IP
ban of at least 10 minutes, ``X-Bapi-Limit-Reset-Timestamp`` in ms).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError

from exchanges.bybit.spec import BYBIT
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

EXCHANGE = BYBIT.name
_MAX_MESSAGE = 300
RESET_HEADER = "X-Bapi-Limit-Reset-Timestamp"
# v5 rate-limit doc: after "403, access too frequent" wait at least 10 minutes.
IP_BAN_MIN_WAIT_MS = 10 * 60 * 1000

# Bybit retCode -> class (first match wins over the generic "rejected" rule).
CODE_TABLE: Mapping[int, type[ExchangeError]] = BYBIT.error_codes  # in the venue's spec


def retry_after_ms(headers: Mapping[str, Any] | None,
                   server_now_ms: Callable[[], int] | None = None) -> int | None:
    """How long to wait, in ms, from a reply's headers, or ``None`` when unknown.

    ``X-Bapi-Limit-Reset-Timestamp`` (ms UTC, server clock) minus the server's "now"
    (``server_now_ms()``, default the local clock), floored at 0; else ``Retry-After``
    (integer seconds). ``headers`` is a ``requests`` CaseInsensitiveDict or a dict.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in headers.items()}
    reset, retry = lowered.get(RESET_HEADER.lower()), lowered.get("retry-after")
    now = server_now_ms() if server_now_ms is not None else int(time.time() * 1000)
    try:
        if reset is not None:
            return max(0, int(str(reset).strip()) - now)
        if retry is not None:
            return max(0, int(float(str(retry).strip()) * 1000))
    except ValueError:
        return None
    return None


def _from_ret_code(code: int, message: str, headers: Mapping[str, Any] | None,
                   server_now_ms: Callable[[], int] | None) -> ExchangeError:
    cls = CODE_TABLE.get(code)
    if cls is RateLimited:  # 10006 is the UID's per-endpoint limit, 10018 the IP's
        return RateLimited(EXCHANGE, code, message, 200, retry_after_ms(headers, server_now_ms),
                           per_account=code == 10006)
    if cls is not None:
        return cls(EXCHANGE, code, message, 200)
    # 10001 parameter error, 110xxx order/position rules, 170xxx/3400xx...: the
    # exchange understood the request and refused it.
    return InvalidOrder(EXCHANGE, code, message, 200)


def _from_failed(e: FailedRequestError,
                 server_now_ms: Callable[[], int] | None) -> ExchangeError:
    status = e.status_code if isinstance(e.status_code, int) else None
    message = str(e.message or "")[:_MAX_MESSAGE]
    headers = e.resp_headers
    if headers is None:
        # Raised by pybit itself: 409 "Could not decode JSON" or 400 "Retries exceeded".
        return ExchangeUnavailable(EXCHANGE, None, message, None)
    if status == 401:  # the body's retCode (10003, ...) when the reply carried one
        return AuthFailed(EXCHANGE, getattr(e, "ret_code", None), message, status)
    if status == 403:
        wait = retry_after_ms(headers, server_now_ms)
        return IpBanned(EXCHANGE, None, message, status,
                        wait if wait is not None else IP_BAN_MIN_WAIT_MS)
    if status == 429:
        return RateLimited(EXCHANGE, None, message, status, retry_after_ms(headers, server_now_ms))
    if status in (408, 504):
        return ExchangeTimeout(EXCHANGE, None, message, status)
    # 5xx, 404 (wrong path / account type), other proxies' pages: not a Bybit answer.
    return ExchangeUnavailable(EXCHANGE, None, message, status)


def to_exchange_error(e: BaseException,
                      server_now_ms: Callable[[], int] | None = None) -> ExchangeError:
    """Return the ``ExchangeError`` for a library exception (does not raise).

    Table (first match wins):
      retCode 10003/10004/10005/10007/10010 or HTTP 401 -> AuthFailed;
      10006/10018 -> RateLimited, HTTP 429 -> RateLimited, HTTP 403 -> IpBanned (a
      RateLimited; ``retry_after_ms`` from ``X-Bapi-Limit-Reset-Timestamp``, else
      ``Retry-After``, else for 403 the documented 10 min); 10002 -> ClockSkew;
      110004/110007/110012 -> InsufficientBalance; 110001/110008/110010 ->
      OrderNotFound; 10000, HTTP 408/504, ``requests`` timeouts -> ExchangeTimeout;
      10016, HTTP 5xx and other non-200, bad JSON, connection errors ->
      ExchangeUnavailable; any other retCode (10001, 110xxx...) -> InvalidOrder.
    ``server_now_ms`` gives the server clock (local + offset) for the reset header.
    """
    if isinstance(e, ExchangeError):
        return e
    if isinstance(e, InvalidRequestError):
        message = str(e.message or "")[:_MAX_MESSAGE]
        if not isinstance(e.status_code, int):
            return ExchangeUnavailable(EXCHANGE, None, message, 200)
        return _from_ret_code(e.status_code, message, e.resp_headers, server_now_ms)
    if isinstance(e, FailedRequestError):
        return _from_failed(e, server_now_ms)
    if isinstance(e, PermissionError):
        return AuthFailed(EXCHANGE, None, "API key or secret missing")
    return transport_error(EXCHANGE, e, _MAX_MESSAGE)


_CAUGHT = (InvalidRequestError, FailedRequestError, requests.RequestException, ValueError,
           OSError)


def bybit_errors(server_now_ms: Callable[[], int] | None = None) -> AbstractContextManager[None]:
    """Translate pybit / requests exceptions raised in the body into
    ``exchanges.errors`` classes (``raise ... from e``); ExchangeErrors pass through.
    ``server_now_ms`` gives the server clock for the rate-limit reset header."""
    return mapped_errors(EXCHANGE, _CAUGHT, lambda e: to_exchange_error(e, server_now_ms))
