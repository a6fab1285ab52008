"""ProtectionService.start_up waits for a database that does not answer yet: the
server-mode rules must be armed once it does (a crash of the start-up task would leave
them unarmed until the next periodic round)."""
from __future__ import annotations

import threading
import time
from unittest.mock import Mock

from sqlalchemy.exc import OperationalError

from models import Database
from services.protection import ProtectionService


def _service(database_url):  # type: ignore[no-untyped-def]
    db = Database(database_url)
    return db, ProtectionService(db, lambda key: None, None, Mock(),  # tickers: none subscribed
                                 lambda fn, *a: threading.Thread(target=fn, args=a, daemon=True).start(),
                                 time.sleep)


def test_start_up_retries_until_the_database_answers(database_url, caplog) -> None:  # type: ignore[no-untyped-def]
    db, svc = _service(database_url)
    calls = []
    real = svc.resync

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return real()
    svc.resync = flaky  # type: ignore[method-assign]
    assert svc.start_up(retry_s=0.01) == 0  # armed nothing (no legs), but ran
    assert len(calls) == 3
    assert sum("not armed yet" in r.message for r in caplog.records) == 1  # logged once
    db.dispose()


def test_start_up_ends_when_stopped_while_waiting(database_url) -> None:  # type: ignore[no-untyped-def]
    db, svc = _service(database_url)

    def down() -> int:
        raise OperationalError("SELECT", {}, Exception("connection refused"))
    svc.resync = down  # type: ignore[method-assign]
    threading.Timer(0.1, svc.stop).start()
    began = time.monotonic()
    assert svc.start_up(retry_s=0.02) == 0
    assert time.monotonic() - began < 5
    db.dispose()
