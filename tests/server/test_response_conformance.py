"""Every JSON route answers what the served spec documents (issue 12 item 4).

One in-process app on SQLite, pointed at a real simulator process, is called on every
JSON operation of ``/api/openapi.json`` with a valid request; each body is validated
(JSON Schema 2020-12, ``jsonschema_rs``, a schemathesis dependency) against the schema
the spec gives for that operation and status, error bodies against ``Error``. The test
fails when an operation of the spec is not called, so a new route needs a case here.
The schemathesis run (``tests/e2e/test_fuzz_rest.py``) adds generated cases on a
server process; this one makes sure each success body is seen at least once.
"""
from __future__ import annotations

import time
import uuid

import jsonschema_rs
import pytest

from app import create_app
from services import schema as db_schema
from tests.server.conftest import make_config
from tests.support.simulator import start_simulator

# not JSON: Prometheus text, HTML pages, the console's files
NOT_JSON = {"metrics_metrics", "openapi_docs", "console_index", "console_static"}
ADMIN = {"X-Admin-Token": "admin-token"}


@pytest.fixture(scope="module")
def sim():  # type: ignore[no-untyped-def]
    proc = start_simulator()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def app(sim, tmp_path_factory):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path_factory.mktemp('conformance') / 'db.sqlite3'}"
    db_schema.upgrade(url)
    application = create_app(make_config(url, sim.url, sim.ws_url))
    yield application
    application.extensions["pushsrv"].shutdown()


class Checker:
    """Calls the app and validates each answer against the spec; remembers which
    operations (``operationId``) it saw with a documented success status."""

    def __init__(self, client, spec: dict) -> None:  # type: ignore[no-untyped-def]
        self.client, self.spec = client, spec
        self.seen: set[str] = set()
        self.validated = 0

    def schema_for(self, template: str, method: str, status: int) -> dict | None:
        op = self.spec["paths"][template][method]
        response = op["responses"].get(str(status))
        assert response is not None, f"{method.upper()} {template}: {status} is not documented"
        if "$ref" in response:
            response = self.spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        content = response.get("content")
        return None if content is None else content["application/json"]["schema"]

    def validate(self, schema: dict, body: object, where: str) -> None:
        root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": self.spec["components"], **schema}
        errors = [f"{e.instance_path}: {e.message}"
                  for e in jsonschema_rs.Draft202012Validator(root).iter_errors(body)]
        assert not errors, f"{where}: body does not match the spec: {errors[:5]} body={body!r:.600}"
        self.validated += 1

    def call(self, method: str, template: str, status: int, headers: dict | None = None,
             json: object = None, query: str = "", **params: object) -> object:
        path = template.format(**params) + (f"?{query}" if query else "")
        r = self.client.open(path, method=method.upper(), headers=headers or {}, json=json)
        where = f"{method.upper()} {path}"
        assert r.status_code == status, f"{where}: {r.status_code} {r.get_data(as_text=True)[:400]}"
        schema = self.schema_for(template, method, status)
        if schema is None:
            assert r.get_data() == b"", where
            body = None
        else:
            assert r.is_json, where
            body = r.get_json()
            self.validate(schema, body, where)
        if status < 400:
            self.seen.add(self.spec["paths"][template][method]["operationId"])
        return body


def test_every_json_route_answers_its_documented_schema(app, sim) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    spec = client.get("/api/openapi.json").get_json()
    c = Checker(client, spec)
    c.call("get", "/api/openapi.json", 200)
    c.call("get", "/healthz", 200)
    c.call("get", "/readyz", 200)

    name, password = "u" + uuid.uuid4().hex[:10], "password123"
    creds = {"username": name, "password": password}
    c.call("post", "/api/auth/register", 201, json=creds)
    c.call("post", "/api/auth/register", 409, json=creds)  # an error body: Error
    token = c.call("post", "/api/auth/login", 200, json=creds)
    c.call("post", "/api/auth/login", 400, json={"username": name})  # names the field
    pair = c.call("post", "/api/auth/refresh", 200, json={"refresh_token": token["refresh_token"]})
    h = {"Authorization": "Bearer " + pair["access_token"]}
    c.call("get", "/api/auth/me", 401)
    c.call("get", "/api/auth/me", 200, h)
    sessions = c.call("get", "/api/auth/sessions", 200, h)
    assert sessions and any(s["current"] for s in sessions)
    other = c.call("post", "/api/auth/login", 200, json=creds)
    c.call("delete", "/api/auth/sessions/{session_id}", 204, h, session_id=other["session_id"])
    c.call("post", "/api/auth/logout", 204, json={"refresh_token": other["refresh_token"]})

    api_key, secret = "key" + uuid.uuid4().hex, "sec" + uuid.uuid4().hex
    sim.create_account(api_key, secret, balances={"USDT": "10000"})
    sim.set_price("BTCUSDT", "50000")
    key = c.call("post", "/api/exchange/keys", 201, h,
                 json={"exchange": "binance", "api_key": api_key, "api_secret": secret, "label": "main"})
    c.call("get", "/api/exchange/keys", 200, h)
    c.call("put", "/api/exchange/keys/{key_id}", 200, h, json={"label": "renamed"}, key_id=key["id"])
    kid = key["id"]

    placed = c.call("post", "/api/orders", 201, h, json={
        "key_id": kid, "symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.010"})
    assert placed["trade"]["quantity"] == "0.01"  # a decimal string, as dec() writes it
    resting = c.call("post", "/api/orders", 201, h, json={
        "key_id": kid, "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.003",
        "price": "40000", "time_in_force": "GTC"})
    c.call("delete", "/api/orders/{client_order_id}", 200, h, query=f"key_id={kid}",
           client_order_id=resting["trade"]["client_order_id"])
    refused = c.call("post", "/api/orders", 422, h, json={  # the exchange refuses the margin
        "key_id": kid, "symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "50"})
    assert "exchange_code" in refused["error"] and "field" not in refused["error"]
    c.call("get", "/api/trades", 200, h, query="status=pending,open,closed,canceled")
    c.call("get", "/api/funding", 200, h, query=f"key_id={kid}&since=0")
    c.call("get", "/api/funding", 400, h, query=f"key_id={kid}&since=-1")

    deadline = time.monotonic() + 10
    while True:  # the MARKET fill reaches the account (positions and pnl not empty)
        positions = c.call("get", "/api/account/{kind}", 200, h, query=f"key_id={kid}",
                           kind="positions")
        if positions["data"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert positions["data"], "the position never showed"
    for kind in ("balance", "pnl", "orders"):
        env = c.call("get", "/api/account/{kind}", 200, h, query=f"key_id={kid}", kind=kind)
        assert env["type"] == kind
    prot = c.call("put", "/api/positions/protection", 200, h, json={
        "key_id": kid, "symbol": "BTCUSDT", "mode": "server", "stop_loss": {"trigger_price": "40000"},
        "trailing_stop": {"callback_rate": "1.5", "activation_price": "60000"}})
    assert prot["legs"]["stop_loss"]["status"] == "active" and prot["side"] == "LONG"
    c.call("put", "/api/positions/protection", 400, h, json={  # a LONG's take-profit below the mark
        "key_id": kid, "symbol": "BTCUSDT", "mode": "server", "take_profit": {"trigger_price": "40000"}})
    c.call("put", "/api/positions/protection", 409, h, json={
        "key_id": kid, "symbol": "ETHUSDT", "mode": "server", "stop_loss": {"trigger_price": "1"}})
    assert len(c.call("get", "/api/positions/protection", 200, h, query=f"key_id={kid}")) == 1
    removed = c.call("delete", "/api/positions/protection", 200, h, query=f"key_id={kid}&symbol=BTCUSDT")
    assert removed["legs"]["stop_loss"]["status"] == "canceled"
    c.call("delete", "/api/positions/protection", 404, h, query=f"key_id={kid}&symbol=ETHUSDT")
    started = c.call("post", "/api/positions/close", 202, h, json={"key_id": kid, "symbol": "BTCUSDT"})
    c.call("get", "/api/exits/{exit_id}", 200, h, exit_id=started["exit"]["id"])
    c.call("get", "/api/exits/{exit_id}", 404, h, exit_id=2**31 - 1)

    c.call("get", "/admin/health", 200, ADMIN)
    c.call("get", "/admin/stats", 200, ADMIN)
    c.call("get", "/admin/connections", 200, ADMIN)
    me = c.call("get", "/api/auth/me", 200, h)
    cleared = c.call("post", "/admin/users/{user_id}/cache/clear", 200, ADMIN, user_id=me["id"])
    assert cleared["cleared"], "the key's cached client was not listed"
    c.call("post", "/admin/reconcile", 200, ADMIN, json={"user_id": me["id"]})
    device_token = "tok-" + uuid.uuid4().hex
    dev = c.call("post", "/api/devices", 201, h, json={"token": device_token, "platform": "ios"})
    c.call("post", "/api/devices", 200, h, json={"token": device_token, "platform": "android"})
    c.call("get", "/api/devices", 200, h)
    c.call("delete", "/api/devices/{device_id}", 204, h, device_id=dev["id"])
    c.call("get", "/api/notifications/settings", 200, h)
    c.call("put", "/api/notifications/settings", 200, h, json={"liquidation_warning_pct": "5"})
    c.call("get", "/api/notifications", 200, h)
    alert = c.call("post", "/api/alerts/price", 201, h,
                   json={"exchange": "binance", "symbol": "BTCUSDT", "above": "90000"})
    c.call("get", "/api/alerts/price", 200, h)
    c.call("delete", "/api/alerts/price/{alert_id}", 204, h, alert_id=alert["id"])
    c.call("delete", "/api/exchange/keys/{key_id}", 204, h, key_id=kid)

    documented = {op["operationId"] for item in spec["paths"].values() for op in item.values()}
    assert documented - NOT_JSON - c.seen == set(), "operations without a conformance case"
    assert c.validated >= 30


def test_the_check_can_fail(app) -> None:  # type: ignore[no-untyped-def]
    """The validator refuses what a broken serializer would send: a float decimal, a
    missing key, a string time, an unknown trade status."""
    client = app.test_client()
    spec = client.get("/api/openapi.json").get_json()
    c = Checker(client, spec)
    trade = {"id": 1, "key_id": 2, "symbol": "BTCUSDT", "side": "BUY", "type": "MARKET",
             "quantity": "0.01", "price": None, "filled_quantity": "0", "open_quantity": "0",
             "status": "pending",
             "client_order_id": "c1", "entry_order_id": None, "entry_price": None,
             "exit_price": None, "realized_pnl": None, "fees": None, "error_code": None,
             "error_message": None, "opened_at": None, "closed_at": None, "created_at": 1}
    schema = c.schema_for("/api/orders", "post", 201)
    c.validate(schema, {"trade": trade}, "good")
    for bad in ({**trade, "quantity": 0.01}, {k: v for k, v in trade.items() if k != "fees"},
                {**trade, "created_at": "1"}, {**trade, "status": "weird"},
                {**trade, "quantity": "1E-3"}):
        with pytest.raises(AssertionError, match="does not match"):
            c.validate(schema, {"trade": bad}, "bad")
    with pytest.raises(AssertionError, match="does not match"):
        c.validate(c.schema_for("/api/auth/me", "get", 401), {"error": {"code": "x"}}, "bad")


def test_push_envelopes_fit_the_envelope_model() -> None:
    """The push path builds its dicts in services/serialize.py (not through the
    models, for speed): an envelope built there validates against ``Envelope``."""
    from decimal import Decimal

    from exchanges.types import AssetBalance, Balance, Order, OrderStatus, Position
    from services.account_state import AccountState
    from services.ledger import Realized
    from services.schemas.responses import Envelope

    state = AccountState(4, 7, "binance", False)
    state.set_balance(Balance(Decimal("10000"), Decimal("-1.5"), Decimal("9998.5"), Decimal("9000"),
                              (AssetBalance("USDT", Decimal("10000"), Decimal("9000"),
                                            Decimal("-1.5"), Decimal("9998.5")),)))
    state.set_positions([Position("BTCUSDT", "LONG", Decimal("0.010"), Decimal("50000"),
                                  Decimal("49850"), Decimal("-1.5"), Decimal("20"),
                                  Decimal("45000"), "cross")])
    state.set_orders([Order("c1", "9", "BTCUSDT", "BUY", "LIMIT", OrderStatus.NEW, Decimal("40000"),
                            Decimal("0.003"), Decimal("0"), Decimal("0"), "GTC", False, 5)])
    state.realized_pnl = Realized(Decimal("12.5"), Decimal("0"))
    # the protection providers the app installs (services.protection): the positions rows
    # carry stop_loss / take_profit / trailing_stop, the orders rows trigger_price and legs
    state.protection_of = lambda key_id, symbol: {
        "stop_loss": "45500", "take_profit": None,
        "trailing_stop": {"callback_rate": "1.5", "activation_price": None}}
    state.legs_of = lambda key_id: [{
        "client_order_id": "psl-1", "order_id": "77", "symbol": "BTCUSDT", "side": "SELL",
        "type": "STOP_MARKET", "status": "NEW", "price": "0", "quantity": "0",
        "filled_quantity": "0", "avg_price": "0", "time_in_force": "GTE_GTC",
        "reduce_only": True, "updated_at": 6, "trigger_price": "45500"}]
    for kind in ("balance", "positions", "pnl", "orders"):
        env = state.envelope_if_changed(kind, "rest", 1) or state.last(kind)
        assert env is not None, kind
        assert Envelope.of(env) == env, kind  # same keys, same values


# CONTRACT.md's keys per shape (the fixed part: the models may add, never drop), its
# decimal strings and its integer ms times.
CONTRACT_KEYS = {
    "User": "id username", "Me": "id username is_admin",
    "Token": "access_token token_type expires_in refresh_token refresh_expires_in",
    "Session": "id created_at last_used_at user_agent",
    "ExchangeKey": "id exchange testnet label api_key_masked status created_at updated_at",
    "Trade": "id key_id symbol side quantity status client_order_id entry_order_id entry_price "
             "exit_price realized_pnl opened_at closed_at",
    "BalanceEnvelope": "type user_id key_id exchange testnet epoch seq as_of sent_at source stale data",
    "BalanceData": "total_wallet_balance total_unrealized_pnl total_margin_balance available_balance assets",
    "AssetBalance": "asset wallet_balance available_balance unrealized_pnl margin_balance",
    "OpenPosition": "symbol side size entry_price mark_price unrealized_pnl leverage "
                    "liquidation_price margin_type",
    "PnlData": "unrealized_pnl realized_pnl positions", "PositionPnl": "symbol side unrealized_pnl roe_pct",
    "OpenOrder": "client_order_id order_id symbol side type status price quantity filled_quantity "
                 "avg_price time_in_force reduce_only updated_at",
    "Health": "status db message_queue uptime_s", "Alive": "status", "Ready": "status checks",
    "Stats": "connections users_online subscriptions exchange_cache streams push write_behind",
    "Connection": "sid user_id rooms connected_at", "CacheCleared": "cleared",
    "ReconcileResult": "checked fixed details", "ErrorDetail": "code message",
}
DECIMALS = {"quantity", "price", "entry_price", "exit_price", "realized_pnl", "size", "mark_price",
            "unrealized_pnl", "leverage", "liquidation_price", "filled_quantity", "avg_price",
            "wallet_balance", "available_balance", "margin_balance", "total_wallet_balance",
            "total_unrealized_pnl", "total_margin_balance", "roe_pct", "fees"}
TIMES = {"created_at", "updated_at", "last_used_at", "opened_at", "closed_at", "as_of", "sent_at",
         "connected_at"}


def _types(schema: dict) -> set:
    return {t for s in schema.get("anyOf", [schema]) for t in
            ([s["type"]] if isinstance(s.get("type"), str) else s.get("type", []))} - {"null"}


def test_the_models_keep_the_contract_keys_and_types(app) -> None:  # type: ignore[no-untyped-def]
    """The spec comes from the models, so conformance alone cannot catch a model that
    drifts from CONTRACT.md: pin its keys, decimal strings and ms integers here."""
    schemas = app.test_client().get("/api/openapi.json").get_json()["components"]["schemas"]
    for name, keys in CONTRACT_KEYS.items():
        props = schemas[name]["properties"]
        assert set(keys.split()) <= set(schemas[name]["required"]), name
        for key in props:
            if key in DECIMALS:
                assert _types(props[key]) == {"string"}, (name, key)
            if key in TIMES:
                assert _types(props[key]) == {"integer"}, (name, key)
