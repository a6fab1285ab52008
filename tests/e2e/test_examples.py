"""examples/client.py, the Python client a mobile developer starts from, against a real
server: it subscribes to the account types, fills and alerts, and prints each push
whole (one event's lines together)."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_until

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_the_python_example_subscribes_to_fills_and_alerts_and_prints_a_fill(account, sim, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim.set_price("BTCUSDT", "60000")
    out = tmp_path / "client.out"
    with out.open("w") as sink:
        proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "client.py"),
                                 "--url", account.server.url, "--username", account.username,
                                 "--password", account.password],
                                stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_until(lambda: "subscribe ack" in out.read_text(), timeout=30)
            ack = next(line for line in out.read_text().splitlines() if line.startswith("subscribe ack"))
            assert "'fills'" in ack and "'alerts'" in ack and "'ok': True" in ack, ack
            r = account.post("/api/orders", {"key_id": account.key_id, "symbol": "BTCUSDT",
                                             "side": "BUY", "type": "MARKET", "quantity": "0.01"})
            assert r.status_code == 201, r.text
            wait_until(lambda: _fill_lines(out.read_text()), timeout=30)
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: disconnect and log out
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    # the fill's envelope: its header line with the data right under it, never interleaved
    assert _fill_lines(out.read_text())


def _fill_lines(text: str) -> list[str]:
    """The ``fills`` header lines whose next line is the data of a BTCUSDT fill."""
    lines = text.splitlines()
    return [line for line, data in zip(lines, lines[1:], strict=False)
            if line.startswith("fills seq=") and data.startswith("  [{") and "BTCUSDT" in data]
