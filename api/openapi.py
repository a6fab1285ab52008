"""GET /api/openapi.json (OpenAPI 3.1) and GET /api/docs (a self-contained HTML page).

The spec is built from the app's own ``url_map``: every registered rule whose
endpoint has an entry in ``OPERATIONS`` becomes a path item. Request and response
bodies are the pydantic models that validate and serialize them (``schemas/requests.py``,
``schemas/socketio.py``, ``schemas/responses.py``) via ``model_json_schema()``, their
``$defs`` moved to ``components.schemas``: a body is written once, as a model. A route
without an ``OPERATIONS`` entry is left out, which the test (every rule of ``url_map``
must be in the spec) catches.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from api.common import bearer_token, services
from api.validation import invalid
from models import TradeStatus
from services.account_kinds import STATE_TYPES
from services.notify import schemas as out_notify
from services.notify.schemas import DeviceRegister, PriceAlertCreate, SettingsUpdate
from services.schemas import responses as out
from services.schemas.fields import CLIENT_ORDER_ID_PATTERN, DECIMAL_PATTERN, MAX_ID
from services.schemas.protection import Protection, ProtectionSet
from services.schemas.requests import (
    ClosePosition,
    Credentials,
    KeyCreate,
    KeyUpdate,
    LoginCredentials,
    LogoutRequest,
    OrderCreate,
    ReconcileRequest,
    RefreshRequest,
    TickerSubscribe,
)
from services.schemas.socketio import Subscribe, Unsubscribe

bp = Blueprint("openapi", __name__)

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1.0"
REF = "#/components/schemas/"


class _DecimalAsString(GenerateJsonSchema):
    """Decimals travel as strings (CONTRACT.md): say so instead of pydantic's
    ``number | string``, which would invite floats."""

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        """A decimal string such as ``"0.001"``: the server's own rule (DECIMAL_PATTERN)."""
        return {"type": "string", "format": "decimal", "pattern": DECIMAL_PATTERN,
                "examples": ["0.001"]}


# A body: a model, ``list[Model]``, a media-type dict (not JSON), or None (no body).
Body = Any


def _enum(*values: str) -> dict:
    return {"type": "string", "enum": list(values)}


ERRORS: dict[int, str] = {
    400: "Malformed body or invalid field (``field`` names it)",
    401: "No or bad credentials",
    403: "Authenticated but not allowed",
    404: "Not found (also another user's resource)",
    405: "Method not allowed; ``Allow`` lists the methods of this path",
    409: "Conflict",
    413: "Request body too large",
    422: "The exchange refused it (``exchange_code`` carries its code)",
    429: "Rate limited; retry after ``Retry-After`` seconds",
    502: "Exchange unreachable",
    503: "Exchange or database unavailable",
    504: "Exchange timed out (an order stays pending for reconciliation)",
}
CALLS_EXCHANGE = (400, 401, 404, 422, 429, 502, 503, 504)

# Blueprints whose query parameters are exactly those documented: an unknown one is a
# 400 naming it, as an unknown body field is (a typo such as ``?keyid=`` never passes
# silently). The console, the spec and /metrics are not JSON APIs and are left alone.
STRICT_QUERY_BLUEPRINTS = ("auth", "keys", "account", "orders", "admin", "protection", "notify")

SECURITY: dict[str, list[dict]] = {
    "bearer": [{"bearerAuth": []}],
    "none": [],
    "admin": [{"adminToken": []}, {"bearerAuth": []}],
    "optional": [{"bearerAuth": []}, {}],
    "metrics": [{}, {"adminToken": []}, {"bearerAuth": []}],
}


@dataclass(frozen=True)
class Op:
    """One documented endpoint: ``response`` is ``(status, description, body)`` (see
    ``Body``); ``also`` more answers whose body is not the Error shape (a 503 that
    carries the health figures); ``errors`` the statuses answered with Error;
    ``optional_body``: an empty request body is accepted."""

    summary: str
    response: tuple[int, str, Body]
    request: type[BaseModel] | None = None
    errors: tuple[int, ...] = (401,)
    security: str = "bearer"
    query: dict[str, dict] = field(default_factory=dict)
    path_schemas: dict[str, dict] = field(default_factory=dict)
    also: tuple[tuple[int, str, Body], ...] = ()
    optional_body: bool = False


ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID,
      "description": "an id: ASCII digits, 1 to 2^31-1 (the database's INTEGER range)"}
KEY_ID_QUERY = {"key_id": {**ID, "description": "optional when the user has one key"}}
STATUSES = "|".join(t.value for t in TradeStatus)
STATUS_QUERY = {"type": "string", "pattern": f"^(({STATUSES})(,({STATUSES}))*)?$",
                "description": "comma-separated statuses: " + ", ".join(t.value for t in TradeStatus),
                "examples": ["pending,open,closed"]}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
HTML = {"text/html": {"schema": {"type": "string"}}}

OPERATIONS: dict[str, Op] = {
    "auth.register": Op("Create a user", (201, "Created", out.User), Credentials, (400, 409, 413),
                        "none"),
    "auth.login": Op("Log in: an access token and a refresh token (a new session)",
                     (200, "Logged in", out.Token), LoginCredentials, (400, 401, 413, 429), "none"),
    "auth.refresh": Op("A new token pair; the refresh token presented stops working, and one "
                       "already rotated ends its session", (200, "Refreshed", out.Token),
                       RefreshRequest, (400, 401, 413, 429), "none"),
    "auth.logout": Op("End the session of the refresh token given (or of the bearer token)",
                      (204, "Logged out", None), LogoutRequest, (400, 401, 413, 429), "optional",
                      optional_body=True),
    "auth.list_sessions": Op("The user's live sessions", (200, "Sessions", list[out.Session])),
    "auth.end_session": Op("End one of the user's sessions", (204, "Ended", None), None,
                           (400, 401, 404), path_schemas={"session_id": ID}),
    "auth.me": Op("The authenticated user", (200, "The user", out.Me)),
    "keys.list_keys": Op("The user's exchange API keys", (200, "Keys", list[out.ExchangeKey])),
    "keys.create_key": Op("Add an exchange API key (checked with one signed call first)",
                          (201, "Created", out.ExchangeKey), KeyCreate, CALLS_EXCHANGE + (409, 413)),
    "keys.update_key": Op("Change a key; its cached client is dropped, its stream restarts",
                          (200, "The key", out.ExchangeKey), KeyUpdate, CALLS_EXCHANGE + (409, 413),
                          path_schemas={"key_id": ID}),
    "keys.delete_key": Op("Delete a key; its client is dropped, its stream stopped",
                          (204, "Deleted", None), None, (400, 401, 404), path_schemas={"key_id": ID}),
    "account.snapshot": Op("Account snapshot: the envelope of the push", (200, "Envelope", out.Envelope),
                           None, CALLS_EXCHANGE, query=KEY_ID_QUERY,
                           path_schemas={"kind": _enum(*STATE_TYPES)}),
    "orders.place_order": Op("Place an order (recorded pending before it is sent)",
                             (201, "The ledger record", out.TradeResult), OrderCreate,
                             CALLS_EXCHANGE + (409, 413)),
    "orders.cancel_order": Op("Cancel an order (the record may turn out filled)",
                              (200, "The ledger record", out.TradeResult), None, CALLS_EXCHANGE,
                              query=KEY_ID_QUERY, path_schemas={"client_order_id": {
                                  "type": "string", "pattern": CLIENT_ORDER_ID_PATTERN}}),
    "orders.trades": Op("The user's trades, newest first", (200, "Trades", list[out.Trade]), None,
                        (400, 401, 404), query={**KEY_ID_QUERY, "status": STATUS_QUERY}),
    "orders.funding_fees": Op("The key's funding fees (ledger rows), oldest first",
                              (200, "Funding fees", list[out.FundingFeeRow]), None, (400, 401, 404),
                              query={**KEY_ID_QUERY, "since": {
                                  "type": "integer", "minimum": 0, "maximum": 10 ** 15 - 1,
                                  "description": "only fees with time >= since (ms UTC); "
                                                 "default 0"}}),
    "orders.close_position": Op("Close a position: an exit by FOK limit with a bounded price chase",
                                (202, "The exit record", out.ExitStarted), ClosePosition,
                                CALLS_EXCHANGE + (409, 413)),
    "orders.get_exit": Op("One exit record", (200, "The exit record", out.ExitResult), None,
                          (400, 401, 404), path_schemas={"exit_id": ID}),
    "protection.set_protection": Op(
        "Set a position's stop-loss, take-profit and trailing stop (a leg given as null is "
        "removed, a leg not named is kept); 409 no_position", (200, "The protection", Protection),
        ProtectionSet, CALLS_EXCHANGE + (409, 413)),
    "protection.list_protection": Op(
        "The key's protections: one per symbol with a leg that is not canceled",
        (200, "Protections", list[Protection]), None, (400, 401, 404),
        query={"key_id": {**ID, "description": "the key (required)"}}),
    "protection.remove_protection": Op(
        "Cancel every leg of a position's protection", (200, "The protection, legs canceled",
                                                       Protection), None, (400, 401, 404),
        query={"key_id": {**ID, "description": "the key (required)"},
               "symbol": {"type": "string", "pattern": "^[A-Z0-9]{2,32}$"}}),
    "admin.health": Op("Health; 503 (the same body) when degraded", (200, "Healthy", out.Health),
                       None, (401,), "admin", also=((503, "Degraded", out.Health),)),
    "admin.stats": Op("Connections, subscriptions, caches, streams, pushes", (200, "Stats", out.Stats),
                      None, (401,), "admin"),
    "admin.connections": Op("Open Socket.IO connections", (200, "Connections", list[out.Connection]),
                            None, (401,), "admin"),
    "admin.clear_cache": Op("Drop a user's cached exchange clients", (200, "Cleared", out.CacheCleared),
                            None, (400, 401), "admin", path_schemas={"user_id": ID}),
    "admin.reconcile": Op("Reconcile the ledger with the exchange", (200, "Result", out.ReconcileResult),
                          ReconcileRequest, (400, 401, 413), "admin", optional_body=True),
    "metrics.metrics": Op("Prometheus metrics (text format 0.0.4); no token from a loopback peer",
                          (200, "Metrics", TEXT), None, (401,), "metrics"),
    "openapi.spec": Op("This OpenAPI document", (200, "OpenAPI 3.1", {"application/json": {
        "schema": {"type": "object"}}}), None, (), "none"),
    "openapi.docs": Op("HTML rendering of this document", (200, "HTML page", HTML), None, (), "none"),
    "console.index": Op("The web console (HTML page)", (200, "HTML page", HTML), None, (), "none"),
    "console.static": Op("A file of the web console (script, style sheet, vendored client)",
                         (200, "The file", {"*/*": {"schema": {"type": "string"}}}), None, (404,),
                         "none"),
    "notify.register_device": Op("Register a phone's FCM token (201 new; 200 known, now this "
                                 "user's)", (201, "Created", out_notify.DeviceOut), DeviceRegister,
                                 (400, 401, 413), also=((200, "Known token", out_notify.DeviceOut),)),
    "notify.list_devices": Op("The user's devices", (200, "Devices", list[out_notify.DeviceOut])),
    "notify.delete_device": Op("Remove a device", (204, "Deleted", None), None, (400, 401, 404),
                               path_schemas={"device_id": ID}),
    "notify.get_settings": Op("Notification settings", (200, "Settings", out_notify.SettingsOut)),
    "notify.put_settings": Op("Change notification settings (any subset)",
                              (200, "Settings", out_notify.SettingsOut), SettingsUpdate,
                              (400, 401, 413)),
    "notify.list_notifications": Op("The user's last 50 notifications, newest first",
                                    (200, "Notifications", list[out_notify.NotificationOut])),
    "notify.create_price_alert": Op("Create a price alert on a symbol's mark price",
                                    (201, "Created", out_notify.PriceAlertOut), PriceAlertCreate,
                                    CALLS_EXCHANGE + (413,)),
    "notify.list_price_alerts": Op("The user's price alerts",
                                   (200, "Price alerts", list[out_notify.PriceAlertOut])),
    "notify.delete_price_alert": Op("Remove a price alert", (204, "Deleted", None), None,
                                    (400, 401, 404), path_schemas={"alert_id": ID}),
    "health.healthz": Op("Liveness: 200 while the process serves (no token)",
                         (200, "Alive", out.Alive), None, (), "none"),
    "health.readyz": Op("Readiness: 200 when the database (and the message queue, when configured) "
                        "answer; 503 names which failed", (200, "Ready", out.Ready), None, (),
                        "none", also=((503, "Not ready", out.NotReady),)),
}

REQUEST_MODELS: tuple[type[BaseModel], ...] = (Credentials, LoginCredentials, KeyCreate, KeyUpdate, OrderCreate,
                                              ClosePosition, Subscribe, Unsubscribe, TickerSubscribe,
                                              RefreshRequest, LogoutRequest, ReconcileRequest,
                                              ProtectionSet, DeviceRegister, SettingsUpdate, PriceAlertCreate)
_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}


def _open(schema: Any) -> Any:
    """``schema`` without ``additionalProperties: false``: a response may gain keys
    (CONTRACT.md changes only by adding), so clients must not refuse new ones. The
    models still refuse unknown keys at run time (``services.schemas.responses.Out``)."""
    if isinstance(schema, dict):
        return {k: _open(v) for k, v in schema.items()
                if not (k == "additionalProperties" and v is False)}
    if isinstance(schema, list):
        return [_open(v) for v in schema]
    return schema


def model_schemas(models: tuple[type[BaseModel], ...] = REQUEST_MODELS,
                  mode: JsonSchemaMode = "validation") -> dict[str, dict]:
    """Component schemas of pydantic models (with their ``$defs`` hoisted), decimals
    as strings. ``mode="serialization"`` for response models (what is sent); those are
    left open to new keys (``_open``)."""
    found: dict[str, dict] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF + "{model}", mode=mode,
                                         schema_generator=_DecimalAsString)
        found.update(schema.pop("$defs", {}))
        found[model.__name__] = schema
    return _open(found) if mode == "serialization" else found


def _body_schema(body: Body) -> dict:
    """The JSON schema of a body: a component ref, or an array of one."""
    if typing.get_origin(body) is list:
        (item,) = typing.get_args(body)
        return {"type": "array", "items": {"$ref": REF + item.__name__}}
    return {"$ref": REF + body.__name__}


def _content(body: Body) -> dict:
    if isinstance(body, dict):
        return body
    return {"application/json": {"schema": _body_schema(body)}}


def _operation(endpoint: str, op: Op, path_params: list[tuple[str, str | None]]) -> dict:
    params = [{"name": name, "in": "path", "required": True,
               "schema": op.path_schemas.get(name, _CONVERTER_TYPES.get(conv or "", {"type": "string"}))}
              for name, conv in path_params]
    params += [{"name": name, "in": "query", "required": False, "schema": schema}
               for name, schema in op.query.items()]
    responses: dict[str, Any] = {}
    for status, description, body in (op.response, *op.also):
        responses[str(status)] = {"description": description}
        if body is not None:
            responses[str(status)]["content"] = _content(body)
    strict = endpoint.split(".", 1)[0] in STRICT_QUERY_BLUEPRINTS  # unknown query -> 400
    for code in sorted(set(op.errors) | ({400} if strict else set())):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    responses = dict(sorted(responses.items()))
    operation: dict[str, Any] = {"operationId": endpoint.replace(".", "_"), "summary": op.summary,
                            "tags": [endpoint.split(".", 1)[0]], "security": SECURITY[op.security],
                            "responses": responses}
    if params:
        operation["parameters"] = params
    if op.request is not None:
        operation["requestBody"] = {"required": not op.optional_body, "content": {
            "application/json": {"schema": {"$ref": REF + op.request.__name__}}}}
    return operation


def build_spec(app: Flask) -> dict:
    """The OpenAPI 3.1 document of ``app``'s documented routes (see module doc)."""
    paths: dict[str, dict] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = OPERATIONS.get(rule.endpoint)
        if op is None:
            continue
        found = _PARAM.findall(rule.rule)
        path = _PARAM.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(
                rule.endpoint, op, [(name, conv or None) for conv, name in found])
    error_responses: dict[str, dict] = {
        f"E{code}": {"description": text,
                     "content": {"application/json": {"schema": {"$ref": REF + "Error"}}}}
        for code, text in ERRORS.items()}
    error_responses["E429"]["headers"] = {"Retry-After": {
        "description": "seconds until the breached window frees", "required": True,
        "schema": {"type": "integer", "minimum": 1}}}
    error_responses["E405"]["headers"] = {"Allow": {
        "description": "the methods this path supports", "required": True,
        "schema": {"type": "string"}}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "pushsrv", "version": API_VERSION,
                 "description": "REST API of the push server (CONTRACT.md). Money, prices and "
                                "quantities are decimal strings; times integer ms UTC. The "
                                "Socket.IO payloads `subscribe`/`unsubscribe` and "
                                "`subscribe_ticker`/`unsubscribe_ticker` are the Subscribe and "
                                "TickerSubscribe schemas; pushes are Envelope."},
        "paths": paths,
        "components": {
            "schemas": {**model_schemas(),
                        **model_schemas(tuple(out.RESPONSE_MODELS) + (Protection,) + out_notify.RESPONSE_MODELS,
                                      mode="serialization")},
            "responses": error_responses,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "access_token from POST /api/auth/login"},
                "adminToken": {"type": "apiKey", "in": "header", "name": "X-Admin-Token",
                               "description": "ADMIN_TOKEN from the server's environment"},
            },
        },
    }


@bp.before_app_request
def refuse_unknown_query() -> None:
    """400 ``validation_error`` naming the first query parameter the operation does not
    document (``OPERATIONS[endpoint].query``)."""
    endpoint = request.endpoint or ""
    op = OPERATIONS.get(endpoint)
    if op is None or endpoint.split(".", 1)[0] not in STRICT_QUERY_BLUEPRINTS:
        return
    unknown = [name for name in request.args if name not in op.query]
    if unknown and not _authenticated(op.security):
        return  # authenticate first: the view answers 401 before any 400 about the query
    if unknown:
        raise invalid(unknown[0][:64], "is not a query parameter of this operation "
                      f"(known: {', '.join(op.query) or 'none'})")


def _authenticated(security: str) -> bool:
    """False when the operation needs a bearer token (``security`` "bearer") and the
    request has no valid one; True otherwise (admin operations check their own)."""
    if security != "bearer":
        return True
    try:
        services().tokens.verify(bearer_token())
    except Exception:  # any token problem: the view's own check answers the 401
        return False
    return True


@bp.get("/api/openapi.json")
def spec():  # type: ignore[no-untyped-def]
    """200 the OpenAPI 3.1 document."""
    return build_spec(current_app)


@bp.get("/api/docs")
def docs() -> Response:
    """200 a self-contained HTML page rendering ``/api/openapi.json`` (no network)."""
    page = resources.files("api").joinpath("openapi_docs.html").read_text(encoding="utf-8")
    return Response(page, status=200, content_type="text/html; charset=utf-8")
