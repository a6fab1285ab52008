"""User data stream and markPrice stream over real WebSockets (websocket-client)."""
from __future__ import annotations

import asyncio

import pytest
import requests
import websocket
from binance.exceptions import BinanceAPIException

from tests.support.simulator import recv_json_until, start_simulator, wait_ws_closed

SYMBOL = "BTCUSDT"

# Field sets of the real captures in tests/fixtures/binance/
# (ws_ORDER_TRADE_UPDATE_real_SUSHIUSDT_FILLED.json, ws_ACCOUNT_UPDATE_real_BTCUSDT.json).
OTU_KEYS = {"e", "T", "E", "o"}
OTU_ORDER_KEYS = {"s", "c", "S", "o", "f", "q", "p", "ap", "sp", "x", "X", "i", "l", "z", "L",
                  "n", "N", "T", "t", "b", "a", "m", "R", "wt", "ot", "ps", "cp", "rp", "pP",
                  "si", "ss", "V", "pm", "gtd"}
AU_KEYS = {"e", "T", "E", "a"}
AU_A_KEYS = {"B", "P", "m"}
AU_B_KEYS = {"a", "wb", "cw", "bc"}
AU_P_KEYS = {"s", "pa", "ep", "cr", "up", "mt", "iw", "ps", "ma"}


@pytest.fixture(autouse=True)
def _price(sim):
    sim.set_price(SYMBOL, "60000")


def user_ws(sim, listen_key, path="private"):
    url = (f"{sim.ws_url}/private/ws?listenKey={listen_key}" if path == "private"
           else f"{sim.ws_url}/ws/{listen_key}")
    return websocket.create_connection(url, timeout=5)


def of_kind(frames, kind, exec_type=None):
    return [f for f in frames if f.get("e") == kind
            and (exec_type is None or f["o"]["x"] == exec_type)]


@pytest.mark.parametrize("path", ["private", "legacy"])
def test_market_order_events_have_the_fixture_shape(sim, account, path):
    c = account.client
    ws = user_ws(sim, c.futures_stream_get_listen_key(), path)
    try:
        res = c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.010")
        frames = recv_json_until(ws, lambda fs: of_kind(fs, "ACCOUNT_UPDATE"))
    finally:
        ws.close()
    assert [(f["e"], f.get("o", {}).get("x")) for f in frames] == [
        ("ORDER_TRADE_UPDATE", "NEW"), ("ORDER_TRADE_UPDATE", "TRADE"), ("ACCOUNT_UPDATE", None)]
    trade = of_kind(frames, "ORDER_TRADE_UPDATE", "TRADE")[0]
    assert set(trade) == OTU_KEYS and set(trade["o"]) == OTU_ORDER_KEYS
    o = trade["o"]
    assert (o["i"], o["X"], o["z"], o["L"], o["N"]) == (res["orderId"], "FILLED", "0.010",
                                                         "60000.10", "USDT")
    assert isinstance(o["t"], int) and o["t"] > 0 and o["m"] is False
    new = of_kind(frames, "ORDER_TRADE_UPDATE", "NEW")[0]
    assert set(new["o"]) == OTU_ORDER_KEYS - {"n", "N"}        # no commission yet
    acct = of_kind(frames, "ACCOUNT_UPDATE")[0]
    assert set(acct) == AU_KEYS and set(acct["a"]) == AU_A_KEYS and acct["a"]["m"] == "ORDER"
    [b] = acct["a"]["B"]
    [p] = acct["a"]["P"]
    assert set(b) == AU_B_KEYS and set(p) == AU_P_KEYS
    assert (p["s"], p["pa"], p["ep"]) == (SYMBOL, "0.010", "60000.1")
    assert isinstance(acct["E"], int) and isinstance(trade["T"], int)


def test_limit_new_cancel_and_no_account_update(sim, account):
    c = account.client
    ws = user_ws(sim, c.futures_stream_get_listen_key())
    try:
        order = c.futures_create_order(symbol=SYMBOL, side="BUY", type="LIMIT", quantity="0.010",
                                       price="55000.0", timeInForce="GTC")
        c.futures_cancel_order(symbol=SYMBOL, orderId=order["orderId"])
        frames = recv_json_until(ws, lambda fs: of_kind(fs, "ORDER_TRADE_UPDATE", "CANCELED"))
    finally:
        ws.close()
    assert [f["o"]["x"] for f in frames] == ["NEW", "CANCELED"]
    assert frames[1]["o"]["X"] == "CANCELED"


def test_every_connection_of_a_listen_key_gets_events(sim, account):
    c = account.client
    key = c.futures_stream_get_listen_key()
    sockets = [user_ws(sim, key), user_ws(sim, key, "legacy"),
               websocket.create_connection(f"{sim.ws_url}/private/ws/{key}", timeout=5)]
    try:
        c.futures_create_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity="0.002")
        for ws in sockets:
            frames = recv_json_until(ws, lambda fs: of_kind(fs, "ACCOUNT_UPDATE"))
            assert of_kind(frames, "ORDER_TRADE_UPDATE", "TRADE")
    finally:
        for ws in sockets:
            ws.close()


def test_listen_key_post_returns_the_same_key_and_put_delete(sim, account):
    c = account.client
    key = c.futures_stream_get_listen_key()
    assert c.futures_stream_get_listen_key() == key
    assert c.futures_stream_keepalive(key) == {"listenKey": key}
    streams = [s for s in sim.state()["streams"] if s.get("api_key") == account.api_key]
    assert streams and streams[0]["listen_key"] == key
    c.futures_stream_close(key)
    resp = requests.put(sim.url + "/fapi/v1/listenKey", data={"listenKey": key},
                        headers={"X-MBX-APIKEY": account.api_key}, timeout=5)
    assert resp.status_code == 400 and resp.json()["code"] == -1125
    assert c.futures_stream_get_listen_key() != key


def test_expire_listen_key_fault(sim, account):
    c = account.client
    key = c.futures_stream_get_listen_key()
    ws = user_ws(sim, key)
    try:
        sim.add_fault(kind="expire_listen_key", api_key=account.api_key)
        frames = wait_ws_closed(ws)
    finally:
        ws.close()
    assert frames and frames[-1]["e"] == "listenKeyExpired" and frames[-1]["listenKey"] == key
    assert frames[-1]["E"].isdigit()
    new_key = c.futures_stream_get_listen_key()
    assert new_key != key
    stale = user_ws(sim, key)              # the old key is refused: socket closed at once
    try:
        assert wait_ws_closed(stale) == []
    finally:
        stale.close()


def test_drop_ws_fault_closes_only_that_accounts_sockets(sim, account, new_account):
    other = new_account()
    ws_mine = user_ws(sim, account.client.futures_stream_get_listen_key())
    ws_other = user_ws(sim, other.client.futures_stream_get_listen_key())
    try:
        assert sim.add_fault(kind="drop_ws", api_key=account.api_key)["affected"] == 1
        wait_ws_closed(ws_mine)
        other.client.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET",
                                          quantity="0.002")
        assert of_kind(recv_json_until(ws_other, lambda fs: of_kind(fs, "ACCOUNT_UPDATE")),
                       "ACCOUNT_UPDATE")
    finally:
        ws_mine.close()
        ws_other.close()


def test_unknown_listen_key_socket_is_closed(sim):
    ws = websocket.create_connection(f"{sim.ws_url}/ws/doesnotexist", timeout=5)
    try:
        assert wait_ws_closed(ws) == []
    finally:
        ws.close()


def test_mark_price_stream_emits_on_price_change(sim):
    ws = websocket.create_connection(f"{sim.ws_url}/ws/btcusdt@markPrice@1s", timeout=5)
    try:
        sim.set_price(SYMBOL, "61234.5")
        frames = recv_json_until(ws, lambda fs: any(f["p"] == "61234.50000000" for f in fs))
    finally:
        ws.close()
    frame = frames[-1]
    assert set(frame) == {"e", "E", "s", "p", "i", "P", "r", "T"}
    assert (frame["e"], frame["s"]) == ("markPriceUpdate", SYMBOL) and frame["T"] > frame["E"]


def test_listen_key_expires_by_itself_after_its_ttl():
    proc = start_simulator(extra_args=("--listen-key-ttl-s", "0.6"))
    try:
        proc.create_account("ttl-key", "ttl-secret")
        client = proc.binance_client("ttl-key", "ttl-secret")
        key = client.futures_stream_get_listen_key()
        ws = user_ws(proc, key)
        try:
            frames = wait_ws_closed(ws, timeout=5)
        finally:
            ws.close()
        assert [f["e"] for f in frames] == ["listenKeyExpired"]
        with pytest.raises(BinanceAPIException) as info:
            client.futures_stream_keepalive(key)
        assert info.value.code == -1125
    finally:
        proc.stop()


def test_python_binance_async_client_and_socket_manager(sim, account):
    """AsyncClient.create (spot ping + time) and futures_user_socket (/private/ws)."""
    from binance.async_client import AsyncClient
    from binance.ws.streams import BinanceSocketManager

    saved = (AsyncClient.API_URL, AsyncClient.FUTURES_URL, BinanceSocketManager.FSTREAM_URL)
    AsyncClient.API_URL, AsyncClient.FUTURES_URL = sim.url + "/api", sim.url + "/fapi"
    BinanceSocketManager.FSTREAM_URL = sim.ws_url + "/"

    async def run() -> list[dict]:
        client = await AsyncClient.create(account.api_key, account.api_secret)
        try:
            sock = BinanceSocketManager(client).futures_user_socket()
            sock.TIMEOUT = 0.2     # its read loop polls; the default 10 s only slows the exit
            async with sock:
                await client.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET",
                                                  quantity="0.002")
                return [await asyncio.wait_for(sock.recv(), 5) for _ in range(3)]
        finally:
            await client.close_connection()
    try:
        frames = asyncio.run(run())
    finally:
        AsyncClient.API_URL, AsyncClient.FUTURES_URL, BinanceSocketManager.FSTREAM_URL = saved
    assert [f["e"] for f in frames] == ["ORDER_TRADE_UPDATE"] * 2 + ["ACCOUNT_UPDATE"]
