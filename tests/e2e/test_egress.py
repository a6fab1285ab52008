"""Several egress addresses (``EGRESS_IPS``): each key's exchange traffic leaves from
its own address, and each address has its own rate governor (its own Binance weight
budget) in /admin/stats."""
from __future__ import annotations

import pytest

from exchanges.egress import egress_for
from tests.e2e.conftest import Account, Listener, wait_until
from tests.support.server import start_server

ADDRESSES = ("127.0.0.1", "127.0.0.2")


@pytest.fixture(scope="module")
def egress_server(sim, tmp_path_factory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("egress")
    srv = start_server(f"sqlite:///{tmp / 'e2e.sqlite3'}", sim.url, sim.ws_url, tmp,
                       extra_env={"EGRESS_IPS": ",".join(ADDRESSES)})
    yield srv
    srv.stop()


def test_each_key_streams_and_polls_from_its_address_with_its_own_budget(egress_server, sim) -> None:  # type: ignore[no-untyped-def]
    by_address: dict[str, Account] = {}
    while len(by_address) < len(ADDRESSES):  # consecutive users: one on each address
        acc = Account(egress_server, sim)
        by_address.setdefault(egress_for(acc.user_id, ADDRESSES) or "", acc)
    listeners = []
    try:
        for acc in by_address.values():
            lst = Listener(egress_server.url, acc.token)
            listeners.append(lst)
            lst.call("subscribe", {"types": ["balance"]})
            lst.wait_for("stream_status", lambda d: d["state"] == "live")
        streams = sim.state()["streams"]
        for address, acc in by_address.items():
            [row] = [s for s in streams if s.get("api_key") == acc.api_key and s["kind"] == "user"]
            assert row["peers"] == [address], row
            assert f"binance {address}" in sim.state()["weight_per_minute"]
        stats = wait_until(lambda: acc.admin("GET", "/admin/stats").json())
        governors = stats["rate_limits"]
        assert {"binance@127.0.0.1", "binance@127.0.0.2"} <= set(governors), governors
        assert all(governors[f"binance@{a}"]["used_weight"] > 0 for a in ADDRESSES), governors
    finally:
        for lst in listeners:
            lst.close()
