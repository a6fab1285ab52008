"""The notification worker alone, against a baseline: drain an outbox of ``--rows`` rows
through the simulator's FCM with this checkout's ``services/notify/worker.py`` and with
a baseline copy of that module (e.g. an earlier commit's), alternating, ``--reps``
times each; rows a second and the worker's CPU milliseconds per row.

    git show 886c2e8:services/notify/worker.py > bench/results/worker_base.py
    python -m bench.notify_worker --baseline bench/results/worker_base.py [--rows 2000]
                                  [--reps 5] [--concurrency 8] [--baseline-concurrency N]

As in the server: eventlet monkey-patched, psycopg2 made cooperative, the worker's sends
``--concurrency`` green threads at a time, PostgreSQL (a fresh database, dropped at the
end), FCM the simulator's over HTTP. The outbox rows are written straight to the table
(1,000 users with two devices each for 2,000 rows), due at once, ``skip_when_online``
off. The machine is shared: the load average is printed beside each figure. Figures
go to ``bench/results/notify_worker.json``.
"""
from __future__ import annotations

if __name__ == "__main__":  # monkey-patching must precede every other import
    import warnings

    warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()
    from psycogreen.eventlet import patch_psycopg

    patch_psycopg()

import argparse
import importlib.util
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import eventlet

from bench.measure import cpu_s, write_results
from models import Database, Device, Notification, User, now_ms
from services import schema
from services.notify.fcm import FcmClient, FcmConfig
from services.notify.presence import LocalDeliveries
from tests.support import fcm as sim_fcm
from tests.support.simulator import start_simulator


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _devices(db: Database, rows: int) -> list[int]:
    """``rows // 2`` users with two devices each; returns the device ids."""
    with db.transaction() as s:
        users = [User(username=f"w{uuid.uuid4().hex[:12]}", password_hash="x")
                 for _ in range(rows // 2)]
        s.add_all(users)
        s.flush()
        devices = [Device(user_id=u.id, token=sim_fcm.new_token(), platform=p)
                   for u in users for p in ("android", "ios")]
        s.add_all(devices)
        s.flush()
        return [d.id for d in devices]


def _outbox(db: Database, devices: dict[int, int], tag: str) -> None:
    """One due row per device (``devices``: device id -> user id)."""
    now = now_ms()
    with db.transaction() as s:
        s.add_all([Notification(user_id=uid, device_id=dev, event_type="fills",
                                event_key=f"fill:1:BTCUSDT:{tag}-{dev}", title="BTCUSDT BUY filled",
                                body="0.003 @ 49950", data=f'{{"type": "fills", "time": "{now}"}}',
                                skip_when_online=False, status="pending", attempts=0,
                                next_attempt_at=now, created_at=now)
                   for dev, uid in devices.items()])


def _drain(module: Any, db: Database, client: FcmClient, concurrency: int) -> dict[str, Any]:
    worker = module.NotifyWorker(db, client, LocalDeliveries(), threading.Event(), eventlet.sleep,
                                 eventlet.spawn, concurrency)
    c0, t0 = time.process_time(), time.monotonic()
    rows = 0
    while (n := worker.run_once()):
        rows += n
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    return {"rows": rows, "sent": worker.counts["sent"], "wall_s": round(wall, 2),
            "rows_per_s": round(rows / wall, 1), "cpu_ms_per_row": round(cpu * 1000 / rows, 2),
            "loadavg": " ".join(open("/proc/loadavg").read().split()[:3])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", type=Path, required=True, help="a copy of worker.py to compare")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--baseline-concurrency", type=int, default=None,
                   help="the baseline's sends in flight (default: --concurrency); with "
                        "--baseline services/notify/worker.py this compares the setting")
    args = p.parse_args()
    from tests.conftest import PG_ADMIN_URL, make_pg_database
    url, made = make_pg_database(PG_ADMIN_URL)
    drop = cast(Callable[[], None], made)
    sim = start_simulator()
    results: dict[str, Any] = {"rows": args.rows, "concurrency": args.concurrency,
                               "baseline_concurrency": args.baseline_concurrency, "runs": []}
    try:
        schema.upgrade(url)
        db = Database(url)
        creds = sim_fcm.write_service_account(Path(tempfile.mkdtemp()), sim.url)
        client = FcmClient(FcmConfig(str(creds), sim.url))
        ids = _devices(db, args.rows)
        with db.session() as s:
            owner = dict(s.query(Device.id, Device.user_id).filter(Device.id.in_(ids)).all())
        modules = {"current": _load(Path(__file__).parents[1] / "services/notify/worker.py",
                                    "worker_current"),
                   "baseline": _load(args.baseline, "worker_baseline")}
        for rep in range(args.reps):
            order = ("baseline", "current") if rep % 2 == 0 else ("current", "baseline")
            for name in order:
                _outbox(db, owner, f"{name}{rep}")
                sim_cpu0 = cpu_s(sim.proc.pid) or 0.0
                conc = (args.baseline_concurrency or args.concurrency) if name == "baseline" \
                    else args.concurrency
                run = {"variant": name, "rep": rep, "concurrency": conc,
                       **_drain(modules[name], db, client, conc),
                       "simulator_cpu_s": round((cpu_s(sim.proc.pid) or 0.0) - sim_cpu0, 2)}
                results["runs"].append(run)
                print(run, flush=True)
        for name in ("baseline", "current"):
            runs = [r for r in results["runs"] if r["variant"] == name]
            results[name] = {k: {"median": statistics.median(r[k] for r in runs),
                                 "min": min(r[k] for r in runs), "max": max(r[k] for r in runs)}
                             for k in ("rows_per_s", "cpu_ms_per_row", "wall_s")}
        ratios = [c["cpu_ms_per_row"] / b["cpu_ms_per_row"]
                  for b, c in zip(*(
                      [r for r in results["runs"] if r["variant"] == v] for v in ("baseline", "current")),
                      strict=True)]
        rates = [c["rows_per_s"] / b["rows_per_s"]
                 for b, c in zip(*(
                     [r for r in results["runs"] if r["variant"] == v] for v in ("baseline", "current")),
                     strict=True)]
        results["ratio_cpu_per_row"] = {"median": round(statistics.median(ratios), 3),
                                        "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
        results["ratio_rows_per_s"] = {"median": round(statistics.median(rates), 3),
                                       "min": round(min(rates), 3), "max": round(max(rates), 3)}
        for k in ("baseline", "current", "ratio_cpu_per_row", "ratio_rows_per_s"):
            print(f"{k}: {results[k]}", flush=True)
        client.close()
        db.dispose()
    finally:
        sim.stop()
        drop()
        write_results(results, "notify_worker")


if __name__ == "__main__":
    main()
