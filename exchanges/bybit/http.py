"""pybit's ``HTTP`` with our clock offset in the signature and no internal retries
(the reasons are in ``exchanges.bybit.client``'s module docstring)."""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import requests
from pybit import _helpers
from pybit._http_manager import _V5HTTPManager
from pybit.exceptions import FailedRequestError
from pybit.unified_trading import HTTP


class OffsetHTTP(HTTP):
    """pybit ``HTTP`` whose signed ``X-BAPI-TIMESTAMP`` is local clock +
    ``time_offset_ms`` and whose internal retry codes are empty (see module doc)."""

    time_offset_ms: int = 0

    def __post_init__(self) -> None:
        # pybit adds a StreamHandler to its module logger per session when the root
        # logger has none: drop it, logging configuration is the application's.
        pybit_logger = logging.getLogger(_V5HTTPManager.__module__)
        before = list(pybit_logger.handlers)
        super().__post_init__()
        for handler in [h for h in pybit_logger.handlers if h not in before]:
            pybit_logger.removeHandler(handler)
        self.retry_codes: set[int] = set()      # pybit turns an empty set into its defaults
        self.time_offset_ms = 0

    def _prepare_headers(self, payload: Any, recv_window: int,
                         content_type: str = "application/json") -> dict[str, str]:
        # Same headers as pybit 5.17.0 _V5HTTPManager._prepare_headers (HMAC, str
        # payloads only), with the timestamp shifted by our clock offset.
        timestamp = _helpers.generate_timestamp() + self.time_offset_ms
        signature = self._auth(payload=payload, recv_window=recv_window, timestamp=timestamp)
        return {
            "Content-Type": content_type,
            "X-BAPI-API-KEY": self.api_key,
            "X-BAPI-SIGN": signature,
            "X-BAPI-SIGN-TYPE": "2",
            "X-BAPI-TIMESTAMP": str(timestamp),
            "X-BAPI-RECV-WINDOW": str(recv_window),
        }

    def _check_status_code(self, response: requests.Response, method: str, path: str,
                           params: Any) -> None:
        # As pybit 5.17.0 _V5HTTPManager._check_status_code (FailedRequestError for a
        # non-200 status), but a Bybit body's retCode and retMsg are kept: real Bybit
        # answers a wrong or wrong-environment key with HTTP 401 and retCode 10003
        # "API key is invalid.", which pybit replaces by "HTTP status code is not 200.".
        if response.status_code == 200:
            return
        code, message = _ret_code(response)
        if message is None:
            message = ("You have breached the IP rate limit or your IP is from the USA."
                       if response.status_code == 403 else "HTTP status code is not 200.")
        error = FailedRequestError(request=f"{method} {path}: {params}", message=message,
                                   status_code=response.status_code,
                                   time=datetime.now(UTC).strftime("%H:%M:%S"),
                                   resp_headers=response.headers)
        error.ret_code = code  # type: ignore[attr-defined]  # read by exchanges.bybit.errors
        raise error


def _ret_code(response: requests.Response) -> tuple[int | None, str | None]:
    """``(retCode, retMsg)`` of a Bybit JSON body, ``(None, None)`` for anything else
    (a proxy's HTML page, an empty body)."""
    try:
        body = json.loads(response.text[:4096])
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    code, msg = body.get("retCode"), body.get("retMsg")
    if not isinstance(code, int) or isinstance(code, bool):
        return None, None
    return code, (f"{msg} (HTTP {response.status_code})" if isinstance(msg, str) else None)
