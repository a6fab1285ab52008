"""The figures of ``bench.scaleout`` computed from what a run collected (no process is
started here): messages and CPU per message of a window, the idle rate, the summary
over ``--reps``, the failover's resume times and the rate governors' refusals. The
module docstring of ``bench.scaleout`` says what each figure means."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.fanout_stats import delivery


def messages(got: list[dict[str, Any]], t_from: float, t_to: float, bare: bool) -> int:
    """Messages the clients received in the whole seconds from ``int(t_from)`` to
    ``int(t_to)``, every event name, of the product's clients or (``bare``) the bare
    ones (the workers' per-second ``buckets``)."""
    lo, hi = int(t_from), int(t_to)
    return sum(count for g in got for name, per_s in g["buckets"].items()
               if name.startswith("bare:") == bare
               for sec, count in per_s.items() if lo <= int(sec) <= hi)


def idle_pct(cpu: Callable[[], dict[str, float]], servers: list[str], seconds: float,
             each: bool = False) -> Any:
    """CPU of ``servers`` summed (100 = one core) over ``seconds`` with the clients
    connected and no move: what holding them costs (Engine.IO pings, the account
    streams' keep-alives, timers, lease upkeep); ``each``: ``{server: percent}``
    instead. None when ``seconds`` <= 0."""
    if seconds <= 0:
        return None
    c0 = cpu()
    time.sleep(seconds)
    c1 = cpu()
    per = {s: round((c1[s] - c0[s]) * 100 / seconds, 1) for s in servers}
    return per if each else round(sum(per.values()), 1)


def net_per_msg(used_s: float, idle: float | None, span_s: float, msgs: int) -> float | None:
    """CPU ms per message once the idle rate ``idle`` (percent of a core) over
    ``span_s`` is taken out of ``used_s``: the cost of the pushes themselves."""
    if idle is None or not msgs:
        return None
    return round((used_s - idle / 100 * span_s) * 1000 / msgs, 4)


def window_figures(got: list[dict[str, Any]], records: list[list[Any]], cids: set[int],
                   events: dict[int, float], servers: list[str],
                   cpu: tuple[dict[str, float], dict[str, float], dict[str, float]],
                   times: tuple[float, float, float], idle: float | None, cpu_span_s: float,
                   bare: bool) -> dict[str, Any]:
    """The figures of one window of the product's clients or (``bare``) the bare ones:
    ``pnl`` delivery of ``records`` (theirs), ``cpu_pct`` per server and summed over
    the moves, and the servers' CPU from the first move until deliveries stopped per
    ``pnl`` (``cpu_ms_per_pnl_sum``), per message of any type
    (``cpu_ms_per_msg_sum``) and per message less the ``idle`` rate
    (``cpu_ms_per_msg_net``). ``cpu``: the servers' CPU seconds at the start, the end
    of the moves and the drain; ``times``: those instants (epoch seconds);
    ``cpu_span_s``: from the first CPU reading to the last."""
    cpu0, cpu1, cpu2 = cpu
    t_start, t_end, t_drain = times
    span = t_end - t_start
    pct = {s: round((cpu1[s] - cpu0[s]) * 100 / span, 1) for s in servers}
    pct["sum"] = round(sum(pct.values()), 1)
    used = sum(cpu2[s] - cpu0[s] for s in servers)
    delivered = sum(1 for r in records if t_start <= r[2] <= t_drain)
    msgs = messages(got, t_start, t_drain, bare=bare)
    return {"pnl": delivery(records, cids, events), "cpu_pct": pct,
            "cpu_ms_per_pnl_sum": round(used * 1000 / delivered, 3) if delivered else None,
            "delivered_until_drained": delivered,
            "cpu_ms_per_msg_sum": round(used * 1000 / msgs, 4) if msgs else None,
            "cpu_ms_per_msg_net": net_per_msg(used, idle, cpu_span_s, msgs),
            "msgs_until_drained": msgs}


def summary(configs: list[dict[str, Any]], results: dict[str, Any]) -> dict[str, Any]:
    """Over ``--reps``: per plan entry the median [min-max] of ``pnl`` exact p99 (ms),
    missing fraction and ``cpu_ms_per_msg_sum``; per repetition the ratios of
    ``cpu_ms_per_msg_sum`` product / bare (same P, N, R) and P = 2 / P = 1 (the
    smallest P of the plan, same kind), and of p99 product / bare."""
    def spread(values: list[float]) -> list[float] | None:
        return [round(statistics.median(values), 4), min(values), max(values)] if values else None

    runs: dict[tuple[int, int, float, bool], dict[int, dict[str, Any]]] = {}
    for cfg in configs:
        r = results.get(cfg["name"])
        if isinstance(r, dict) and "pnl" in r:
            key = (cfg["p"], cfg["n"], cfg["rate"], cfg["bare"])
            runs.setdefault(key, {})[cfg["rep"]] = r
    out: dict[str, Any] = {}
    for (p, n, rate, bare), by_rep in runs.items():
        name = f"{p}x{n}x{rate:g}{'b' if bare else ''}"
        reps = list(by_rep.values())
        out[name] = {"reps": len(reps),
                     "p99_ms": spread([r["pnl"]["exact"]["p99_ms"] for r in reps if r["pnl"]["exact"].get("p99_ms") is not None]),
                     "missing": spread([r["pnl"]["exact"]["missing_fraction"] for r in reps
                                         if r["pnl"]["exact"]["missing_fraction"] is not None]),
                     "cpu_ms_per_msg_sum": spread([r["cpu_ms_per_msg_sum"] for r in reps if r.get("cpu_ms_per_msg_sum")]),
                     "cpu_ms_per_msg_net": spread([r["cpu_ms_per_msg_net"] for r in reps if r.get("cpu_ms_per_msg_net")]),
                     "idle_cpu_pct_sum": spread([r["idle_cpu_pct_sum"] for r in reps if r.get("idle_cpu_pct_sum") is not None])}
        other = runs.get((p, n, rate, not bare), {})
        if not bare and other:
            both = [rep for rep in by_rep if rep in other]
            out[name]["cpu_per_msg_vs_bare"] = spread([
                round(by_rep[i]["cpu_ms_per_msg_sum"] / other[i]["cpu_ms_per_msg_sum"], 3) for i in both
                if by_rep[i].get("cpu_ms_per_msg_sum") and other[i].get("cpu_ms_per_msg_sum")])
            out[name]["p99_vs_bare"] = spread([
                round(by_rep[i]["pnl"]["exact"]["p99_ms"] / other[i]["pnl"]["exact"]["p99_ms"], 3) for i in both
                if by_rep[i]["pnl"]["exact"].get("p99_ms") and other[i]["pnl"]["exact"].get("p99_ms")])
        base = min((k for k in runs if k[3] == bare), key=lambda k: (k[0], k[1]), default=None)
        if base is not None and base[0] < p:
            ref = runs[base]
            both = [rep for rep in by_rep if rep in ref]
            out[name][f"cpu_per_msg_vs_p{base[0]}"] = spread([
                round(by_rep[i]["cpu_ms_per_msg_sum"] / ref[i]["cpu_ms_per_msg_sum"], 3) for i in both
                if by_rep[i].get("cpu_ms_per_msg_sum") and ref[i].get("cpu_ms_per_msg_sum")])
    return out


def resume_times(records: list[list[Any]], events: dict[int, float], t_kill: float,
                 t_until: float, within_s: float = 1.5) -> dict[int, float]:
    """Per client: seconds from ``t_kill`` until its pushes were flowing again, i.e. the
    receive time of the first move made after the kill from which on every move up to
    ``t_until`` reached it (that move or a newer one) within ``within_s``. A REST
    snapshot followed by silence (a follower waiting for the dead owner's lease) does
    not count; clients that never got there are left out (the caller counts them)."""
    moves = sorted(k for k, t in events.items() if t_kill < t <= t_until)
    per: dict[int, list[tuple[float, int]]] = {}
    for cid, k, t, _t0, _sent in records:
        if t > t_kill:
            per.setdefault(cid, []).append((t, k))
    out: dict[int, float] = {}
    for cid, got in per.items():
        got.sort()
        # per move: when a push of it or a newer move arrived
        lat: list[float | None] = [next((t for t, kk in got if kk >= k and t >= events[k]), None)
                                   for k in moves]
        resumed: float | None = None  # the arrival from which on every move came in time
        for k, arrived in zip(reversed(moves), reversed(lat), strict=True):
            if arrived is None or arrived - events[k] > within_s:
                break
            resumed = arrived
        if resumed is not None:
            out[cid] = resumed - t_kill
    return out


def not_resumed(records: list[list[Any]], cids: set[int], moved: set[int], t_kill: float,
                limit: int = 10) -> list[dict[str, Any]]:
    """Up to ``limit`` clients without a resume: ``cid``, ``moved`` (a client of the killed
    process), ``pnl`` pushes received after the kill, ``last_s`` (the newest one, seconds
    after the kill; None: none)."""
    last: dict[int, float] = {}
    count: dict[int, int] = {}
    for cid, _k, t, _t0, _sent in records:
        if cid in cids and t > t_kill:
            count[cid] = count.get(cid, 0) + 1
            last[cid] = max(last.get(cid, t), t)
    return [{"cid": c, "moved": c in moved, "pnl": count.get(c, 0),
             "last_s": round(last[c] - t_kill, 1) if c in last else None}
            for c in sorted(cids)[:limit]]


def rate_limit_summary(governors: dict[str, Any]) -> dict[str, int]:
    """``/admin/stats`` ``rate_limits`` summed over the venue's egress addresses:
    ``refused_locally`` (calls held back, the query budget of a window used up),
    ``limited_by_exchange``, ``max_used_weight`` (of the current window)."""
    rows = [g for g in governors.values() if isinstance(g, dict)] if isinstance(governors, dict) else []
    return {"governors": len(rows),
            "refused_locally": sum(int(g.get("refused_locally", 0)) for g in rows),
            "limited_by_exchange": sum(int(g.get("limited_by_exchange", 0)) for g in rows),
            "max_used_weight": max((int(g.get("used_weight", 0)) for g in rows), default=0)}


def failover_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median [min-max] over the runs of: resume p50 / p99 (all clients and the killed
    process's), clients resumed, fills lost."""
    def spread(values: list[Any]) -> dict[str, Any]:
        vals = sorted(v for v in values if v is not None)
        if not vals:
            return {"n": 0}
        return {"n": len(vals), "median": statistics.median(vals), "min": vals[0], "max": vals[-1]}
    return {
        "resume_p50_ms": spread([r["resume"]["p50_ms"] for r in runs]),
        "resume_p99_ms": spread([r["resume"]["p99_ms"] for r in runs]),
        "reconnected_p99_ms": spread([r["resume_reconnected"]["p99_ms"] for r in runs]),
        "resumed": spread([r["resume"]["n"] for r in runs]),
        "not_resumed": spread([r["resume"]["missing"] for r in runs]),
        "clients": spread([r["clients"] for r in runs]),
        "fills_lost": spread([r["fills"]["lost"] for r in runs]),
        "orders_refused": spread([r["fills"]["refused"] for r in runs]),
    }
