"""A fired server-mode rule whose positions came from an account stream that lags the
venue, against the real simulator (python-binance over loopback, nothing stubbed): the
exit's reduce-only FOK cannot open or flip a position, whatever size the stream says.

- the stream says a bigger LONG than the venue holds (it has not handled a partial
  close yet): the venue clamps the reduce-only order to what is held; the position
  ends flat, not SHORT;
- the stream says a LONG the venue already closed (it has not handled the close yet):
  every attempt is refused (Binance -2022 ReduceOnly Order is rejected); the exit
  fails, the account stays flat.
"""
from __future__ import annotations

import time
from decimal import Decimal as D
from unittest.mock import Mock

import pytest
from sqlalchemy import select

from exchanges.binance.client import BinanceFuturesClient
from exchanges.types import Position, VenueEndpoints
from models import Database, ExchangeKey, Exit, ProtectionLeg, User
from services.exits import ExitService, ExitSettings
from services.protection import ProtectionService
from services.protection.firing import LegRef

SYMBOL = "BTCUSDT"


def _sync(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


@pytest.fixture
def sim_prices() -> dict[str, str]:
    return {SYMBOL: "60000"}


@pytest.fixture
def world(database_url, sim, account):  # type: ignore[no-untyped-def]
    db = Database(database_url)
    with db.transaction() as s:
        s.add(User(id=1, username="p", password_hash="x"))
        s.flush()
        s.add(ExchangeKey(id=1, user_id=1, exchange="binance", api_key=account.api_key,
                          api_secret_encrypted=b"x"))
        s.flush()
        s.add(ProtectionLeg(id=1, user_id=1, key_id=1, exchange="binance", symbol=SYMBOL,
                            side="LONG", kind="stop_loss", mode="server", working_type="MARK_PRICE",
                            trigger_price=D("59000"), status="active", client_order_id="leg-1"))
    client = BinanceFuturesClient(account.api_key, account.api_secret, testnet=False,
                                  endpoints=VenueEndpoints(rest_url=sim.url, ws_url=sim.ws_url),
                                  timeout_s=5)
    exits = ExitService(db, lambda key: client, _sync, lambda env: None,
                        ExitSettings(max_retries=1, max_slippage_ticks=3, deadline_s=5))
    svc = ProtectionService(db, lambda key: client, exits, Mock(), _sync, time.sleep)
    account.client.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.002")
    yield svc, db
    client.close()
    db.dispose()


def _amount(sim, account) -> D:  # type: ignore[no-untyped-def]
    return sum((D(p["amount"]) for p in sim.state(account.api_key)["positions"]
                if p["symbol"] == SYMBOL), D(0))


def _claims(size: str) -> list[Position]:
    return [Position(SYMBOL, "LONG", D(size), D("60000"), D("60000"), D(0), D(20), D(0), "cross")]


def _fire(svc) -> Exit:  # type: ignore[no-untyped-def]
    ref = LegRef(leg_id=1, user_id=1, key_id=1, symbol=SYMBOL, kind="stop_loss")
    svc.firing.fire_many([(ref, D("58900"), time.perf_counter())])
    assert svc.firing.keys_streamed == 1 and svc.firing.keys_asked == 0  # the stream's word
    with svc._db.session() as s:
        [exit_] = s.scalars(select(Exit)).all()
    return exit_


def test_a_stream_that_says_a_bigger_position_cannot_flip_it(world, sim, account) -> None:  # type: ignore[no-untyped-def]
    svc, db = world
    assert _amount(sim, account) == D("0.002")
    svc.live_positions = lambda key_id: _claims("0.005")  # behind a partial close
    exit_ = _fire(svc)
    assert exit_.quantity == D("0.005")                  # the stream's size was sent
    assert exit_.status == "filled"                      # clamped to the 0.002 held
    assert _amount(sim, account) == D(0)                 # flat, not SHORT 0.003
    with db.session() as s:
        leg = s.get(ProtectionLeg, 1)
        assert leg is not None and leg.status == "triggered" and leg.exit_id == exit_.id


def test_a_stream_that_has_not_seen_the_close_opens_nothing(world, sim, account) -> None:  # type: ignore[no-untyped-def]
    svc, db = world
    account.client.futures_create_order(symbol=SYMBOL, side="SELL", type="MARKET",
                                        quantity="0.002", reduceOnly="true")  # closed elsewhere
    assert _amount(sim, account) == D(0)
    svc.live_positions = lambda key_id: _claims("0.002")  # the close's frame not handled
    exit_ = _fire(svc)
    assert exit_.status == "failed"                      # every attempt refused (-2022)
    assert _amount(sim, account) == D(0)                 # no SHORT opened
    sent = [o for o in sim.state(account.api_key)["orders"]
            if (o.get("client_order_id") or "").startswith(f"exit-{exit_.id}-")]
    assert sent == [] or all(D(o.get("executed_qty") or 0) == 0 for o in sent)
    with db.session() as s:
        leg = s.get(ProtectionLeg, 1)
        assert leg is not None and (leg.status, leg.error_code) == ("failed", "exit_failed")
