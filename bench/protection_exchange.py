"""Exchange-mode protection: the venue's stop-loss fires -> each client's ``fills`` push
carrying ``"reason": "stop_loss"``, with real processes (simulator, server, Socket.IO
clients).

    python -m bench.protection_exchange [--holders 50] [--reps 1] [--modes stop_loss,plain]
        [--db sqlite|postgresql] [--tag NAME]

``--holders`` accounts each hold a BTCUSDT long (MARKET BUY 0.002 through
``POST /api/orders``) with an exchange-mode stop-loss at 59000 (``PUT
/api/positions/protection``, ``"mode": "exchange"``: the simulator holds it as a
Binance Algo Service ``STOP_MARKET`` ``closePosition=true``). Each holder has one
Socket.IO client (``python-socketio`` ``AsyncClient``, websocket) subscribed to
``fills``. The price is moved from 60000 to 58900 once through ``/_sim/price`` (every
leg fires at once, the worst case); the event time is ``time.time()`` just before that
call. Figures (ms, nearest-rank percentiles, ``{n, p50_ms, p99_ms, max_ms}``):

- ``push``: from the move to the client's first ``fills`` push holding a BTCUSDT fill
  whose ``reason`` is ``stop_loss`` (target p99 < 100 ms, issue 20);
- ``exchange_fill``: from the move to that fill's exchange ``time`` (the simulator's
  part); ``server``: from the fill's exchange time to the push (the server's part);
- ``sent``: from the move to the envelope's ``sent_at`` (the server's emit; the rest
  of ``push`` is the socket and the client);
- ``missing``: clients without such a push after 20 s; ``other_reasons``: BTCUSDT
  fills pushed with another ``reason`` (null: the server could not tag it live);
- ``requests_per_holder``: the venue requests (the simulator's count per endpoint) the
  holders' keys made from just before the move to 1 s after the last push, per holder.

``--modes stop_loss,plain`` alternates the repetitions between the stop-loss and a
baseline without any leg: beside its long each holder has a resting LIMIT BUY of the
same quantity at 58900, placed on the venue directly (the plain order a fall fills), so
the same move pushes a plain fill (``reason`` null, side BUY) through the same account
streams; the figures above then measure that fill.

Prints ``figure: value`` lines and writes ``bench/results/protection_exchange_<tag>.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import socketio

from bench.common import create_account, rest
from bench.measure import lat_s, print_lines, write_results
from tests.conftest import PG_ADMIN_URL, make_pg_database
from tests.support.server import start_server
from tests.support.simulator import start_simulator

SYMBOL, QTY, TRIGGER, START, CROSS = "BTCUSDT", "0.002", "59000", "60000", "58900"


def _holder(server, sim, mode: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A user with a BTCUSDT long and its exchange-mode stop-loss (``mode``
    ``stop_loss``) or a resting LIMIT BUY at ``CROSS`` placed on the venue directly
    (``plain``); ``(api_key, token)``. Raises RuntimeError (setup) or
    AssertionError when the server refuses a step."""
    acct = create_account(server.url, sim, uuid.uuid4().hex[:10])
    r = rest("POST", server.url + "/api/orders", acct.token, {
        "key_id": acct.key_id, "symbol": SYMBOL, "side": "BUY", "type": "MARKET", "quantity": QTY})
    assert r.status_code == 201, r.text
    if mode == "plain":
        sim.binance_client(acct.api_key, acct.api_secret).futures_create_order(
            symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTC", quantity=QTY,
            price=CROSS)
        return acct.api_key, acct.token
    r = rest("PUT", server.url + "/api/positions/protection", acct.token, {
        "key_id": acct.key_id, "symbol": SYMBOL, "mode": "exchange", "stop_loss": {"trigger_price": TRIGGER}})
    assert r.status_code == 200, r.text
    return acct.api_key, acct.token


async def _measure(url: str, sim, tokens: list[str], keys: list[str], timeout_s: float,  # type: ignore[no-untyped-def]
                   side: str, reason: str | None) -> dict[str, Any]:
    """Connect one client per token (subscribed to ``fills``), move the price across the
    stops, collect each client's first BTCUSDT ``side`` fill push with ``reason``."""
    got: list[tuple[float, dict[str, Any]] | None] = [None] * len(tokens)
    others: list[Any] = []
    clients = []

    def handler(i: int):  # type: ignore[no-untyped-def]
        def on_fills(env: Any = None) -> None:
            t = time.time()
            rows = env.get("data") if isinstance(env, dict) else env
            for f in rows or []:
                if f.get("symbol") != SYMBOL:
                    continue
                if f.get("side") == side and f.get("reason") == reason:
                    if got[i] is None:
                        sent = env.get("sent_at") if isinstance(env, dict) else None
                        got[i] = (t, dict(f, _sent_at=sent))
                elif f.get("side") == side:
                    others.append(f.get("reason"))
        return on_fills

    for i, tok in enumerate(tokens):
        c = socketio.AsyncClient(reconnection=False)
        c.on("fills", handler(i))
        await c.connect(url, auth={"token": tok}, transports=["websocket"], wait_timeout=30)
        ack = await c.call("subscribe", {"types": ["fills"]}, timeout=30)
        assert isinstance(ack, dict) and ack.get("ok"), ack
        clients.append(c)
    await asyncio.sleep(2.0)
    before = await asyncio.to_thread(_requests, sim, keys)
    t0 = time.time()
    await asyncio.to_thread(sim.set_price, SYMBOL, CROSS)
    deadline = time.monotonic() + timeout_s
    while any(g is None for g in got) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # late pushes with another reason
    after = await asyncio.to_thread(_requests, sim, keys)
    for c in clients:
        await c.disconnect()
    found = [g for g in got if g is not None]
    return {"clients": len(tokens),
            "push": lat_s([t - t0 for t, _ in found]),
            "exchange_fill": lat_s([f["time"] / 1000 - t0 for _, f in found]),
            "server": lat_s([t - f["time"] / 1000 for t, f in found]),
            "sent": lat_s([f["_sent_at"] / 1000 - t0 for _, f in found if f["_sent_at"]]),
            "missing": len(tokens) - len(found),
            "other_reasons": {str(r): others.count(r) for r in set(others)},
            "requests_per_holder": {ep: round((n - before.get(ep, 0)) / len(tokens), 2)
                                    for ep, n in sorted(after.items()) if n > before.get(ep, 0)}}


def _requests(sim, keys: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """The simulator's request count per endpoint, summed over the ``keys``."""
    counts = sim.state()["requests"]
    out: dict[str, int] = {}
    for key in keys:
        for endpoint, n in (counts.get(key) or {}).items():
            out[endpoint] = out.get(endpoint, 0) + int(n)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.protection_exchange")
    parser.add_argument("--holders", type=int, default=50)
    parser.add_argument("--reps", type=int, default=1, help="fresh holders each repetition")
    parser.add_argument("--modes", default="stop_loss",
                        help="comma list, one per repetition in turn: stop_loss (the exchange-held "
                             "leg) or plain (no leg: a resting LIMIT filled by the same move)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--tag", default="run")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if any(m not in ("stop_loss", "plain") for m in modes):
        parser.error("--modes: stop_loss or plain")
    tmp = Path(tempfile.mkdtemp(prefix="bench-protect-x-"))
    sim = start_simulator()
    drop = None
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    if args.db == "postgresql":
        url, drop = make_pg_database(PG_ADMIN_URL)
    server = start_server(url, sim.url, sim.ws_url, tmp)
    results: dict[str, Any] = {"holders": args.holders, "db": args.db,
                               "load_at_start": [round(x, 2) for x in os.getloadavg()], "reps": []}
    try:
        for rep in range(args.reps):
            mode = modes[rep % len(modes)]
            sim.set_price(SYMBOL, START)
            t_setup = time.time()
            holders = [_holder(server, sim, mode) for _ in range(args.holders)]
            setup_s = round(time.time() - t_setup, 1)
            one = asyncio.run(_measure(server.url, sim, [t for _, t in holders],
                                       [k for k, _ in holders], 20.0,
                                       *(("SELL", "stop_loss") if mode == "stop_loss" else ("BUY", None))))
            one["mode"], one["setup_s"] = mode, setup_s
            one["load"] = [round(x, 2) for x in os.getloadavg()]
            kind = "STOP_MARKET" if mode == "stop_loss" else "LIMIT"
            held = sum(1 for k, _ in holders for o in sim.state(k)["orders"]
                       if o.get("type") == kind and o.get("status") == "FILLED")
            one["legs_filled_at_sim"] = held
            results["reps"].append(one)
            print_lines(f"rep{rep}", one)
    except (Exception, KeyboardInterrupt) as e:
        results["failure"] = f"{type(e).__name__}: {e}"
    finally:
        results["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        log = server.log()
        results["server_log_errors"] = sum(1 for ln in log.splitlines() if " ERROR " in ln)
        server.stop()
        sim.stop()
        if drop:
            drop()
    for mode in modes:
        p99 = sorted(r["push"]["p99_ms"] for r in results["reps"]
                     if r["mode"] == mode and r["push"].get("p99_ms") is not None)
        if p99:
            results[f"push_p99_ms_{mode}"] = {"median": p99[len(p99) // 2], "min": p99[0],
                                              "max": p99[-1], "n": len(p99)}
    for k in [f"push_p99_ms_{m}" for m in dict.fromkeys(modes)] + [
            "failure", "load_at_start", "load_at_end", "server_log_errors"]:
        if k in results:
            print_lines(k, results[k])
    write_results(results, f"protection_exchange_{args.tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
