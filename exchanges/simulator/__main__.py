"""Command line: ``python -m exchanges.simulator --host 127.0.0.1 --port 9100
[--seed 42] [--tick-ms 1000] [--replay XRPUSDT=path.csv --seconds-per-candle 1]
[--volatility 0.0003] [--listen-key-ttl-s 3600] [--log-level INFO]``.

Logs one line ``simulator listening host=... port=... url=...`` when ready (``--port 0``
binds a free port and that line names it). Stops cleanly on SIGINT/SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from exchanges.simulator.market import load_candle_path
from exchanges.simulator.server import SimConfig, serve

logger = logging.getLogger("exchanges.simulator")

# Real XRPUSDT 5-minute candles shipped with the package (provenance: data/README.md)
DEFAULT_REPLAY_CSV = Path(__file__).resolve().parent / "data" / "XRPUSDT_perp_5m_2021-11-15_to_2021-11-21.csv"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m exchanges.simulator",
                                     description="Local Binance USD-M and Bybit v5 linear simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 = any free port")
    parser.add_argument("--seed", type=int, default=None, help="random-walk seed")
    parser.add_argument("--tick-ms", type=int, default=1000,
                        help="random-walk period in ms; 0 switches the walk off")
    parser.add_argument("--volatility", type=float, default=0.0003,
                        help="std-dev of the log return per walk tick")
    parser.add_argument("--replay", action="append", default=[], metavar="SYMBOL=CSV",
                        help="replay a candle CSV for SYMBOL (repeatable)")
    parser.add_argument("--seconds-per-candle", type=float, default=1.0)
    parser.add_argument("--listen-key-ttl-s", type=float, default=3600.0,
                        help="listenKey validity in seconds (Binance: 3600)")
    parser.add_argument("--ip-weight-limit", type=int, default=0,
                        help="Binance request weight per IP per minute, 429 beyond it "
                             "(Binance USD-M: 2400; 0 = report only); also PUT /_sim/limits")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    replays = []
    for item in args.replay:
        symbol, sep, path = item.partition("=")
        if not sep or not symbol or not path:
            parser.error(f"--replay expects SYMBOL=path.csv, got {item!r}")
        try:
            load_candle_path(path)
        except ValueError as exc:
            parser.error(f"--replay {item}: {exc}")
        replays.append((symbol.upper(), path))
    args.replays = replays
    return args


async def run(config: SimConfig) -> None:
    """Serve until SIGINT/SIGTERM."""
    runner, port = await serve(config)
    logger.info("simulator listening host=%s port=%d url=http://%s:%d seed=%s tick_ms=%d "
                "replays=%d", config.host, port, config.host, port, config.seed,
                config.tick_ms, len(config.replays))
    if not config.replays:
        logger.info("no replay at start: prices follow the random walk until POST /_sim/replay "
                    "(e.g. --replay XRPUSDT=%s)", DEFAULT_REPLAY_CSV)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("simulator stopping port=%d", port)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = SimConfig(host=args.host, port=args.port, seed=args.seed, tick_ms=args.tick_ms,
                       replays=args.replays, seconds_per_candle=args.seconds_per_candle,
                       volatility=args.volatility, listen_key_ttl_s=args.listen_key_ttl_s,
                       ip_weight_limit=args.ip_weight_limit)
    asyncio.run(run(config))


if __name__ == "__main__":
    main()
