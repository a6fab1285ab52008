"""Notifications to phones, end to end: the real server (FCM client pointed at the
simulator's FCM) and the real simulator as processes, real Socket.IO clients.

A fill of an account with no socket becomes one FCM message per device; a socket
subscribed to fills gets the push and the phone nothing; settings, faults (429 with
Retry-After, 500 across a server kill, UNREGISTERED), price alerts, the ``alerts``
push and its replay, bad input, and a server without FCM configuration."""
from __future__ import annotations

import time
import uuid

import pytest
import requests
from cryptography.fernet import Fernet

from tests.conftest import make_pg_database
from tests.e2e.conftest import Account, Listener, wait_until
from tests.support import fcm
from tests.support.server import start_server

pytestmark = pytest.mark.timeout(180)


class EventListener(Listener):
    """A Listener that also records ``fills`` and ``alerts``."""

    EVENTS = Listener.EVENTS + ("fills", "alerts")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, sim, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A server whose FCM is the simulator's (module-scoped, on each database)."""
    tmp = tmp_path_factory.mktemp("notify")
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'notify.sqlite3'}"
    else:
        url, drop = make_pg_database(request.getfixturevalue("pg_server"))
    creds = fcm.write_service_account(tmp, sim.url)
    srv = start_server(url, sim.url, sim.ws_url, tmp, extra_env={
        "GOOGLE_APPLICATION_CREDENTIALS": str(creds), "FCM_URL": sim.url,
        "EXCHANGE_TIMEOUT_S": "3"})
    yield srv
    srv.stop()
    if drop:
        drop()


@pytest.fixture(autouse=True)
def _prices(sim):  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "50000")
    yield
    fcm.clear_faults(sim.url)


def _device(account: Account, platform: str = "android") -> tuple[str, int]:
    token = fcm.new_token()
    r = account.post("/api/devices", {"token": token, "platform": platform})
    assert r.status_code == 201, r.text
    return token, r.json()["id"]


def _buy(account: Account, qty: str = "0.01") -> dict:
    r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                     "type": "MARKET", "quantity": qty})
    assert r.status_code == 201, r.text
    return r.json()["trade"]


def _notifications(account: Account) -> list[dict]:
    r = account.get("/api/notifications")
    assert r.status_code == 200, r.text
    return r.json()


def test_offline_fill_is_one_message_per_device(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    android, _ = _device(account, "android")
    ios, _ = _device(account, "ios")
    _buy(account)
    got = wait_until(lambda: (fcm.messages(sim.url, android), fcm.messages(sim.url, ios))
                     if fcm.messages(sim.url, android) and fcm.messages(sim.url, ios) else None)
    time.sleep(1.5)  # nothing more arrives: one message per device
    assert len(fcm.messages(sim.url, android)) == 1 and len(fcm.messages(sim.url, ios)) == 1
    msg = got[0][0]["message"]
    assert msg["notification"]["title"] == "BTCUSDT BUY filled"
    assert msg["data"]["type"] == "fills" and msg["data"]["symbol"] == "BTCUSDT"
    key = msg["android"]["collapse_key"]
    assert key.startswith(f"fill:{account.key_id}:BTCUSDT:")
    assert msg["apns"]["headers"]["apns-collapse-id"] == key
    assert got[1][0]["message"]["android"]["collapse_key"] == key  # one event, one key
    rows = _notifications(account)
    assert sorted(r["status"] for r in rows) == ["sent", "sent"]
    devices = account.get("/api/devices").json()
    assert all(d["last_sent_at"] for d in devices) and "token" not in devices[0]
    assert android not in server.log() and ios not in server.log()  # never logged whole


def test_a_fill_made_at_the_venue_while_the_app_sleeps_reaches_the_phone(server, sim) -> None:  # type: ignore[no-untyped-def]
    """No socket open: the key's stream runs because its user has a device (the
    standby streams), so an order placed elsewhere (here straight at the venue with
    python-binance) and filled there is one message per device at once, not at the
    next reconciliation. A socket's leaving does not stop that stream; deleting the
    last device does."""
    account = Account(server, sim)
    live = f"account stream live key_id={account.key_id} "
    assert live not in server.log()  # no device, no socket: no stream
    token, device_id = _device(account)
    wait_until(lambda: live in server.log())  # started soon after the registration
    lst = EventListener(server.url, account.token)  # the app comes to the front and goes
    try:
        assert lst.call("subscribe", {"types": ["balance"], "key_id": account.key_id})["ok"]
    finally:
        lst.close()
    time.sleep(1.0)
    venue = sim.binance_client(account.api_key, account.api_secret)
    venue.futures_create_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.01",
                               newClientOrderId="elsewhere-" + uuid.uuid4().hex[:8])
    got = wait_until(lambda: fcm.messages(sim.url, token), timeout=10)
    msg = got[0]["message"]
    assert msg["notification"]["title"] == "BTCUSDT BUY filled"
    assert msg["android"]["collapse_key"].startswith(f"fill:{account.key_id}:BTCUSDT:")
    # the notification row is written in the fill's ledger batch: the fill is stored
    assert [r["status"] for r in wait_until(lambda: [
        r for r in _notifications(account) if r["status"] != "pending"])] == ["sent"]
    assert server.log().count(live) == 1  # the socket's leaving did not restart it
    assert account.delete(f"/api/devices/{device_id}").status_code == 204
    wait_until(lambda: f"account streams stopped user_id={account.user_id} " in server.log())


def test_subscribed_socket_gets_the_fill_and_the_phone_nothing(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    token, _ = _device(account)
    lst = EventListener(server.url, account.token)
    try:
        ack = lst.call("subscribe", {"types": ["fills"], "key_id": account.key_id})
        assert ack["ok"], ack
        lst.wait_for("stream_status", lambda d: d["state"] == "live")
        _buy(account)
        lst.wait_for("fills", lambda d: len(d["data"]) == 1)
        rows = wait_until(lambda: [r for r in _notifications(account) if r["status"] != "pending"])
        assert [r["status"] for r in rows] == ["skipped"]
        time.sleep(1.0)
        assert fcm.messages(sim.url, token) == []
    finally:
        lst.close()


def test_settings_off_sends_nothing(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    token, _ = _device(account)
    r = account.put("/api/notifications/settings", {"fills": False})
    assert r.status_code == 200 and r.json()["fills"] is False and r.json()["risk"] is True
    assert r.json()["liquidation_warning_pct"] == "10"
    _buy(account)
    time.sleep(2.0)
    assert fcm.messages(sim.url, token) == [] and _notifications(account) == []


def test_unregistered_token_removes_the_device(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    token, _ = _device(account)
    kept, kept_id = _device(account, "ios")
    fcm.fault(sim.url, "unregistered", token=token, count=5)
    _buy(account)
    wait_until(lambda: [d["id"] for d in account.get("/api/devices").json()] == [kept_id])
    assert fcm.messages(sim.url, token) == []
    wait_until(lambda: len(fcm.messages(sim.url, kept)) == 1)
    assert sorted(r["status"] for r in _notifications(account)) == ["device_removed", "sent"]


def test_429_is_retried_after_retry_after(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    token, _ = _device(account)
    fcm.fault(sim.url, "http_429", token=token, count=1, retry_after_s=3)
    started = int(time.time() * 1000)
    _buy(account)
    got = wait_until(lambda: fcm.messages(sim.url, token), timeout=30)
    assert got[0]["received_at"] - started >= 3000  # not before Retry-After
    time.sleep(1.0)
    assert len(fcm.messages(sim.url, token)) == 1
    row = _notifications(account)[0]
    assert row["status"] == "sent" and row["attempts"] == 2 and "429" in row["error"]


def test_price_alerts_once_and_repeating_push_and_notify(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)
    token, _ = _device(account)
    assert account.put("/api/notifications/settings",
                       {"skip_when_online": False}).status_code == 200
    once = account.post("/api/alerts/price", {"exchange": "binance", "symbol": "BTCUSDT",
                                              "above": "50100"})
    rep = account.post("/api/alerts/price", {"exchange": "binance", "symbol": "BTCUSDT",
                                             "below": "49900", "repeat": True})
    assert once.status_code == 201 and rep.status_code == 201, (once.text, rep.text)
    assert once.json()["above"] == "50100" and once.json()["below"] is None
    lst = EventListener(server.url, account.token)
    try:
        ack = lst.call("subscribe", {"types": ["alerts"]})  # no key needed for alerts
        assert ack["ok"] and ack["rooms"] == [f"alerts_{account.user_id}"], ack
        lst.wait_for("alerts", lambda d: d["data"] == [])  # the empty snapshot
        time.sleep(1.0)  # the market stream of BTCUSDT runs for the alerts
        for price in ("50200", "50000", "49800", "50000", "49800", "50300"):
            sim.set_price("BTCUSDT", price)
            time.sleep(0.8)
        got = wait_until(lambda: [a for n, e in lst.all if n == "alerts" for a in e["data"]]
                         if len([1 for n, e in lst.all if n == "alerts" and e["data"]]) >= 3
                         else None)
        time.sleep(1.0)
        alerts = [a for n, e in lst.all if n == "alerts" for a in e["data"]]
        assert [a["kind"] for a in alerts] == ["price_alert"] * 3, alerts
        details = [a["detail"] for a in alerts]
        assert [d["side"] for d in details] == ["above", "below", "below"]
        assert details[0]["price_alert_id"] == once.json()["id"]
        seqs = [e["seq"] for n, e in lst.all if n == "alerts" and e["data"]]
        assert seqs == [1, 2, 3] and got[0]["symbol"] == "BTCUSDT"
        wait_until(lambda: len(fcm.messages(sim.url, token)) == 3)
        titles = {m["message"]["notification"]["title"] for m in fcm.messages(sim.url, token)}
        assert titles == {"Price alert: BTCUSDT"}
        listed = {a["id"]: a for a in account.get("/api/alerts/price").json()}
        assert listed[once.json()["id"]]["fired_at"] and listed[rep.json()["id"]]["fired_at"]
    finally:
        lst.close()
    # a resume from seq 1 replays 2 and 3 from the table; from a time, all three
    lst2 = EventListener(server.url, account.token)
    try:
        ack = lst2.call("subscribe", {"types": ["alerts"],
                                      "since": {"alerts": {"epoch": "durable", "seq": 1}}})
        assert ack["ok"] and ack["resumed"] == {"alerts": True}, ack
        wait_until(lambda: len([e for n, e in lst2.all if n == "alerts"]) >= 2)
        assert [e["seq"] for n, e in lst2.all if n == "alerts"] == [2, 3]
    finally:
        lst2.close()
    assert account.delete(f"/api/alerts/price/{rep.json()['id']}").status_code == 204
    assert [a["id"] for a in account.get("/api/alerts/price").json()] == [once.json()["id"]]


def test_bad_input_is_a_400_naming_the_field(server, sim) -> None:  # type: ignore[no-untyped-def]
    account = Account(server, sim)

    def field(path: str, body: dict, method: str = "post") -> str:
        r = getattr(account, method)(path, body)
        assert r.status_code == 400, (body, r.status_code, r.text)
        return r.json()["error"]["field"]

    assert field("/api/devices", {"token": "", "platform": "ios"}) == "token"
    assert field("/api/devices", {"token": "x" * 4097, "platform": "ios"}) == "token"
    assert field("/api/devices", {"token": "abc", "platform": "web"}) == "platform"
    assert field("/api/devices", {"token": "abc def", "platform": "ios"}) == "token"
    assert field("/api/alerts/price", {"exchange": "binance", "symbol": "NOPEUSDT",
                                       "above": "1"}) == "symbol"
    assert field("/api/alerts/price", {"exchange": "binance", "symbol": "BTCUSDT"}) == "above"
    assert field("/api/alerts/price", {"exchange": "binance", "symbol": "BTCUSDT",
                                       "above": "-5"}) == "above"
    assert field("/api/alerts/price", {"exchange": "kraken", "symbol": "BTCUSDT",
                                       "above": "1"}) == "exchange"
    assert field("/api/notifications/settings", {"fills": "yes"}, "put") == "fills"
    assert field("/api/notifications/settings", {"liquidation_warning_pct": "200"},
                 "put") == "liquidation_warning_pct"
    assert account.delete("/api/devices/999999").status_code == 404
    other = Account(server, sim)
    _, dev_id = _device(other)
    assert account.delete(f"/api/devices/{dev_id}").status_code == 404  # another user's


def test_a_token_belongs_to_the_last_user_who_registered_it(server, sim) -> None:  # type: ignore[no-untyped-def]
    first, second = Account(server, sim), Account(server, sim)
    token, dev_id = _device(first)
    r = second.post("/api/devices", {"token": token, "platform": "ios", "locale": "de"})
    assert r.status_code == 200 and r.json()["id"] == dev_id and r.json()["locale"] == "de"
    assert first.get("/api/devices").json() == []
    assert [d["id"] for d in second.get("/api/devices").json()] == [dev_id]


def test_without_configuration_notifications_are_kept_not_configured(sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"GOOGLE_APPLICATION_CREDENTIALS": ""}
    srv = start_server(f"sqlite:///{tmp_path / 'nc.sqlite3'}", sim.url, sim.ws_url, tmp_path,
                       extra_env=env)
    try:
        account = Account(srv, sim)
        token, _ = _device(account)
        _buy(account)
        rows = wait_until(lambda: [r for r in _notifications(account)
                                   if r["status"] == "not_configured"])
        assert len(rows) == 1 and fcm.messages(sim.url, token) == []
        lines = [ln for ln in srv.log().splitlines() if "notifications not configured" in ln]
        assert len(lines) == 1, lines
        stats = account.admin("GET", "/admin/stats").json()["notifications"]
        assert stats["configured"] is False and stats["not_configured"] == 1
    finally:
        srv.stop()


def test_fcm_500_while_the_server_is_killed_is_sent_once_after_restart(sim, pg_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url, drop = make_pg_database(pg_server)
    creds = fcm.write_service_account(tmp_path, sim.url)
    env = {"GOOGLE_APPLICATION_CREDENTIALS": str(creds), "FCM_URL": sim.url,
           "SECRET_KEY": uuid.uuid4().hex, "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
           "ADMIN_TOKEN": uuid.uuid4().hex}
    srv = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env)
    try:
        account = Account(srv, sim)
        token, _ = _device(account)
        fcm.fault(sim.url, "http_500", token=token, count=1000)
        _buy(account)
        wait_until(lambda: any(r["attempts"] >= 1 and "500" in (r["error"] or "")
                               for r in _notifications(account)))
        srv.kill()
        fcm.clear_faults(sim.url)
        assert fcm.messages(sim.url, token) == []
        srv = start_server(url, sim.url, sim.ws_url, tmp_path, extra_env=env)
        got = wait_until(lambda: fcm.messages(sim.url, token), timeout=40)
        time.sleep(2.0)
        assert len(fcm.messages(sim.url, token)) == 1 and len(got) == 1
        r = requests.get(srv.url + "/api/notifications", headers=account.headers(), timeout=10)
        assert [n["status"] for n in r.json()] == ["sent"]
    finally:
        srv.stop()
        drop()


RELOAD_S = 2.0  # PRICE_ALERTS_RELOAD_S of the two-server test (the default is 10 s)


def _following(srv) -> tuple[int, int, bool]:  # type: ignore[no-untyped-def]
    """The server process's price alerts watched, ticker subscribers, and whether every
    market stream it runs is live (``/admin/stats``)."""
    stats = requests.get(srv.url + "/admin/stats", headers={"X-Admin-Token": srv.admin_token},
                         timeout=10).json()
    tickers = stats["tickers"]
    return (stats["notifications"]["price_alerts"]["watched"], tickers["subscribers"],
            tickers["streams"] > 0 and tickers["by_state"].get("live", 0) == tickers["streams"])


def test_two_servers_on_postgresql_never_send_one_notification_twice(  # type: ignore[no-untyped-def]
        sim, pg_server, redis_url, tmp_path) -> None:
    from tests.e2e.conftest import queued_pair
    creds = fcm.write_service_account(tmp_path, sim.url)
    with queued_pair(sim, pg_server, redis_url, tmp_path, FCM_URL=sim.url,
                     GOOGLE_APPLICATION_CREDENTIALS=str(creds),
                     PRICE_ALERTS_RELOAD_S=str(RELOAD_S)) as (a, b, listeners):
        sim.set_price("BTCUSDT", "50000")
        accounts = [Account(a, sim) for _ in range(3)]
        tokens = [_device(acct)[0] for acct in accounts for _ in range(3)]
        for i in range(4):
            for acct in accounts:
                acct.server = a if i % 2 else b  # the fills are recorded by both processes
                _buy(acct, "0.002")
        expected = len(accounts) * 4 * 3

        def sent() -> list[tuple[str, str]]:
            wanted = set(tokens)
            return [(m["message"]["token"], m["message"]["android"]["collapse_key"])
                    for m in fcm.messages(sim.url) if m["message"]["token"] in wanted]
        wait_until(lambda: len(sent()) >= expected, timeout=60)
        time.sleep(2.0)
        got = sent()
        assert len(got) == expected and len(set(got)) == expected  # none twice
        per = [requests.get(s.url + "/admin/stats", timeout=10,
                            headers={"X-Admin-Token": s.admin_token}).json()["notifications"]
               for s in (a, b)]
        assert sum(p["sent"] for p in per) == expected

        # a socket on A received the fill: neither process sends it to the phone
        acct = Account(a, sim)
        token, _ = _device(acct)
        la = EventListener(a.url, acct.token)
        listeners.append(la)
        assert la.call("subscribe", {"types": ["fills"], "key_id": acct.key_id})["ok"]
        la.wait_for("stream_status", lambda d: d["state"] == "live")
        acct.server = b
        for _ in range(3):
            _buy(acct, "0.002")
        wait_until(lambda: len([e for n, e in la.all if n == "fills" for _ in e["data"]]) >= 3)
        rows = wait_until(lambda: (lambda rs: rs if len(rs) == 3 and all(
            r["status"] != "pending" for r in rs) else None)(_notifications(acct)), timeout=30)
        assert [r["status"] for r in rows] == ["skipped"] * 3
        assert fcm.messages(sim.url, token) == []

        # a price alert made on A, watched by both processes (B's reload), fires once;
        # its alerts push reaches a socket on B through the queue: skipped on the phone
        acct.server = a
        before_b = _following(b)
        r = acct.post("/api/alerts/price", {"exchange": "binance", "symbol": "BTCUSDT",
                                            "above": "50100"})
        assert r.status_code == 201, r.text
        lb = EventListener(b.url, acct.token)
        listeners.append(lb)
        assert lb.call("subscribe", {"types": ["alerts"]})["ok"]
        lb.wait_for("alerts", lambda d: d["data"] == [])
        # B's reload (every RELOAD_S) follows the alert too: B's figures say when it
        # watches one more alert, has one more ticker subscriber and every market stream
        # is live (this was a fixed 12 s behind the default 10 s reload)
        wait_until(lambda: (lambda now: now[0] > before_b[0] and now[1] > before_b[1]
                            and now[2])(_following(b)), timeout=RELOAD_S + 15)
        sim.set_price("BTCUSDT", "50200")
        alert = lb.wait_for("alerts", lambda d: len(d["data"]) == 1)["data"][0]
        assert alert["kind"] == "price_alert" and alert["detail"]["price"] == "50200"
        time.sleep(2)
        assert len([e for n, e in lb.all if n == "alerts" and e["data"]]) == 1  # once
        rows = wait_until(lambda: [x for x in _notifications(acct)
                                   if x["event_type"] == "alerts" and x["status"] != "pending"])
        assert [x["status"] for x in rows] == ["skipped"]
        assert fcm.messages(sim.url, token) == []


def test_the_demo_sends_notifications_to_its_embedded_simulator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    from tests.support.server import ROOT, free_port
    port, sim_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BINANCE_", "BYBIT_", "FCM_", "GOOGLE_"))}
    password = "demo-pass-" + os.urandom(4).hex()
    env.update({"APP_ENV": "demo", "PORT": str(port), "SIMULATOR_PORT": str(sim_port),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}", "PYTHONUNBUFFERED": "1",
                "DEMO_PASSWORD": password, "RECONCILE_INTERVAL_S": "0"})
    for name in ("SIMULATOR_REPLAY_CSV", "EMBED_SIMULATOR", "HOST", "LOG_FORMAT"):
        env.pop(name, None)
    log_path = tmp_path / "demo.log"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url, sim_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{sim_port}"
    try:
        wait_until(lambda: "next: " in log_path.read_text() or proc.poll() is not None, 60)
        log = log_path.read_text()
        assert "notifications configured project_id=pushsrv-demo" in log, log

        def ready() -> bool:
            try:
                return requests.get(url + "/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_until(ready, 30)
        login = requests.post(url + "/api/auth/login", timeout=10,
                              json={"username": "demo", "password": password}).json()
        auth = {"Authorization": f"Bearer {login['access_token']}"}
        token = fcm.new_token()
        assert requests.post(url + "/api/devices", headers=auth, timeout=10,
                             json={"token": token, "platform": "ios"}).status_code == 201
        key_id = requests.get(url + "/api/exchange/keys", headers=auth, timeout=10).json()[0]["id"]
        r = requests.post(url + "/api/orders", headers=auth, timeout=15, json={
            "key_id": key_id, "symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
            "quantity": "0.01"})
        assert r.status_code == 201, r.text
        got = wait_until(lambda: fcm.messages(sim_url, token), 30)
        assert got[0]["project_id"] == "pushsrv-demo"
    finally:
        proc.terminate()
        proc.wait(15)
        (ROOT / "var" / f"demo-fcm-service-account-{sim_port}.json").unlink(missing_ok=True)
