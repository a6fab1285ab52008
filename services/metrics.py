"""Prometheus metrics of one app, in the app's own ``CollectorRegistry``.

Never the global default registry: tests build several apps in one process, and
each app's figures belong to that app alone.

Two kinds of metrics:

- read at scrape time by a custom collector from the services' existing
  ``stats()`` methods (connections, subscriptions, client cache, streams,
  write-behind queue, rate governors, pushes): no bookkeeping in hot paths;
- observed as things happen: the push latency histogram (fed by the push hub for
  envelopes with ``source == "stream"``) and the exchange errors answered by the
  REST API.

Labels carry only bounded values: account types, stream states, venue names,
exchange names and exception class names. Never a user id, key id or secret.
"""
from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.account_kinds import STATE_TYPES

logger = logging.getLogger(__name__)

PREFIX = "pushsrv"
ACCOUNT_STREAM_STATES = ("starting", "live", "reconnecting", "polling", "down")
TICKER_STREAM_STATES = ("live", "reconnecting", "down")
# exchange event time -> emit, seconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def percentile(sorted_values: Sequence[float], q: float, ndigits: int) -> float | None:
    """The ``q`` (0..1) percentile of ``sorted_values`` (ascending), rounded to
    ``ndigits``: the value at index ``int(q * n)``, the last one at most (p50 of an even
    count is the upper middle value). None when empty. The figure of the services'
    ``stats()`` latencies (write-behind, notifications)."""
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], ndigits)


class GcPauses:
    """The pauses of this process's garbage collector (every green thread stops while
    it runs), by generation, recorded from ``gc.callbacks`` between ``install()`` and
    ``remove()`` (``Metrics`` owns one per app: from the app's start to its stop).
    Times in ms."""

    LONG_MS = 50.0  # a pause this long shows in push latency percentiles

    def __init__(self) -> None:
        self._started = 0.0
        self.collections = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.long = [0, 0, 0]

    def install(self) -> None:
        """Start recording (append the hook to ``gc.callbacks``; once)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        """Stop recording (take the hook out of ``gc.callbacks``)."""
        while self in gc.callbacks:
            gc.callbacks.remove(self)

    def __call__(self, phase: str, info: dict) -> None:
        """The ``gc.callbacks`` hook: ``phase`` is ``"start"`` or ``"stop"``."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._started) * 1000
        g = info.get("generation", 2)
        self.collections[g] += 1
        self.total_ms[g] += ms
        self.max_ms[g] = max(self.max_ms[g], ms)
        if ms >= self.LONG_MS:
            self.long[g] += 1

    def stats(self) -> dict:
        """``{"thresholds": [young, gen1, gen2], "frozen": objects in the permanent
        generation, "gen0" | "gen1" | "gen2": {"collections", "total_ms", "max_ms",
        "long"}}`` (``long``: pauses of ``LONG_MS`` or more)."""
        out: dict[str, Any] = {"thresholds": list(gc.get_threshold()),
                               "frozen": gc.get_freeze_count()}
        for g in range(3):
            out[f"gen{g}"] = {"collections": self.collections[g],
                              "total_ms": round(self.total_ms[g], 1),
                              "max_ms": round(self.max_ms[g], 1), "long": self.long[g]}
        return out


class StatsSource(Protocol):
    """Anything with a ``stats() -> dict`` method."""

    def stats(self) -> dict:
        """Current figures."""
        ...


class Metrics:
    """The app's registry and the metrics observed outside a scrape.

    Args:
        hub, trading, streams, tickers, ledger_writer, governors: the services whose
            ``stats()`` the collector reads at scrape time (``PushHub``,
            ``TradingService``, ``StreamManager``, ``TickerHub``, ``LedgerWriter``,
            ``Governors``).
    """

    def __init__(self, *, hub: StatsSource, trading: StatsSource, streams: StatsSource,
                 tickers: StatsSource, ledger_writer: StatsSource, governors: StatsSource,
                 reconciler: StatsSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.push_latency = Histogram(
            f"{PREFIX}_push_latency_seconds",
            "Exchange event time to Socket.IO emit for stream-sourced pushes, seconds "
            "(negative clock differences count as 0)",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.exchange_errors = Counter(
            f"{PREFIX}_api_exchange_errors",
            "Exchange errors answered by the REST API, by exchange and error class",
            ["exchange", "kind"], registry=self.registry)
        sources = dict(hub=hub, trading=trading, streams=streams, tickers=tickers,
                       ledger_writer=ledger_writer, governors=governors)
        if reconciler is not None:
            sources["reconciler"] = reconciler
        self.gc = GcPauses()  # recording from here until close()
        self.gc.install()
        sources["gc"] = self.gc
        self._collector = _StatsCollector(**sources)
        self.registry.register(self._collector)

    def add_notify(self, notify: StatsSource) -> None:
        """Export the notification figures (``services.notify.wiring.Notify``), built
        after this object."""
        self._collector.add("notify", notify)

    def close(self) -> None:
        """Stop recording the collector's pauses (``Services.stop``)."""
        self.gc.remove()

    def observe_stream_latency(self, seconds: float) -> None:
        """Record one push latency (exchange event time -> emit) in seconds; the push
        hub calls this in its emit path, so it must stay cheap and never raise."""
        self.push_latency.observe(max(0.0, seconds))

    def count_exchange_error(self, exchange: str, kind: str) -> None:
        """Count one exchange error turned into an API answer. ``exchange``:
        ``"binance"``/``"bybit"``; ``kind``: the ExchangeError subclass name."""
        self.exchange_errors.labels(exchange=exchange or "unknown", kind=kind).inc()


class _StatsCollector(Collector):
    """Builds gauge and counter families from the services' ``stats()`` at scrape time."""

    def __init__(self, **sources: StatsSource) -> None:
        self._src = sources

    def add(self, name: str, source: StatsSource) -> None:
        """One more source, read from the next scrape on."""
        self._src = {**self._src, name: source}

    def describe(self) -> Iterable[Metric]:
        """No up-front description: the families are built at collect time."""
        return []

    def collect(self) -> Iterable[Metric]:
        """One family per figure; a failing source is logged and skipped, so one
        broken service never empties the whole scrape."""
        for name, build in (("hub", _hub_families), ("trading", _trading_families),
                            ("streams", _stream_families), ("tickers", _ticker_families),
                            ("ledger_writer", _ledger_families), ("governors", _governor_families),
                            ("reconciler", _reconcile_families), ("gc", _gc_families),
                            ("notify", _notify_families)):
            if name not in self._src:
                continue
            try:
                families = list(build(self._src[name].stats()))
            except Exception:  # isolation boundary: one source's failure
                logger.exception("metrics source failed source=%s", name)
                continue
            yield from families


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _by_label(kind: type, name: str, doc: str, label: str, values: dict[str, Any],
              known: Iterable[str] = ()) -> Metric:
    family = kind(f"{PREFIX}_{name}", doc, labels=[label])
    for key in list(known) + sorted(k for k in values if k not in set(known)):
        family.add_metric([str(key)], float(values.get(key, 0) or 0))
    return family


def _hub_families(s: dict) -> Iterable[Metric]:
    yield _gauge("ws_connections", "Open Socket.IO connections", s["connections"])
    yield _gauge("users_online", "Users with at least one open connection", s["users_online"])
    yield _by_label(GaugeMetricFamily, "subscriptions", "Connections subscribed, by account type",
                    "type", s["subscriptions"], STATE_TYPES)
    yield _by_label(CounterMetricFamily, "pushes", "Envelopes emitted since start, by type",
                    "type", s["push"]["by_type"], STATE_TYPES + ("ticker",))
    fanout = s["push"].get("fanout", {})
    if "pushed" in fanout:  # relayed / built: the share of pushes that crossed Redis
        yield CounterMetricFamily(f"{PREFIX}_account_pushes_built",
                                  "Account envelopes built for this process's connections",
                                  value=fanout["pushed"])
        yield CounterMetricFamily(f"{PREFIX}_account_pushes_relayed",
                                  "Of those, received from another process through Redis",
                                  value=fanout["relayed"])


def _trading_families(s: dict) -> Iterable[Metric]:
    yield _gauge("exchange_clients_cached", "Exchange clients in the per-user cache", s["size"])
    yield CounterMetricFamily(f"{PREFIX}_exchange_clients_built",
                              "Exchange clients built since start", value=s["builds"])


def _stream_families(s: dict) -> Iterable[Metric]:
    yield _by_label(GaugeMetricFamily, "account_streams", "Account streams (one per API key), by state",
                    "state", s["by_state"], ACCOUNT_STREAM_STATES)


def _ticker_families(s: dict) -> Iterable[Metric]:
    yield _by_label(GaugeMetricFamily, "ticker_streams", "Shared market price streams, by state",
                    "state", s["by_state"], TICKER_STREAM_STATES)


NOTIFY_OUTCOMES = ("sent", "skipped", "failed", "device_removed", "not_configured")


def _notify_families(s: dict) -> Iterable[Metric]:
    yield _by_label(CounterMetricFamily, "notifications",
                    "Outbox notifications finished by this process since start, by outcome",
                    "outcome", {k: s[k] for k in NOTIFY_OUTCOMES}, NOTIFY_OUTCOMES)
    yield CounterMetricFamily(f"{PREFIX}_notification_retries",
                              "FCM sends retried (429, 5xx, no answer) since start",
                              value=s["retries"])
    yield _gauge("notifications_pending", "Outbox rows waiting to be sent (all processes)",
                 s["pending"] or 0)
    yield _gauge("notifications_oldest_pending_age_seconds",
                 "Age of the oldest outbox row waiting", s["oldest_pending_age_ms"] / 1000)


def _ledger_families(s: dict) -> Iterable[Metric]:
    yield _gauge("ledger_queue_depth", "Fills waiting in the write-behind queue", s["depth"])
    yield CounterMetricFamily(f"{PREFIX}_ledger_fills_written",
                              "Fills written by the write-behind writer since start", value=s["written"])
    yield CounterMetricFamily(f"{PREFIX}_ledger_write_retries",
                              "Failed write-behind attempts (retried) since start", value=s["retries"])
    yield _gauge("ledger_oldest_unwritten_age_seconds",
                 "Age of the oldest event not yet written by the write-behind writer",
                 s["oldest_unwritten_age_ms"] / 1000)
    yield _gauge("ledger_dead_letters",
                 "Write-behind events that could not be stored on their own, waiting for "
                 "the reconciler's retry", s.get("dead_letters", 0))
    yield CounterMetricFamily(f"{PREFIX}_ledger_dead_lettered",
                              "Write-behind events sent to the dead-letter table since start",
                              value=s.get("dead_lettered", 0))


def _reconcile_families(s: dict) -> Iterable[Metric]:
    yield CounterMetricFamily(f"{PREFIX}_reconcile_runs", "Account reconciliations since start",
                              value=s["runs"])
    yield CounterMetricFamily(f"{PREFIX}_reconcile_differences",
                              "Position differences between exchange and ledger found since start",
                              value=s["differences"])
    yield CounterMetricFamily(f"{PREFIX}_reconcile_repaired",
                              "Position differences repaired since start", value=s["repaired"])


def _gc_families(s: dict) -> Iterable[Metric]:
    pauses = CounterMetricFamily(f"{PREFIX}_gc_pause_seconds",
                                 "Time the garbage collector stopped the process, by generation",
                                 labels=["generation"])
    longest = GaugeMetricFamily(f"{PREFIX}_gc_pause_max_seconds",
                                "Longest garbage collector pause since start, by generation",
                                labels=["generation"])
    for g in ("0", "1", "2"):
        pauses.add_metric([g], s[f"gen{g}"]["total_ms"] / 1000)
        longest.add_metric([g], s[f"gen{g}"]["max_ms"] / 1000)
    yield from (pauses, longest)


def _governor_families(s: dict) -> Iterable[Metric]:
    used = GaugeMetricFamily(f"{PREFIX}_rate_limit_weight_used",
                             "Request weight used in the venue's current window, by venue", labels=["venue"])
    limit = GaugeMetricFamily(f"{PREFIX}_rate_limit_weight_limit",
                              "Request weight allowed per window (Binance 60 s, Bybit 5 s), by venue", labels=["venue"])
    blocked = GaugeMetricFamily(f"{PREFIX}_rate_limit_blocked_seconds",
                                "Time until requests to the venue are allowed again, seconds",
                                labels=["venue"])
    limited = CounterMetricFamily(f"{PREFIX}_rate_limit_exchange_limited",
                                  "Rate-limit answers (429/418) received from the venue", labels=["venue"])
    for venue, g in sorted(s.items()):
        used.add_metric([venue], g["used_weight"])
        limit.add_metric([venue], g["weight_limit"])
        blocked.add_metric([venue], g["blocked_for_ms"] / 1000)
        limited.add_metric([venue], g["limited_by_exchange"])
    yield from (used, limit, blocked, limited)
