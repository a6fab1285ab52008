"""Notifications, below the HTTP layer: the price alert index (ordered thresholds,
one-shot and repeating), FCM error classification, the outbox worker's claim on a real
database (two workers never hold one row) and its outcomes with a scripted FCM."""
from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest

from exchanges.types import Ticker
from models import Database, Device, Notification, PriceAlert, User
from services.notify import worker as notify_worker
from services.notify.fcm import FcmRejected, FcmRetryable, FcmTokenGone, classify
from services.notify.presence import LocalDeliveries
from services.notify.price_alerts import PriceAlertService
from services.notify.worker import NotifyWorker


class _Tickers:
    def __init__(self) -> None:
        self.followed: dict[tuple, object] = {}

    def subscribe(self, exchange, testnet, symbol, subscriber, on_tick=None):  # type: ignore[no-untyped-def]
        self.followed[(exchange, symbol)] = on_tick

    def unsubscribe(self, exchange, testnet, symbol, subscriber):  # type: ignore[no-untyped-def]
        self.followed.pop((exchange, symbol), None)


def _alert(aid: int, above: str | None = None, below: str | None = None,
           repeat: bool = False) -> PriceAlert:
    return PriceAlert(id=aid, user_id=1, exchange="binance", symbol="BTCUSDT",
                      above=Decimal(above) if above else None,
                      below=Decimal(below) if below else None, repeat=repeat, armed=True)


def _tick(svc: PriceAlertService, price: str) -> list[tuple[str, int]]:
    svc.on_tick("binance", Ticker("BTCUSDT", None, Decimal(price), None, None, 0))
    out = [(what, aid) for what, aid, _ in svc._queue]
    svc._queue.clear()
    return out


def test_price_alert_index_fires_once_and_rearms_repeating() -> None:
    tickers = _Tickers()
    svc = PriceAlertService(None, lambda *a: {}, tickers, lambda *a: None, time.sleep)  # type: ignore[arg-type]
    svc._add(_alert(1, above="101"))
    svc._add(_alert(2, above="105", repeat=True))
    svc._add(_alert(3, below="95", repeat=True))
    svc._add(_alert(4, below="90"))
    assert ("binance", "BTCUSDT") in tickers.followed
    assert _tick(svc, "100") == []
    assert _tick(svc, "101") == [("fire", 1)]            # >= its level
    assert _tick(svc, "106") == [("fire", 2)]            # 1 fired once only
    assert _tick(svc, "106") == []
    assert _tick(svc, "104") == [("rearm", 2)]           # back below: armed again
    assert _tick(svc, "105") == [("fire", 2)]
    assert _tick(svc, "95") == [("fire", 3), ("rearm", 2)]
    assert _tick(svc, "89") == [("fire", 4)]
    assert _tick(svc, "96") == [("rearm", 3)]
    assert _tick(svc, "200") == [("fire", 2)]
    assert svc.stats()["watched"] == 2                   # one-shot ones are gone
    svc._remove(2)
    svc._remove(3)
    assert tickers.followed == {}                        # nothing left: stream released


def test_a_tick_costs_the_same_with_many_far_alerts() -> None:
    def service(n: int) -> PriceAlertService:
        svc = PriceAlertService(None, lambda *a: {}, _Tickers(), lambda *a: None, time.sleep)  # type: ignore[arg-type]
        svc._add(_alert(1, above="1000000"))
        for i in range(2, n + 2):
            far = 50_000 * (1.1 + (i % 997) / 1000)
            svc._add(_alert(i, above=f"{far:.1f}") if i % 2
                     else _alert(i, below=f"{50_000 * 0.9 - i % 997:.1f}"))
        return svc
    few, many = service(0), service(20_000)
    ticks = [Ticker("BTCUSDT", None, Decimal(50_000 + (i % 200) - 100), None, None, 0)
             for i in range(5_000)]

    def cpu(svc: PriceAlertService) -> float:  # CPU time: a busy machine does not skew it
        t = time.process_time()
        for tick in ticks:
            svc.on_tick("binance", tick)
        return time.process_time() - t
    runs = {"few": [], "many": []}  # type: dict[str, list[float]]
    for _ in range(5):  # alternated, so both see the same machine
        runs["few"].append(cpu(few))
        runs["many"].append(cpu(many))
    assert not many._queue and many.stats()["watched"] == 20_001  # none fired
    # binary search: no per-alert work (a scan of 20,000 alerts would cost ~100x)
    assert min(runs["many"]) < min(runs["few"]) * 2 + 0.02, runs


def _body(code: str, status: str = "X", fields: list[str] = ()) -> str:  # type: ignore[assignment]
    import json
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
    if fields:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                        "fieldViolations": [{"field": f} for f in fields]})
    return json.dumps({"error": {"code": 0, "message": "m", "status": status, "details": details}})


def test_fcm_errors_are_classified_by_status_and_code() -> None:
    e = classify(429, _body("QUOTA_EXCEEDED"), "7")
    assert isinstance(e, FcmRetryable) and e.retry_after_s == 7.0
    assert isinstance(classify(503, "not json", None), FcmRetryable)
    assert isinstance(classify(404, _body("UNREGISTERED"), None), FcmTokenGone)
    assert isinstance(classify(400, _body("INVALID_ARGUMENT", fields=["message.token"]), None),
                      FcmTokenGone)
    assert isinstance(classify(400, _body("INVALID_ARGUMENT", fields=["message.data"]), None),
                      FcmRejected)
    assert isinstance(classify(403, _body("SENDER_ID_MISMATCH"), None), FcmRejected)
    retry = classify(429, _body("QUOTA_EXCEEDED"), "Wed, 21 Oct 2099 07:28:00 GMT")
    assert isinstance(retry, FcmRetryable) and retry.retry_after_s > 1e6


def _rows(db: Database, n: int, token: str = "tok") -> tuple[int, int]:
    with db.transaction() as s:
        user = User(username="u" + str(time.time_ns()), password_hash="x")
        s.add(user)
        s.flush()
        dev = Device(user_id=user.id, token=token + str(time.time_ns()), platform="android")
        s.add(dev)
        s.flush()
        s.add_all([Notification(user_id=user.id, device_id=dev.id, event_type="fills",
                                event_key=f"fill:1:BTCUSDT:{i}", title="t", body="b",
                                skip_when_online=False) for i in range(n)])
        return user.id, dev.id


class _Fcm:
    def __init__(self, errors: list[Exception] | None = None) -> None:
        self.sent: list[dict] = []
        self.errors = list(errors or [])
        self.lock = threading.Lock()

    def send(self, message: dict) -> str:
        with self.lock:
            if self.errors:
                raise self.errors.pop(0)
            self.sent.append(message)
        return "ok"


def _worker(db: Database, fcm) -> NotifyWorker:  # type: ignore[no-untyped-def]
    return NotifyWorker(db, fcm, LocalDeliveries(), threading.Event(), time.sleep)


def test_an_idle_worker_wakes_on_a_write_and_ends_on_stop(database_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle worker blocks on its wake event: a row written here (the event set)
    is sent at once, not at the next look at the table (``POLL_S``, made 30 s here),
    and ``stop()`` ends the loop without waiting the look out."""
    monkeypatch.setattr(notify_worker, "POLL_S", 30.0)
    db = Database(database_url)
    wake = threading.Event()
    fcm = _Fcm()
    w = NotifyWorker(db, fcm, LocalDeliveries(), wake, time.sleep)
    looked = threading.Event()
    claim = w.claim

    def counted_claim(limit: int = 50):  # type: ignore[no-untyped-def]
        out = claim(limit)
        looked.set()
        return out
    monkeypatch.setattr(w, "claim", counted_claim)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    try:
        assert looked.wait(10)  # the first look found nothing: the worker now waits
        time.sleep(0.2)
        _rows(db, 1)
        wake.set()
        deadline = time.monotonic() + 10
        while not fcm.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(fcm.sent) == 1
        t0 = time.monotonic()
        w.stop()
        t.join(10)
        assert not t.is_alive() and time.monotonic() - t0 < 10
    finally:
        w.stop()
        t.join(1)
        db.dispose()


def test_two_workers_never_claim_one_row(database_url: str) -> None:
    db = Database(database_url)
    _rows(db, 200)
    claimed: list[list[int]] = [[], []]

    def claim(i: int) -> None:
        w = _worker(db, None)
        while True:
            _, rows = w.claim(limit=7)
            if not rows:
                return
            claimed[i].extend(r["id"] for r in rows)
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    both = claimed[0] + claimed[1]
    assert len(both) == 200 and len(set(both)) == 200
    db.dispose()


def test_worker_outcomes_retry_remove_and_send(database_url: str) -> None:
    db = Database(database_url)
    _, dev_id = _rows(db, 2)
    fcm = _Fcm([FcmRetryable(500, "INTERNAL", "m", None), FcmTokenGone(404, "UNREGISTERED", "m")])
    w = _worker(db, fcm)
    assert w.run_once() == 2
    with db.session() as s:
        rows = {r.event_key: r for r in s.query(Notification)}
        assert s.get(Device, dev_id) is None  # UNREGISTERED: the device is gone
    statuses = sorted(r.status for r in rows.values())
    assert statuses == ["device_removed", "device_removed"]  # the retried row's device went too
    assert fcm.sent == [] and w.stats()["devices_removed"] == 1

    _, dev2 = _rows(db, 1, "tok2")
    fcm2 = _Fcm([FcmRetryable(429, "QUOTA_EXCEEDED", "m", 0.0)])
    w2 = _worker(db, fcm2)
    assert w2.run_once() == 1 and fcm2.sent == []
    with db.session() as s:
        row = s.query(Notification).filter_by(device_id=dev2).one()
        assert row.status == "pending" and row.attempts == 1 and row.error.startswith("429")
        wait_ms = row.next_attempt_at - int(time.time() * 1000)
    assert 0 < wait_ms <= 1_000  # backoff of the first retry: 0.5-1 s
    time.sleep(wait_ms / 1000 + 0.05)
    assert w2.run_once() == 1 and len(fcm2.sent) == 1
    message = fcm2.sent[0]
    assert message["android"]["collapse_key"] == message["apns"]["headers"]["apns-collapse-id"]
    db.dispose()


@pytest.mark.parametrize("online", [True, False])
def test_a_delivered_event_is_skipped(database_url: str, online: bool) -> None:
    db = Database(database_url)
    _rows(db, 1)
    with db.transaction() as s:
        s.query(Notification).update({"skip_when_online": True})
    fcm = _Fcm()
    w = _worker(db, fcm)
    if online:
        w._deliveries.observe({"type": "fills", "key_id": 1, "data": [
            {"symbol": "BTCUSDT", "trade_id": "0"}]})
    w.run_once()
    with db.session() as s:
        assert s.query(Notification).one().status == ("skipped" if online else "sent")
    assert len(fcm.sent) == (0 if online else 1)
    db.dispose()


def test_a_batch_is_written_at_its_end_with_each_rows_time(database_url: str) -> None:
    """The batch's results land in one write: each sent row gets its own acceptance
    time, the device the latest; a row whose lease another claim took meanwhile (this
    process was too slow) is left to that claim and not counted."""
    db = Database(database_url)
    _, dev_id = _rows(db, 4)
    accepted: list[int] = []

    class _Slow(_Fcm):
        def send(self, message: dict) -> str:
            if not accepted:  # another process takes the last row over
                with db.transaction() as s:
                    last = s.query(Notification).order_by(Notification.id.desc()).first()
                    last.claimed_by = "another-process:1"
            time.sleep(0.02)
            out = super().send(message)
            accepted.append(int(time.time() * 1000))
            return out
    fcm = _Slow()
    w = _worker(db, fcm)
    assert w.run_once() == 4 and len(fcm.sent) == 4
    with db.session() as s:
        rows = s.query(Notification).order_by(Notification.id).all()
        device = s.get(Device, dev_id)
    assert [r.status for r in rows] == ["sent", "sent", "sent", "pending"]
    assert rows[3].claimed_by == "another-process:1" and rows[3].sent_at is None
    sent_at = [r.sent_at for r in rows[:3]]
    assert all(a <= s_at <= a + 5 for a, s_at in zip(accepted, sent_at, strict=False))
    assert sent_at[0] < sent_at[2] and all(r.attempts == 1 and r.lease_until is None
                                          for r in rows[:3])
    assert device.last_sent_at == max(sent_at)
    assert w.stats()["sent"] == 3
    db.dispose()


class _Streams:
    """The stream manager's keep / tracks / ensure / stop_user, recorded."""

    def __init__(self) -> None:
        self.kept: dict[int, int] = {}
        self.running: set[int] = set()
        self.ensured: list[int] = []
        self.stopped: list[int] = []

    def keep(self, keys: dict[int, int]) -> dict[int, int]:
        dropped = {k: u for k, u in self.kept.items() if keys.get(k) != u}
        self.kept = dict(keys)
        return dropped

    def tracks(self, key_id: int) -> bool:
        return key_id in self.running

    def ensure(self, user_id: int, key_id: int) -> None:
        self.ensured.append(key_id)
        self.running.add(key_id)

    def stop_user(self, user_id: int) -> list[int]:
        self.stopped.append(user_id)
        return []


def test_standby_keeps_the_keys_of_users_with_a_device_and_an_account_notification_on(
        database_url: str) -> None:
    from models import ExchangeKey, NotificationSettings
    from services.notify.standby import StandbyStreams

    db = Database(database_url)
    with db.transaction() as s:
        for uid in (1, 2, 3, 4):
            s.add(User(id=uid, username=f"s{uid}", password_hash="x"))
        s.flush()
        for kid, uid in ((10, 1), (11, 1), (20, 2), (30, 3), (40, 4)):
            s.add(ExchangeKey(id=kid, user_id=uid, exchange="binance", api_key=f"k{kid}",
                              api_secret_encrypted=b"x"))
        for uid in (1, 3, 4):  # user 2 has no device
            s.add(Device(user_id=uid, token=f"t{uid}", platform="android"))
        s.add(NotificationSettings(user_id=3, fills=False, protection=False, risk=False,
                                   price_alerts=True))  # nothing a stream would notify
        s.add(NotificationSettings(user_id=4, fills=False, protection=False, risk=True))
    streams, online = _Streams(), {1}
    standby = StandbyStreams(db, streams, lambda uid: uid in online, time.sleep)
    assert standby.round() == {"kept": 3, "started_or_followed": 3, "stopped_users": 0, "failed": 0}
    assert streams.kept == {10: 1, 11: 1, 40: 4} and sorted(streams.ensured) == [10, 11, 40]
    standby.round()  # running already: not asked again
    assert sorted(streams.ensured) == [10, 11, 40]
    with db.transaction() as s:  # users 1 (a socket open here) and 4 lose their devices
        for dev in s.query(Device).filter(Device.user_id.in_([1, 4])):
            s.delete(dev)
    assert standby.round()["stopped_users"] == 1
    assert streams.kept == {} and streams.stopped == [4]  # user 1's streams end with its socket
    db.dispose()
