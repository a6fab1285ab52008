"""The demo configuration: the embedded simulator process and a ready ``demo`` user.

The simulator is a separate process reached over the network, like a real exchange.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

from config import ROOT, Config
from services.container import Services

logger = logging.getLogger(__name__)

DEMO_API_KEY = "demo-binance-key-0001"
DEMO_BALANCE = "10000"
DEMO_POSITION_QTY = "100"


def _sim_url(cfg: Config) -> str:
    return f"http://127.0.0.1:{cfg.SIMULATOR_PORT}"


def _sim_post(cfg: Config, path: str, body: dict) -> int:
    req = urllib.request.Request(_sim_url(cfg) + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def start_embedded_simulator(cfg: Config) -> subprocess.Popen:
    """Start ``python -m exchanges.simulator`` on 127.0.0.1:SIMULATOR_PORT and wait
    until it answers (at most 15 s). Raises RuntimeError when it does not start."""
    log = (ROOT / "var" / "simulator.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "exchanges.simulator", "--host", "127.0.0.1",
                             "--port", str(cfg.SIMULATOR_PORT)], cwd=str(ROOT),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(_sim_url(cfg) + "/api/v3/ping", timeout=1):
                logger.info("simulator started url=%s log=%s", _sim_url(cfg), log)
                return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"simulator did not answer on port {cfg.SIMULATOR_PORT}; see {log}")


def _start_replay(cfg: Config) -> None:
    """Ask the simulator to replay ``SIMULATOR_REPLAY_CSV``; a missing or refused file
    is a warning (prices then follow the simulator's random walk), never a stop."""
    path = cfg.SIMULATOR_REPLAY_CSV
    if not path:
        logger.info("demo replay off: prices follow the simulator's random walk")
        return
    if not Path(path).is_file():
        logger.warning("demo replay csv not found path=%s: prices follow the simulator's "
                       "random walk", path)
        return
    status = _sim_post(cfg, "/_sim/replay", {"symbol": cfg.SIMULATOR_REPLAY_SYMBOL,
                                             "csv": path, "seconds_per_candle": 1})
    if status == 201:
        logger.info("demo replay started symbol=%s csv=%s seconds_per_candle=1",
                    cfg.SIMULATOR_REPLAY_SYMBOL, path)
    else:
        logger.warning("demo replay refused by the simulator status=%s path=%s", status, path)


def bootstrap(cfg: Config, svc: Services) -> None:
    """Create (or refresh) the ``demo`` user with a funded simulator key, start the
    recorded price replay, and log what to do next."""
    user = svc.users.by_username(cfg.DEMO_USERNAME)
    if user is None:
        user = svc.users.register(cfg.DEMO_USERNAME, cfg.DEMO_PASSWORD)
    demo_secret = cfg.SECRET_KEY[:32]  # stable across restarts, never logged
    keys = svc.keys.list(user.id)
    if cfg.EMBED_SIMULATOR:
        _sim_post(cfg, "/_sim/accounts", {"api_key": DEMO_API_KEY, "api_secret": demo_secret,
                                          "balances": {"USDT": DEMO_BALANCE}})
        _start_replay(cfg)
    if not keys:
        key = svc.keys.create(user.id, "binance", DEMO_API_KEY, demo_secret, False, "demo simulator")
        keys = [key]
    if cfg.EMBED_SIMULATOR and not svc.orders.trades(user.id, ["open"], keys[0].id):
        # a small position on the replayed symbol, so that PnL moves on screen
        trade = svc.orders.place(user.id, keys[0].id, cfg.SIMULATOR_REPLAY_SYMBOL, "BUY",
                                 "MARKET", Decimal(DEMO_POSITION_QTY), None, None, False, None)
        logger.info("demo position opened symbol=%s quantity=%s status=%s",
                    trade.symbol, DEMO_POSITION_QTY, trade.status)
    logger.info("demo ready username=%s password=%s admin_token_file=%s",
                cfg.DEMO_USERNAME, cfg.DEMO_PASSWORD, ROOT / "var" / "demo-secrets.json")
    logger.info("next: %s %s --url http://%s:%s --username %s --password %s",
                _as_typed(Path(sys.executable)), _as_typed(ROOT / "examples" / "client.py"),
                cfg.HOST, cfg.PORT, cfg.DEMO_USERNAME, cfg.DEMO_PASSWORD)


def _as_typed(path: Path) -> str:
    """``path`` as a user would type it in the current folder: relative when it lies
    below it (``.venv/bin/python`` from the project folder), else absolute. The
    logged ``next:`` command thus runs the interpreter that has the packages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
