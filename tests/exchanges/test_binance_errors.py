"""exchanges.binance.errors: real python-binance exceptions built from fake replies."""
from __future__ import annotations

import json

import pytest
import requests
from binance.client import Client
from binance.exceptions import BinanceAPIException, BinanceRequestException
from urllib3.exceptions import ReadTimeoutError

from exchanges.binance.errors import binance_errors, to_exchange_error
from exchanges.errors import (
    AuthFailed,
    ClockSkew,
    ExchangeRejected,
    ExchangeTimeout,
    ExchangeUnavailable,
    InsufficientBalance,
    InvalidOrder,
    IpBanned,
    OrderNotFound,
    RateLimited,
)


def reply(status: int, body, headers: dict | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = (json.dumps(body) if not isinstance(body, str) else body).encode()
    r.headers["Content-Type"] = "application/json"
    r.headers.update(headers or {})
    return r


def api_error(status: int, code: int | None, msg: str = "x", headers: dict | None = None,
              ) -> BinanceAPIException:
    """The exception python-binance itself raises for this reply."""
    body = {"code": code, "msg": msg} if code is not None else "<html>nope</html>"
    with pytest.raises(BinanceAPIException) as info:
        Client._handle_response(reply(status, body, headers))
    return info.value


@pytest.mark.parametrize("status,code,cls", [
    (401, -2015, AuthFailed), (400, -2014, AuthFailed), (400, -1022, AuthFailed),
    (400, -1021, ClockSkew),
    (400, -2019, InsufficientBalance),
    (400, -2013, OrderNotFound), (400, -2011, OrderNotFound),
    (400, -1102, InvalidOrder), (400, -1111, InvalidOrder), (400, -1121, InvalidOrder),
    (400, -4164, InvalidOrder), (400, -2022, InvalidOrder), (400, -4116, InvalidOrder),
    (400, -1125, ExchangeUnavailable),
    (500, -1001, ExchangeUnavailable), (503, -1000, ExchangeUnavailable),
    (503, -1007, ExchangeTimeout),
])
def test_code_table(status, code, cls):
    err = to_exchange_error(api_error(status, code, "msg text"))
    assert type(err) is cls
    assert (err.exchange, err.code, err.message, err.http_status) == ("binance", code, "msg text", status)


def test_invalid_order_is_rejected_subclass():
    err = to_exchange_error(api_error(400, -1111, "Precision is over the maximum defined for this asset."))
    assert isinstance(err, ExchangeRejected)
    assert err.message == "Precision is over the maximum defined for this asset."


def test_429_with_retry_after():
    err = to_exchange_error(api_error(429, -1003, "Too many requests", {"Retry-After": "7"}))
    assert type(err) is RateLimited
    assert (err.code, err.http_status, err.retry_after_ms) == (-1003, 429, 7000)


def test_429_without_retry_after_or_code():
    err = to_exchange_error(api_error(429, None))
    assert type(err) is RateLimited and err.retry_after_ms is None and err.code is None


def test_1003_on_non_429_status_is_rate_limited():
    err = to_exchange_error(api_error(400, -1003, headers={"Retry-After": "2"}))
    assert type(err) is RateLimited and err.retry_after_ms == 2000


def test_418_ip_ban():
    err = to_exchange_error(api_error(418, -1003, "banned until 1700000000000", {"Retry-After": "120"}))
    assert type(err) is IpBanned and isinstance(err, RateLimited)
    assert err.retry_after_ms == 120_000 and err.http_status == 418


def test_401_without_known_code_is_auth():
    assert type(to_exchange_error(api_error(401, -9999))) is AuthFailed


def test_5xx_html_body_unavailable():
    err = to_exchange_error(api_error(502, None))
    assert type(err) is ExchangeUnavailable and err.code is None and err.http_status == 502


def test_4xx_without_code_is_unavailable_not_rejected():
    assert type(to_exchange_error(api_error(404, None))) is ExchangeUnavailable


def test_bad_json_2xx():
    with pytest.raises(BinanceRequestException) as info:
        Client._handle_response(reply(200, "not json{"))
    err = to_exchange_error(info.value)
    assert type(err) is ExchangeUnavailable and err.code is None


@pytest.mark.parametrize("exc,cls", [
    (requests.ReadTimeout("read timed out"), ExchangeTimeout),
    (requests.ConnectTimeout("connect timed out"), ExchangeTimeout),
    (requests.ConnectionError(ReadTimeoutError(None, "/fapi", "Read timed out.")), ExchangeTimeout),
    (requests.ConnectionError("refused"), ExchangeUnavailable),
    (requests.exceptions.ChunkedEncodingError("broken"), ExchangeUnavailable),
])
def test_requests_exceptions(exc, cls):
    err = to_exchange_error(exc)
    assert type(err) is cls and err.code is None and err.http_status is None


def test_context_manager_chains_original():
    original = api_error(400, -2013, "Order does not exist.")
    with pytest.raises(OrderNotFound) as info:
        with binance_errors():
            raise original
    assert info.value.__cause__ is original
    assert info.value.code == -2013


def test_context_manager_passes_exchange_errors_through():
    e = AuthFailed("binance", -2015, "x", 401)
    with pytest.raises(AuthFailed) as info:
        with binance_errors():
            raise e
    assert info.value is e
