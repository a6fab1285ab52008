"""The repository is the whole product: fixtures, the demo's price path and the code
read nothing outside the checkout, and the demo says what it replays."""
from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

from config import DEFAULT_REPLAY_CSV, ROOT, load_config
from exchanges.simulator.market import load_candle_path
from services import demo
from tests.support.simulator import start_simulator

# the parent folder's shared/ (by relative path, ROOT.parent or parents[N]): beside the checkout
OUTSIDE = re.compile(r"""\.\./shared|parent\s*/\s*["']shared["']|parents\[\d\]\s*/\s*["']shared["']""")


def test_demo_replays_the_price_path_inside_the_repository() -> None:
    cfg = load_config({})
    path = Path(cfg.SIMULATOR_REPLAY_CSV)
    assert path == DEFAULT_REPLAY_CSV and ROOT in path.parents
    assert len(load_candle_path(path)) == 4 * 1999  # 1,999 real candles (data/README.md)
    assert (path.parent / "README.md").is_file()


def test_no_code_test_or_makefile_reads_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    checked = [f for f in tracked if f.endswith((".py", ".sh", ".ini", ".cfg", ".toml"))
               or f in ("Makefile", ".ci/run")]
    assert "Makefile" in checked and "config.py" in checked
    offenders = [f for f in checked if OUTSIDE.search((ROOT / f).read_text(errors="replace"))]
    assert offenders == []


def test_fixture_provenance_lists_every_payload() -> None:
    import json
    fixtures = ROOT / "tests" / "fixtures"
    sources = json.loads((fixtures / "SOURCES.json").read_text())
    files = {p.relative_to(fixtures).as_posix() for p in fixtures.glob("*/*.json")}
    assert files and files <= set(sources)


def test_a_missing_replay_file_is_a_warning_naming_it(caplog, tmp_path) -> None:
    cfg = load_config({"SIMULATOR_REPLAY_CSV": str(tmp_path / "gone.csv"),
                       "SIMULATOR_PORT": "9"})  # nothing is posted: the file check comes first
    with caplog.at_level(logging.INFO, logger="services.demo"):
        demo._start_replay(cfg)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "gone.csv" in warnings[0].getMessage()


def test_the_simulator_log_names_the_file_it_replays() -> None:
    sim = start_simulator(extra_args=("--replay", f"XRPUSDT={DEFAULT_REPLAY_CSV}"))
    try:
        log = sim.log_path.read_text()
        assert f"replay started symbol=XRPUSDT csv={DEFAULT_REPLAY_CSV} candles=1999" in log
        assert sim.state()["replays"]["XRPUSDT"]["running"]
    finally:
        sim.stop()

