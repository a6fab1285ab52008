"""The notification burst of ``bench.notify``: N users each get a fill within one second,
as a venue delivers them, and every one of their 2N devices is notified once.

How the fills are made (no order goes through the server): each user's account at the
simulator gets a resting LIMIT BUY placed directly over the simulator's Binance REST
API (signed with the user's own key, as another app or the venue's website would);
the users are in ``steps`` groups with one limit price each, and the bench then moves
the mark down through the groups' limits in ``steps`` ``/_sim/price`` calls spread over
one second: each call fills one group's orders at once (the simulator's matching of
resting orders). The server learns of the fills only through its account streams
(Binance user data streams), as in production. A stream runs only while a socket of
its user is subscribed to an account type (``services.stream_manager``), so each user
holds one Socket.IO connection subscribed to ``balance``, ``positions``, ``pnl`` and
``orders``, not ``fills``: no socket receives the fill, so ``skip_when_online`` (on,
the default) sends it after the grace.

Measured per burst (``rounds`` bursts on the same users, the previous one drained
first): messages accepted by the simulator's FCM for the burst's fills (expected
2N) and messages with the same (token, collapse key) counted more than once over the
whole run; the drain (first ``/_sim/price`` call -> the last burst message accepted);
fill (the venue's fill time) -> FCM accepted p50/p99; the same split at the outbox row
(fill -> row written, row written -> FCM accepted, from the ``notifications`` table);
the server's and the simulator's CPU seconds from the burst until drained; load
averages. Times are seconds unless a name ends in ``_ms``.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.common import Account, Listener, Stack, create_account, rest, run_pool
from bench.fanout import sim_order
from bench.measure import cpu_s, lat_ms, pct
from tests.support import fcm

SYMBOL = "BTCUSDT"
PRICE = Decimal("50000")
STEP = Decimal("10")  # USDT between two groups' limit prices
QUANTITY = "0.003"  # notional ~150 USDT: Binance refuses under 100


def _loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def place_limit(sim_url: str, acct: Account, price: Decimal) -> None:
    """A GTC LIMIT BUY of ``QUANTITY`` at ``price`` on the account's simulator key, sent
    straight to the simulator as a signed Binance request. Raises RuntimeError when the
    venue refuses it."""
    sim_order(sim_url, acct, {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT",
                              "timeInForce": "GTC", "quantity": QUANTITY,
                              "price": f"{price:f}"})


def _limit(i: int, steps: int) -> Decimal:
    """The limit price of user ``i``: group ``i % steps`` rests ``(group + 5) * STEP``
    below the starting price."""
    return PRICE - (i % steps + 5) * STEP


def _server_stats(st: Stack) -> dict[str, Any]:
    assert st.server is not None
    stats: dict[str, Any] = rest("GET", st.server.url + "/admin/stats",
                                 headers={"X-Admin-Token": st.server.admin_token}).json()
    return stats


def _server_notify(st: Stack) -> dict[str, Any]:
    notify: dict[str, Any] = _server_stats(st)["notifications"]
    return notify


def _wait_quiet(st: Stack, seconds: float = 3.0, timeout: float = 120.0) -> float:
    """Wait until the server used under 30 % of a core for ``seconds`` (the order
    events of the placed orders are handled; a thousand idle sockets and streams take
    some); returns the seconds waited."""
    assert st.server is not None
    t0 = time.monotonic()
    pid = st.server.proc.pid
    while time.monotonic() - t0 < timeout:
        c0 = cpu_s(pid) or 0.0
        time.sleep(seconds)
        if (cpu_s(pid) or 0.0) - c0 < 0.3 * seconds:
            break
    return round(time.monotonic() - t0, 1)


def _rows(db_url: str, keys: set[str]) -> list[tuple[Any, ...]]:
    """``(event_key, created_at, sent_at, attempts, status)`` of the outbox rows of
    ``keys`` (read straight from the table)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            got = c.execute(text("SELECT event_key, created_at, sent_at, attempts, status "
                                 "FROM notifications WHERE event_type = 'fills'")).all()
    finally:
        engine.dispose()
    return [tuple(r) for r in got if r[0] in keys]


def one_burst(st: Stack, users: list[Account], tokens: set[str], steps: int,
              seen: set[tuple[str, str]], mark: Path | None = None) -> dict[str, Any]:
    """One burst on ``users`` (each with a socket open); ``seen``: the (token, collapse
    key) pairs of earlier bursts (updated); ``mark``: a file that exists from the first
    price move until drained (the server's CPU sampler counts only then)."""
    assert st.server is not None and st.sim is not None
    sim, n = st.sim, len(users)
    sim.set_price(SYMBOL, str(PRICE))
    _, errors = run_pool(lambda i: place_limit(sim.url, users[i], _limit(i, steps)), n, 16)
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} orders refused: {errors[:3]}")
    waited = _wait_quiet(st)
    print(f"burst: {n} orders resting ({len(errors)} refused), server quiet after {waited} s",
          flush=True)
    stats0 = _server_notify(st)
    spid, mpid = st.server.proc.pid, sim.proc.pid
    load0 = _loadavg()
    cpu0, mcpu0 = cpu_s(spid) or 0.0, cpu_s(mpid) or 0.0
    if mark is not None:
        mark.touch()
    t0_ms = time.time() * 1000
    for g in range(steps):  # group g's limit is crossed at step g
        sim.set_price(SYMBOL, str(PRICE - (g + 5) * STEP))
        time.sleep(max(0.0, (t0_ms + (g + 1) * 1000 / steps - time.time() * 1000) / 1000))
    price_moves_s = time.time() - t0_ms / 1000
    print(f"burst: {steps} price moves in {price_moves_s:.2f} s; waiting for the drain", flush=True)
    deadline = time.monotonic() + 600
    wb_depth, wb_age = 0, 0  # the write-behind queue while draining (the most seen)
    while time.monotonic() < deadline:  # the server's counts: the simulator is not polled
        full = _server_stats(st)
        stats, wb = full["notifications"], full["write_behind"]
        wb_depth = max(wb_depth, wb["depth"])
        wb_age = max(wb_age, wb["oldest_unwritten_age_ms"])
        if stats["sent"] - stats0["sent"] >= 2 * n and not stats["pending"]:
            break
        time.sleep(1.0)  # /admin/stats is not free: every 0.25 s it took ~7 % of the drain's CPU
    waited_s = time.time() - t0_ms / 1000
    if mark is not None:
        mark.unlink(missing_ok=True)
    cpu1, mcpu1 = cpu_s(spid) or 0.0, cpu_s(mpid) or 0.0
    load1 = _loadavg()
    msgs = [m for m in fcm.messages(sim.url) if m["message"]["token"] in tokens]
    new = [m for m in msgs if m["received_at"] >= t0_ms - 1]
    pairs = [(m["message"]["token"], m["message"]["android"]["collapse_key"]) for m in msgs]
    twice = len(pairs) - len(set(pairs))
    fresh = {(m["message"]["token"], m["message"]["android"]["collapse_key"]) for m in new}
    repeats_of_earlier = len(fresh & seen)
    seen |= fresh
    fill_ms = [int(m["message"]["data"]["time"]) for m in new]
    recv_ms = [m["received_at"] for m in new]
    lat = [r - f for r, f in zip(recv_ms, fill_ms, strict=True)]
    keys = {m["message"]["android"]["collapse_key"] for m in new}
    rows = _rows(st.db_url, keys)
    fill_of = {m["message"]["android"]["collapse_key"]: int(m["message"]["data"]["time"]) for m in new}
    to_row = [created - fill_of[k] for k, created, _, _, _ in rows]
    row_to_sent = [sent - created for _, created, sent, _, status in rows if sent and status == "sent"]
    last = max(recv_ms) if recv_ms else None
    return {
        "users": n, "place_errors": errors[:3], "quiet_wait_s": waited,
        "expected": 2 * n, "accepted": len(new), "twice_in_run": twice,
        "repeats_of_earlier_bursts": repeats_of_earlier,
        "fills_spread_ms": (max(fill_ms) - min(fill_ms)) if fill_ms else None,
        "price_moves_s": round(price_moves_s, 2),
        "drain_s": round((last - t0_ms) / 1000, 2) if last else None,
        "drain_after_last_fill_s": round((last - max(fill_ms)) / 1000, 2) if last else None,
        "fill_to_fcm": lat_ms(lat), "fill_to_row": lat_ms(to_row),
        "row_to_fcm": lat_ms(row_to_sent),
        "send_rate_per_s": round(len(new) / ((last - min(recv_ms)) / 1000), 1)
        if last and last > min(recv_ms) else None,
        "write_behind_max_depth": wb_depth, "write_behind_max_age_ms": wb_age,
        "rows_attempts_max": max((a for _, _, _, a, _ in rows), default=None),
        "server_cpu_s": round(cpu1 - cpu0, 2), "simulator_cpu_s": round(mcpu1 - mcpu0, 2),
        "waited_s": round(waited_s, 2), "loadavg_before": load0, "loadavg_after": load1,
        "server": {"retries": stats["retries"] - stats0["retries"],
                   "failed": stats["failed"] - stats0["failed"],
                   "errors": stats["errors"] - stats0["errors"]},
    }


async def _open_all(url: str, listeners: list[Listener], concurrency: int = 32) -> list[str]:
    sem, errors = asyncio.Semaphore(concurrency), []

    async def one(lst: Listener) -> None:
        async with sem:
            try:
                await lst.open(url, timeout=120)
            except Exception as e:  # counted and reported
                errors.append(f"{type(e).__name__}: {str(e)[:120]}")
    await asyncio.gather(*(one(lst) for lst in listeners))
    return errors


async def _with_sockets(st: Stack, users: list[Account], tokens: set[str], steps: int,
                        rounds: int, out: dict[str, Any], mark: Path | None) -> None:
    assert st.server is not None
    listeners = [Listener(u) for u in users]
    t0 = time.monotonic()
    errors = await _open_all(st.server.url, listeners)
    out["sockets"] = {"open": sum(1 for lst in listeners if lst.sio.connected),
                      "errors": errors[:3], "wall_s": round(time.monotonic() - t0, 1)}
    print(f"burst: sockets {out['sockets']}", flush=True)
    loop = asyncio.get_running_loop()
    seen: set[tuple[str, str]] = set()
    try:
        for r in range(rounds):  # the sockets stay served by this loop meanwhile
            res = await loop.run_in_executor(None, one_burst, st, users, tokens, steps, seen,
                                             mark)
            out.setdefault("bursts", []).append(res)
            print(f"burst {r + 1}/{rounds}: {res}", flush=True)
    finally:
        await asyncio.wait([asyncio.create_task(lst.sio.disconnect()) for lst in listeners
                            if lst.sio.connected] or [asyncio.create_task(asyncio.sleep(0))],
                           timeout=60)


def burst(st: Stack, n: int, rounds: int = 3, steps: int = 10,
          mark: Path | None = None) -> dict[str, Any]:
    """N users x 2 devices, each with a socket open, then ``rounds`` bursts (see the
    module docstring); returns the figures, with each figure's median [min, max] over
    the bursts under ``summary``."""
    assert st.server is not None and st.sim is not None
    url, sim = st.server.url, st.sim
    tag = f"{os.getpid() % 10000}-{random.randrange(10**5)}"
    t0 = time.monotonic()
    users, errors = run_pool(lambda i: create_account(url, sim, f"burst{tag}-{i}"), n, 8)
    users = [u for u in users if u is not None]
    devices, dev_errors = run_pool(lambda i: (_device(url, users[i]), _device(url, users[i], "ios")),
                                   len(users), 8)
    tokens = {t for pair in devices if pair for t in pair}
    out: dict[str, Any] = {"users": len(users), "steps": steps, "setup_errors": (errors + dev_errors)[:3],
                 "setup_s": round(time.monotonic() - t0, 1)}
    asyncio.run(_with_sockets(st, users, tokens, steps, rounds, out, mark))
    out["summary"] = summary(out.get("bursts", []))
    return out


def _device(url: str, acct: Account, platform: str = "android") -> str:
    token = fcm.new_token()
    r = rest("POST", url + "/api/devices", acct.token, {"token": token, "platform": platform})
    if r.status_code != 201:
        raise RuntimeError(f"device: HTTP {r.status_code}: {r.text[:200]}")
    return token


def summary(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """Median [min, max] over the bursts of the main figures."""
    def mr(values: list[Any]) -> str | None:
        vals = [v for v in values if v is not None]
        if not vals:
            return None
        return f"{pct(vals, 0.5)} [{min(vals)}, {max(vals)}]"
    return {"accepted": [b["accepted"] for b in bursts],
            "twice": max((b["twice_in_run"] for b in bursts), default=None),
            "drain_s": mr([b["drain_s"] for b in bursts]),
            "fill_to_fcm_p50_ms": mr([b["fill_to_fcm"]["p50_ms"] for b in bursts]),
            "fill_to_fcm_p99_ms": mr([b["fill_to_fcm"]["p99_ms"] for b in bursts]),
            "fill_to_row_p99_ms": mr([b["fill_to_row"]["p99_ms"] for b in bursts]),
            "row_to_fcm_p99_ms": mr([b["row_to_fcm"]["p99_ms"] for b in bursts]),
            "send_rate_per_s": mr([b["send_rate_per_s"] for b in bursts]),
            "server_cpu_s": mr([b["server_cpu_s"] for b in bursts]),
            "simulator_cpu_s": mr([b["simulator_cpu_s"] for b in bursts])}
