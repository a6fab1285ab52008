"""GET /metrics: Prometheus text format, the app's own registry, loopback-or-token access."""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import is_loopback
from services.metrics import Metrics
from tests.server.conftest import auth_header

FAMILIES = {
    "pushsrv_ws_connections", "pushsrv_users_online", "pushsrv_subscriptions",
    "pushsrv_exchange_clients_cached", "pushsrv_exchange_clients_built",
    "pushsrv_account_streams", "pushsrv_ticker_streams",
    "pushsrv_ledger_queue_depth", "pushsrv_ledger_fills_written", "pushsrv_ledger_write_retries",
    "pushsrv_pushes", "pushsrv_push_latency_seconds", "pushsrv_api_exchange_errors",
    "pushsrv_reconcile_runs", "pushsrv_reconcile_differences", "pushsrv_reconcile_repaired",
    "pushsrv_ledger_oldest_unwritten_age_seconds",
}


def scrape(client, **kwargs) -> tuple[set[str], dict]:  # type: ignore[no-untyped-def]
    """``(family names, {(sample name, sorted label items): value})`` of one scrape."""
    r = client.get("/metrics", **kwargs)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.content_type.startswith("text/plain; version=0.0.4")
    names, samples = set(), {}
    for family in text_string_to_metric_families(r.get_data(as_text=True)):
        names.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return names, samples


def test_families_present(client) -> None:  # type: ignore[no-untyped-def]
    names, samples = scrape(client)
    assert FAMILIES <= names, FAMILIES - names
    assert samples[("pushsrv_ws_connections", ())] == 0
    assert samples[("pushsrv_subscriptions", (("type", "balance"),))] == 0
    assert samples[("pushsrv_account_streams", (("state", "live"),))] == 0
    assert samples[("pushsrv_ledger_queue_depth", ())] == 0


def test_push_moves_counter_and_latency_histogram(app, client) -> None:  # type: ignore[no-untyped-def]
    _, before = scrape(client)
    now = int(time.time() * 1000)
    app.extensions["pushsrv"].hub.publish({
        "type": "balance", "user_id": 999, "key_id": 1, "exchange": "binance", "testnet": False,
        "seq": 1, "as_of": now - 40, "sent_at": now, "source": "stream", "stale": False, "data": {}})
    _, after = scrape(client)
    pushes = ("pushsrv_pushes_total", (("type", "balance"),))
    assert after[pushes] == before[pushes] + 1
    assert after[("pushsrv_push_latency_seconds_count", ())] == before[("pushsrv_push_latency_seconds_count", ())] + 1
    le_25ms = ("pushsrv_push_latency_seconds_bucket", (("le", "0.025"),))
    le_50ms = ("pushsrv_push_latency_seconds_bucket", (("le", "0.05"),))
    assert after[le_25ms] == before[le_25ms]          # 40 ms is above 25 ms
    assert after[le_50ms] == before[le_50ms] + 1      # and within 50 ms
    assert after[("pushsrv_push_latency_seconds_sum", ())] == pytest.approx(
        before[("pushsrv_push_latency_seconds_sum", ())] + 0.04)


def test_rest_sourced_push_counts_but_has_no_latency(app, client) -> None:  # type: ignore[no-untyped-def]
    _, before = scrape(client)
    now = int(time.time() * 1000)
    app.extensions["pushsrv"].hub.publish({
        "type": "positions", "user_id": 999, "key_id": 1, "exchange": "binance", "testnet": False,
        "seq": 1, "as_of": now - 5000, "sent_at": now, "source": "rest", "stale": False, "data": []})
    _, after = scrape(client)
    assert after[("pushsrv_pushes_total", (("type", "positions"),))] == \
        before[("pushsrv_pushes_total", (("type", "positions"),))] + 1
    assert after[("pushsrv_push_latency_seconds_count", ())] == before[("pushsrv_push_latency_seconds_count", ())]


def test_exchange_error_counted_by_exchange_and_kind(client) -> None:  # type: ignore[no-untyped-def]
    # the configured venue (127.0.0.1:9) refuses connections: ExchangeUnavailable
    headers = auth_header(client)
    r = client.post("/api/exchange/keys", headers=headers,
                    json={"exchange": "binance", "api_key": "k" * 16, "api_secret": "s" * 16})
    assert r.status_code in (502, 503, 504), r.get_json()
    _, samples = scrape(client)
    errors = {labels: v for (name, labels), v in samples.items()
              if name == "pushsrv_api_exchange_errors_total"}
    assert sum(errors.values()) == 1
    (labels,) = errors
    assert dict(labels)["exchange"] == "binance"
    assert dict(labels)["kind"] in ("ExchangeUnavailable", "ExchangeTimeout")
    assert set(dict(labels)) == {"exchange", "kind"}


def test_non_loopback_needs_admin_token(client) -> None:  # type: ignore[no-untyped-def]
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    r = client.get("/metrics", environ_base=remote)
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/metrics", environ_base=remote,
                      headers={"X-Admin-Token": "wrong"}).status_code == 401
    r = client.get("/metrics", environ_base=remote, headers={"X-Admin-Token": "admin-token"})
    assert r.status_code == 200
    assert b"pushsrv_ws_connections" in r.data


def test_loopback_peers(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.9"}).status_code == 200
    # a loopback peer relaying for someone else (a local reverse proxy) is not trusted
    r = client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"},
                   headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.status_code == 401


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.255.0.1") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.1.2.3") and not is_loopback("::ffff:10.0.0.1")
    assert not is_loopback(None) and not is_loopback("") and not is_loopback("localhost")


class _Fixed:
    def __init__(self, stats: dict) -> None:
        self._stats = stats

    def stats(self) -> dict:
        return self._stats


class _Broken:
    def stats(self) -> dict:
        raise RuntimeError("boom")


def _sources(**override) -> dict:  # type: ignore[no-untyped-def]
    push = {"by_type": {"balance": 3}, "total": 3}
    base = {
        "hub": _Fixed({"connections": 2, "users_online": 1, "subscriptions": {"balance": 2},
                       "push": push}),
        "trading": _Fixed({"size": 1, "builds": 4, "entries": []}),
        "streams": _Fixed({"running": 1, "started": 1, "by_state": {"live": 1}, "events_seen": 0}),
        "tickers": _Fixed({"streams": 0, "by_state": {}, "subscribers": 0, "ticks": 0}),
        "ledger_writer": _Fixed({"depth": 5, "written": 7, "retries": 1, "last_write_ms": 0.0,
                                          "oldest_unwritten_age_ms": 2500}),
        "governors": _Fixed({"binance-testnet": {"used_weight": 40, "weight_limit": 2400,
                                                 "blocked_for_ms": 1500, "limited_by_exchange": 2}}),
    }
    return {**base, **override}


def _values(m: Metrics) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in m.registry.collect() for s in fam.samples}


def test_registries_are_per_instance_and_read_stats() -> None:
    a, b = Metrics(**_sources()), Metrics(**_sources())  # no duplicate-registration error
    a.observe_stream_latency(0.2)
    va, vb = _values(a), _values(b)
    assert va[("pushsrv_push_latency_seconds_count", ())] == 1
    assert vb[("pushsrv_push_latency_seconds_count", ())] == 0
    assert va[("pushsrv_ws_connections", ())] == 2
    assert va[("pushsrv_pushes_total", (("type", "balance"),))] == 3
    assert va[("pushsrv_pushes_total", (("type", "orders"),))] == 0
    assert va[("pushsrv_rate_limit_weight_used", (("venue", "binance-testnet"),))] == 40
    assert va[("pushsrv_rate_limit_blocked_seconds", (("venue", "binance-testnet"),))] == 1.5
    assert va[("pushsrv_ledger_fills_written_total", ())] == 7
    assert va[("pushsrv_ledger_oldest_unwritten_age_seconds", ())] == 2.5


def test_one_failing_source_does_not_empty_the_scrape() -> None:
    m = Metrics(**_sources(trading=_Broken()))
    values = _values(m)
    assert ("pushsrv_exchange_clients_cached", ()) not in values
    assert values[("pushsrv_ws_connections", ())] == 2
    assert values[("pushsrv_ledger_queue_depth", ())] == 5


def test_gc_pauses_counted_in_metrics_and_admin_stats(app, client) -> None:  # type: ignore[no-untyped-def]
    """Every collection is timed by the app's hook (one, from its start to its stop),
    and both /metrics and /admin/stats show it."""
    import gc

    pauses = app.extensions["pushsrv"].metrics.gc
    assert gc.callbacks.count(pauses) == 1
    before = client.get("/admin/stats", headers={"X-Admin-Token": "admin-token"}).get_json()["gc"]
    _, samples_before = scrape(client)
    gc.collect()  # a full collection: generation 2
    after = client.get("/admin/stats", headers={"X-Admin-Token": "admin-token"}).get_json()["gc"]
    assert after["gen2"]["collections"] >= before["gen2"]["collections"] + 1
    assert after["gen2"]["total_ms"] > before["gen2"]["total_ms"]
    assert after["gen2"]["max_ms"] > 0 and after["thresholds"] == list(gc.get_threshold())
    _, samples = scrape(client)
    key = ("pushsrv_gc_pause_seconds_total", (("generation", "2"),))
    assert samples[key] > samples_before[key]
    assert samples[("pushsrv_gc_pause_max_seconds", (("generation", "2"),))] > 0
