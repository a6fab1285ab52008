"""TradingService: one client per (user, exchange, testnet), one build at a time,
validated before reuse, bounded, cleared per user."""
from __future__ import annotations

import threading
import time

from services.client_cache import TradingService


class FakeClient:
    """Stands in for an exchange client: records construction and close."""

    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        self.alive = True
        self.created_at = int(time.time() * 1000)

    def is_alive(self) -> bool:
        return self.alive

    def close(self) -> None:
        self.alive = False


def slow_builder(log: list):  # type: ignore[no-untyped-def]
    def build(exchange, api_key, api_secret, testnet, user_id):  # type: ignore[no-untyped-def]
        time.sleep(0.05)  # wide window for a racing second construction
        client = FakeClient(api_key)
        log.append(client)
        return client
    return build


def test_concurrent_first_requests_build_one_client() -> None:
    built: list = []
    svc = TradingService(slow_builder(built))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        svc.get_client(1, "binance", False, "k", "s"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert all(r is built[0] for r in results)


def test_separate_keys_per_user_exchange_network() -> None:
    built: list = []
    svc = TradingService(slow_builder(built))
    a = svc.get_client(1, "binance", False, "k", "s")
    b = svc.get_client(1, "binance", True, "k", "s")
    c = svc.get_client(2, "binance", False, "k", "s")
    assert len({id(a), id(b), id(c)}) == 3
    assert svc.get_client(1, "binance", False, "k", "s") is a
    assert svc.stats()["size"] == 3


def test_dead_client_is_rebuilt_and_changed_key_rebuilds() -> None:
    built: list = []
    svc = TradingService(slow_builder(built))
    first = svc.get_client(1, "binance", False, "k", "s")
    first.alive = False
    second = svc.get_client(1, "binance", False, "k", "s")
    assert second is not first and len(built) == 2
    third = svc.get_client(1, "binance", False, "k2", "s")
    assert third.api_key == "k2" and not second.alive


def test_clear_user_cache_closes_only_that_user() -> None:
    built: list = []
    svc = TradingService(slow_builder(built))
    mine = svc.get_client(1, "binance", False, "k", "s")
    other = svc.get_client(2, "binance", False, "k", "s")
    cleared = svc.clear_user_cache(1)
    assert cleared == [{"user_id": 1, "exchange": "binance", "testnet": False}]
    assert not mine.alive and other.alive
    assert [e["user_id"] for e in svc.stats()["entries"]] == [2]


def test_bounded_cache_evicts_least_recently_used() -> None:
    built: list = []
    svc = TradingService(slow_builder(built), max_size=2)
    a = svc.get_client(1, "binance", False, "k", "s")
    svc.get_client(2, "binance", False, "k", "s")
    svc.get_client(1, "binance", False, "k", "s")  # touch user 1
    svc.get_client(3, "binance", False, "k", "s")
    users = sorted(e["user_id"] for e in svc.stats()["entries"])
    assert users == [1, 3] and a.alive


def test_a_secret_callable_is_called_only_to_build() -> None:
    """An account stream asks for its client on every loop; the stored secret is
    decrypted only when a client is (re)built, and the build gets its result."""
    secrets: list[str] = []
    calls: list[int] = []

    def build(exchange, api_key, api_secret, testnet, user_id):  # type: ignore[no-untyped-def]
        secrets.append(api_secret)
        return FakeClient(api_key)

    def decrypt() -> str:
        calls.append(1)
        return "plain-secret"

    svc = TradingService(build)
    first = svc.get_client(1, "binance", False, "k", decrypt)
    for _ in range(5):
        assert svc.get_client(1, "binance", False, "k", decrypt) is first
    assert len(calls) == 1 and secrets == ["plain-secret"]
    first.alive = False  # a dead client is rebuilt: the secret is needed again
    svc.get_client(1, "binance", False, "k", decrypt)
    assert len(calls) == 2
