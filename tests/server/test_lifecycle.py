"""Services that start and stop (issue 12 item 5): ``Services.stop()`` ends every
background loop, a stop while the database is down ends in its time and says what it
could not store, and the Socket.IO handlers are registered once however many apps."""
from __future__ import annotations

import logging
import os
import threading
import time
from decimal import Decimal as D

from app import create_app
from exchanges import types as ex
from models import Database
from services import schema
from services.reconciler import Reconciler
from services.write_behind import LedgerWriter
from tests.server.conftest import make_config
from tests.support.server import free_port

EVENTS = {"connect", "subscribe", "unsubscribe", "subscribe_ticker", "unsubscribe_ticker",
          "disconnect"}


def _sqlite(tmp_path) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "life.sqlite3")
    url = f"sqlite:///{path}"
    schema.upgrade(url)
    return url, path


def _fill(n: int) -> ex.Fill:
    return ex.Fill(trade_id=f"t{n}", order_id="1", client_order_id=None, symbol="BTCUSDT",
                   side="BUY", price=D("100"), quantity=D("1"), fee=D("0"), fee_asset="USDT",
                   realized_pnl=D("0"), is_maker=False, time=1_700_000_000_000 + n)


def test_stop_ends_every_loop_and_no_reconcile_runs_after_it(tmp_path, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    url, path = _sqlite(tmp_path)
    monkeypatch.setattr("services.container.RECONCILE_FIRST_DELAY_S", 0.2)
    periods: list[int | None] = []  # the periodic runs (batch set; the start-up's is None)
    reconcile = Reconciler.reconcile

    def counted(self, user_id=None, batch=None):  # type: ignore[no-untyped-def]
        periods.append(batch)
        return reconcile(self, user_id, batch)
    monkeypatch.setattr(Reconciler, "reconcile", counted)
    app = create_app(make_config(url, RECONCILE_INTERVAL_S=0.2))
    svc = app.extensions["pushsrv"]
    deadline = time.monotonic() + 10
    while sum(b is not None for b in periods) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # past the periodic run's first delay: it loops now
    assert sum(b is not None for b in periods) >= 2, periods
    assert {"ledger writer", "reconciler"} <= set(svc.tasks.running())
    fanout = svc.hub.fanout  # its conflation timer is one of the app's registered tasks
    fanout._spawn(fanout._timer_task)
    assert "push timer" in svc.tasks.running()
    import gc
    assert svc.metrics.gc in gc.callbacks  # the collector's pauses are recorded while it runs
    report = svc.stop(timeout_s=5)
    assert report["still_running"] == {} and svc.tasks.running() == {}
    assert svc.metrics.gc not in gc.callbacks  # and its hook leaves with it
    assert svc.tasks.handles and not any(h.is_alive() for h in svc.tasks.handles)
    # the test's database goes away (as at a fixture's teardown): nothing may touch it
    os.remove(path)
    with caplog.at_level(logging.ERROR):
        time.sleep(0.8)  # four periods
    assert "reconcile run failed" not in caplog.text
    assert not os.path.exists(path)  # no loop reconnected (SQLite would create the file)
    assert svc.stop() is report  # once


def test_stop_with_the_database_gone_ends_in_time_and_counts_the_unstored(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    url, path = _sqlite(tmp_path)
    app = create_app(make_config(url, RECONCILE_INTERVAL_S=0))
    svc = app.extensions["pushsrv"]
    svc.tasks.wait(time.monotonic() + 5, {"reconciler start-up"})
    svc.db.dispose()
    os.remove(path)  # a new connection finds no tables: "database unavailable", retried
    for n in range(3):
        svc.ledger_writer.submit_fill(1, _fill(n))
    began = time.monotonic()
    with caplog.at_level(logging.INFO):
        report = svc.stop(timeout_s=1.5)
    elapsed = time.monotonic() - began
    assert elapsed < 1.5 + 1.0, elapsed
    assert report["unflushed"] == 3
    assert "events not stored count=3" in caplog.text
    assert svc.tasks.running() == {}


def test_writer_stop_against_a_closed_postgresql_port_is_bounded(caplog) -> None:  # type: ignore[no-untyped-def]
    writer = LedgerWriter(Database(f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/none"))
    worker = threading.Thread(target=writer.run, daemon=True)
    worker.start()
    for n in range(5):
        writer.submit_fill(1, _fill(n))
    time.sleep(0.3)  # the worker holds them and retries
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="services.write_behind"):
        assert writer.stop(timeout_s=1.0) == 5
    assert time.monotonic() - began < 2.0
    worker.join(1.0)
    assert not worker.is_alive()
    assert "events not stored count=5" in caplog.text


def test_writer_stop_with_the_database_up_flushes_everything(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, _ = _sqlite(tmp_path)
    from models import ExchangeKey, Fill, User
    db = Database(url)
    with db.transaction() as s:
        s.add(User(id=1, username="u", password_hash="x"))
    with db.transaction() as s:
        s.add(ExchangeKey(id=1, user_id=1, exchange="binance", api_key="k", api_secret_encrypted=b"x"))
    recorded: list[int] = []
    writer = LedgerWriter(db)
    writer.set_on_recorded(recorded.append)
    for n in range(4):
        writer.submit_fill(1, _fill(n))
    assert writer.stop(timeout_s=5) == 0
    with db.session() as s:
        assert s.query(Fill).count() == 4
    assert recorded == [1]
    db.dispose()


def test_each_app_has_its_own_socketio_server_with_every_handler(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, _ = _sqlite(tmp_path)
    apps = [create_app(make_config(url, RECONCILE_INTERVAL_S=0)) for _ in range(2)]
    try:
        first, second = (a.extensions["socketio"] for a in apps)
        assert first is not second and first.server is not second.server
        for sio in (first, second):
            names = [name for name, _handler, namespace in sio.handlers if namespace == "/"]
            assert sorted(names) == sorted(EVENTS)  # each once
            assert EVENTS <= set(sio.server.handlers["/"])
    finally:
        for a in apps:
            a.extensions["pushsrv"].stop(timeout_s=5)


def test_retrier_doubles_to_its_cap_with_equal_jitter_and_resets() -> None:
    """Both exchange stream loops wait these delays between reconnect attempts."""
    from exchanges.errors import ExchangeError, ExchangeUnavailable
    from services.retry import Policy, Retrier
    b = Retrier({ExchangeError: Policy(1.0, 8.0)})
    delays = [b.failed(ExchangeUnavailable("binance", None, "down")) for _ in range(6)]
    for delay, full in zip(delays, (1, 2, 4, 8, 8, 8)):
        assert full / 2 <= delay <= full  # half fixed, half random
    assert b.failures == 6
    b.succeeded()
    assert b.failures == 0 and 0.5 <= b.failed(ExchangeUnavailable("binance", None, "down")) <= 1.0


def test_retry_policy_is_chosen_by_the_failure_class_and_honours_retry_after() -> None:
    """The most specific class wins; what the other side asked for is a floor; a class
    with no policy is not retried (raised again)."""
    import pytest
    from sqlalchemy.exc import OperationalError

    from exchanges.errors import AuthFailed, ExchangeError, ExchangeUnavailable, InvalidOrder, RateLimited
    from services.notify.fcm import FcmRetryable
    from services.retry import FCM, POLICIES, Retrier, asked_wait_s, policy_for
    assert policy_for(ExchangeUnavailable("binance", None, "x")) is POLICIES[ExchangeError]
    assert policy_for(RateLimited("binance", -1003, "x", 429, retry_after_ms=1)) is POLICIES[RateLimited]
    assert policy_for(OperationalError("s", {}, Exception())) is POLICIES[OperationalError]
    assert policy_for(ValueError("bug")) is None
    limited = RateLimited("binance", -1003, "too many", 429, retry_after_ms=45_000)
    assert asked_wait_s(limited) == 45.0 and Retrier().failed(limited) >= 45.0
    fcm = FcmRetryable(503, "UNAVAILABLE", "busy", retry_after_s=120.0)
    assert asked_wait_s(fcm) == 120.0 and policy_for(fcm) is FCM and FCM.delay(1, asked_wait_s(fcm)) == 120.0
    with pytest.raises(ValueError):
        Retrier().failed(ValueError("bug"))
    # a refused order or key is not retried by default; a loop's own table may say otherwise
    assert policy_for(InvalidOrder("binance", -1111, "precision")) is None
    assert policy_for(AuthFailed("bybit", 10003, "bad key")) is None
    assert Retrier({ExchangeError: POLICIES[ExchangeError]}).failed(AuthFailed("bybit", 10003, "k")) <= 1.0


def test_limit_timers_are_tasks_that_end_at_stop_without_acting() -> None:
    """A LIMIT entry's in-process timer is a registered task: ``stop()`` ends it within
    a step and it does not act (its deadline is the trade's ``cancel_at`` row, carried
    out at the next start)."""
    from services.lifecycle import Tasks
    from services.orders import OrderService

    def spawn(fn):  # type: ignore[no-untyped-def]
        t = threading.Thread(target=fn, daemon=True)
        t.start()
        return t
    tasks = Tasks(spawn, time.sleep)
    orders = OrderService(None, None, time.sleep, spawn=tasks.spawner("limit timeout"))  # type: ignore[arg-type]
    acted: list[int] = []
    orders.run_timeout = acted.append  # type: ignore[method-assign,assignment]
    orders._spawn(orders.expire, 7, 0.05)  # type: ignore[misc]
    orders._spawn(orders.expire, 8, 30.0)  # type: ignore[misc]
    deadline = time.monotonic() + 5
    while tasks.running() != {"limit timeout": 1} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert acted == [7] and tasks.running() == {"limit timeout": 1}  # 7 fired, 8 waits
    began = time.monotonic()
    orders.stop()
    assert tasks.wait(time.monotonic() + 2) == {}
    assert time.monotonic() - began < 1.0 and acted == [7]
