"""The OpenAPI spec says what the server enforces (issue 11): decimal string patterns,
id ranges, the enum of trade statuses, ``Allow`` on 405, the session routes; and the
server answers what the spec promises for the values at its bounds."""
from __future__ import annotations

import re

from models import TradeStatus
from services.schemas.fields import DECIMAL_PATTERN, MAX_ID
from tests.server.conftest import auth_header


def _spec(client) -> dict:  # type: ignore[no-untyped-def]
    return client.get("/api/openapi.json").get_json()


def test_decimals_carry_the_enforced_pattern(client) -> None:  # type: ignore[no-untyped-def]
    schema = _spec(client)["components"]["schemas"]["OrderCreate"]["properties"]
    assert schema["quantity"]["pattern"] == DECIMAL_PATTERN
    price = schema["price"]
    assert price["anyOf"][0]["pattern"] == DECIMAL_PATTERN
    rule = re.compile(DECIMAL_PATTERN)
    assert rule.fullmatch("0.001") and rule.fullmatch("64210.5")
    for bad in ("1e30", "1E+100", "9" * 19, "-1", ".5", "0." + "1" * 19):
        assert not rule.fullmatch(bad)


def test_ids_carry_the_database_range(client) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(client)
    paths = spec["paths"]
    for path, method, name in [("/api/exchange/keys/{key_id}", "put", "key_id"),
                               ("/api/exchange/keys/{key_id}", "delete", "key_id"),
                               ("/api/exits/{exit_id}", "get", "exit_id"),
                               ("/api/auth/sessions/{session_id}", "delete", "session_id"),
                               ("/admin/users/{user_id}/cache/clear", "post", "user_id"),
                               ("/api/trades", "get", "key_id"),
                               ("/api/account/{kind}", "get", "key_id")]:
        (param,) = [p for p in paths[path][method]["parameters"] if p["name"] == name]
        assert param["schema"]["type"] == "integer", (path, name)
        assert param["schema"]["minimum"] == 1 and param["schema"]["maximum"] == MAX_ID
        assert "400" in paths[path][method]["responses"], (path, method)
    order = spec["components"]["schemas"]["OrderCreate"]["properties"]["key_id"]
    assert order["minimum"] == 1 and order["maximum"] == MAX_ID


def test_statuses_are_an_enum_and_the_filter_a_pattern(client) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(client)
    values = [t.value for t in TradeStatus]
    assert spec["components"]["schemas"]["Trade"]["properties"]["status"]["enum"] == values
    (status,) = [p for p in spec["paths"]["/api/trades"]["get"]["parameters"] if p["name"] == "status"]
    rule = re.compile(status["schema"]["pattern"])
    assert rule.fullmatch("pending,open,closed") and rule.fullmatch("")
    assert not rule.fullmatch("weird") and not rule.fullmatch("open,")
    h = auth_header(client)
    assert client.get("/api/trades?status=pending,open,closed", headers=h).status_code == 200
    assert client.get("/api/trades?status=open,weird", headers=h).status_code == 400


def test_405_and_429_document_their_headers(client) -> None:  # type: ignore[no-untyped-def]
    responses = _spec(client)["components"]["responses"]
    assert responses["E405"]["headers"]["Allow"]["required"] is True
    assert responses["E429"]["headers"]["Retry-After"]["schema"]["minimum"] == 1


def test_session_routes_are_documented(client) -> None:  # type: ignore[no-untyped-def]
    spec = _spec(client)
    paths = spec["paths"]
    token = spec["components"]["schemas"]["Token"]
    assert {"refresh_token", "refresh_expires_in"} <= set(token["required"])
    assert paths["/api/auth/refresh"]["post"]["security"] == []
    assert "429" in paths["/api/auth/refresh"]["post"]["responses"]
    assert "204" in paths["/api/auth/logout"]["post"]["responses"]
    assert paths["/api/auth/logout"]["post"]["requestBody"]["required"] is False
    assert paths["/api/auth/sessions"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"] == {"type": "array", "items": {"$ref": "#/components/schemas/Session"}}
    assert "404" in paths["/api/auth/sessions/{session_id}"]["delete"]["responses"]
    creds = spec["components"]["schemas"]["KeyCreate"]["properties"]
    assert creds["api_key"]["pattern"] == r"^[\x21-\x7e]+$"
