"""pybit's ``HTTP`` with our clock offset in the signature and no internal retries
(the reasons are in ``exchanges.bybit.client``'s module docstring)."""
from __future__ import annotations

import logging
from typing import Any

from pybit import _helpers
from pybit._http_manager import _V5HTTPManager
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
