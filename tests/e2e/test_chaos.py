"""Seeded chaos with real processes (issue 9): random orders and faults, kill -9 of
the server at chosen moments, restarts, reconcile until quiet, then the ledger must
agree with the simulator: every exchange fill exactly once, no trade stuck pending or
closing, no exit left working, every trade's fills equal to its exchange order's,
positions equal; with protection legs in the mix (issue 20): no leg left on the
exchange for a closed position, none opening or flipping one, the trades' held
quantities equal to the exchange positions. Both venues. ``bench/chaos.py --seeds N``
runs many more seeds."""
from __future__ import annotations

import pytest

from tests.conftest import make_pg_database
from tests.support.chaos import ChaosRun

RUNS = (("sqlite", 1, "binance"), ("postgresql", 3, "binance"), ("sqlite", 2, "bybit"),
        ("postgresql", 5, "bybit"))


@pytest.mark.parametrize("database,seed,exchange", RUNS)
def test_seeded_chaos_ends_with_the_ledger_equal_to_the_exchange(database, seed, exchange, sim,  # type: ignore[no-untyped-def]
                                                                 tmp_path, request) -> None:
    drop = None
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'chaos.sqlite3'}"
    else:
        url, drop = make_pg_database(request.getfixturevalue("pg_server"))
    try:
        figures = ChaosRun(sim, url, tmp_path, seed, rounds=12, database=database,
                           exchange=exchange).run()
    finally:
        if drop:
            drop()
    assert figures.rounds == 12 and figures.fills > 0
    assert figures.clean, figures.problems
