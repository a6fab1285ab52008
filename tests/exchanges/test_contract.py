"""The ExchangeClient / UserStream contract, run against both adapters.

Every test here goes through ``exchanges.base.ExchangeClient`` (built by
``exchanges.factory.create_client``) and its ``UserStream`` only, against the real
simulator process (one account answers on both protocols). Each test runs once per
venue; the simulator's Binance and Bybit protocol layers are exercised by the same
assertions. What legitimately differs between the venues (error codes, HTTP
statuses, where a fill shows up on the stream) lives in ``VENUES`` below and nowhere
else. Venue-only behaviour stays in ``test_binance_client_sim.py`` /
``test_bybit_client_sim.py``.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal as D

import pytest

from exchanges.base import ExchangeClient, UserStream
from exchanges.errors import (
    AuthFailed,
    ExchangeTimeout,
    ExchangeUnavailable,
    InsufficientBalance,
    InvalidOrder,
    IpBanned,
    OrderNotFound,
    RateLimited,
)
from exchanges.factory import create_client
from exchanges.governor import Governors
from exchanges.types import (
    AccountEvent,
    FillEvent,
    OrderEvent,
    OrderRequest,
    OrderStatus,
    ProtectionKind,
    ProtectionLegUpdate,
    ProtectionStatus,
    VenueEndpoints,
    WorkingType,
)


@dataclass(frozen=True)
class Venue:
    """What one venue answers where the contract leaves room for it."""

    name: str
    bad_key: tuple[int | None, int]      # AuthFailed (code, http_status) for an unknown key
    bad_secret_code: int                 # AuthFailed code for a wrong signature
    get_unknown_code: int                # OrderNotFound code of get_order for an unknown id
    cancel_closed_code: int              # OrderNotFound code of cancel_order on a final order
    insufficient_code: int               # InsufficientBalance code (margin too small)
    bad_quantity_code: int               # InvalidOrder code for a quantity off the lot step
    rate_limited: tuple[int, int]        # RateLimited (code, http_status) on the http_429 fault
    retry_after_slack_ms: int            # |retry_after_ms - fault's Retry-After| allowed
    stream_fill_type: type               # the stream event that carries an execution


VENUES = {
    # Retry-After is read verbatim (integer seconds) -> exact.
    "binance": Venue("binance", bad_key=(-2015, 401), bad_secret_code=-1022,
                     get_unknown_code=-2013, cancel_closed_code=-2011,
                     insufficient_code=-2019, bad_quantity_code=-1111,
                     rate_limited=(-1003, 429), retry_after_slack_ms=0,
                     stream_fill_type=OrderEvent),          # ORDER_TRADE_UPDATE x=TRADE
    # HTTP 401 carries retCode 10003 in its body (kept by exchanges.bybit.http). 10006 comes in an
    # HTTP 200; the wait is X-Bapi-Limit-Reset-Timestamp minus the estimated server now.
    "bybit": Venue("bybit", bad_key=(10003, 401), bad_secret_code=10004,
                   get_unknown_code=110001, cancel_closed_code=110001,
                   insufficient_code=110007, bad_quantity_code=10001,
                   rate_limited=(10006, 200), retry_after_slack_ms=500,
                   stream_fill_type=FillEvent),             # "execution" topic
}

SYMBOL = "BTCUSDT"
PRICE = D("50000")
FUNDS = D("10000")


@pytest.fixture(scope="module", params=list(VENUES))
def venue(request) -> Venue:
    return VENUES[request.param]


def make_client(venue: Venue, endpoints: VenueEndpoints, key: str, secret: str) -> ExchangeClient:
    return create_client(venue.name, key, secret, False, endpoints, timeout_s=5)


@pytest.fixture
def client(venue, account, endpoints):
    c = make_client(venue, endpoints, *account)
    yield c
    c.close()


def coid() -> str:
    return "t-" + uuid.uuid4().hex[:20]


def market(side: str = "BUY", qty: str = "0.010") -> OrderRequest:
    return OrderRequest(SYMBOL, side, "MARKET", D(qty), coid())


def limit(side: str, qty: str, price: D) -> OrderRequest:
    return OrderRequest(SYMBOL, side, "LIMIT", D(qty), coid(), price=price)


def open_ids(client: ExchangeClient, symbol: str | None = SYMBOL) -> list[str]:
    return [o.order_id for o in client.get_open_orders(symbol)]


def request_counts(sim, key: str) -> dict[str, int]:
    """REST requests the simulator has seen from ``key``, per endpoint."""
    return dict(sim.state(key)["requests"].get(key, {}))


def collect(stream: UserStream, want, deadline_s: float = 5.0) -> list:
    """Receive until ``want(events)`` holds or the deadline passes."""
    events: list = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and not want(events):
        events.extend(stream.recv(timeout_s=0.5))
    return events


def stream_fills(events: list) -> list:
    """(carrier event, Fill) for every execution on the stream, wherever it rides."""
    return [(e, e.fill) for e in events
            if isinstance(e, (OrderEvent, FillEvent)) and e.fill is not None]


# ---- credentials -------------------------------------------------------------------------

def test_validate_credentials_ok(client, venue):
    assert client.exchange == venue.name and client.testnet is False
    assert client.is_alive()
    client.validate_credentials()
    assert abs(client.server_time() - int(time.time() * 1000)) < 60_000


def test_bad_secret_is_auth_failed(venue, account, endpoints):
    c = make_client(venue, endpoints, account[0], "wrong-secret")
    try:
        with pytest.raises(AuthFailed) as info:
            c.validate_credentials()
        assert info.value.exchange == venue.name
        assert info.value.code == venue.bad_secret_code
    finally:
        c.close()


def test_bad_key_is_auth_failed(venue, endpoints):
    c = make_client(venue, endpoints, "no-such-key", "whatever")
    try:
        with pytest.raises(AuthFailed) as info:
            c.validate_credentials()
        assert (info.value.code, info.value.http_status) == venue.bad_key
    finally:
        c.close()


# ---- snapshots ---------------------------------------------------------------------------

def test_snapshot_of_a_fresh_account(client):
    b = client.get_balance()
    [usdt] = [a for a in b.assets if a.asset == "USDT"]
    assert (usdt.wallet_balance, usdt.available_balance, usdt.margin_balance) == (FUNDS,) * 3
    assert usdt.unrealized_pnl == 0
    assert (b.total_wallet_balance, b.total_margin_balance, b.available_balance) == (FUNDS,) * 3
    assert b.total_unrealized_pnl == 0
    assert client.get_positions() == []
    assert client.get_open_orders(SYMBOL) == [] and client.get_open_orders() == []


def test_symbol_rules_and_ticker(client):
    r = client.get_symbol_rules(SYMBOL)
    assert (r.symbol, r.tick_size, r.step_size, r.min_qty) == (SYMBOL, D("0.1"), D("0.001"),
                                                                D("0.001"))
    assert r.max_qty > r.min_qty and r.min_notional > 0
    t = client.get_ticker(SYMBOL)
    assert (t.symbol, t.mark_price, t.last_price) == (SYMBOL, PRICE, PRICE)
    assert t.bid is not None and t.ask is not None and t.bid <= PRICE <= t.ask


# ---- orders ------------------------------------------------------------------------------

def test_market_order_fills_and_shows_in_positions_and_fills(client):
    req = market("BUY", "0.010")
    o = client.create_order(req)
    assert (o.client_order_id, o.symbol, o.side, o.type) == (req.client_order_id, SYMBOL,
                                                              "BUY", "MARKET")
    assert o.status is OrderStatus.FILLED
    assert o.quantity == o.filled_quantity == D("0.010")
    assert o.avg_price >= PRICE                       # a buy pays the ask
    again = client.get_order(SYMBOL, client_order_id=req.client_order_id)
    assert (again.order_id, again.status) == (o.order_id, OrderStatus.FILLED)
    assert client.get_order(SYMBOL, order_id=o.order_id).client_order_id == req.client_order_id

    [p] = [p for p in client.get_positions() if p.symbol == SYMBOL]
    assert (p.side, p.size, p.entry_price) == ("LONG", D("0.010"), o.avg_price)
    assert (p.leverage, p.margin_type, p.mark_price) == (D("20"), "cross", PRICE)

    fills = client.get_fills(SYMBOL, order_id=o.order_id)
    assert fills and sum(f.quantity for f in fills) == D("0.010")
    assert all(f.order_id == o.order_id and f.side == "BUY" and f.symbol == SYMBOL
               for f in fills)
    assert all(f.price == o.avg_price and f.fee > 0 and f.fee_asset == "USDT" for f in fills)


def test_limit_rests_in_open_orders_then_cancel(client, venue):
    o = client.create_order(limit("BUY", "0.010", PRICE * D("0.9")))
    assert o.status is OrderStatus.NEW and o.price == PRICE * D("0.9")
    assert o.filled_quantity == 0 and o.time_in_force == "GTC"
    assert o.order_id in open_ids(client) and o.order_id in open_ids(client, None)
    c = client.cancel_order(SYMBOL, order_id=o.order_id)
    assert (c.order_id, c.status) == (o.order_id, OrderStatus.CANCELED)
    assert o.order_id not in open_ids(client)
    assert client.get_order(SYMBOL, order_id=o.order_id).status is OrderStatus.CANCELED
    with pytest.raises(OrderNotFound) as info:
        client.cancel_order(SYMBOL, order_id=o.order_id)
    assert info.value.code == venue.cancel_closed_code


def test_limit_partial_then_full_fill(client, sim):
    o = client.create_order(limit("SELL", "0.020", PRICE * D("1.05")))
    sim.fill(o.order_id, quantity="0.005")
    part = client.get_order(SYMBOL, order_id=o.order_id)
    assert part.status is OrderStatus.PARTIALLY_FILLED and part.filled_quantity == D("0.005")
    [still_open] = client.get_open_orders(SYMBOL)
    assert (still_open.order_id, still_open.status) == (o.order_id, OrderStatus.PARTIALLY_FILLED)
    sim.fill(o.order_id)
    done = client.get_order(SYMBOL, order_id=o.order_id)
    assert done.status is OrderStatus.FILLED and done.filled_quantity == D("0.020")
    assert done.avg_price == PRICE * D("1.05")
    assert open_ids(client) == []
    fills = client.get_fills(SYMBOL, order_id=o.order_id)
    assert sorted(f.quantity for f in fills) == [D("0.005"), D("0.015")]


def test_cancel_racing_a_fill_is_order_not_found_and_order_is_filled(client, sim, venue):
    o = client.create_order(limit("BUY", "0.010", PRICE * D("0.9")))
    sim.fill(o.order_id)                 # the fill wins the race against our cancel
    with pytest.raises(OrderNotFound) as info:
        client.cancel_order(SYMBOL, order_id=o.order_id)
    assert info.value.code == venue.cancel_closed_code
    final = client.get_order(SYMBOL, order_id=o.order_id)
    assert final.status is OrderStatus.FILLED and final.filled_quantity == D("0.010")


def test_get_order_unknown(client, venue):
    with pytest.raises(OrderNotFound) as info:
        client.get_order(SYMBOL, client_order_id="never-sent")
    assert info.value.code == venue.get_unknown_code


# ---- rejections --------------------------------------------------------------------------

def test_reject_insufficient_balance_with_exchange_code(client, venue):
    with pytest.raises(InsufficientBalance) as info:
        client.create_order(market("BUY", "5"))          # 250k notional, 12.5k margin at 20x
    assert info.value.exchange == venue.name
    assert info.value.code == venue.insufficient_code
    assert client.get_positions() == [] and client.get_open_orders() == []


def test_reject_invalid_quantity_with_exchange_code(client, venue):
    with pytest.raises(InvalidOrder) as info:
        client.create_order(market("BUY", "0.0001"))     # below the 0.001 lot step
    assert info.value.code == venue.bad_quantity_code
    assert client.get_positions() == []


# ---- transport faults --------------------------------------------------------------------

def test_http_429_is_rate_limited_with_retry_after(client, sim, venue, account):
    client.validate_credentials()
    sim.add_fault(kind="http_429", count=1, ms=1000, api_key=account[0])   # Retry-After: 1
    with pytest.raises(RateLimited) as info:
        client.get_balance()
    assert not isinstance(info.value, IpBanned)
    assert (info.value.code, info.value.http_status) == venue.rate_limited
    assert info.value.retry_after_ms is not None
    assert abs(info.value.retry_after_ms - 1000) <= venue.retry_after_slack_ms
    time.sleep(info.value.retry_after_ms / 1000)  # (Bybit's 10006 holds this key back until then)
    assert client.get_balance().total_wallet_balance == FUNDS


def test_clock_skew_once_is_resampled_and_get_succeeds(client, sim, account):
    """The server clock is 5 s behind for one request: the signed GET is refused as
    outside the receive window, the adapter resamples and retries, and the caller
    sees a normal answer. The simulator's request counts prove the retry happened."""
    client.validate_credentials()
    client.get_balance()
    c0 = request_counts(sim, account[0])
    client.get_balance()
    c1 = request_counts(sim, account[0])
    balance_calls = {ep: n - c0.get(ep, 0) for ep, n in c1.items() if n != c0.get(ep, 0)}
    assert balance_calls and all(n == 1 for n in balance_calls.values())

    sim.add_fault(kind="clock_skew", ms=-5000, count=1, api_key=account[0])
    assert client.get_balance().total_wallet_balance == FUNDS
    c2 = request_counts(sim, account[0])
    assert all(c2[ep] - c1[ep] == 2 for ep in balance_calls)    # refused, then retried
    assert sim.state(account[0])["faults"] == []


# ---- user stream -------------------------------------------------------------------------

def test_user_stream_order_fill_and_account_events(client, venue):
    stream = client.user_stream()
    assert isinstance(stream, UserStream)
    stream.connect()
    try:
        assert stream.recv(timeout_s=0.1) == []
        req = market("BUY", "0.010")
        o = client.create_order(req)

        def mine(evs):
            return [f for _, f in stream_fills(evs) if f.order_id == o.order_id]

        def done(evs):
            return (any(isinstance(e, OrderEvent) and e.order.order_id == o.order_id
                        and e.order.status is OrderStatus.FILLED for e in evs)
                    and sum(f.quantity for f in mine(evs)) >= D("0.010")
                    and any(p.symbol == SYMBOL and p.amount == D("0.010")
                            for e in evs if isinstance(e, AccountEvent) for p in e.positions)
                    and any(w.asset == "USDT"
                            for e in evs if isinstance(e, AccountEvent) for w in e.wallets))
        events = collect(stream, done)
        assert done(events), events

        [filled] = [e for e in events if isinstance(e, OrderEvent)
                    and e.order.order_id == o.order_id and e.order.status is OrderStatus.FILLED]
        assert filled.order.client_order_id == req.client_order_id and filled.event_time > 0

        # "a fill with the order's id arrives", whatever event carries it
        carried = [(e, f) for e, f in stream_fills(events) if f.order_id == o.order_id]
        assert sum(f.quantity for _, f in carried) == D("0.010")
        assert all(f.client_order_id == req.client_order_id and f.price > 0 and f.fee > 0
                   and e.event_time > 0 for e, f in carried)
        assert all(type(e) is venue.stream_fill_type for e, _ in carried)

        stream.keepalive()
        after = stream.recv(timeout_s=0.2)               # a heartbeat reply is swallowed
        assert all(isinstance(e, (OrderEvent, FillEvent, AccountEvent)) for e in after)
    finally:
        stream.close()


def test_user_stream_recv_with_no_time_left_is_no_events_not_a_drop(client):
    """A caller whose deadline has just passed asks with ``timeout_s=0`` (or a hair
    below): that is "nothing yet", never a lost connection (a zero socket timeout is
    non-blocking mode, whose EAGAIN once read as a drop and cost a reconnect)."""
    stream = client.user_stream()
    stream.connect()
    try:
        for timeout_s in (0.0, -0.002, 0.0):
            assert stream.recv(timeout_s=timeout_s) == []
        assert stream.connected
        assert stream.recv(timeout_s=0.1) == []  # still a working blocking socket
    finally:
        stream.close()


def test_user_stream_dropped_socket_raises_unavailable(client, sim, account):
    stream = client.user_stream()
    stream.connect()
    try:
        sim.add_fault(kind="drop_ws", api_key=account[0])
        with pytest.raises(ExchangeUnavailable):
            collect(stream, lambda evs: False, deadline_s=3.0)
    finally:
        stream.close()


# ---- egress address ---------------------------------------------------------------------

def test_rest_and_user_stream_leave_from_the_keys_egress_address(venue, account, endpoints, sim):
    """With ``EGRESS_IPS`` the key's governor names its source address: the REST
    session and the private stream bind to it, so the exchange counts this key's
    weight against that address (127.0.0.2 is loopback too on Linux)."""
    gov = Governors(["127.0.0.2"]).for_key(venue.name, False, 0)
    assert gov.egress == "127.0.0.2"
    c = create_client(venue.name, *account, False, endpoints, timeout_s=5, governor=gov)
    stream = c.user_stream()
    try:
        c.get_balance()
        stream.connect()
        [row] = [s for s in sim.state()["streams"] if s.get("api_key") == account[0]]
        assert row["peers"] == ["127.0.0.2"], row
        assert f"{venue.name} 127.0.0.2" in sim.state()["weight_per_minute"]  # REST, per IP
        assert gov.stats()["requests"] >= 1
    finally:
        stream.close()
        c.close()


def test_keys_of_one_egress_address_share_its_connections(venue, new_account, endpoints):
    """Two keys leaving from one address: the second key's requests go over the
    connection the first one opened (no connection, on https no TLS handshake, per
    key), each signed with its own key; closing one key's client leaves the address's
    pool to the other."""
    from exchanges.egress import shared_adapter
    first, second = new_account(), new_account()
    pools = shared_adapter("127.0.0.3").poolmanager.pools

    def counts() -> tuple[int, int]:  # (connections opened, requests sent) over its pools
        return (sum(pools[k].num_connections for k in pools.keys()),
                sum(pools[k].num_requests for k in pools.keys()))
    a, b = (create_client(venue.name, *acc[:2], False, endpoints, timeout_s=5,
                          governor=Governors(["127.0.0.3"]).for_key(venue.name, False, 0))
            for acc in (first, second))
    try:
        opened, served = counts()
        assert a.get_balance().total_wallet_balance == FUNDS
        assert b.get_balance().total_wallet_balance == FUNDS
        assert counts()[1] - served >= 2  # both keys' requests went through the address's pool
        assert counts()[0] - opened <= 1  # the first request's connection, reused by the second key
        a.close()
        assert b.get_positions() == [] and counts()[0] - opened <= 1
    finally:
        a.close()
        b.close()


# ---- protection legs ---------------------------------------------------------------------

def test_protection_legs_place_list_fire_and_report(client, sim):
    """The same leg life on both venues through ExchangeClient only: a stop-loss and a
    take-profit are held (NEW, listed, not open orders), the take-profit is canceled, the
    price crosses the stop, it fires as a market close with a fee, the stream reports it
    FILLED, the position is gone and nothing stays held."""
    client.create_order(market("BUY"))
    stream = client.user_stream()
    stream.connect()
    try:
        sl = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, coid(),
                                         trigger_price=D("49000"),
                                         working_type=WorkingType.MARK_PRICE)
        tp = client.place_protection_leg(SYMBOL, "LONG", ProtectionKind.TAKE_PROFIT, coid(),
                                         trigger_price=D("52000"))
        assert {(leg.kind, leg.status) for leg in client.open_protection_legs(SYMBOL)} == {
            (ProtectionKind.STOP_LOSS, ProtectionStatus.NEW),
            (ProtectionKind.TAKE_PROFIT, ProtectionStatus.NEW)}
        assert open_ids(client) == []
        assert client.cancel_protection_leg(SYMBOL, tp.client_order_id).status is \
            ProtectionStatus.CANCELED
        sim.set_price(SYMBOL, "48900")
        events = collect(stream, lambda evs: any(
            isinstance(e, ProtectionLegUpdate) and e.leg.status is ProtectionStatus.FILLED
            for e in evs) and stream_fills(evs))
    finally:
        stream.close()
    done = [e.leg for e in events if isinstance(e, ProtectionLegUpdate)
            and e.leg.status is ProtectionStatus.FILLED]
    assert done and done[-1].order_id == sl.order_id and done[-1].kind is ProtectionKind.STOP_LOSS
    [(_, fill)] = stream_fills(events)
    assert fill.side == "SELL" and fill.quantity == D("0.010") and fill.fee > 0
    assert client.get_positions() == []
    assert client.open_protection_legs() == []
    assert client.get_protection_leg(SYMBOL, sl.client_order_id).status is ProtectionStatus.FILLED


def test_protection_leg_timeout_then_found_by_its_id(venue, account, endpoints, sim):
    """A placement whose reply never comes is ExchangeTimeout (fate unknown); the leg
    is then found by its id: ours on Binance (clientAlgoId), ``"<symbol>-<kind>"`` on
    Bybit (a position attribute without a client id)."""
    c = create_client(venue.name, *account, False, endpoints, timeout_s=1)
    try:
        c.create_order(market("BUY"))
        cid = coid()
        sim.add_fault(kind="timeout", ms=2000, api_key=account[0])
        with pytest.raises(ExchangeTimeout):
            c.place_protection_leg(SYMBOL, "LONG", ProtectionKind.STOP_LOSS, cid,
                                   trigger_price=D("49000"))
        leg_id = cid if venue.name == "binance" else f"{SYMBOL}-stop_loss"
        leg = c.get_protection_leg(SYMBOL, leg_id)
        assert leg.status is ProtectionStatus.NEW and leg.trigger_price == D("49000")
    finally:
        c.close()
