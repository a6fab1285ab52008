"""Price paths: a seeded random walk and the replay of recorded candles.

Random walk: every ``tick_ms`` each symbol that is not being replayed moves by a
log-normal step (``volatility`` = standard deviation of the log return per tick),
rounded to the symbol's tick; ``tick_ms <= 0`` switches the walk off (prices then
move only through ``/_sim/price`` or a replay).

Replay: a CSV with columns ``open_time_ms,open,high,low,close,volume``; each candle
lasts ``seconds_per_candle`` and is walked in four equal steps, open -> low ->
high -> close for a rising candle (close >= open), open -> high -> low -> close
for a falling one. When the file ends the symbol goes back to the random walk
from the last price.
"""
from __future__ import annotations

import asyncio
import csv
import logging
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from exchanges.simulator.engine import Engine

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("open_time_ms", "open", "high", "low", "close")


def load_candle_path(path: str | Path) -> list[Decimal]:
    """Read a candle CSV and return the price path (4 points per candle).

    Raises ValueError when the file is missing, lacks a column or has a bad number.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"csv lacks columns {missing}")
            points: list[Decimal] = []
            for line, row in enumerate(reader, start=2):
                try:
                    o, h, low, c = (Decimal(row[k]) for k in ("open", "high", "low", "close"))
                except (InvalidOperation, TypeError) as exc:
                    raise ValueError(f"bad number on line {line}") from exc
                if min(o, h, low, c) <= 0:
                    raise ValueError(f"non-positive price on line {line}")
                points.extend((o, low, h, c) if c >= o else (o, h, low, c))
    except OSError as exc:
        raise ValueError(f"cannot read csv: {exc.strerror}") from exc
    if not points:
        raise ValueError("csv has no candles")
    return points


@dataclass
class Replay:
    """A running replay: ``position`` counts the points already applied."""

    symbol: str
    csv: str
    seconds_per_candle: float
    points: list[Decimal]
    position: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """JSON view for ``/_sim/state``."""
        return {"symbol": self.symbol, "csv": self.csv,
                "seconds_per_candle": self.seconds_per_candle,
                "candles": len(self.points) // 4, "points_done": self.position,
                "points_total": len(self.points),
                "running": self.task is not None and not self.task.done()}


class MarketFeed:
    """Drives the engine's prices. Start with ``start()`` inside the event loop."""

    def __init__(self, engine: Engine, seed: int | None = None, tick_ms: int = 1000,
                 volatility: float = 0.0003) -> None:
        self.engine = engine
        self.tick_ms = tick_ms
        self.volatility = volatility
        self.rng = random.Random(seed)
        self.replays: dict[str, Replay] = {}
        self._walk_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the random walk task (no-op when ``tick_ms <= 0``)."""
        if self.tick_ms > 0 and self._walk_task is None:
            self._walk_task = asyncio.get_running_loop().create_task(self._walk())

    async def stop(self) -> None:
        """Cancel the walk and every replay."""
        tasks = [t for t in [self._walk_task, *(r.task for r in self.replays.values())] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._walk_task = None

    def walk_step(self, symbol: str) -> Decimal:
        """Move ``symbol`` one random-walk step; returns the new price."""
        price = self.engine.prices[symbol]
        factor = Decimal(repr(math.exp(self.rng.gauss(0.0, self.volatility))))
        return self.engine.set_price(symbol, price * factor)

    async def _walk(self) -> None:
        while True:
            await asyncio.sleep(self.tick_ms / 1000)
            for symbol in sorted(self.engine.symbols):
                replay = self.replays.get(symbol)
                if replay is not None and replay.task is not None and not replay.task.done():
                    continue
                self.walk_step(symbol)

    def start_replay(self, symbol: str, csv_path: str, seconds_per_candle: float) -> Replay:
        """Replace any replay of ``symbol`` with one of ``csv_path``; the first point is
        applied at once. Raises ValueError (bad symbol, file or speed)."""
        if symbol not in self.engine.symbols:
            raise ValueError("unknown symbol")
        if not isinstance(seconds_per_candle, (int, float)) or seconds_per_candle <= 0:
            raise ValueError("seconds_per_candle must be a positive number")
        points = load_candle_path(csv_path)
        old = self.replays.get(symbol)
        if old is not None and old.task is not None:
            old.task.cancel()
        replay = Replay(symbol, str(csv_path), float(seconds_per_candle), points)
        self.engine.set_price(symbol, points[0])
        replay.position = 1
        replay.task = asyncio.get_running_loop().create_task(self._replay(replay))
        self.replays[symbol] = replay
        logger.info("replay started symbol=%s csv=%s candles=%d seconds_per_candle=%s",
                    symbol, csv_path, len(points) // 4, seconds_per_candle)
        return replay

    async def _replay(self, replay: Replay) -> None:
        interval = replay.seconds_per_candle / 4
        while replay.position < len(replay.points):
            await asyncio.sleep(interval)
            self.engine.set_price(replay.symbol, replay.points[replay.position])
            replay.position += 1
        logger.info("replay finished symbol=%s", replay.symbol)
