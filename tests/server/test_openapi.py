"""GET /api/openapi.json and /api/docs: every route documented, request schemas from pydantic."""
from __future__ import annotations

import re

from services.schemas.requests import OrderCreate

IGNORED_ENDPOINTS = {"static"}
PARAM = re.compile(r"<(?:[^:>]+:)?([^>]+)>")


def test_spec_is_openapi_3(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/openapi.json")
    assert r.status_code == 200 and r.is_json
    spec = r.get_json()
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] and spec["info"]["version"]
    assert isinstance(spec["paths"], dict) and spec["paths"]
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["adminToken"]["in"] == "header" and schemes["adminToken"]["name"] == "X-Admin-Token"
    ref = spec["components"]["schemas"]["Error"]["properties"]["error"]["$ref"]
    error = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"code", "message", "field", "exchange_code"} <= set(error["properties"])
    assert set(error["required"]) == {"code", "message"}


def test_every_route_is_in_the_spec(app, client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get("/api/openapi.json").get_json()["paths"]
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in IGNORED_ENDPOINTS:
            continue
        path = PARAM.sub(lambda m: "{" + m.group(1) + "}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = paths.get(path, {}).get(method.lower())
            if op is None or not op.get("summary"):
                missing.append(f"{method} {rule.rule} ({rule.endpoint})")
    assert not missing, "routes without an entry in api/openapi.py OPERATIONS: " + ", ".join(missing)


def test_order_create_schema_comes_from_pydantic(client) -> None:  # type: ignore[no-untyped-def]
    spec = client.get("/api/openapi.json").get_json()
    body = spec["paths"]["/api/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/OrderCreate"}
    schema = spec["components"]["schemas"]["OrderCreate"]
    assert set(schema["properties"]) == set(OrderCreate.model_fields)
    assert {"key_id", "symbol", "side", "type", "quantity"} <= set(schema["required"])
    assert schema["properties"]["side"]["enum"] == ["BUY", "SELL"]
    assert schema["properties"]["type"]["enum"] == ["MARKET", "LIMIT"]
    assert schema["properties"]["quantity"]["type"] == "string"       # decimal string, never a number
    assert schema["properties"]["quantity"]["format"] == "decimal"
    assert schema["properties"]["symbol"]["pattern"] == "^[A-Z0-9]+$"
    assert schema["additionalProperties"] is False
    for name in ("Credentials", "KeyCreate", "KeyUpdate", "ClosePosition", "Subscribe", "TickerSubscribe"):
        assert name in spec["components"]["schemas"]


def test_operations_carry_auth_params_and_errors(client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get("/api/openapi.json").get_json()["paths"]
    assert paths["/api/auth/login"]["post"]["security"] == []
    assert paths["/api/auth/me"]["get"]["security"] == [{"bearerAuth": []}]
    assert {"adminToken": []} in paths["/admin/stats"]["get"]["security"]
    (param,) = paths["/api/exchange/keys/{key_id}"]["put"]["parameters"]
    assert param["in"] == "path" and param["schema"]["type"] == "integer"
    kind = paths["/api/account/{kind}"]["get"]["parameters"][0]
    assert kind["schema"]["enum"] == ["balance", "positions", "pnl", "orders"]
    responses = paths["/api/orders"]["post"]["responses"]
    assert "201" in responses and responses["422"] == {"$ref": "#/components/responses/E422"}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


def test_docs_page_is_self_contained_html(client) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/api/docs")
    assert r.status_code == 200
    assert r.content_type.startswith("text/html")
    page = r.get_data(as_text=True)
    assert "openapi.json" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "no external resources"
