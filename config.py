"""Settings from the environment, with a demo default that needs nothing installed.

``APP_ENV=demo`` (default): SQLite file under ``var/``, the exchange simulator
embedded on 127.0.0.1:``SIMULATOR_PORT`` with every venue URL pointed at it unless
set, generated secrets kept in ``var/demo-secrets.json``. ``APP_ENV=production``:
never starts the simulator and refuses to start without ``DATABASE_URL``,
``SECRET_KEY``, ``KEY_ENCRYPTION_KEY`` and ``ADMIN_TOKEN``.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from exchanges.types import VenueEndpoints
from exchanges.venues import VENUES

ROOT = Path(__file__).resolve().parent
VAR_DIR = ROOT / "var"
# The demo's price path, inside the repository (provenance: exchanges/simulator/data/README.md)
DEFAULT_REPLAY_CSV = ROOT / "exchanges" / "simulator" / "data" / "XRPUSDT_perp_5m_2021-11-15_to_2021-11-21.csv"

# Real venue endpoints (CONTRACT.md "Where the server finds the exchanges"), from each
# venue's spec: BINANCE_REST_URL, BINANCE_WS_URL, BINANCE_TESTNET_REST_URL, ...
REAL_VENUE_URLS: dict[str, str] = {
    k: v for spec in VENUES.values() for k, v in spec.url_settings().items()}
REQUIRED_IN_PRODUCTION = ("DATABASE_URL", "SECRET_KEY", "KEY_ENCRYPTION_KEY", "ADMIN_TOKEN")


class ConfigError(RuntimeError):
    """The configuration cannot start a server; the message names what is missing."""


@dataclass(frozen=True)
class Config:
    """All settings. Durations in seconds unless the name says ``_ms``."""

    APP_ENV: str = "demo"
    DATABASE_URL: str = ""
    MESSAGE_QUEUE_URL: str | None = None
    MESSAGE_QUEUE_CHANNEL: str = "pushsrv"
    LEASE_TTL_S: float = 15.0
    # Pools, sized for thousands of green threads rather than a web app's workers: a
    # caller that finds a pool empty waits (up to the timeout) instead of failing
    DB_POOL_SIZE: int = 10  # PostgreSQL connections kept per process
    DB_MAX_OVERFLOW: int = 10  # opened beyond DB_POOL_SIZE under load, closed after
    DB_POOL_TIMEOUT_S: float = 30.0  # longest wait for a database connection
    REDIS_MAX_CONNECTIONS: int = 32  # per Redis pool of a process (leases+relay, Socket.IO)
    REDIS_POOL_TIMEOUT_S: float = 20.0  # longest wait for a Redis connection
    # subscribes whose first part (key lookup, stream lease and start) run at once in a
    # process; the others wait their turn (a reconnect storm is admitted, not refused)
    SUBSCRIBE_CONCURRENCY: int = 256
    # account streams of a process that connect (user stream, REST snapshot) at once;
    # the others wait their turn
    STREAM_CONNECT_CONCURRENCY: int = 64
    KEY_CACHE_TTL_S: float = 300.0  # API keys read once and kept (invalidated on change)
    SECRET_KEY: str = ""
    KEY_ENCRYPTION_KEY: str = ""
    OLD_KEY_ENCRYPTION_KEYS: tuple[str, ...] = ()  # still accepted while rotating
    ADMIN_TOKEN: str = ""
    HOST: str = "127.0.0.1"
    PORT: int = 5000
    ASYNC_MODE: str = "eventlet"
    SIMULATOR_PORT: int = 9100
    EMBED_SIMULATOR: bool = False
    SIMULATOR_REPLAY_CSV: str | None = None
    SIMULATOR_REPLAY_SYMBOL: str = "XRPUSDT"
    VENUE_URLS: dict[str, str] = field(default_factory=lambda: dict(REAL_VENUE_URLS))
    JWT_EXPIRES_S: int = 3600
    LOGIN_RATE_LIMIT: str = "10 per minute"
    MAX_CONTENT_LENGTH: int = 64 * 1024
    EXCHANGE_TIMEOUT_S: float = 10.0
    CLIENT_CACHE_MAX: int = 10_000
    EGRESS_IPS: tuple[str, ...] = ()  # source addresses for exchange traffic (exchanges.egress)
    EXCHANGE_WEIGHT_LIMITS: dict[str, int] = field(default_factory=dict)  # per IP and window
    POLL_INTERVAL_S: float = 1.0
    STREAM_RECV_TIMEOUT_S: float = 10.0
    ORDER_CONFIRM_TIMEOUT_S: float = 5.0
    MAX_WS_CONNECTIONS: int = 10_000
    # pending TCP connections the listening socket queues (listen(2) backlog, capped by
    # the kernel's net.core.somaxconn); Flask-SocketIO's run() leaves eventlet's 50,
    # whose full queue dropped SYNs in a reconnect storm (each drop costs a client 1-3 s)
    LISTEN_BACKLOG: int = 2048
    # the server process's garbage collector (gc.set_threshold): Python's (700, 10, 10)
    # promoted every push envelope that lived past two young collections, so a full
    # collection ran every few seconds at 1,000 subscribed accounts and stopped the
    # process for 350-430 ms each time (bench.fanout with gc callbacks timing them)
    GC_THRESHOLDS: tuple[int, int, int] = (50_000, 20, 100)
    RECONCILE_INTERVAL_S: float = 60.0
    EXIT_MAX_SLIPPAGE: int = 10  # ticks
    EXIT_MAX_RETRIES: int = 5
    EXIT_DEADLINE_S: float = 30.0
    PROTECTION_SWEEP_S: float = 10.0  # server-mode rules re-read (set elsewhere) and swept
    RECONCILE_REPAIR: bool = False
    RECONCILE_BATCH: int = 50  # accounts without pending trades checked per period
    DEMO_USERNAME: str = "demo"
    DEMO_PASSWORD: str = ""
    # Socket.IO origins allowed to connect from a browser: ("*",) any, () the
    # server's own origin only (the production default), else the listed ones
    CORS_ORIGINS: tuple[str, ...] = ()
    LOG_FORMAT: str = "plain"  # or "json" (logsetup.py)
    LOG_LEVEL: str = "INFO"

    def socketio_cors(self) -> str | list[str] | None:
        """``cors_allowed_origins`` for Flask-SocketIO: ``"*"``, a list, or None
        (same origin only)."""
        if "*" in self.CORS_ORIGINS:
            return "*"
        return list(self.CORS_ORIGINS) or None
    # Login and session limits (api/ratelimit.py, services/sessions.py). LOGIN_RATE_LIMIT
    # above is per client address; this one per username (a bounded lockout).
    LOGIN_USERNAME_RATE_LIMIT: str = "10 per 5 minutes"
    REFRESH_RATE_LIMIT: str = "30 per minute"  # per client address
    # reverse proxies in front of the app whose X-Forwarded-For / -Proto / -Host are
    # trusted (werkzeug ProxyFix): the client address of the rate limits is then the
    # one the nearest proxy saw. 0: none (the TCP peer); ``make deploy`` sets 1 (nginx)
    TRUSTED_PROXIES: int = 0
    RATELIMIT_STORAGE_URI: str | None = None  # default: MESSAGE_QUEUE_URL, else memory
    REFRESH_EXPIRES_S: int = 30 * 24 * 3600
    # Notifications to phones (services/notify): FCM HTTP v1 with a service account
    GOOGLE_APPLICATION_CREDENTIALS: str | None = None  # its project_id and token_uri are used
    FCM_URL: str = "https://fcm.googleapis.com"
    FCM_TIMEOUT_S: float = 10.0
    NOTIFY_ONLINE_GRACE_MS: int = 200  # skip_when_online: a row waits this long for its socket push
    NOTIFY_CONCURRENCY: int = 8  # FCM requests in flight per process
    # users with a device: their keys' streams run with no socket open, read every this
    # many seconds (services/notify/standby.py); 0: streams only while a socket is open
    NOTIFY_STANDBY_S: float = 30.0
    # every process reloads the price alerts this often (seconds): alerts made or deleted
    # through another process are watched (or dropped) here within it
    PRICE_ALERTS_RELOAD_S: float = 10.0

    def venue(self, exchange: str, testnet: bool) -> VenueEndpoints:
        """REST and WS base URLs of ``exchange`` (a name in ``exchanges.venues.VENUES``),
        mainnet or testnet."""
        prefix = exchange.upper() + ("_TESTNET" if testnet else "")
        return VenueEndpoints(rest_url=self.VENUE_URLS[f"{prefix}_REST_URL"].rstrip("/"),
                              ws_url=self.VENUE_URLS[f"{prefix}_WS_URL"].rstrip("/"))

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Config:
        """A copy with ``overrides`` applied (unknown names raise ConfigError)."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        return replace(self, **dict(overrides))


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _egress_ips(value: str) -> tuple[str, ...]:
    """``EGRESS_IPS``: comma-separated local IP addresses, each checked. Raises
    ConfigError naming the one that is not an address."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ConfigError(f"EGRESS_IPS: {item!r} is not an IP address") from None
    return tuple(dict.fromkeys(out))


def _gc_thresholds(value: str) -> tuple[int, int, int]:
    """``GC_THRESHOLDS``: three comma-separated integers, ``gc.set_threshold``'s
    (young objects before a collection, then how many collections of each
    generation before the next older one). Raises ConfigError when malformed."""
    parts = [v.strip() for v in value.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or int(parts[0]) == 0:
        raise ConfigError(f"GC_THRESHOLDS: {value!r} is not <young>,<gen1>,<gen2> "
                          "(integers, the first above 0)")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _weight_limits(value: str) -> dict[str, int]:
    """``EXCHANGE_WEIGHT_LIMITS``: ``binance=2400,bybit=600`` (request weight per IP
    and window; names from ``exchanges.venues.VENUES``). Raises ConfigError naming a
    malformed item."""
    out: dict[str, int] = {}
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        name, _, number = item.partition("=")
        if name.strip() not in VENUES or not number.strip().isdigit() or int(number) <= 0:
            raise ConfigError(f"EXCHANGE_WEIGHT_LIMITS: {item!r} is not "
                              f"<{'|'.join(VENUES)}>=<positive integer>")
        out[name.strip()] = int(number)
    return out


def _cors_origins(value: str | None, app_env: str) -> tuple[str, ...]:
    """``CORS_ORIGINS``: ``*`` or comma-separated origins (``https://app.example.com``).
    Unset: any origin in the demo, the server's own origin only in production.
    Raises ConfigError naming an origin that is not ``scheme://host[:port]``."""
    if value is None or not value.strip():
        return ("*",) if app_env == "demo" else ()
    out = []
    for item in (v.strip().rstrip("/") for v in value.split(",")):
        if not item:
            continue
        if item != "*" and not re.fullmatch(r"https?://[^/\s]+", item):
            raise ConfigError(f"CORS_ORIGINS: {item!r} is not * or scheme://host[:port]")
        out.append(item)
    return tuple(out)


def _demo_secrets() -> dict[str, str]:
    """Generated demo secrets, persisted so that restarts keep tokens and keys valid."""
    path = VAR_DIR / "demo-secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    values = {
        "SECRET_KEY": secrets.token_urlsafe(32),
        "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "ADMIN_TOKEN": secrets.token_urlsafe(24),
        "DEMO_PASSWORD": secrets.token_urlsafe(9),
    }
    path.write_text(json.dumps(values, indent=2))
    path.chmod(0o600)
    return values


def _demo_fcm_credentials(sim_http: str) -> str:
    """A service-account file for the simulator's FCM
    (``var/demo-fcm-service-account-<port>.json``: a generated RSA key, ``token_uri`` the
    simulator's ``/token``), made once per simulator port. Returns its path."""
    path = VAR_DIR / f"demo-fcm-service-account-{sim_http.rsplit(':', 1)[-1]}.json"
    token_uri = f"{sim_http}/token"
    if path.exists():
        try:
            if json.loads(path.read_text()).get("token_uri") == token_uri:
                return str(path)
        except ValueError:
            pass
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "pushsrv-demo",
        "private_key_id": secrets.token_hex(20), "private_key": pem,
        "client_email": "pushsrv-demo@pushsrv-demo.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri}, indent=2))
    path.chmod(0o600)
    return str(path)


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build the Config from ``env`` (default ``os.environ``).

    Raises ConfigError naming every missing variable in production, or an unknown
    ``APP_ENV``.
    """
    env = os.environ if env is None else env
    app_env = env.get("APP_ENV", "demo")
    if app_env not in ("demo", "production"):
        raise ConfigError(f"APP_ENV must be 'demo' or 'production', not {app_env!r}")
    values: dict[str, Any] = {"APP_ENV": app_env}
    if app_env == "production":
        missing = [name for name in REQUIRED_IN_PRODUCTION if not env.get(name)]
        if missing:
            raise ConfigError("production needs " + ", ".join(missing))
        for name in REQUIRED_IN_PRODUCTION:
            values[name] = env[name]
        venue_urls = {k: env.get(k, v) for k, v in REAL_VENUE_URLS.items()}
    else:
        demo = _demo_secrets()
        for name in ("SECRET_KEY", "KEY_ENCRYPTION_KEY", "ADMIN_TOKEN", "DEMO_PASSWORD"):
            values[name] = env.get(name) or demo[name]
        values["DATABASE_URL"] = env.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'demo.sqlite3'}"
        sim_port = int(env.get("SIMULATOR_PORT", "9100"))
        values["SIMULATOR_PORT"] = sim_port
        values["EMBED_SIMULATOR"] = _bool(env.get("EMBED_SIMULATOR"), True)
        sim_http, sim_ws = f"http://127.0.0.1:{sim_port}", f"ws://127.0.0.1:{sim_port}"
        venue_urls = {k: env.get(k) or (sim_ws if k.endswith("_WS_URL") else sim_http)
                      for k in REAL_VENUE_URLS}
        # a configured path that does not exist is kept: the demo warns about it
        values["SIMULATOR_REPLAY_CSV"] = env.get("SIMULATOR_REPLAY_CSV") or str(DEFAULT_REPLAY_CSV)
        # notifications go to the simulator's FCM (its /token and messages:send)
        values["FCM_URL"] = env.get("FCM_URL") or sim_http
        values["GOOGLE_APPLICATION_CREDENTIALS"] = (env.get("GOOGLE_APPLICATION_CREDENTIALS")
                                                    or _demo_fcm_credentials(sim_http))
    values["VENUE_URLS"] = venue_urls
    values["RECONCILE_REPAIR"] = _bool(env.get("RECONCILE_REPAIR"), False)
    values["OLD_KEY_ENCRYPTION_KEYS"] = tuple(
        k.strip() for k in env.get("OLD_KEY_ENCRYPTION_KEYS", "").split(",") if k.strip())
    values["EGRESS_IPS"] = _egress_ips(env.get("EGRESS_IPS", ""))
    values["EXCHANGE_WEIGHT_LIMITS"] = _weight_limits(env.get("EXCHANGE_WEIGHT_LIMITS", ""))
    values["CORS_ORIGINS"] = _cors_origins(env.get("CORS_ORIGINS"), app_env)
    if env.get("GC_THRESHOLDS"):
        values["GC_THRESHOLDS"] = _gc_thresholds(env["GC_THRESHOLDS"])
    values["LOG_FORMAT"] = log_format(env)
    values["LOG_LEVEL"] = log_level(env)
    if env.get("MESSAGE_QUEUE_URL"):
        if not env["MESSAGE_QUEUE_URL"].startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("MESSAGE_QUEUE_URL: not a Redis URL (redis://, rediss:// or "
                              "unix://); the stream leases and the push relay use Redis")
        values["MESSAGE_QUEUE_URL"] = env["MESSAGE_QUEUE_URL"]
    for name, cast in (("HOST", str), ("PORT", int), ("ASYNC_MODE", str),
                       ("JWT_EXPIRES_S", int), ("POLL_INTERVAL_S", float),
                       ("EXCHANGE_TIMEOUT_S", float), ("MAX_WS_CONNECTIONS", int), ("LISTEN_BACKLOG", int),
                       ("RECONCILE_INTERVAL_S", float), ("EXIT_MAX_SLIPPAGE", int),
                       ("MESSAGE_QUEUE_CHANNEL", str), ("LEASE_TTL_S", float),
                       ("RECONCILE_BATCH", int),
                       ("DB_POOL_SIZE", int), ("DB_MAX_OVERFLOW", int),
                       ("DB_POOL_TIMEOUT_S", float), ("REDIS_MAX_CONNECTIONS", int),
                       ("REDIS_POOL_TIMEOUT_S", float), ("SUBSCRIBE_CONCURRENCY", int),
                       ("STREAM_CONNECT_CONCURRENCY", int),
                       ("KEY_CACHE_TTL_S", float),
                       ("EXIT_MAX_RETRIES", int), ("EXIT_DEADLINE_S", float),
                       ("PROTECTION_SWEEP_S", float),
                       ("LOGIN_RATE_LIMIT", str), ("LOGIN_USERNAME_RATE_LIMIT", str),
                       ("REFRESH_RATE_LIMIT", str), ("RATELIMIT_STORAGE_URI", str),
                       ("TRUSTED_PROXIES", int),
                       ("REFRESH_EXPIRES_S", int), ("GOOGLE_APPLICATION_CREDENTIALS", str),
                       ("FCM_URL", str), ("FCM_TIMEOUT_S", float),
                       ("NOTIFY_ONLINE_GRACE_MS", int), ("NOTIFY_CONCURRENCY", int),
                       ("NOTIFY_STANDBY_S", float), ("PRICE_ALERTS_RELOAD_S", float)):
        if env.get(name):
            values[name] = cast(env[name])
    if values.get("TRUSTED_PROXIES", 0) < 0:
        raise ConfigError("TRUSTED_PROXIES must be 0 (no proxy) or the number of proxies in front")
    return Config(**values)


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``LOG_FORMAT``: ``plain`` (default, ``key=value`` lines) or ``json``. Read
    before the rest of the configuration, so that its errors are logged in the right
    format. Raises ConfigError for another value."""
    env = os.environ if env is None else env
    value = (env.get("LOG_FORMAT") or "plain").strip().lower()
    if value not in ("plain", "json"):
        raise ConfigError(f"LOG_FORMAT must be 'plain' or 'json', not {value!r}")
    return value


def log_level(env: Mapping[str, str] | None = None) -> str:
    """``LOG_LEVEL``: DEBUG, INFO (default), WARNING or ERROR. Raises ConfigError for
    another value."""
    env = os.environ if env is None else env
    value = (env.get("LOG_LEVEL") or "INFO").strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
    return value
