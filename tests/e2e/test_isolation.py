"""Users are isolated; secrets never leak; caches follow connections and key changes."""
from __future__ import annotations

import concurrent.futures
import json
import time

from tests.e2e.conftest import Account, wait_until


def _cache_entries(acct: Account) -> list:
    stats = acct.admin("GET", "/admin/stats").json()
    return [e for e in stats["exchange_cache"]["entries"] if e["user_id"] == acct.user_id]


def test_second_user_can_use_neither_key_nor_rooms(server, sim, listen) -> None:  # type: ignore[no-untyped-def]
    alice, bob = Account(server, sim), Account(server, sim)
    a = listen(alice.token)
    b = listen(bob.token)
    assert a.call("subscribe", {"types": ["orders"]})["ok"]
    ack = b.call("subscribe", {"types": ["orders"], "key_id": alice.key_id})
    assert ack["ok"] is False and ack["error"]["code"] == "key_not_found"
    assert bob.get(f"/api/account/balance?key_id={alice.key_id}").status_code == 404
    r = bob.post("/api/orders", {"key_id": alice.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                 "type": "LIMIT", "quantity": "0.010", "price": "10000"})
    assert r.status_code == 404
    assert bob.put(f"/api/exchange/keys/{alice.key_id}", {"label": "x"}).status_code == 404
    assert b.call("subscribe", {"types": ["orders"]})["ok"]
    r = alice.post("/api/orders", {"key_id": alice.key_id, "symbol": "BTCUSDT", "side": "BUY",
                                   "type": "LIMIT", "quantity": "0.010", "price": "10000"})
    assert r.status_code == 201
    a.wait_for("orders", lambda d: len(d["data"]) == 1)
    time.sleep(0.5)
    assert all(d["user_id"] == bob.user_id for n, d in b.all if n == "orders")
    conns = alice.admin("GET", "/admin/connections").json()
    bob_rooms = [c["rooms"] for c in conns if c["user_id"] == bob.user_id][0]
    assert all(r.endswith(f"_{bob.user_id}") for r in bob_rooms)


def test_secret_never_appears_anywhere(server, sim, listen) -> None:  # type: ignore[no-untyped-def]
    acct = Account(server, sim)
    lst = listen(acct.token)
    lst.call("subscribe", {"types": ["balance", "positions", "pnl", "orders"]})
    lst.wait_for("balance")
    bodies = [acct.get("/api/exchange/keys").text,
              acct.put(f"/api/exchange/keys/{acct.key_id}", {"label": "renamed"}).text,
              acct.get(f"/api/account/balance?key_id={acct.key_id}").text,
              acct.admin("GET", "/admin/stats").text, acct.admin("GET", "/admin/connections").text]
    keys = json.loads(bodies[0])
    assert keys[0]["api_key_masked"].endswith(acct.api_key[-4:])
    assert acct.api_key not in bodies[0]
    pushes = json.dumps(lst.all)
    for text in bodies + [pushes, server.log()]:
        assert acct.api_secret not in text
        assert acct.password not in text
        assert acct.token not in text


def test_last_disconnect_empties_the_client_cache(server, sim, listen) -> None:  # type: ignore[no-untyped-def]
    acct = Account(server, sim)
    first, second = listen(acct.token), listen(acct.token)
    first.call("subscribe", {"types": ["balance"]})
    second.call("subscribe", {"types": ["balance"]})
    first.wait_for("balance")
    assert wait_until(lambda: _cache_entries(acct))
    first.close()
    time.sleep(0.5)
    assert _cache_entries(acct), "one connection remains: the client must stay"
    second.close()
    wait_until(lambda: not _cache_entries(acct))


def test_key_update_drops_the_cached_client_and_restarts_the_stream(server, sim, listen) -> None:  # type: ignore[no-untyped-def]
    acct = Account(server, sim)
    lst = listen(acct.token)
    lst.call("subscribe", {"types": ["balance"]})
    lst.wait_for("balance")
    before = wait_until(lambda: _cache_entries(acct))[0]["created_at"]
    time.sleep(0.01)
    r = acct.put(f"/api/exchange/keys/{acct.key_id}", {"api_secret": acct.api_secret})
    assert r.status_code == 200
    # the old client is dropped and the stream restarts in place with a new one, while
    # the socket stays subscribed (CONTRACT: key changes keep subscribers)
    fresh = wait_until(lambda: [e for e in _cache_entries(acct) if e["created_at"] != before])
    assert len(fresh) == 1 and len(_cache_entries(acct)) == 1
    bad = acct.put(f"/api/exchange/keys/{acct.key_id}", {"api_secret": "wrong-secret"})
    assert bad.status_code == 422 and bad.json()["error"]["exchange_code"] == -1022


def test_concurrent_first_requests_build_one_client(server, sim) -> None:  # type: ignore[no-untyped-def]
    acct = Account(server, sim)
    builds_before = acct.admin("GET", "/admin/stats").json()["exchange_cache"]["builds"]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: acct.get(f"/api/account/balance?key_id={acct.key_id}").status_code,
                              range(12)))
    assert codes == [200] * 12
    stats = acct.admin("GET", "/admin/stats").json()["exchange_cache"]
    assert stats["builds"] - builds_before == 1
    assert len(_cache_entries(acct)) == 1


def test_invalid_key_is_refused_with_the_exchange_code_and_not_saved(server, sim) -> None:  # type: ignore[no-untyped-def]
    acct = Account(server, sim)
    r = acct.post("/api/exchange/keys", {"exchange": "binance", "api_key": "unknown-key",
                                         "api_secret": "whatever", "testnet": True})
    assert r.status_code == 422 and r.json()["error"]["exchange_code"] == -2015
    assert [k["id"] for k in acct.get("/api/exchange/keys").json()] == [acct.key_id]
    dup = acct.post("/api/exchange/keys", {"exchange": "binance", "api_key": acct.api_key,
                                           "api_secret": acct.api_secret})
    assert dup.status_code == 409
    assert acct.delete(f"/api/exchange/keys/{acct.key_id}").status_code == 204
    assert acct.get("/api/exchange/keys").json() == []
