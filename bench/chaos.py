"""Seeded chaos runs against real processes (issue 9), many seeds, with figures.

    python -m bench.chaos --seeds 50 [--db sqlite|postgresql] [--rounds 12] [--first 100]
                          [--exchange binance|bybit|both]

Each seed: a fresh database and account, ``--rounds`` rounds of random orders and
faults (kill -9 of the server at chosen moments included, see
``tests/support/chaos.py``), then ``POST /admin/reconcile`` until quiet and a
comparison with the simulator's orders, fills and positions. Prints one line per seed
and the totals: rounds, kills, orders, fills, lost, doubled, stuck pending, stranded
exits, position mismatches, fill-state mismatches, risk-figure mismatches (open
quantities, the realized figure), protection-leg problems (a leg held for a closed
position, a position opened or flipped by a leg or an exit, held quantities unlike
the exchange's) with the number of leg requests, and the time from the last fault
to a quiet reconcile (median and max). Exit status 1 when any seed was not clean.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import PG_ADMIN_URL, make_pg_database
from tests.support.chaos import ChaosRun, Figures
from tests.support.simulator import start_simulator

COLUMNS = ("rounds", "kills", "orders", "fills", "lost", "doubled", "stuck_pending",
           "stranded_exits", "position_mismatches", "state_mismatches", "figure_mismatches",
           "legs_set", "leg_fills", "leg_problems")


def run_seed(sim, seed: int, db: str, rounds: int, tmp: Path,  # type: ignore[no-untyped-def]
             exchange: str = "binance") -> Figures:
    """One seed on a fresh database, with a key on ``exchange``."""
    drop = None
    if db == "sqlite":
        url = f"sqlite:///{tmp / f'chaos-{exchange}-{seed}.sqlite3'}"
    else:
        url, drop = make_pg_database(PG_ADMIN_URL)
    try:
        return ChaosRun(sim, url, tmp, seed, rounds=rounds, database=db, exchange=exchange).run()
    finally:
        if drop:
            drop()


def main(argv: list[str] | None = None) -> int:
    """Run the seeds and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first", type=int, default=1, help="first seed")
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--exchange", choices=("binance", "bybit", "both"), default="both")
    args = ap.parse_args(argv)
    sim = start_simulator()
    results: list[Figures] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            venues = ("binance", "bybit") if args.exchange == "both" else (args.exchange,)
            for seed in range(args.first, args.first + args.seeds):
                exchange = venues[seed % len(venues)]
                f = run_seed(sim, seed, args.db, args.rounds, Path(tmp), exchange)
                results.append(f)
                print(f"seed={seed} db={args.db} exchange={exchange} " + " ".join(
                    f"{c}={getattr(f, c)}" for c in COLUMNS)
                    + f" quiet_s={f.quiet_s} reconciles={f.reconciles}"
                    + ("" if f.clean else f" problems={f.problems}"), flush=True)
    finally:
        sim.stop()
    quiet = [f.quiet_s for f in results]
    totals = {c: sum(getattr(f, c) for f in results) for c in COLUMNS}
    print(f"\nseeds={len(results)} db={args.db} unclean={sum(not f.clean for f in results)} "
          + " ".join(f"{c}={v}" for c, v in totals.items())
          + f" quiet_s_median={statistics.median(quiet) if quiet else 0}"
          + f" quiet_s_max={max(quiet) if quiet else 0}"
          + f" wall_s={time.monotonic() - started:.0f}")
    return 0 if all(f.clean for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
