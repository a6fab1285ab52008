"""A WebSocket forwarder in its own process that can refuse the private streams: to
the server it looks like the exchange's user data streams are down while REST and
market streams keep working (used by ``bench.streams`` for the polling fallback and
the reconnect storm)."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys

from bench.common import ROOT
from tests.support.server import free_port

PRIVATE_PATH = re.compile(r"^/(private/|v5/private|ws/[^@/]+$)")  # user data stream paths


# ---- the gate: a WebSocket forwarder that can refuse the private streams ------------------
async def gate_main(port: int, target: int) -> None:
    """Forward 127.0.0.1:``port`` to the simulator on ``target``. Reads a mode per stdin
    line (``none``, ``private``, ``all``): refused paths get HTTP 503, open ones are reset;
    answers ``ok <reset count>``."""
    mode, conns = ["none"], set()

    def refused(private: bool) -> bool:
        return mode[0] == "all" or (private and mode[0] == "private")

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await r.readuntil(b"\r\n\r\n")
            private = bool(PRIVATE_PATH.match(head.split(b" ", 2)[1].decode().split("?")[0]))
            if refused(private):
                w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await w.drain()
                raise ValueError("refused")
            ur, uw = await asyncio.open_connection("127.0.0.1", target)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            return w.close()
        uw.write(head)
        conns.add(entry := (private, w, uw))
        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        conns.discard(entry)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("ready", flush=True)
    while line := await stdin.readline():
        mode[0] = line.decode().strip()
        victims = [c for c in conns if refused(c[0])]
        for _, *writers in victims:
            [w.transport.abort() for w in writers]
        print(f"ok {len(victims)}", flush=True)
    server.close()


class Gate:
    """The gate process; ``ws_url`` is what the server gets as every venue's WS URL."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.ws_url, self.proc = f"ws://127.0.0.1:{self.port}", subprocess.Popen(
            [sys.executable, "-c", "import asyncio, bench.gate as b; "
             f"asyncio.run(b.gate_main({self.port}, {target_port}))"],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("gate did not start")

    def set(self, mode: str) -> int:
        """Switch to ``mode``; returns how many open connections were reset."""
        print(mode, file=self.proc.stdin, flush=True)
        return int(self.proc.stdout.readline().split()[1])

    def stop(self) -> None:
        self.proc.stdin.close()  # the gate ends at end of input
        self.proc.wait(10)
