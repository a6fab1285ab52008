"""exchanges.bybit.errors: real pybit exceptions built by pybit from fake replies."""
from __future__ import annotations

import json

import pytest
import requests
from pybit.exceptions import FailedRequestError, InvalidRequestError
from urllib3.exceptions import ReadTimeoutError

from exchanges.bybit.errors import bybit_errors, retry_after_ms, to_exchange_error
from exchanges.bybit.http import OffsetHTTP as _OffsetHTTP
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

NOW = 1_700_000_000_000


def reply(status: int, body, headers: dict | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = (json.dumps(body) if not isinstance(body, str) else body).encode()
    r.headers["Content-Type"] = "application/json"
    r.headers.update(headers or {})
    r.url = "http://sim/v5/order/create"
    return r


@pytest.fixture
def session():
    """A pybit session configured like the adapter's (no internal retries)."""
    s = _OffsetHTTP(api_key="k", api_secret="s", testnet=False, max_retries=1, retry_delay=0,
                    retry_codes=set(), log_requests=False)
    s.endpoint = "http://sim"
    yield s
    s.client.close()


def raised(session, status: int, body, headers: dict | None = None) -> Exception:
    """The exception pybit's own ``_submit_request`` raises when the reply is this one."""
    sent = []
    def send(request, timeout):
        sent.append(request)
        return reply(status, body, headers)

    session.client.send = send
    with pytest.raises((InvalidRequestError, FailedRequestError)) as info:
        session.get_wallet_balance(accountType="UNIFIED")
    assert len(sent) == 1          # pybit never retried
    return info.value


def ret(session, code: int, msg: str = "msg text", headers: dict | None = None) -> Exception:
    return raised(session, 200, {"retCode": code, "retMsg": msg, "result": {}, "time": NOW},
                  headers)


@pytest.mark.parametrize("code,cls", [
    (10003, AuthFailed), (10004, AuthFailed), (10005, AuthFailed), (10010, AuthFailed),
    (10002, ClockSkew),
    (110004, InsufficientBalance), (110007, InsufficientBalance), (110012, InsufficientBalance),
    (110001, OrderNotFound), (110008, OrderNotFound), (110010, OrderNotFound),
    (10001, InvalidOrder), (110017, InvalidOrder), (110072, InvalidOrder), (110094, InvalidOrder),
    (170130, InvalidOrder),
    (10016, ExchangeUnavailable), (10000, ExchangeTimeout),
])
def test_ret_code_table(session, code, cls):
    e = ret(session, code)
    assert isinstance(e, InvalidRequestError) and e.status_code == code
    err = to_exchange_error(e)
    assert type(err) is cls
    assert (err.exchange, err.code, err.message) == ("bybit", code, "msg text")
    assert err.http_status == 200


def test_invalid_order_is_rejected_subclass(session):
    err = to_exchange_error(ret(session, 110094, "Order does not meet minimum order value 5USDT"))
    assert isinstance(err, ExchangeRejected)
    assert err.message == "Order does not meet minimum order value 5USDT"


def test_10006_with_reset_header(session):
    e = ret(session, 10006, "Too many visits!", {"X-Bapi-Limit-Reset-Timestamp": str(NOW + 1500)})
    err = to_exchange_error(e, server_now_ms=lambda: NOW)
    assert type(err) is RateLimited
    assert (err.code, err.http_status, err.retry_after_ms) == (10006, 200, 1500)
    assert err.per_account  # the UID's per-endpoint limit: other keys may go on


def test_10018_is_the_ip_limit(session):
    err = to_exchange_error(ret(session, 10018, "Exceeded the IP Rate Limit."),
                            server_now_ms=lambda: NOW)
    assert type(err) is RateLimited and not err.per_account


def test_10006_reset_in_the_past_is_zero(session):
    e = ret(session, 10006, headers={"x-bapi-limit-reset-timestamp": str(NOW - 10)})
    assert to_exchange_error(e, server_now_ms=lambda: NOW).retry_after_ms == 0


def test_http_401_is_auth(session):
    e = raised(session, 401, "<html>401</html>")
    assert isinstance(e, FailedRequestError) and e.status_code == 401
    err = to_exchange_error(e)
    assert type(err) is AuthFailed and err.http_status == 401 and err.code is None


def test_http_401_with_a_bybit_body_keeps_its_ret_code(session):
    """Real Bybit answers a wrong key with HTTP 401 and retCode 10003: the code and
    message reach the error (pybit alone says "HTTP status code is not 200.")."""
    e = raised(session, 401, {"retCode": 10003, "retMsg": "API key is invalid.", "result": {}})
    err = to_exchange_error(e)
    assert type(err) is AuthFailed and err.http_status == 401 and err.code == 10003
    assert "API key is invalid." in str(err) and "not 200" not in str(err)


def test_http_429_retry_after_sources(session):
    e = raised(session, 429, "{}", {"X-Bapi-Limit-Reset-Timestamp": str(NOW + 2000)})
    err = to_exchange_error(e, server_now_ms=lambda: NOW)
    assert type(err) is RateLimited and (err.http_status, err.retry_after_ms) == (429, 2000)
    err = to_exchange_error(raised(session, 429, "{}", {"Retry-After": "3"}))
    assert err.retry_after_ms == 3000
    assert to_exchange_error(raised(session, 429, "{}")).retry_after_ms is None


def test_http_403_is_ip_ban(session):
    err = to_exchange_error(raised(session, 403, "access too frequent"))
    assert type(err) is IpBanned and isinstance(err, RateLimited)
    assert err.http_status == 403 and err.retry_after_ms == 600_000
    e = raised(session, 403, "x", {"X-Bapi-Limit-Reset-Timestamp": str(NOW + 5)})
    assert to_exchange_error(e, server_now_ms=lambda: NOW).retry_after_ms == 5


@pytest.mark.parametrize("status,cls", [
    (500, ExchangeUnavailable), (502, ExchangeUnavailable), (503, ExchangeUnavailable),
    (504, ExchangeTimeout), (408, ExchangeTimeout), (404, ExchangeUnavailable),
])
def test_http_status(session, status, cls):
    err = to_exchange_error(raised(session, status, "<html>nope</html>"))
    assert type(err) is cls and err.http_status == status and err.code is None


def test_bad_json_on_200(session):
    e = raised(session, 200, "not json{")
    assert isinstance(e, FailedRequestError) and e.status_code == 409
    err = to_exchange_error(e)
    assert type(err) is ExchangeUnavailable and err.code is None and err.http_status is None


def test_retries_exceeded_shape_is_unavailable():
    e = FailedRequestError(request="GET x", message="Bad Request. Retries exceeded maximum.",
                           status_code=400, time="00:00:00", resp_headers=None)
    assert type(to_exchange_error(e)) is ExchangeUnavailable


@pytest.mark.parametrize("exc,cls", [
    (requests.ReadTimeout("read timed out"), ExchangeTimeout),
    (requests.ConnectTimeout("connect timed out"), ExchangeTimeout),
    (requests.ConnectionError(ReadTimeoutError(None, "/v5", "Read timed out.")), ExchangeTimeout),
    (requests.ConnectionError("refused"), ExchangeUnavailable),
    (requests.exceptions.SSLError("bad cert"), ExchangeUnavailable),
    (requests.exceptions.ChunkedEncodingError("broken"), ExchangeUnavailable),
    (PermissionError("Authenticated endpoints require keys."), AuthFailed),
])
def test_requests_exceptions(exc, cls):
    err = to_exchange_error(exc)
    assert type(err) is cls and err.http_status is None


def test_context_manager_chains_original(session):
    original = ret(session, 110001, "Order does not exist.")
    with pytest.raises(OrderNotFound) as info:
        with bybit_errors():
            raise original
    assert info.value.__cause__ is original
    assert (info.value.code, info.value.message) == (110001, "Order does not exist.")


def test_context_manager_passes_exchange_errors_through():
    e = AuthFailed("bybit", 10003, "x", 401)
    with pytest.raises(AuthFailed) as info:
        with bybit_errors():
            raise e
    assert info.value is e


def test_retry_after_helper_edge_cases():
    assert retry_after_ms(None) is None
    assert retry_after_ms({"X-Bapi-Limit-Reset-Timestamp": "soon"}) is None
    assert retry_after_ms({"Retry-After": "1.5"}) == 1500


def test_message_is_ret_msg_only(session):
    e = ret(session, 10004, "error sign! origin_string[...]")
    assert "Request" in str(e)             # pybit's str() carries the request...
    err = to_exchange_error(e)
    assert err.message == "error sign! origin_string[...]"   # ...ours only retMsg
    assert "Request" not in str(err)
