"""Price paths: CSV replay (control API and command line) and the seeded random walk."""
from __future__ import annotations

from decimal import Decimal as D
from itertools import pairwise

import requests
import websocket

from exchanges.simulator.engine import Engine
from exchanges.simulator.market import MarketFeed
from tests.support.simulator import recv_json_until, start_simulator

# The first three candles of exchanges/simulator/data/XRPUSDT_perp_5m_2021-11-15_to_2021-11-21.csv.
CSV = """open_time_ms,open,high,low,close,volume
1636934400000,1.1893,1.1954,1.1891,1.1941,9289043.5
1636934700000,1.1941,1.1993,1.1934,1.1972,7267451.9
1636935000000,1.1972,1.1994,1.1958,1.1963,4199874.3
"""
# rising candles walk open-low-high-close, falling ones open-high-low-close
PATH = ["1.1893", "1.1891", "1.1954", "1.1941",
        "1.1941", "1.1934", "1.1993", "1.1972",
        "1.1972", "1.1994", "1.1958", "1.1963"]


def test_replay_walks_the_candles_in_order(sim, tmp_path):
    csv = tmp_path / "xrp.csv"
    csv.write_text(CSV)
    ws = websocket.create_connection(f"{sim.ws_url}/ws/xrpusdt@markPrice", timeout=5)
    try:
        # the stream pushes the current price at once (then every 3 s); skip that one
        assert len(recv_json_until(ws, lambda fs: len(fs) >= 1, timeout=5)) == 1
        info = sim.replay("XRPUSDT", csv, seconds_per_candle=0.2)
        assert info["candles"] == 3 and info["points_total"] == 12
        frames = recv_json_until(ws, lambda fs: len(fs) >= len(PATH), timeout=10)
    finally:
        ws.close()
    assert [D(f["p"]) for f in frames[:len(PATH)]] == [D(p) for p in PATH]
    state = sim.state()
    assert D(state["prices"]["XRPUSDT"]["price"]) == D("1.1963")
    assert state["replays"]["XRPUSDT"]["points_done"] == 12


def test_replay_moves_positions_pnl(sim, account, tmp_path):
    csv = tmp_path / "xrp.csv"
    csv.write_text(CSV)
    sim.set_price("XRPUSDT", "1.1893")
    account.client.futures_create_order(symbol="XRPUSDT", side="BUY", type="MARKET",
                                        quantity="100.0")
    ws = websocket.create_connection(f"{sim.ws_url}/ws/xrpusdt@markPrice", timeout=5)
    try:
        sim.replay("XRPUSDT", csv, seconds_per_candle=0.05)
        recv_json_until(ws, lambda fs: any(f["p"] == "1.19630000" for f in fs), timeout=10)
    finally:
        ws.close()
    [pos] = account.client.futures_position_information(symbol="XRPUSDT")
    assert D(pos["unRealizedProfit"]) == (D("1.1963") - D("1.1894")) * 100


def test_bad_replay_requests_are_400(sim, tmp_path):
    bad = requests.post(sim.url + "/_sim/replay", json={"symbol": "XRPUSDT",
                                                        "csv": str(tmp_path / "missing.csv")},
                        timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_replay"
    csv = tmp_path / "x.csv"
    csv.write_text(CSV)
    unknown = requests.post(sim.url + "/_sim/replay", json={"symbol": "DOGEUSDT",
                                                            "csv": str(csv)}, timeout=5)
    assert unknown.status_code == 400


def _first_prices(sim, count):
    ws = websocket.create_connection(f"{sim.ws_url}/ws/btcusdt@markPrice", timeout=5)
    try:
        frames = recv_json_until(ws, lambda fs: len(fs) >= count, timeout=10)
    finally:
        ws.close()
    return [f["p"] for f in frames[:count]]


def test_random_walk_and_command_line_replay(tmp_path):
    csv = tmp_path / "xrp.csv"
    csv.write_text(CSV)
    proc = start_simulator(extra_args=("--tick-ms", "20", "--seed", "7", "--replay",
                                       f"XRPUSDT={csv}", "--seconds-per-candle", "0.4"))
    try:
        moves = _first_prices(proc, 6)
        assert len(set(moves)) > 1                                 # the walk moves
        replay = proc.state()["replays"]["XRPUSDT"]
        assert replay["points_total"] == 12 and replay["points_done"] >= 1
        assert D(proc.state()["prices"]["XRPUSDT"]["price"]) in {D(p) for p in PATH}
    finally:
        proc.stop()


def _walk(seed, steps=20):
    engine = Engine()
    feed = MarketFeed(engine, seed=seed, tick_ms=0)
    return [feed.walk_step("BTCUSDT") for _ in range(steps)]


def test_random_walk_is_seeded_and_stays_on_the_tick():
    assert _walk(42) == _walk(42)
    assert _walk(42) != _walk(43)
    assert all(p % D("0.1") == 0 and p > 0 for p in _walk(1, 200))


def test_mark_price_stream_pushes_on_its_interval_without_a_move(sim):
    ws = websocket.create_connection(f"{sim.ws_url}/market/ws/btcusdt@markPrice@1s", timeout=5)
    try:
        frames = recv_json_until(ws, lambda fs: len(fs) >= 3, timeout=5)
    finally:
        ws.close()
    assert len({f["p"] for f in frames}) == 1          # the price did not move...
    gaps = [b["E"] - a["E"] for a, b in pairwise(frames)]
    assert all(900 <= g <= 1500 for g in gaps), gaps   # ...yet a frame came every second


def test_book_ticker_stream_sends_the_book_at_once_and_on_moves(sim):
    ws = websocket.create_connection(f"{sim.ws_url}/public/ws/ethusdt@bookTicker", timeout=5)
    try:
        first = recv_json_until(ws, lambda fs: len(fs) >= 1, timeout=5)[0]
        sim.set_price("ETHUSDT", "3500")
        moved = recv_json_until(ws, lambda fs: any(f["b"] == "3499.99" for f in fs), timeout=5)
    finally:
        ws.close()
    assert first["e"] == "bookTicker" and first["s"] == "ETHUSDT"
    assert D(first["a"]) - D(first["b"]) == D("0.02")       # one tick each side of the mark
    assert [f for f in moved if f["b"] == "3499.99"][0]["a"] == "3500.01"
