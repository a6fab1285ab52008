"""Figures of ``bench.fanout`` computed from what the client workers recorded.

A record is ``[cid, k, t_recv, t0_ms, sent_at_ms]``: client ``cid`` received the
``pnl`` push of move (or bare round) ``k`` at ``t_recv`` (seconds, ``time.time()``);
``t0_ms`` is the bare server's round stamp (None for the product), ``sent_at_ms`` the
envelope's ``sent_at``. All processes share this machine's clock.
"""
from __future__ import annotations

from typing import Any

from bench.measure import lat_ms, lat_s, pct


def delivery(records: list[list], cids: set[int], events: dict[int, float]) -> dict:
    """Latency of each (client, event) pair from the event time ``events[k]`` (seconds).

    - ``exact``: to the first push of exactly that move; ``missing_fraction``: pairs
      without one (the move never reached that client as such).
    - ``fresh``: to the first push of that move or a later one (what a conflating
      server promises: the newest value within 1/max_hz); ``missing_fraction``: pairs
      with no push at or after that move at all.
    - ``server_ms``: ``sent_at - event`` of the exact matches (the server's part).
    - ``duplicates``: pushes of a (client, move) already received.
    """
    first: dict[tuple[int, int], tuple[float, float | None]] = {}
    per_client: dict[int, list[tuple[float, int]]] = {}
    dups = 0
    for cid, k, t, _t0, sent in records:
        if cid not in cids or k not in events:
            continue
        per_client.setdefault(cid, []).append((t, k))
        if (cid, k) in first:
            dups += 1
        else:
            first[(cid, k)] = (t, sent)
    expected = len(cids) * len(events)
    exact = [t - events[k] for (_, k), (t, _) in first.items()]
    server = [s / 1000 - events[k] for (_, k), (_, s) in first.items() if s is not None]
    ordered = sorted(events)
    fresh: list[float] = []
    for got in per_client.values():
        got.sort()
        idx = 0  # moves ordered[:idx] are covered
        for t, k in got:
            while idx < len(ordered) and ordered[idx] <= k:
                fresh.append(t - events[ordered[idx]])
                idx += 1
    return {"pairs": expected,
            "exact": {**lat_s(exact), "missing_fraction": round(1 - len(first) / expected, 5) if expected else None},
            "fresh": {**lat_s(fresh), "missing_fraction": round(1 - len(fresh) / expected, 5) if expected else None},
            "server_ms": lat_s(server), "duplicates": dups}


def window_counts(buckets: list[dict], t_from: float, t_to: float, bare: bool = False) -> dict[str, float]:
    """Messages per second by event name over the whole seconds in ``[t_from, t_to)``
    (summed over workers), of the product's clients or (``bare``) the bare ones."""
    lo, hi = int(t_from) + 1, int(t_to)
    span = max(1, hi - lo)
    out: dict[str, float] = {}
    for b in buckets:
        for name, per_s in b.items():
            if name.startswith("bare:") != bare:
                continue
            name = name[5:] if bare else name
            out[name] = out.get(name, 0) + sum(n for s, n in per_s.items() if lo <= int(s) < hi)
    return {name: round(n / span, 1) for name, n in sorted(out.items())}


def lag_ms(samples: list[list[float]]) -> dict:
    """How late the workers' event loops woke from a 50 ms sleep (p99, max, ms): a delay
    that is part of every client-side latency."""
    values = [x[1] * 1000 for x in samples]
    return {"p99": round(pct(values, 0.99) or 0, 1), "max": round(max(values, default=0), 1)}


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded to 2 places (None when either is missing or ``b`` is 0)."""
    if a is None or b in (None, 0):
        return None
    return round(a / b, 2)


def ratios(project: dict, bare: dict) -> dict:
    """project / bare for the headline figures of one configuration (``p99_fresh``: of
    the ``fresh`` latencies, the one that matters when the product conflates)."""
    pe, be = project.get("pnl", {}).get("exact", {}), bare.get("pnl", {}).get("exact", {})
    pf, bf = project.get("pnl", {}).get("fresh", {}), bare.get("pnl", {}).get("fresh", {})
    return {"p50": ratio(pe.get("p50_ms"), be.get("p50_ms")),
            "p99": ratio(pe.get("p99_ms"), be.get("p99_ms")),
            "max": ratio(pe.get("max_ms"), be.get("max_ms")),
            "p99_fresh": ratio(pf.get("p99_ms"), bf.get("p99_ms")),
            "pnl_per_s": ratio(project.get("pnl_per_s"), bare.get("pnl_per_s")),
            "server_cpu_per_update": ratio(project.get("server_cpu_ms_per_pnl"),
                                           bare.get("server_cpu_ms_per_pnl")),
            "server_rss": ratio(project.get("server_rss_mb"), bare.get("server_rss_mb"))}


SUMMARY_FIGURES = {  # name -> path in one side's window figures
    "p50_ms": ("pnl", "exact", "p50_ms"), "p99_ms": ("pnl", "exact", "p99_ms"),
    "max_ms": ("pnl", "exact", "max_ms"), "p99_fresh_ms": ("pnl", "fresh", "p99_ms"),
    "missing_fraction": ("pnl", "exact", "missing_fraction"),
    "server_cpu_ms_per_msg": ("server_cpu_ms_per_pnl",), "server_cpu_pct": ("server_cpu_pct",),
    "pnl_per_s": ("pnl_per_s",), "server_rss_mb": ("server_rss_mb",),
}
RATIO_FIGURES = ("p50", "p99", "p99_fresh", "server_cpu_per_update", "pnl_per_s")


def spread(values: list[float | None]) -> dict[str, Any]:
    """``{"median", "min", "max", "n"}`` of the values that are not None (the median
    of an even count is the mean of the middle two); all None when there are none."""
    got = sorted(v for v in values if v is not None)
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0}
    mid = len(got) // 2
    med = got[mid] if len(got) % 2 else (got[mid - 1] + got[mid]) / 2
    return {"median": round(med, 5), "min": got[0], "max": got[-1], "n": len(got)}


def _get(d: Any, path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d if isinstance(d, (int, float)) else None


def summary(reps: list[dict[str, Any]], sides: list[str]) -> dict[str, Any]:
    """Over the repetitions of one configuration: per side (``project`` and each
    baseline) and figure of ``SUMMARY_FIGURES`` the ``spread`` (median and range);
    per baseline, the spread of the per-repetition ratios project / baseline
    (``ratio_<baseline>``, figures of ``ratios``)."""
    out: dict[str, Any] = {}
    for side in sides:
        out[side] = {name: spread([_get(r.get(side, {}), path) for r in reps])
                     for name, path in SUMMARY_FIGURES.items()}
    for side in sides:
        if side != "project":
            out[f"ratio_{side}"] = {name: spread([r.get(f"ratio_{side}", {}).get(name) for r in reps])
                                    for name in RATIO_FIGURES}
    return out


def watch_latency(watch: dict[str, list], starts: dict[int, float]) -> dict:
    """From each client's start time (just before its order) to its first matching
    ``positions`` / ``fills`` push: ``{"positions": {...}, "fills": {...}}`` with the
    latency block and the ``missing`` count."""
    out = {}
    for i, name in enumerate(("positions", "fills")):
        got = [watch[str(c)][i] - t0 for c, t0 in starts.items()
               if str(c) in watch and watch[str(c)][i] is not None and watch[str(c)][i] >= t0]
        out[name] = {**lat_s(got), "missing": len(starts) - len(got)}
    sources: dict[str, int] = {}
    for c in starts:
        src = str((watch.get(str(c)) or [None, None, None])[2])
        sources[src] = sources.get(src, 0) + 1
    out["positions"]["sources"] = sources
    return out


__all__ = ["delivery", "window_counts", "lag_ms", "ratio", "ratios", "watch_latency", "lat_ms", "spread", "summary"]
