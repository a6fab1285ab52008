"""``python app.py`` on the demo default, as ``make run`` starts it: the log names
the replayed price path inside the repository, and the ``next:`` command it prints
runs as printed (the interpreter that has the packages) and shows pushes."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

from config import DEFAULT_REPLAY_CSV
from tests.support.server import ROOT, free_port


def test_the_demo_log_says_what_it_replays_and_its_next_command_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "BYBIT_"))}
    env.update({"APP_ENV": "demo", "PORT": str(free_port()), "SIMULATOR_PORT": str(free_port()),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}", "PYTHONUNBUFFERED": "1",
                "DEMO_PASSWORD": "demo-pass-" + os.urandom(4).hex(), "RECONCILE_INTERVAL_S": "0"})
    for name in ("SIMULATOR_REPLAY_CSV", "EMBED_SIMULATOR", "HOST", "LOG_FORMAT"):
        env.pop(name, None)
    log_path = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 40
        while "next: " not in log_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        log = log_path.read_text()
        assert f"demo replay started symbol=XRPUSDT csv={DEFAULT_REPLAY_CSV}" in log, log
        command = re.search(r"next: (.+)", log).group(1)
        argv = shlex.split(command)
        assert argv[0] != "python", "a bare python would not find the installed packages"
        try:
            run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=8,
                                 env={k: v for k, v in env.items() if k != "PYTHONPATH"})
            out = run.stdout + run.stderr
        except subprocess.TimeoutExpired as e:  # the client prints pushes until stopped
            out = "".join(x.decode() if isinstance(x, bytes) else x
                          for x in (e.stdout or "", e.stderr or ""))
        assert "subscribe ack" in out and re.search(r"positions seq=\d+", out), out
        assert "XRPUSDT" in out
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
