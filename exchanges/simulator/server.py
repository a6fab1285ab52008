"""Assembly of the simulator: one aiohttp app serving REST and WebSocket on one port.

``build_app(config)`` wires the protocol-neutral core (engine, market feed, faults,
clock, request stats) to the Binance and Bybit protocol layers (one engine: an api key
trades the same account through both) and the ``/_sim`` control API.
``serve(config)`` starts it inside a running event loop and returns the runner and
the bound port (``port=0`` picks a free one), for ``__main__`` or for embedding.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiohttp import web

from exchanges.simulator.binance_api import BinanceApi
from exchanges.simulator.binance_streams import BinanceStreams
from exchanges.simulator.bybit_api import BybitApi
from exchanges.simulator.bybit_format import parse_order_uuid
from exchanges.simulator.bybit_ledger import BybitLedger
from exchanges.simulator.bybit_streams import BybitStreams
from exchanges.simulator.control import Control
from exchanges.simulator.engine import Engine
from exchanges.simulator.faults import Clock, FaultRegistry, RequestStats
from exchanges.simulator.fcm import FcmSim
from exchanges.simulator.market import MarketFeed

logger = logging.getLogger(__name__)


@dataclass
class SimConfig:
    """Start-up settings.

    ``port`` 0 = any free port; ``seed`` None = unseeded walk; ``tick_ms`` <= 0 switches
    the random walk off; ``replays``: ``(symbol, csv path)`` pairs started at boot with
    ``seconds_per_candle``; ``volatility``: std-dev of the log return per walk tick;
    ``listen_key_ttl_s``: listenKey validity after POST/PUT (Binance: 60 min);
    ``ip_weight_limit``: Binance request weight per IP per minute beyond which requests
    get 429 ``-1003`` (Binance USD-M: 2400; 0 = not enforced, only reported).
    """

    host: str = "127.0.0.1"
    port: int = 9100
    seed: int | None = None
    tick_ms: int = 1000
    replays: list[tuple[str, str]] = field(default_factory=list)
    seconds_per_candle: float = 1.0
    volatility: float = 0.0003
    listen_key_ttl_s: float = 3600.0
    ip_weight_limit: int = 0


@dataclass
class Simulator:
    """The wired parts of one simulator instance (``app[SIM_KEY]``)."""

    config: SimConfig
    faults: FaultRegistry
    clock: Clock
    engine: Engine
    stats: RequestStats
    market: MarketFeed
    binance_streams: BinanceStreams
    binance_api: BinanceApi
    control: Control
    bybit_streams: BybitStreams
    bybit_api: BybitApi


SIM_KEY = web.AppKey("simulator", Simulator)


def build_app(config: SimConfig | None = None) -> web.Application:
    """Create the aiohttp application (background tasks start with the app)."""
    config = config or SimConfig()
    faults = FaultRegistry()
    clock = Clock(faults)
    engine = Engine(now_ms=clock.now_ms)
    stats = RequestStats(config.ip_weight_limit)
    market = MarketFeed(engine, seed=config.seed, tick_ms=config.tick_ms,
                        volatility=config.volatility)
    streams = BinanceStreams(engine, faults, clock, validity_s=config.listen_key_ttl_s)
    api = BinanceApi(engine, faults, clock, stats, streams)
    ledger = BybitLedger(engine)        # engine listener: before the Bybit fan-out
    bybit_streams = BybitStreams(engine, faults, clock, ledger)
    bybit_api = BybitApi(engine, faults, clock, stats, ledger)
    control = Control(engine, faults, stats, market, [streams.snapshot, bybit_streams.snapshot])
    control.order_id_parsers.append(parse_order_uuid)
    sim = Simulator(config, faults, clock, engine, stats, market, streams, api, control,
                    bybit_streams, bybit_api)

    app = web.Application(middlewares=[control.middleware, api.middleware,
                                       bybit_api.middleware],
                          client_max_size=1024 * 1024)
    app[SIM_KEY] = sim
    api.add_routes(app)
    bybit_api.add_routes(app)
    control.add_routes(app)
    FcmSim().add_routes(app)  # FCM HTTP v1 and its token endpoint (exchanges/simulator/fcm.py)
    app.router.add_get("/private/ws", streams.handle_private)
    app.router.add_get("/private/ws/{key}", streams.handle_private)
    app.router.add_get("/ws/{name}", streams.handle_ws)
    app.router.add_get("/market/ws/{name}", streams.handle_ws)
    app.router.add_get("/public/ws/{name}", streams.handle_ws)
    app.router.add_get("/v5/private", bybit_streams.handle_private)
    app.router.add_get("/v5/public/linear", bybit_streams.handle_public)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_startup(app: web.Application) -> None:
    sim = app[SIM_KEY]
    sim.market.start()
    sim.binance_streams.start()
    sim.bybit_streams.start()
    for symbol, path in sim.config.replays:
        sim.market.start_replay(symbol, path, sim.config.seconds_per_candle)


async def _on_shutdown(app: web.Application) -> None:
    sim = app[SIM_KEY]
    await sim.binance_streams.stop()
    await sim.bybit_streams.stop()
    await sim.market.stop()


async def serve(config: SimConfig) -> tuple[web.AppRunner, int]:
    """Start serving in the running loop; returns ``(runner, bound port)``. Stop with
    ``await runner.cleanup()``."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=2048)
    await site.start()
    port = config.port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        port = server.sockets[0].getsockname()[1]
    return runner, port
