"""Response bodies of every REST route, and the error body: the model IS the serializer.

A handler answers ``Model.of(obj)`` (or ``Model.many(objs)``): ``obj`` is an ORM row,
a service's dataclass (read by attribute) or a service's dict (checked key by key:
``extra="forbid"``, so a key a service adds without a model change fails loudly in
the tests instead of slipping onto the wire undocumented). ``api/openapi.py`` builds
the spec's component schemas from these same classes (serialization mode), so the
document cannot drift from what is sent.

Wire rules (CONTRACT.md): money, prices and quantities are decimal strings
(``services.serialize.dec``: plain positional, no exponent, no trailing zeros), times
integer milliseconds since the Unix epoch, UTC. Keys are the ones CONTRACT.md fixes;
Flask sorts them when it writes the JSON.

The account snapshot body is the push envelope (``services.schemas.envelopes``); the
base class and the wire types are in ``services.schemas.out``.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from services.schemas.envelopes import Envelope
from services.schemas.fields import Exchange
from services.schemas.out import DecimalOut, Ms, Out, Seconds, Side, TradeStatusValue

__all__ = ["Envelope"]  # the account snapshot body, defined with the push envelope

# ---- errors ----------------------------------------------------------------------------

class ErrorDetail(Out):
    """``code`` snake_case, ``message`` a sentence; ``field`` the input field at fault
    (400) and ``exchange_code`` the exchange's own code (422 and other exchange
    errors), each only when known: absent otherwise, never null."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=False)

    code: str
    message: str
    field: str | SkipJsonSchema[None] = Field(default=None, description="the input field at fault")
    exchange_code: int | str | SkipJsonSchema[None] = Field(
        default=None, description="the exchange's own error code")


class Error(Out):
    """The one error shape of CONTRACT.md: ``{"error": {"code", "message"[, "field"]}}``."""

    error: ErrorDetail

    @classmethod
    def of(cls, obj: Any) -> dict:
        """As ``Out.of``, absent keys left out (``field``, ``exchange_code``)."""
        return cls.model_validate(obj).model_dump(mode="json", exclude_none=True)


# ---- auth ------------------------------------------------------------------------------

class User(Out):
    """201 of POST /api/auth/register."""

    id: int
    username: str


class Me(Out):
    """200 of GET /api/auth/me."""

    id: int
    username: str
    is_admin: bool


class Token(Out):
    """200 of login and refresh (``services.sessions.TokenPair``)."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: Seconds
    refresh_token: str = Field(description="rotating; send it to POST /api/auth/refresh before "
                                           "the access token expires")
    refresh_expires_in: Seconds
    session_id: int


class Session(Out):
    """One row of GET /api/auth/sessions."""

    id: int
    created_at: Ms
    last_used_at: Ms
    user_agent: str
    current: bool = Field(description="the session of this access token")


# ---- keys ------------------------------------------------------------------------------

class ExchangeKey(Out):
    """The public key object (``models.ExchangeKey``): never the secret; the API key
    masked to at most its last 4 characters."""

    id: int
    exchange: Exchange
    testnet: bool
    label: str
    api_key_masked: str
    status: str = Field(description="active or invalid")
    network: Literal["mainnet", "testnet", "simulator", "custom"] = Field(
        description="where this server sends the key's calls: the venue's real mainnet or "
                    "testnet, the simulator embedded in the demo, or another URL set in the "
                    "environment (BINANCE_REST_URL, ...)")
    created_at: Ms
    updated_at: Ms


# ---- orders, trades, exits -------------------------------------------------------------

class Trade(Out):
    """The ledger record (``models.Trade``; ``type`` is its ``order_type``)."""

    id: int
    key_id: int
    symbol: str
    side: Side
    type: str = Field(validation_alias="order_type", description="MARKET or LIMIT")
    quantity: DecimalOut
    price: DecimalOut | None
    filled_quantity: DecimalOut | None
    open_quantity: DecimalOut = Field(description="what of filled_quantity is still held "
                                      "(first in first out; 0 once closed)")
    status: TradeStatusValue
    client_order_id: str
    entry_order_id: str | None
    entry_price: DecimalOut | None
    exit_price: DecimalOut | None
    realized_pnl: DecimalOut | None
    fees: DecimalOut | None
    error_code: str | None
    error_message: str | None
    opened_at: Ms | None
    closed_at: Ms | None
    created_at: Ms


class FundingFeeRow(Out):
    """One funding payment of GET /api/funding (``models.FundingFee``): ``amount``
    signed as the wallet sees it (negative paid, positive received) in ``asset``;
    ``symbol`` ``""`` when the venue did not name it."""

    time: Ms
    symbol: str
    amount: DecimalOut
    asset: str


class TradeResult(Out):
    """201 of POST /api/orders, 200 of DELETE /api/orders/{client_order_id}."""

    trade: Trade


class Exit(Out):
    """An exit record (``models.Exit``)."""

    id: int
    key_id: int
    symbol: str
    side: Side
    quantity: DecimalOut
    status: str
    attempts: int
    first_price: DecimalOut | None
    last_price: DecimalOut | None
    exit_price: DecimalOut | None
    realized_pnl: DecimalOut | None
    reason: str | None
    created_at: Ms
    updated_at: Ms


class ExitStarted(Out):
    """202 of POST /api/positions/close."""

    exit: Exit
    started: bool = Field(description="false: the exit already working for this position is returned")


class ExitResult(Out):
    """200 of GET /api/exits/{exit_id}."""

    exit: Exit


# ---- health and admin ------------------------------------------------------------------

class Alive(Out):
    """200 of GET /healthz."""

    status: Literal["ok"]


class ReadyChecks(Out):
    """Each dependency's answer (``message_queue`` ``none``: not configured)."""

    database: Literal["ok", "down"]
    message_queue: Literal["ok", "down", "none"]


class Ready(Out):
    """200 of GET /readyz."""

    status: Literal["ready"]
    checks: ReadyChecks


class NotReady(Out):
    """503 of GET /readyz: the error shape plus which dependencies did not answer."""

    error: ErrorDetail
    status: Literal["unavailable"]
    failed: list[Literal["database", "message_queue"]]
    checks: ReadyChecks

    @classmethod
    def of(cls, obj: Any) -> dict:
        """As ``Out.of``, absent error keys left out."""
        return cls.model_validate(obj).model_dump(mode="json", exclude_none=True)


class Health(Out):
    """GET /admin/health: 200 when ``ok``, 503 (same body) when ``degraded``."""

    status: Literal["ok", "degraded"]
    db: Literal["ok", "down"]
    message_queue: Literal["none", "ok", "down"]
    uptime_s: Seconds


class Stats(Out):
    """GET /admin/stats: diagnostic figures; the sections are free-form objects of the
    services that own them (hub, client cache, streams, tickers, governors,
    reconciler, write-behind, garbage collector), and a new section is allowed."""

    model_config = ConfigDict(extra="allow")

    connections: int
    users_online: int
    subscriptions: dict[str, int] = Field(description="connections per account type")
    push: dict[str, Any]
    exchange_cache: dict[str, Any]
    streams: dict[str, Any]
    tickers: dict[str, Any]
    rate_limits: dict[str, Any]
    reconcile: dict[str, Any]
    write_behind: dict[str, Any]
    gc: dict[str, Any] = Field(description="the process's garbage collector pauses by "
                               "generation (collections, total_ms, max_ms, long: 50 ms or "
                               "more), its thresholds and frozen object count")


class Connection(Out):
    """One open Socket.IO connection (GET /admin/connections)."""

    sid: str
    user_id: int
    rooms: list[str]
    connected_at: Ms


class ClearedClient(Out):
    """One cached exchange client that was dropped."""

    user_id: int
    exchange: Exchange
    testnet: bool


class CacheCleared(Out):
    """POST /admin/users/{user_id}/cache/clear."""

    cleared: list[ClearedClient]


class ReconcileResult(Out):
    """POST /admin/reconcile: ``details`` one object per difference found or fixed
    (``key_id`` and what was found: ``client_order_id``, ``symbol``, ``exit_id``,
    ``error``, ...)."""

    checked: int
    fixed: int
    details: list[dict[str, Any]]


# Every model ``api/openapi.py`` puts in ``components.schemas`` (nested ones follow).
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Error, User, Me, Token, Session, ExchangeKey, Trade, TradeResult, FundingFeeRow, Exit, ExitStarted,
    ExitResult, Envelope, Alive, Ready, NotReady, Health, Stats, Connection, CacheCleared,
    ReconcileResult)

