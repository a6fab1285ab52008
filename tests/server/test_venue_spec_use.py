"""The services ask the venue's spec (``exchanges.venues``): each test swaps one spec
field and checks that the service follows it."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from exchanges.binance.spec import BINANCE
from exchanges.bybit.spec import BYBIT
from exchanges.types import AssetBalance, Balance
from exchanges.venues import VENUES
from services.account_state import AccountState
from tests.support.factories import btc_long


def _asked_open_orders(exchange: str, rounds: int) -> list:
    from services.account_stream import AccountStream
    asked: list = []

    class Client:
        def get_open_orders(self, symbol=None):  # type: ignore[no-untyped-def]
            asked.append(symbol)
            return []
    state = AccountState(1, 1, exchange, False)
    stream = AccountStream(state, get_client=Client, realized_pnl=lambda: None,  # type: ignore[arg-type]
                           publish=lambda e: None, on_fill=lambda f: None, sleep=lambda s: None)
    stream.refresher.open_orders(Client())        # first snapshot: everything
    state.set_orders([])
    state.set_positions([btc_long("0.01")])
    asked.clear()
    for _ in range(rounds):
        stream.refresher.open_orders(Client())
    return asked


def test_open_orders_follow_the_specs_capability_and_full_round(monkeypatch) -> None:
    monkeypatch.setitem(VENUES, "binance", replace(BINANCE, full_orders_every=3))
    assert _asked_open_orders("binance", 6) == ["BTCUSDT", None, "BTCUSDT"] * 2
    monkeypatch.setitem(VENUES, "bybit", replace(BYBIT, open_orders_per_symbol=True,
                                                 full_orders_every=4))
    assert _asked_open_orders("bybit", 4) == ["BTCUSDT", "BTCUSDT", None, "BTCUSDT"]


def test_the_polling_pace_follows_the_specs_round_weight(monkeypatch) -> None:
    from types import SimpleNamespace

    from exchanges.governor import Governors
    from services.stream_manager import POLLING_KEYS_PER_S, StreamManager
    mgr = StreamManager(None, None, None, lambda e: None, lambda *a: None,  # type: ignore[arg-type]
                        lambda s: None, None)
    mgr._governors = Governors()
    group = ("binance", False, None)
    for i in range(3 * POLLING_KEYS_PER_S):
        mgr._streams[i] = SimpleNamespace(stream=None)
        mgr._groups[i] = group
    assert mgr._poll_scale(group) == 300.0          # 16 a round: 1 account a second
    monkeypatch.setitem(VENUES, "binance", replace(BINANCE, poll_round_weight=32))
    assert mgr._poll_scale(group) == 600.0          # twice the weight, half the pace


def test_unrealized_pnl_moves_the_specs_settle_asset(monkeypatch) -> None:
    def state_with_two_assets() -> AccountState:
        state = AccountState(1, 1, "binance", False)
        assets = tuple(AssetBalance(a, Decimal(10), Decimal(10), Decimal(0), Decimal(10))
                       for a in ("USDT", "USDC"))
        state.set_balance(Balance(Decimal(20), Decimal(0), Decimal(20), Decimal(20), assets))
        return state

    state = state_with_two_assets()
    state._move_unrealized("BTCUSDC", Decimal(1))   # USDC is not a settle asset: totals only
    assert [a.margin_balance for a in state.balance.assets] == [10, 10]
    assert state.balance.total_margin_balance == 21
    monkeypatch.setitem(VENUES, "binance", replace(BINANCE, settle_assets=("USDT", "USDC")))
    state = state_with_two_assets()
    state._move_unrealized("BTCUSDC", Decimal(1))
    assert [a.margin_balance for a in state.balance.assets] == [10, 11]
