"""POST /api/orders, DELETE /api/orders/{client_order_id}, GET /api/trades,
GET /api/funding."""
from __future__ import annotations

import re

from flask import Blueprint, g, request

from api.common import body, login_required, query_int, services
from api.errors import ApiError
from api.validation import invalid, parse_id, query_ms
from models import TradeStatus
from services import funding
from services.schemas.fields import CLIENT_ORDER_ID_PATTERN
from services.schemas.requests import ClosePosition, OrderCreate
from services.schemas.responses import ExitResult, ExitStarted, FundingFeeRow, Trade, TradeResult

bp = Blueprint("orders", __name__, url_prefix="/api")

STATUSES = {s.value for s in TradeStatus}
_CLIENT_ORDER_ID = re.compile(CLIENT_ORDER_ID_PATTERN)


@bp.post("/orders")
@login_required
def place_order():  # type: ignore[no-untyped-def]
    """201 ``{"trade"}``: written ``pending`` before the order is sent."""
    req = body(OrderCreate)
    problem = req.cross_field_error()
    if problem:
        raise ApiError("validation_error", problem[1], 400, problem[0])
    trade = services().orders.place(g.user_id, req.key_id, req.symbol, req.side, req.type,
                                    req.quantity, req.price, req.time_in_force,
                                    req.reduce_only, req.client_order_id, req.timeout_s)
    return TradeResult.of({"trade": trade}), 201


@bp.delete("/orders/<client_order_id>")
@login_required
def cancel_order(client_order_id: str):  # type: ignore[no-untyped-def]
    """200 the record after cancel (it may be ``open``: the cancel raced a fill)."""
    if not _CLIENT_ORDER_ID.fullmatch(client_order_id):
        raise invalid("client_order_id", "must be 1-36 characters of [.A-Z:/a-z0-9_-]")
    key = services().keys.resolve(g.user_id, query_int("key_id"))
    return TradeResult.of({"trade": services().orders.cancel(g.user_id, key.id, client_order_id)})


@bp.get("/trades")
@login_required
def trades():  # type: ignore[no-untyped-def]
    """200 the user's trades, newest first; ``status`` a comma-separated filter."""
    statuses = [s for s in request.args.get("status", "").split(",") if s]
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise ApiError("validation_error", f"unknown status {unknown[0]!r}; one of "
                       f"{', '.join(sorted(STATUSES))}", 400, "status")
    rows = services().orders.trades(g.user_id, statuses, query_int("key_id"))
    return Trade.many(rows)


@bp.get("/funding")
@login_required
def funding_fees():  # type: ignore[no-untyped-def]
    """200 the key's funding fees with time >= ``since`` (ms UTC, default 0), oldest
    first; 404 for another user's key."""
    since = query_ms("since")
    key = services().keys.resolve(g.user_id, query_int("key_id"))
    return FundingFeeRow.many(funding.fees_since(services().db, key.id, since))


@bp.post("/positions/close")
@login_required
def close_position():  # type: ignore[no-untyped-def]
    """202 ``{"exit", "started"}``: a FOK chase starts, or (``started`` false) the exit
    already working for this position is returned (the duplicate-exit guard)."""
    req = body(ClosePosition)
    exit_, started = services().exits.close_position(g.user_id, req.key_id, req.symbol)
    return ExitStarted.of({"exit": exit_, "started": started}), 202


@bp.get("/exits/<exit_id>")
@login_required
def get_exit(exit_id: str):  # type: ignore[no-untyped-def]
    """200 the exit record; 404 for an unknown or another user's exit."""
    exit_ = services().exits.get(g.user_id, parse_id(exit_id, "exit_id"))
    if exit_ is None:
        raise ApiError("not_found", f"no exit {exit_id}", 404)
    return ExitResult.of({"exit": exit_})
