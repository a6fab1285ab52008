"""GET /api/openapi.json (OpenAPI 3.1) and GET /api/docs (a self-contained HTML page).

The spec is built from the app's own ``url_map``: every registered rule whose
endpoint has an entry in ``OPERATIONS`` becomes a path item; request bodies are
the pydantic models that validate them (``api/schemas.py``) via
``model_json_schema()``. A route without an ``OPERATIONS`` entry is left out,
which the test (every rule of ``url_map`` must be in the spec) catches.
Response bodies are short hand-written schemas (``RESPONSE_SCHEMAS``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from api.validation import invalid
from models import TradeStatus
from schemas.fields import CLIENT_ORDER_ID_PATTERN, DECIMAL_PATTERN, MAX_ID
from schemas.requests import (ClosePosition, Credentials, KeyCreate, KeyUpdate, LogoutRequest,
                              OrderCreate, RefreshRequest, TickerSubscribe)
from schemas.socketio import Subscribe, Unsubscribe

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


def _t(spec: str) -> dict:
    """Short type notation -> JSON schema: ``integer``, ``string``, ``boolean``,
    ``decimal`` (string), ``ms`` (integer ms UTC), ``any``, ``Name`` (a component
    ref), ``[x]`` (array of x); a trailing ``?`` allows null."""
    nullable = spec.endswith("?")
    spec = spec.rstrip("?")
    if spec.startswith("["):
        out: dict = {"type": "array", "items": _t(spec[1:-1])}
    elif spec == "decimal":
        out = {"type": "string", "format": "decimal"}
    elif spec == "ms":
        out = {"type": "integer", "description": "milliseconds since the Unix epoch, UTC"}
    elif spec == "any":
        out = {}
    elif spec[0].isupper():
        out = {"$ref": REF + spec}
    else:
        out = {"type": spec}
    if nullable:
        out = {"anyOf": [out, {"type": "null"}]} if "$ref" in out or not out.get("type") else \
            {**out, "type": [out["type"], "null"]}
    return out


def _obj(optional: tuple[str, ...] = (), **props: str | dict) -> dict:
    """An object schema; every property is required unless named in ``optional``."""
    return {"type": "object",
            "properties": {k: _t(v) if isinstance(v, str) else v for k, v in props.items()},
            "required": [k for k in props if k not in optional]}


def _enum(*values: str) -> dict:
    return {"type": "string", "enum": list(values)}


RESPONSE_SCHEMAS: dict[str, dict] = {
    "Error": _obj(error=_obj(("field", "exchange_code"), code="string", message="string",
                             field={"type": "string", "description": "the input field at fault"},
                             exchange_code={"description": "the exchange's own error code"})),
    "User": _obj(id="integer", username="string"),
    "Me": _obj(id="integer", username="string", is_admin="boolean"),
    "Token": _obj(access_token="string", token_type=_enum("Bearer"),
                  expires_in={"type": "integer", "description": "seconds"},
                  refresh_token={"type": "string", "description": "rotating; send it to "
                                 "POST /api/auth/refresh before the access token expires"},
                  refresh_expires_in={"type": "integer", "description": "seconds"},
                  session_id="integer"),
    "Session": _obj(id="integer", created_at="ms", last_used_at="ms", user_agent="string",
                    current={"type": "boolean", "description": "the session of this access token"}),
    "ExchangeKey": _obj(id="integer", exchange=_enum("binance", "bybit"), testnet="boolean",
                        label="string", api_key_masked="string", status="string",
                        created_at="ms", updated_at="ms"),
    "Trade": _obj(id="integer", key_id="integer", symbol="string", side=_enum("BUY", "SELL"),
                  type="string", quantity="decimal", price="decimal?", filled_quantity="decimal?",
                  status=_enum(*(t.value for t in TradeStatus)),
                  client_order_id="string", entry_order_id="string?", entry_price="decimal?",
                  exit_price="decimal?", realized_pnl="decimal?", fees="decimal?",
                  error_code="string?", error_message="string?", opened_at="ms?",
                  closed_at="ms?", created_at="ms"),
    "TradeResult": _obj(trade="Trade"),
    "Exit": _obj(id="integer", key_id="integer", symbol="string", side=_enum("BUY", "SELL"),
                 quantity="decimal", status="string", attempts="integer", first_price="decimal?",
                 last_price="decimal?", exit_price="decimal?", realized_pnl="decimal?",
                 reason="string?", created_at="ms", updated_at="ms"),
    "ExitStarted": _obj(exit="Exit", started={"type": "boolean", "description":
                        "false: the exit already working for this position is returned"}),
    "ExitResult": _obj(exit="Exit"),
    "Envelope": _obj(type=_enum("balance", "positions", "pnl", "orders", "ticker"),
                     user_id="integer", key_id="integer", exchange="string", testnet="boolean",
                     seq="integer", as_of="ms", sent_at="ms",
                     source=_enum("stream", "rest", "cache"), stale="boolean",
                     data={"description": "balance, positions, pnl or orders as in CONTRACT.md"}),
    "Health": _obj(status=_enum("ok", "degraded"), db=_enum("ok", "down"),
                   message_queue=_enum("none", "ok", "down"), uptime_s="integer"),
    "Stats": {**_obj(connections="integer", users_online="integer",
                     subscriptions={"type": "object", "additionalProperties": {"type": "integer"}},
                     exchange_cache="any", streams="any", push="any", write_behind="any"),
              "additionalProperties": True},
    "Connection": _obj(sid="string", user_id="integer", rooms="[string]", connected_at="ms"),
    "CacheCleared": _obj(cleared="[any]"),
    "ReconcileRequest": {**_obj(("user_id",), user_id={"type": "integer", "minimum": 1,
                                                       "maximum": MAX_ID}),
                         "additionalProperties": True},
    "ReconcileResult": _obj(checked="integer", fixed="integer", details="[any]"),
}

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
STRICT_QUERY_BLUEPRINTS = ("auth", "keys", "account", "orders", "admin")

SECURITY: dict[str, list[dict]] = {
    "bearer": [{"bearerAuth": []}],
    "none": [],
    "admin": [{"adminToken": []}, {"bearerAuth": []}],
    "optional": [{"bearerAuth": []}, {}],
    "metrics": [{}, {"adminToken": []}, {"bearerAuth": []}],
}


@dataclass(frozen=True)
class Op:
    """One documented endpoint: ``response`` is ``(status, description, schema)``
    where schema is a component name, ``None`` (no body) or a media-type dict."""

    summary: str
    response: tuple[int, str, str | dict | None]
    request: type[BaseModel] | str | None = None
    errors: tuple[int, ...] = (401,)
    security: str = "bearer"
    query: dict[str, dict] = field(default_factory=dict)
    path_schemas: dict[str, dict] = field(default_factory=dict)


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
    "auth.register": Op("Create a user", (201, "Created", "User"), Credentials, (400, 409, 413),
                        "none"),
    "auth.login": Op("Log in: an access token and a refresh token (a new session)",
                     (200, "Logged in", "Token"), Credentials, (400, 401, 413, 429), "none"),
    "auth.refresh": Op("A new token pair; the refresh token presented stops working, and one "
                       "already rotated ends its session", (200, "Refreshed", "Token"),
                       RefreshRequest, (400, 401, 413, 429), "none"),
    "auth.logout": Op("End the session of the refresh token given (or of the bearer token)",
                      (204, "Logged out", None), LogoutRequest, (400, 401, 413, 429), "optional"),
    "auth.list_sessions": Op("The user's live sessions", (200, "Sessions", "[Session]")),
    "auth.end_session": Op("End one of the user's sessions", (204, "Ended", None), None,
                           (400, 401, 404), path_schemas={"session_id": ID}),
    "auth.me": Op("The authenticated user", (200, "The user", "Me")),
    "keys.list_keys": Op("The user's exchange API keys", (200, "Keys", "[ExchangeKey]")),
    "keys.create_key": Op("Add an exchange API key (checked with one signed call first)",
                          (201, "Created", "ExchangeKey"), KeyCreate, CALLS_EXCHANGE + (409, 413)),
    "keys.update_key": Op("Change a key; its cached client is dropped, its stream restarts",
                          (200, "The key", "ExchangeKey"), KeyUpdate, CALLS_EXCHANGE + (409, 413),
                          path_schemas={"key_id": ID}),
    "keys.delete_key": Op("Delete a key; its client is dropped, its stream stopped",
                          (204, "Deleted", None), None, (400, 401, 404), path_schemas={"key_id": ID}),
    "account.snapshot": Op("Account snapshot: the envelope of the push", (200, "Envelope", "Envelope"),
                           None, CALLS_EXCHANGE, query=KEY_ID_QUERY,
                           path_schemas={"kind": _enum("balance", "positions", "pnl", "orders")}),
    "orders.place_order": Op("Place an order (recorded pending before it is sent)",
                             (201, "The ledger record", "TradeResult"), OrderCreate,
                             CALLS_EXCHANGE + (409, 413)),
    "orders.cancel_order": Op("Cancel an order (the record may turn out filled)",
                              (200, "The ledger record", "TradeResult"), None, CALLS_EXCHANGE,
                              query=KEY_ID_QUERY, path_schemas={"client_order_id": {
                                  "type": "string", "pattern": CLIENT_ORDER_ID_PATTERN}}),
    "orders.trades": Op("The user's trades, newest first", (200, "Trades", "[Trade]"), None,
                        (400, 401, 404), query={**KEY_ID_QUERY, "status": STATUS_QUERY}),
    "orders.close_position": Op("Close a position: an exit by FOK limit with a bounded price chase",
                                (202, "The exit record", "ExitStarted"), ClosePosition,
                                CALLS_EXCHANGE + (409, 413)),
    "orders.get_exit": Op("One exit record", (200, "The exit record", "ExitResult"), None,
                          (400, 401, 404), path_schemas={"exit_id": ID}),
    "admin.health": Op("Health; 503 when degraded", (200, "Healthy", "Health"), None, (401, 503),
                       "admin"),
    "admin.stats": Op("Connections, subscriptions, caches, streams, pushes", (200, "Stats", "Stats"),
                      None, (401,), "admin"),
    "admin.connections": Op("Open Socket.IO connections", (200, "Connections", "[Connection]"),
                            None, (401,), "admin"),
    "admin.clear_cache": Op("Drop a user's cached exchange clients", (200, "Cleared", "CacheCleared"),
                            None, (400, 401), "admin", path_schemas={"user_id": ID}),
    "admin.reconcile": Op("Reconcile the ledger with the exchange", (200, "Result", "ReconcileResult"),
                          "ReconcileRequest", (400, 401, 413), "admin"),
    "metrics.metrics": Op("Prometheus metrics (text format 0.0.4); no token from a loopback peer",
                          (200, "Metrics", TEXT), None, (401,), "metrics"),
    "openapi.spec": Op("This OpenAPI document", (200, "OpenAPI 3.1", {"application/json": {
        "schema": {"type": "object"}}}), None, (), "none"),
    "openapi.docs": Op("HTML rendering of this document", (200, "HTML page", HTML), None, (), "none"),
    "console.index": Op("The web console (HTML page)", (200, "HTML page", HTML), None, (), "none"),
    "console.static": Op("A file of the web console (script, style sheet, vendored client)",
                         (200, "The file", {"*/*": {"schema": {"type": "string"}}}), None, (404,),
                         "none"),
}

REQUEST_MODELS: tuple[type[BaseModel], ...] = (Credentials, KeyCreate, KeyUpdate, OrderCreate,
                                              ClosePosition, Subscribe, Unsubscribe, TickerSubscribe,
                                              RefreshRequest, LogoutRequest)
_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}


def model_schemas(models: tuple[type[BaseModel], ...] = REQUEST_MODELS) -> dict[str, dict]:
    """Component schemas of pydantic models (with their ``$defs`` hoisted), decimals
    as strings."""
    out: dict[str, dict] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=REF + "{model}",
                                         schema_generator=_DecimalAsString)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _content(schema: str | dict) -> dict:
    if isinstance(schema, dict):
        return schema
    return {"application/json": {"schema": _t(schema)}}


def _operation(endpoint: str, op: Op, path_params: list[tuple[str, str | None]]) -> dict:
    params = [{"name": name, "in": "path", "required": True,
               "schema": op.path_schemas.get(name, _CONVERTER_TYPES.get(conv or "", {"type": "string"}))}
              for name, conv in path_params]
    params += [{"name": name, "in": "query", "required": False, "schema": schema}
               for name, schema in op.query.items()]
    status, description, body_schema = op.response
    responses: dict[str, Any] = {str(status): {"description": description}}
    if body_schema is not None:
        responses[str(status)]["content"] = _content(body_schema)
    strict = endpoint.split(".", 1)[0] in STRICT_QUERY_BLUEPRINTS  # unknown query -> 400
    for code in sorted(set(op.errors) | ({400} if strict else set())):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    out: dict[str, Any] = {"operationId": endpoint.replace(".", "_"), "summary": op.summary,
                           "tags": [endpoint.split(".", 1)[0]], "security": SECURITY[op.security],
                           "responses": responses}
    if params:
        out["parameters"] = params
    if op.request is not None:
        name = op.request if isinstance(op.request, str) else op.request.__name__
        out["requestBody"] = {"required": name not in ("ReconcileRequest", "LogoutRequest"),
                              "content": {"application/json": {"schema": {"$ref": REF + name}}}}
    return out


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
            "schemas": {**model_schemas(), **RESPONSE_SCHEMAS},
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
    if unknown:
        raise invalid(unknown[0][:64], "is not a query parameter of this operation "
                      f"(known: {', '.join(op.query) or 'none'})")


@bp.get("/api/openapi.json")
def spec():  # type: ignore[no-untyped-def]
    """200 the OpenAPI 3.1 document."""
    return build_spec(current_app)


@bp.get("/api/docs")
def docs() -> Response:
    """200 a self-contained HTML page rendering ``/api/openapi.json`` (no network)."""
    page = resources.files("api").joinpath("openapi_docs.html").read_text(encoding="utf-8")
    return Response(page, status=200, content_type="text/html; charset=utf-8")
