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


def _leg(leg_id: int, key_id: int, price: str, **extra: object):  # type: ignore[no-untyped-def]
    """An active server-mode stop-loss of user 1's LONG BTCUSDT on ``key_id``."""
    from decimal import Decimal

    from models import ProtectionLeg
    return ProtectionLeg(id=leg_id, user_id=1, key_id=key_id, exchange="binance",
                         symbol="BTCUSDT", side="LONG", kind="stop_loss", mode="server",
                         working_type="MARK_PRICE", trigger_price=Decimal(price),
                         status="active", client_order_id=f"leg-{leg_id}", **extra)


def _user_with_two_keys(s) -> None:  # type: ignore[no-untyped-def]
    """User 1 with Binance keys 1 and 2, in session ``s``."""
    from models import ExchangeKey, User
    s.add(User(id=1, username="p", password_hash="x"))
    s.flush()
    for key_id in (1, 2):
        s.add(ExchangeKey(id=key_id, user_id=1, exchange="binance", api_key=f"k{key_id}",
                          api_secret_encrypted=b"x"))
    s.flush()


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


def test_the_sweep_reads_positions_from_a_live_stream_and_asks_the_venue_only_without(database_url) -> None:  # type: ignore[no-untyped-def]
    """Two keys with a server-mode stop-loss on a BTCUSDT long: key 1's account stream
    runs here (``live_positions``), key 2's does not. The sweep asks the venue for key
    2 only; a rule whose position the stream no longer holds is canceled
    (``position_closed``), the one the venue still holds stays armed."""
    from decimal import Decimal

    from sqlalchemy import select

    from exchanges.types import Position
    from models import ExchangeKey, ProtectionLeg

    db, svc = _service(database_url)
    with db.transaction() as s:
        _user_with_two_keys(s)
        for key_id in (1, 2):
            s.add(_leg(key_id, key_id, "59000", created_at=1_000))
    asked: list[str] = []

    class Venue:
        def __init__(self, key: ExchangeKey) -> None:
            self.key = key

        def get_positions(self) -> list[Position]:
            asked.append(self.key.api_key)
            return [Position("BTCUSDT", "LONG", Decimal("0.01"), Decimal("60000"), Decimal("60000"),
                             Decimal("0"), Decimal("10"), Decimal("0"), "cross")]

    svc._client_for = Venue  # type: ignore[assignment]
    svc.live_positions = lambda key_id: [] if key_id == 1 else None  # key 1: flat now
    assert svc.resync() == 2
    assert svc.sweep() == 1
    assert asked == ["k2"]
    with db.session() as s:
        status = {r.id: (r.status, r.error_code) for r in s.scalars(select(ProtectionLeg))}
    assert status == {1: ("canceled", "position_closed"), 2: ("active", None)}
    assert not svc.guard.armed(1) and svc.guard.armed(2)
    db.dispose()


def test_resync_reads_full_rows_only_for_keys_changed_elsewhere(database_url) -> None:  # type: ignore[no-untyped-def]
    """A quiet resync reads no leg as an object; a leg set and one canceled by another
    process (rows written straight into the database) are picked up: the new rule
    armed and shown, the canceled one disarmed and its key's view emptied."""
    from sqlalchemy import event, update

    from models import ProtectionLeg

    db, svc = _service(database_url)

    with db.transaction() as s:
        _user_with_two_keys(s)
        s.add(_leg(1, 1, "59000"))
    assert svc.resync() == 1 and svc.guard.armed(1)
    assert svc.position_fields(1, "BTCUSDT")["stop_loss"] == "59000"
    loaded: list[int] = []

    def on_load(target, context) -> None:  # type: ignore[no-untyped-def]
        loaded.append(target.id)
    event.listen(ProtectionLeg, "load", on_load)
    try:
        assert svc.resync() == 0 and loaded == []                  # quiet: no object read
        with db.transaction() as s:                                # another process's work
            s.add(_leg(2, 2, "58000"))
            s.execute(update(ProtectionLeg).where(ProtectionLeg.id == 1).values(status="canceled"))
        assert svc.resync() == 1 and loaded == [2]
    finally:
        event.remove(ProtectionLeg, "load", on_load)
    assert svc.guard.armed(2) and not svc.guard.armed(1)
    assert svc.position_fields(2, "BTCUSDT")["stop_loss"] == "58000"
    assert svc.position_fields(1, "BTCUSDT")["stop_loss"] is None
    db.dispose()
