"""The web console at ``/`` end to end: the real simulator and the real server as
processes, the page in headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright for Python; ``make test`` installs it via ``scripts/install-browser.sh``).

Without Chromium (or Playwright) the test is skipped, except under ``CI=true``
where it fails.
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.server import start_server
from tests.support.simulator import start_simulator

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium's own connections (updates,
# sync, ...) are refused by the closed test network and slow the start down.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 10_000


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required in CI: run `make install-browser` / "
                    f"`pip install -r requirements-dev.txt`)")
    pytest.skip(f"{reason}; install it with `make install-browser` (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Headless Chromium from Debian's package, via Playwright."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _missing(f"Chromium not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright (Python package) not installed")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The simulator and a server on a fresh SQLite database."""
    tmp = tmp_path_factory.mktemp("console")
    sim = start_simulator()
    srv = None
    try:
        srv = start_server(f"sqlite:///{tmp / 'console.sqlite3'}", sim.url, sim.ws_url, tmp,
                           extra_env={"EXCHANGE_TIMEOUT_S": "3"})
        yield sim, srv
    finally:
        if srv is not None:
            srv.stop()
        sim.stop()


def make_user(server, sim) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """Register a user with a funded simulator key over REST (as tests/e2e ``Account``);
    returns ``(username, password)``."""
    username, password = "u" + uuid.uuid4().hex[:10], "pw-" + uuid.uuid4().hex
    api_key, api_secret = "key" + uuid.uuid4().hex, "sec" + uuid.uuid4().hex
    sim.create_account(api_key, api_secret, balances={"USDT": "10000"})
    creds = {"username": username, "password": password}
    assert requests.post(server.url + "/api/auth/register", json=creds, timeout=15).status_code == 201
    token = requests.post(server.url + "/api/auth/login", json=creds, timeout=15).json()["access_token"]
    r = requests.post(server.url + "/api/exchange/keys", timeout=15,
                      headers={"Authorization": f"Bearer {token}"},
                      json={"exchange": "binance", "api_key": api_key, "api_secret": api_secret,
                            "label": "main"})
    assert r.status_code == 201, r.text
    return username, password


def test_console_login_order_position_pnl(browser, stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    sim, server = stack
    sim.set_price("BTCUSDT", "60000")
    username, password = make_user(server, sim)

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(server.url + "/")
        expect(page).to_have_title("pushsrv console")

        # a wrong password: the API's error message is shown
        page.get_by_test_id("login-username").fill(username)
        page.get_by_test_id("login-password").fill("wrong-password")
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("message")).to_be_visible()
        expect(page.get_by_test_id("message")).not_to_have_text("")

        page.get_by_test_id("login-password").fill(password)
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("whoami")).to_have_text(username)
        expect(page.get_by_test_id("conn-status")).to_have_text("online")

        # the balance snapshot arrives over Socket.IO, shown as the decimal string it is
        expect(page.get_by_test_id("bal-wallet")).to_have_text(re.compile(r"^10000(\.0*)?$"))
        expect(page.get_by_test_id("key-row")).to_have_count(1)
        # the key is not called "mainnet": the test stack points every venue at the simulator
        expect(page.get_by_test_id("key-row").first.locator('[data-field="net"]')).not_to_have_text("mainnet")
        expect(page.get_by_test_id("stream-status")).to_have_text(
            re.compile(r"live|polling|reconnecting"))

        # an invalid order: the server's validation message reaches the user
        page.get_by_test_id("order-quantity").fill("abc")
        page.get_by_test_id("order-submit").click()
        expect(page.get_by_test_id("message")).to_contain_text("quantity")

        # a MARKET buy opens a position
        page.get_by_test_id("order-symbol").fill("BTCUSDT")
        page.get_by_test_id("order-side").select_option("BUY")
        page.get_by_test_id("order-type").select_option("MARKET")
        page.get_by_test_id("order-quantity").fill("0.01")
        page.get_by_test_id("order-submit").click()
        expect(page.get_by_test_id("order-result")).to_contain_text("open")
        row = page.locator('[data-testid="position-row"][data-symbol="BTCUSDT"]')
        expect(row).to_have_count(1)
        expect(row.locator('[data-field="side"]')).to_have_text("LONG")
        expect(row.locator('[data-field="size"]')).to_have_text(re.compile(r"^0\.010*$"))
        expect(row.locator('[data-field="mark_price"]')).to_have_text(re.compile(r"^60000"))

        # the price moves: mark price, unrealized PnL and the chart follow
        before = page.get_by_test_id("pnl-unrealized").inner_text()
        sim.set_price("BTCUSDT", "61000")
        expect(row.locator('[data-field="mark_price"]')).to_have_text(re.compile(r"^61000"))
        expect(page.get_by_test_id("pnl-unrealized")).not_to_have_text(before)
        # money to the cent, one unrealized figure on every panel, no "Liq. 0"
        expect(page.get_by_test_id("pnl-unrealized")).to_have_text(re.compile(r"^(9|10)\.\d\d$"))
        expect(row.locator('[data-field="unrealized_pnl"]')).to_have_text(re.compile(r"^(9|10)\.\d\d$"))
        expect(page.get_by_test_id("bal-unrealized")).to_have_text(page.get_by_test_id("pnl-unrealized").inner_text())
        expect(row.locator('[data-field="liquidation_price"]')).not_to_have_text("0")
        points = page.get_by_test_id("pnl-line").get_attribute("points") or ""
        assert len(points.split()) >= 2, points

        # the console follows epoch + seq: it drops only a true duplicate (same epoch,
        # seq not above the highest seen) and takes a new epoch even at a lower seq
        shown = page.get_by_test_id("pnl-unrealized").inner_text()
        pushed = page.evaluate("() => JSON.parse(JSON.stringify(state.latest[state.activeKeyId].pnl))")
        assert pushed["epoch"] and pushed["seq"] >= 1
        for seq in (pushed["seq"], pushed["seq"] - 1):
            page.evaluate("(e) => onPush('pnl', e)", {**pushed, "seq": seq, "data": {
                **pushed["data"], "unrealized_pnl": "12345"}})
        expect(page.get_by_test_id("pnl-unrealized")).to_have_text(shown)
        page.evaluate("(e) => onPush('pnl', e)", {**pushed, "epoch": "restarted", "seq": 1,
                                                  "data": {**pushed["data"], "unrealized_pnl": "777"}})
        expect(page.get_by_test_id("pnl-unrealized")).to_have_text("777")

        shot = tmp_path / "console.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")

        # a resting LIMIT order shows up in open orders and is canceled from there
        page.get_by_test_id("order-type").select_option("LIMIT")
        page.get_by_test_id("order-price").fill("50000")
        page.get_by_test_id("order-submit").click()
        expect(page.get_by_test_id("order-result")).to_contain_text("pending")
        order = page.get_by_test_id("order-row")
        expect(order).to_have_count(1)
        expect(order.locator('[data-field="price"]')).to_have_text(re.compile(r"^50000"))
        order.get_by_test_id("order-cancel").click()
        expect(page.get_by_test_id("order-row")).to_have_count(0)

        # closing the position empties the positions table
        row.get_by_test_id("position-close").click()
        expect(page.get_by_test_id("position-row")).to_have_count(0)
        expect(page.get_by_test_id("message")).to_contain_text(re.compile(r"exit #\d+ filled"))

        # keys: add a testnet key (checked by the exchange), then delete it
        api_key, api_secret = "key" + uuid.uuid4().hex, "sec" + uuid.uuid4().hex
        sim.create_account(api_key, api_secret)
        page.get_by_test_id("key-api-key").fill(api_key)
        page.get_by_test_id("key-api-secret").fill(api_secret)
        page.get_by_test_id("key-testnet").check()
        page.get_by_test_id("key-label").fill("second")
        page.get_by_test_id("key-submit").click()
        expect(page.get_by_test_id("key-row")).to_have_count(2)
        expect(page.get_by_test_id("key-row").nth(1)).to_contain_text(api_key[-4:])
        assert api_secret[3:] not in page.inner_text("body")   # never shown back
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_test_id("key-row").nth(1).get_by_test_id("key-delete").click()
        expect(page.get_by_test_id("key-row")).to_have_count(1)
        assert not page_errors, page_errors
    finally:
        page.close()


def test_static_files_are_served(stack) -> None:  # type: ignore[no-untyped-def]
    """``/`` and ``/static/...`` come from ``web/``; nothing outside it leaks."""
    _, server = stack
    index = requests.get(server.url + "/", timeout=10)
    assert index.status_code == 200 and index.headers["Content-Type"].startswith("text/html")
    assert "/static/console.js" in index.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", index.text), "no external resources"
    js = requests.get(server.url + "/static/vendor/socket.io.min.js", timeout=10)
    assert js.status_code == 200 and "Socket.IO v4" in js.text[:200]
    for escape in ("/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/vendor/%2e%2e/%2e%2e/app.py"):
        assert requests.get(server.url + escape, timeout=10).status_code == 404, escape
    assert requests.get(server.url + "/static/nope.js", timeout=10).status_code == 404


def test_console_keeps_its_session_with_the_refresh_token(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Access tokens of 4 s: the console refreshes before expiry (rotation), its REST
    calls and socket keep working past the first token's life, a reload resumes the
    session from the refresh token, and the logout button ends it on the server."""
    from playwright.sync_api import expect

    sim = start_simulator()
    server = None
    page = None
    try:
        server = start_server(f"sqlite:///{tmp_path / 'refresh.sqlite3'}", sim.url, sim.ws_url,
                              tmp_path, extra_env={"JWT_EXPIRES_S": "4"})
        username, password = make_user(server, sim)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url + "/")
        page.get_by_test_id("login-username").fill(username)
        page.get_by_test_id("login-password").fill(password)
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("whoami")).to_have_text(username)
        first = page.evaluate("() => [state.token, state.refreshToken]")
        assert first[1], "login gave the console a refresh token"
        # past 80 % of 4 s the console has rotated both tokens
        page.wait_for_function("(t) => state.token !== t[0] && state.refreshToken !== t[1]",
                               arg=first, timeout=TIMEOUT_MS)
        page.wait_for_timeout(4500)  # the first access token has expired by now
        me = page.evaluate("async () => (await api('GET', '/api/auth/me')).username")
        assert me == username
        expect(page.get_by_test_id("conn-status")).to_have_text("online")
        # the rotated refresh token no longer works on the server
        r = requests.post(server.url + "/api/auth/refresh", json={"refresh_token": first[1]},
                          timeout=10)
        assert r.status_code == 401
        # ... and presenting it revoked the session (theft detection): the console's
        # next refresh is refused and it asks to log in again
        expect(page.locator("#login-view")).to_be_visible(timeout=TIMEOUT_MS)

        # a new session survives a reload (the refresh token is in sessionStorage)
        page.get_by_test_id("login-username").fill(username)
        page.get_by_test_id("login-password").fill(password)
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("whoami")).to_have_text(username)
        page.wait_for_timeout(4500)
        page.reload()
        expect(page.get_by_test_id("whoami")).to_have_text(username)
        held = page.evaluate("() => state.refreshToken")
        page.get_by_test_id("logout").click()
        expect(page.locator("#login-view")).to_be_visible()
        assert page.evaluate("() => lastLogout") == 204   # the console's logout call
        r = requests.post(server.url + "/api/auth/refresh", json={"refresh_token": held},
                          timeout=10)
        assert r.status_code == 401
    finally:
        if page is not None:
            page.close()
        if server is not None:
            server.stop()
        sim.stop()


def test_console_sets_sees_and_removes_a_stop_on_a_position_row(browser, stack) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import expect

    sim, server = stack
    sim.set_price("ETHUSDT", "3000")
    username, password = make_user(server, sim)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page_errors: list[str] = []
    page.on("pageerror", lambda e: page_errors.append(str(e)))
    try:
        page.goto(server.url + "/")
        page.get_by_test_id("login-username").fill(username)
        page.get_by_test_id("login-password").fill(password)
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("conn-status")).to_have_text("online")
        page.get_by_test_id("order-symbol").fill("ETHUSDT")
        page.get_by_test_id("order-quantity").fill("0.1")
        page.get_by_test_id("order-submit").click()
        row = page.locator('[data-testid="position-row"][data-symbol="ETHUSDT"]')
        expect(row).to_have_count(1)
        expect(row.locator('[data-field="protection"]')).to_have_text("-")

        # a stop on the wrong side: the server names the field
        row.get_by_test_id("position-protect").click()
        expect(page.get_by_test_id("protect-symbol")).to_have_value("ETHUSDT")
        page.get_by_test_id("protect-sl").fill("3100")
        page.get_by_test_id("protect-submit").click()
        expect(page.get_by_test_id("message")).to_contain_text("stop_loss.trigger_price")

        # held by the exchange: the row shows it, the orders panel lists the leg
        page.get_by_test_id("protect-sl").fill("2900")
        page.get_by_test_id("protect-tp").fill("3200")
        page.get_by_test_id("protect-submit").click()
        expect(page.get_by_test_id("protect-result")).to_contain_text("stop_loss active")
        expect(row.locator('[data-field="protection"]')).to_have_text("SL 2900 · TP 3200")
        leg = page.locator('[data-testid="order-row"]', has_text="STOP_MARKET")
        expect(leg.locator('[data-field="trigger_price"]')).to_have_text("2900")

        # the take-profit removed from the orders panel, then everything
        page.locator('[data-testid="order-row"]', has_text="TAKE_PROFIT_MARKET") \
            .get_by_test_id("leg-remove").click()
        expect(row.locator('[data-field="protection"]')).to_have_text("SL 2900")
        page.get_by_test_id("protect-remove").click()
        expect(row.locator('[data-field="protection"]')).to_have_text("-")
        expect(page.get_by_test_id("order-row")).to_have_count(0)
        assert not page_errors, page_errors
    finally:
        page.close()
