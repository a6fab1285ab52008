"""The server's listening socket (``app.serve``): its backlog is ``LISTEN_BACKLOG``,
not eventlet's 50, so a reconnect storm's SYNs are queued instead of dropped."""
from __future__ import annotations

import shutil
import subprocess
from urllib.parse import urlparse

import pytest


def _listen_backlog(port: int) -> int:
    """``ss -ltn``: for a listening socket, Send-Q is its backlog."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out, f"nothing listens on port {port}"
    return int(out[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="iproute2's ss is not installed")
def test_the_listener_queues_a_storm_of_connections(server) -> None:  # type: ignore[no-untyped-def]
    port = urlparse(server.url).port
    backlog = _listen_backlog(port)
    with open("/proc/sys/net/core/somaxconn") as f:
        cap = int(f.read())
    assert backlog == min(2048, cap), backlog   # the default LISTEN_BACKLOG, as capped
    assert backlog > 50
