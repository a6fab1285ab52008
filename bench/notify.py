"""Notifications to phones: what a fill costs until its FCM request, a burst, and what
price alerts cost per mark tick.

    python -m bench.notify [--db postgresql] [--fills 60] [--burst-users 1000]
                           [--bursts 3] [--burst-steps 10] [--alerts 10000]
                           [--tick-seconds 15] [--lift-limits] [--message-queue URL]

1. Latency: ``--fills`` MARKET fills, one every 0.15 s, spread over 10 users with one
   device each and no socket online: fill (the exchange's fill time) -> the FCM
   request accepted at the simulator (its receive time), p50/p99. Half the users keep
   ``skip_when_online`` (default: the row waits ``NOTIFY_ONLINE_GRACE_MS`` for a
   socket push of the same event), half turn it off.
2. Burst (``--burst-users`` N, 0 to skip; ``bench.notify_burst``): N users with two
   devices each get one fill each within one second, made at the venue (resting LIMIT
   orders placed straight at the simulator, crossed by ``--burst-steps`` price moves
   spread over one second) and seen by the server only through its account streams;
   ``--bursts`` rounds. All 2N notifications accepted, none twice, the drain time,
   fill -> FCM p50/p99 and the server's CPU seconds.
3. Price alerts (``--alerts`` A, 0 to skip): A alerts on BTCUSDT spread 5-50 % around
   the price (none fires), written straight to the table and picked up by the
   server's reload; the mark moves at 10 Hz for ``--tick-seconds``; the server's CPU
   per tick against the same run with one alert (the market stream runs in both).

The machine is shared (2 cores, other work running): read the figures as a range.
Figures go to ``bench/results/notify.json``.
"""
from __future__ import annotations

import argparse
import random
import time
import uuid
from decimal import Decimal
from pathlib import Path

from bench import notify_burst
from bench.common import Stack, create_account, rest
from bench.measure import RESULTS_DIR, cpu_s, lat_ms, prepare_long_run, print_lines, write_results
from tests.support import fcm

SYMBOL = "BTCUSDT"
PRICE = Decimal("50000")


def _device(url: str, acct, platform: str = "android") -> str:  # type: ignore[no-untyped-def]
    token = fcm.new_token()
    r = rest("POST", url + "/api/devices", acct.token, {"token": token, "platform": platform})
    assert r.status_code == 201, r.text
    return token


def _buy(url: str, acct) -> None:  # type: ignore[no-untyped-def]
    r = rest("POST", url + "/api/orders", acct.token, {"key_id": acct.key_id, "symbol": SYMBOL,
                                                      "side": "BUY", "type": "MARKET",
                                                      "quantity": "0.002"})
    assert r.status_code == 201, r.text


def _wait_messages(sim_url: str, tokens: set[str], n: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = [m for m in fcm.messages(sim_url) if m["message"]["token"] in tokens]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def latency(st: Stack, fills: int) -> dict:
    url, sim = st.server.url, st.sim
    users = [create_account(url, sim, f"lat{i}-{random.randrange(10**6)}") for i in range(10)]
    tokens = {u.user_id: _device(url, u) for u in users}
    for u in users[5:]:
        r = rest("PUT", url + "/api/notifications/settings", u.token, {"skip_when_online": False})
        assert r.status_code == 200, r.text
    for i in range(fills):
        _buy(url, users[i % len(users)])
        time.sleep(0.15)
    deadline = time.monotonic() + 60
    while _server_notify(st)["pending"] and time.monotonic() < deadline:
        time.sleep(0.25)
    got = _wait_messages(sim.url, set(tokens.values()), fills, 30)
    on = {tokens[u.user_id] for u in users[:5]}
    lat = {True: [], False: []}  # type: dict[bool, list[float]]
    for m in got:
        lat[m["message"]["token"] in on].append(m["received_at"] - int(m["message"]["data"]["time"]))
    return {"fills": fills, "accepted": len(got),
            "skip_when_online_on": lat_ms(lat[True]), "skip_when_online_off": lat_ms(lat[False])}


def _server_notify(st: Stack) -> dict:
    return rest("GET", st.server.url + "/admin/stats",
                headers={"X-Admin-Token": st.server.admin_token}).json()["notifications"]


def _cpu_per_tick(st: Stack, seconds: float) -> dict:
    pid, sim = st.server.proc.pid, st.sim
    ticks, cpu0 = 0, cpu_s(pid)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        price = PRICE * (1 + Decimal(random.uniform(-0.01, 0.01)))
        sim.set_price(SYMBOL, f"{price:.1f}")
        ticks += 1
        time.sleep(0.1)
    used = (cpu_s(pid) or 0) - (cpu0 or 0)
    return {"ticks": ticks, "server_cpu_s": round(used, 3),
            "cpu_ms_per_tick": round(used * 1000 / max(ticks, 1), 3)}


def price_alerts(st: Stack, alerts: int, seconds: float) -> dict:
    from models import Database, PriceAlert
    url, sim = st.server.url, st.sim
    sim.set_price(SYMBOL, str(PRICE))
    acct = create_account(url, sim, f"alerts-{random.randrange(10**6)}")
    r = rest("POST", url + "/api/alerts/price", acct.token,
             {"exchange": "binance", "symbol": SYMBOL, "above": "500000"})
    assert r.status_code == 201, r.text
    time.sleep(3)  # the market stream starts
    base = _cpu_per_tick(st, seconds)
    db = Database(st.db_url)
    rows = []
    for i in range(alerts):
        off = Decimal(random.uniform(0.05, 0.5)).quantize(Decimal("0.0001"))
        side = "above" if i % 2 else "below"
        level = (PRICE * (1 + off) if side == "above" else PRICE * (1 - off)).quantize(Decimal("0.1"))
        rows.append(PriceAlert(user_id=acct.user_id, exchange="binance", symbol=SYMBOL,
                               repeat=bool(i % 3), **{side: level}))
    with db.transaction() as s:
        s.add_all(rows)
    db.dispose()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the server's reload (every 10 s) picks them up
        stats = rest("GET", url + "/admin/stats", headers={"X-Admin-Token": st.server.admin_token}).json()
        if stats["notifications"]["price_alerts"]["watched"] >= alerts:
            break
        time.sleep(0.5)
    loaded = _cpu_per_tick(st, seconds)
    ratio = (loaded["cpu_ms_per_tick"] / base["cpu_ms_per_tick"]) if base["cpu_ms_per_tick"] else None
    return {"alerts": alerts, "one_alert": base, "with_alerts": loaded,
            "ratio": round(ratio, 3) if ratio else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="postgresql", choices=("sqlite", "postgresql"))
    p.add_argument("--fills", type=int, default=60)
    p.add_argument("--burst-users", type=int, default=1000)
    p.add_argument("--bursts", type=int, default=3, help="bursts on the same users")
    p.add_argument("--burst-steps", type=int, default=10,
                   help="price moves (one group of users each) spread over one second")
    p.add_argument("--alerts", type=int, default=10_000)
    p.add_argument("--tick-seconds", type=float, default=15.0)
    p.add_argument("--lift-limits", action="store_true",
                   help="lift the server's exchange weight governor (the burst's orders are "
                        "then not paced by Binance's 2400 a minute)")
    p.add_argument("--message-queue", default=None, metavar="URL",
                   help="MESSAGE_QUEUE_URL of the server (Redis; a channel of this run), "
                        "the production configuration")
    p.add_argument("--profile", metavar="PREFIX", default="",
                   help="the server samples its CPU time while each burst drains "
                        "(bench/cpu_sampler) into PREFIX.<pid>.txt; the top frames are printed")
    args = p.parse_args()
    prepare_long_run()
    log_dir = RESULTS_DIR / "notify-logs"
    tmp = Path(RESULTS_DIR / "notify-tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    st = None
    results: dict = {"db": args.db, "message_queue": bool(args.message_queue),
                     "lift_limits": args.lift_limits}
    try:
        from tests.support.simulator import start_simulator  # noqa: F401 (Stack starts it)
        # the service account must name the simulator's /token: start it first, then point
        profile = ({"PYTHONPATH": str(Path(__file__).with_name("cpu_sampler")),
                    "PUSHSRV_CPU_SAMPLES": args.profile,
                    "PUSHSRV_CPU_SAMPLES_MARK": args.profile + ".on"} if args.profile else {})
        st = _stack(args.db, log_dir, tmp, args.lift_limits, args.message_queue, profile)
        st.sim.set_price(SYMBOL, str(PRICE))
        if args.fills:
            results["latency"] = latency(st, args.fills)
            print_lines("latency", results["latency"])
        if args.burst_users:
            results["burst"] = notify_burst.burst(
                st, args.burst_users, args.bursts, args.burst_steps,
                Path(args.profile + ".on") if args.profile else None)
            print_lines("burst", results["burst"])
        if args.alerts:
            results["price_alerts"] = price_alerts(st, args.alerts, args.tick_seconds)
            print_lines("price_alerts", results["price_alerts"])
    except Exception as e:  # the figures so far are still written
        results["failure"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        if st is not None:
            st.stop()
        if args.profile:
            from bench.cpu_sampler import summary
            files = sorted(Path(args.profile).parent.glob(Path(args.profile).name + ".*.txt"))
            results["profile"] = [f"{share * 100:5.1f} % {cpu:6.1f} s {frame}"
                                  for frame, share, cpu in summary(files, 40)]
            print_lines("profile.series", results["profile"])
        write_results(results, "notify")


def _stack(db: str, log_dir: Path, tmp: Path, lift_limits: bool = False,
           message_queue: str | None = None, extra_env: dict | None = None) -> Stack:
    """A Stack whose server's FCM is its simulator's (the simulator's port is only
    known once it runs, so the server is restarted with the service account); with
    ``message_queue`` the server uses that Redis under a channel of this run."""
    st = Stack(db, log_dir)
    assert st.server is not None and st.sim is not None
    st.server.stop()
    from tests.support.server import start_server
    creds = fcm.write_service_account(tmp, st.sim.url)
    queue = ({"MESSAGE_QUEUE_URL": message_queue,
              "MESSAGE_QUEUE_CHANNEL": f"bench-notify-{uuid.uuid4().hex[:8]}"}
             if message_queue else {})
    st.server = start_server(st.db_url, st.sim.url, st.sim.ws_url, log_dir,
                             real_limits=not lift_limits,
                             extra_env={"LOGIN_RATE_LIMIT": "100000 per minute",
                                        "GOOGLE_APPLICATION_CREDENTIALS": str(creds),
                                        "FCM_URL": st.sim.url, **queue,
                                        **(extra_env or {})})
    return st


if __name__ == "__main__":
    main()
