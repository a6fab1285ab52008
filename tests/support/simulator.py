"""Run the exchange simulator as a subprocess for tests and drive its control API.

Usage::

    sim = start_simulator()                      # free port, random walk off
    sim.create_account("key", "secret", balances={"USDT": "10000"})
    sim.set_price("BTCUSDT", "60000")
    client = sim.binance_client("key", "secret")  # real python-binance Client
    ...
    sim.stop()

Prices are deterministic by default: the helper starts the simulator with
``--tick-ms 0 --seed 1`` (no random walk; prices move only via ``set_price`` or a
replay). Pass e.g. ``extra_args=("--tick-ms", "200")`` to turn the walk on (later
arguments win). Control-API failures raise ``SimulatorError``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import requests
import websocket

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARGS = ("--tick-ms", "0", "--seed", "1")
_LISTENING = re.compile(r"simulator listening host=\S+ port=(\d+)")


class SimulatorError(RuntimeError):
    """A control-API call failed: ``status`` (HTTP) and ``body`` (text)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"simulator control call failed: HTTP {status}: {body}")
        self.status, self.body = status, body


class SimulatorProcess:
    """A running simulator. ``url`` = ``http://127.0.0.1:PORT``, ``ws_url`` =
    ``ws://127.0.0.1:PORT``; ``log_path`` holds its stdout+stderr."""

    def __init__(self, proc: subprocess.Popen, host: str, port: int, log_path: Path) -> None:
        self.proc, self.host, self.port, self.log_path = proc, host, port, log_path
        self.url = f"http://{host}:{port}"
        self.ws_url = f"ws://{host}:{port}"
        self._session = requests.Session()

    # ---- control API -------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict | None = None,
              params: dict | None = None) -> Any:
        resp = self._session.request(method, self.url + path, json=body, params=params,
                                     timeout=10)
        if resp.status_code >= 300:
            raise SimulatorError(resp.status_code, resp.text)
        return resp.json()

    def create_account(self, api_key: str, api_secret: str,
                       balances: dict[str, str] | None = None) -> dict:
        """Create a funded account (default ``{"USDT": "10000"}``). Re-creating the same
        key with the same secret is a no-op; another secret raises SimulatorError(409)."""
        body = {"api_key": api_key, "api_secret": api_secret,
                "balances": {k: str(v) for k, v in (balances or {"USDT": "10000"}).items()}}
        return self._call("POST", "/_sim/accounts", body)

    def set_price(self, symbol: str, price: Any) -> dict:
        """Set the mark/last price now (resting orders it crosses fill)."""
        return self._call("POST", "/_sim/price", {"symbol": symbol, "price": str(price)})

    def state(self, api_key: str | None = None) -> dict:
        """``GET /_sim/state`` (only one account's part when ``api_key`` is given)."""
        return self._call("GET", "/_sim/state", params={"api_key": api_key} if api_key else None)

    def add_fault(self, **kw: Any) -> dict:
        """``POST /_sim/faults`` with ``kind`` and optional ``count``, ``duration_s``, ``ms``,
        ``api_key``."""
        return self._call("POST", "/_sim/faults", kw)

    def clear_faults(self) -> dict:
        """Remove every fault (clock skew included)."""
        return self._call("DELETE", "/_sim/faults")

    def fill(self, order_id: Any, quantity: Any = None, price: Any = None) -> dict:
        """Fill a resting order now, partially when ``quantity`` < remaining."""
        body = {}
        if quantity is not None:
            body["quantity"] = str(quantity)
        if price is not None:
            body["price"] = str(price)
        return self._call("POST", f"/_sim/orders/{order_id}/fill", body)

    def replay(self, symbol: str, csv: str | os.PathLike, seconds_per_candle: float = 1) -> dict:
        """Replay a candle CSV for ``symbol``."""
        return self._call("POST", "/_sim/replay", {"symbol": symbol, "csv": str(csv),
                                                   "seconds_per_candle": seconds_per_candle})

    # ---- clients -----------------------------------------------------------------------
    def binance_client(self, api_key: str, api_secret: str):  # -> binance.client.Client
        """A real python-binance ``Client`` pointed at this simulator."""
        from binance.client import Client
        client = Client(api_key, api_secret, ping=False)
        client.FUTURES_URL = self.url + "/fapi"
        client.API_URL = self.url + "/api"
        return client

    def bybit_client(self, api_key: str, api_secret: str):  # -> pybit.unified_trading.HTTP
        """A real pybit ``HTTP`` pointed at this simulator (``max_retries=1``,
        ``retry_delay=0``: a 10002/10006 reply ends in one attempt; pybit still sleeps
        until ``X-Bapi-Limit-Reset-Timestamp`` on 10006 unless ``retry_codes`` is
        emptied after construction)."""
        from pybit.unified_trading import HTTP
        session = HTTP(api_key=api_key, api_secret=api_secret, testnet=False,
                       max_retries=1, retry_delay=0)
        session.endpoint = self.url
        return session

    def bybit_private_ws(self, api_key: str, api_secret: str,
                         topics: Sequence[str] = ("order", "execution", "position", "wallet"),
                         timeout: float = 5.0) -> websocket.WebSocket:
        """A websocket-client socket on ``/v5/private``, authenticated with pybit's auth
        frame (``expires`` 5 s ahead) and subscribed to ``topics`` in one frame (none when
        empty). The replies are read; AssertionError when one says ``success: false``."""
        import hashlib
        import hmac
        ws = websocket.create_connection(self.ws_url + "/v5/private", timeout=timeout)
        expires = int(time.time() * 1000) + 5000
        signature = hmac.new(api_secret.encode(), f"GET/realtime{expires}".encode(),
                             hashlib.sha256).hexdigest()
        frames = [{"op": "auth", "args": [api_key, expires, signature]}]
        if topics:
            frames.append({"op": "subscribe", "req_id": "sub-1", "args": list(topics)})
        for frame in frames:
            ws.send(json.dumps(frame))
            [reply] = recv_json_until(ws, lambda fs: len(fs) == 1, timeout)
            if not reply.get("success"):
                ws.close()
                raise AssertionError(f"{frame['op']} refused: {reply}")
        return ws

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    # ---- lifecycle ---------------------------------------------------------------------
    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 5 s) and remove its log."""
        self._session.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        try:
            self.log_path.unlink()
        except OSError:
            pass

    def __enter__(self) -> SimulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(port: int | None = None, extra_args: Sequence[str] = (),
                    host: str = "127.0.0.1", timeout_s: float = 15.0) -> SimulatorProcess:
    """Start ``python -m exchanges.simulator`` (a free port when ``port`` is None), wait
    until ``GET /api/v3/ping`` answers, and return the handle. Raises RuntimeError with
    the process log when it does not come up within ``timeout_s``."""
    fd, name = tempfile.mkstemp(prefix="simulator-", suffix=".log")
    log_path = Path(name)
    args = [sys.executable, "-m", "exchanges.simulator", "--host", host,
            "--port", str(port if port is not None else 0), *DEFAULT_ARGS, *extra_args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    bound = port
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if bound is None:
            match = _LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
            bound = int(match.group(1)) if match else None
        if bound is not None:
            try:
                if requests.get(f"http://{host}:{bound}/api/v3/ping", timeout=1).ok:
                    return SimulatorProcess(proc, host, bound, log_path)
            except requests.RequestException:
                pass
        time.sleep(0.05)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=5)
    log_path.unlink(missing_ok=True)
    raise RuntimeError(f"simulator did not start (exit={proc.returncode}); log:\n{text}")


# ---- WebSocket helpers (websocket-client) -----------------------------------------------
def recv_json_until(ws: websocket.WebSocket, predicate: Callable[[list[dict]], bool],
                    timeout: float = 5.0) -> list[dict]:
    """Collect JSON text frames until ``predicate(frames)`` holds; raises AssertionError
    on timeout or when the server closes the socket (with what arrived)."""
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while not predicate(frames):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; frames so far: {frames}")
        ws.settimeout(remaining)
        try:
            text = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        if not text:
            raise AssertionError(f"socket closed; frames so far: {frames}")
        frames.append(json.loads(text))
    return frames


def wait_ws_closed(ws: websocket.WebSocket, timeout: float = 5.0) -> list[dict]:
    """Read until the server closes the socket; returns the frames seen before."""
    frames: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            opcode, data = ws.recv_data(control_frame=True)
        except websocket.WebSocketConnectionClosedException:
            return frames
        except websocket.WebSocketTimeoutException:
            continue
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return frames
        if opcode == websocket.ABNF.OPCODE_TEXT:
            frames.append(json.loads(data))
    raise AssertionError(f"socket not closed within {timeout}s; frames: {frames}")
