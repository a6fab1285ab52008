"""Exchange API keys: GET/POST /api/exchange/keys, PUT/DELETE /api/exchange/keys/{id}."""
from __future__ import annotations

from flask import Blueprint, g

from api.common import body, login_required, services
from api.validation import parse_id
from config import REAL_VENUE_URLS
from services.schemas.requests import KeyCreate, KeyUpdate
from services.schemas.responses import ExchangeKey

bp = Blueprint("keys", __name__, url_prefix="/api/exchange/keys")


def _network(exchange: str, testnet: bool) -> str:
    """``mainnet`` / ``testnet`` when the key's calls go to the venue's real URL,
    ``simulator`` when they go to the embedded simulator, ``custom`` otherwise."""
    cfg = services().config
    rest = cfg.venue(exchange, testnet).rest_url
    prefix = exchange.upper() + ("_TESTNET" if testnet else "")
    if rest == REAL_VENUE_URLS.get(f"{prefix}_REST_URL", "").rstrip("/"):
        return "testnet" if testnet else "mainnet"
    if cfg.EMBED_SIMULATOR and rest.startswith(f"http://127.0.0.1:{cfg.SIMULATOR_PORT}"):
        return "simulator"
    return "custom"


def _out(key) -> dict:  # type: ignore[no-untyped-def]
    return ExchangeKey.of(key, network=_network(key.exchange, key.testnet))


@bp.get("")
@login_required
def list_keys():  # type: ignore[no-untyped-def]
    """200 the user's keys."""
    return [_out(k) for k in services().keys.list(g.user_id)]


@bp.post("")
@login_required
def create_key():  # type: ignore[no-untyped-def]
    """201 the key; 422 when the exchange rejects it; 409 when one exists for the venue."""
    req = body(KeyCreate)
    key = services().keys.create(g.user_id, req.exchange, req.api_key, req.api_secret,
                                 req.testnet, req.label)
    return _out(key), 201


@bp.put("/<key_id>")
@login_required
def update_key(key_id: str):  # type: ignore[no-untyped-def]
    """200 the key; its cached client is dropped and its stream restarts."""
    kid = parse_id(key_id, "key_id")
    changes = body(KeyUpdate).model_dump(exclude_none=True)
    return _out(services().keys.update(g.user_id, kid, changes))


@bp.delete("/<key_id>")
@login_required
def delete_key(key_id: str):  # type: ignore[no-untyped-def]
    """204; cached client dropped, stream stopped."""
    services().keys.delete(g.user_id, parse_id(key_id, "key_id"))
    return "", 204
