"""Shared pieces of the benchmarks: processes and databases, account setup over REST,
Socket.IO listeners and the streams benchmark's samplers (statistics, /proc figures and
printing are in ``bench.measure``).

Everything talks to 127.0.0.1 only (the simulator and server helpers of
``tests/support`` bind there). Times are seconds unless a name ends in ``_ms``.
"""
from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import socketio
from requests.adapters import HTTPAdapter

from bench.measure import RESULTS_DIR, lat_s  # noqa: F401 (RESULTS_DIR: re-exported to five benchmarks)
from tests.support.server import ServerProcess, start_server
from tests.support.simulator import SimulatorProcess, start_simulator

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT_TYPES = ["balance", "positions", "pnl", "orders"]
EVENTS = ("balance", "positions", "pnl", "orders", "stream_status", "error")
REQUEST_TIMEOUT_S = 60.0


# ---- processes ----------------------------------------------------------------------------
class Stack:
    """Database + simulator + server, started in order and stopped in reverse.

    ``db``: ``sqlite`` (a file in a temp dir, a copy of ``sqlite_template`` when given)
    or ``postgresql`` (a fresh database made like ``tests/conftest.make_pg_database``,
    dropped on stop). Logs go to
    ``log_dir`` (the server's as ``server-<port>.log``; the simulator's is copied
    there as ``simulator.log`` before the helper deletes it).
    """

    def __init__(self, db: str, log_dir: Path, extra_env: dict | None = None,
                 sqlite_template: Path | None = None) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self._drop: Callable[[], None] | None = None
        self.sim: SimulatorProcess | None = None
        self.server: ServerProcess | None = None
        if db == "sqlite":
            self.sqlite_path: Path | None = self._tmp / "bench.sqlite3"
            if sqlite_template is not None:  # a database left by an earlier run's setup
                shutil.copyfile(sqlite_template, self.sqlite_path)
            self.db_url = f"sqlite:///{self.sqlite_path}"
        elif db == "postgresql":
            from tests.conftest import PG_ADMIN_URL, make_pg_database
            self.sqlite_path = None
            self.db_url, self._drop = make_pg_database(PG_ADMIN_URL)
        else:
            raise ValueError(f"unknown db {db!r}")
        try:
            self.sim = start_simulator()
            # one pooled session is shared by the setup threads: make the pool big enough
            self.sim._session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=64))
            # the setup threads log in from one address at once: login limits count every
            # attempt in flight (api/ratelimit.py), so the bench lifts the per-address one
            self.server = start_server(self.db_url, self.sim.url, self.sim.ws_url, log_dir,
                                       extra_env={"LOGIN_RATE_LIMIT": "100000 per minute",
                                                  **(extra_env or {})}, real_limits=True)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server, keep the simulator log, stop the simulator, drop the database."""
        if self.server is not None:
            self.server.stop()
        if self.sim is not None:
            shutil.copy(self.sim.log_path, self.log_dir / "simulator.log")
            self.sim.stop()
        if self._drop is not None:
            self._drop()
            self._drop = None
        shutil.rmtree(self._tmp, ignore_errors=True)


# ---- REST --------------------------------------------------------------------------------
_local = threading.local()


def rest(method: str, url: str, token: str | None = None, body: dict | None = None,
         headers: dict | None = None) -> requests.Response:
    """One HTTP call on this thread's keep-alive session (bearer ``token`` if given).
    A 429 is retried after its ``Retry-After`` (as an app would), up to 10 times: the
    server answers 429 when the exchange's rate budget for its IP is used up."""
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    headers = dict(headers or {}, **({"Authorization": f"Bearer {token}"} if token else {}))
    for _ in range(10):
        resp = session.request(method, url, json=body, headers=headers, timeout=REQUEST_TIMEOUT_S)
        if resp.status_code != 429:
            return resp
        time.sleep(min(70.0, float(resp.headers.get("Retry-After") or 5)) * (1 + random.random() / 4))
    return resp


@dataclass
class Account:
    """An app user with one simulator-funded Binance key. ``steps_s``: seconds spent in
    each setup call (sim account, register, login, key)."""

    username: str
    password: str
    api_key: str
    api_secret: str
    user_id: int = 0
    token: str = ""
    key_id: int = 0
    steps_s: dict[str, float] = field(default_factory=dict)

    @property
    def setup_s(self) -> float:
        return sum(self.steps_s.values())


def _expect(resp: requests.Response, status: int, what: str) -> dict:
    if resp.status_code != status:
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.text[:200]}")
    return resp.json()


def create_account(server_url: str, sim: SimulatorProcess, tag: str,
                   before_key: Callable[[Account], None] | None = None) -> Account:
    """Simulator account (USDT 10000) + register + login + ``POST /api/exchange/keys``.
    ``before_key(account)`` runs after the simulator account exists and before the key
    reaches the server (e.g. to open a position the first snapshot then holds)."""
    acct = Account("b" + tag, "pw-" + uuid.uuid4().hex, "bk" + uuid.uuid4().hex,
                   "bs" + uuid.uuid4().hex)
    t = time.perf_counter()

    def step(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        acct.steps_s[name], t = now - t, now
    sim.create_account(acct.api_key, acct.api_secret, balances={"USDT": "10000"})
    step("sim_account")
    if before_key is not None:
        before_key(acct)
        step("before_key")
    creds = {"username": acct.username, "password": acct.password}
    acct.user_id = _expect(rest("POST", server_url + "/api/auth/register", body=creds), 201,
                           "register")["id"]
    step("register")
    acct.token = _expect(rest("POST", server_url + "/api/auth/login", body=creds), 200,
                         "login")["access_token"]
    step("login")
    key = {"exchange": "binance", "api_key": acct.api_key, "api_secret": acct.api_secret,
           "testnet": False, "label": "bench"}
    acct.key_id = _expect(rest("POST", server_url + "/api/exchange/keys", acct.token, key), 201,
                          "add key")["id"]
    step("add_key")
    return acct


def run_pool(fn: Callable[[int], Any], n: int, workers: int) -> tuple[list, list[str]]:
    """``fn(i)`` for i in range(n) on ``workers`` threads; ``(results in order with None
    for failures, error strings)``."""
    results: list = [None] * n
    errors: list[str] = []
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(fn, i): i for i in range(n)}
        for fut, i in futures.items():
            try:
                results[i] = fut.result()
            except Exception as e:  # one failed account must not stop the bench
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
    return results, errors


# ---- Socket.IO ---------------------------------------------------------------------------
class Listener:
    """One python-socketio ``AsyncClient`` subscribed to the four account types. Every
    event is kept as ``(time.time() at receipt, name, data)`` in ``events``."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[float, str, Any]] = []
        self.opened_at = 0.0
        self._arrived = asyncio.Event()
        for name in EVENTS:
            self.sio.on(name, self._handler(name))

    def _handler(self, name: str) -> Callable[[Any], None]:
        def handle(data: Any = None) -> None:
            self.events.append((time.time(), name, data))
            self._arrived.set()
        return handle

    async def open(self, url: str, timeout: float, wait_data: bool = True) -> float:
        """Connect, subscribe (ack must be ok) and, with ``wait_data``, wait for one push
        of each account type; returns the seconds this took. Raises on refusal, bad ack
        or timeout. Without ``wait_data``, ``first_data_s()`` tells when the pushes came."""
        t0 = self.opened_at = time.time()
        deadline = time.monotonic() + timeout
        await self.sio.connect(url, auth={"token": self.account.token},
                               transports=["websocket"], wait_timeout=timeout)
        ack = await self.sio.call("subscribe", {"types": ACCOUNT_TYPES}, timeout=timeout)
        if not (isinstance(ack, dict) and ack.get("ok")):
            raise RuntimeError(f"subscribe refused: {ack}")
        while wait_data and not set(ACCOUNT_TYPES) <= {name for _, name, _ in self.events}:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), max(0.01, deadline - time.monotonic()))
        return time.time() - t0

    def first_data_s(self) -> float | None:
        """Seconds from ``open`` to the first push of every account type (None: some
        type has not come yet)."""
        first: dict[str, float] = {}
        for t, name, _ in self.events:
            if name in ACCOUNT_TYPES:
                first.setdefault(name, t)
        if not set(ACCOUNT_TYPES) <= set(first):
            return None
        return max(first.values()) - self.opened_at

    def last(self, name: str) -> Any:
        """The data of the latest ``name`` event, or None."""
        for _, got, data in reversed(self.events):
            if got == name:
                return data
        return None

    def count(self, t_from: float, t_to: float) -> int:
        """Events received in ``[t_from, t_to)``."""
        return sum(1 for t, _, _ in self.events if t_from <= t < t_to)


async def first_events(items: list[tuple[Listener, float, str, Callable[[Any], bool]]],
                       timeout: float) -> list[tuple[float, Any] | None]:
    """For each ``(listener, since, name, predicate)``: the first ``(t, data)`` event named
    ``name`` received at or after ``since`` whose data satisfies ``predicate``; waits up
    to ``timeout`` seconds for the missing ones (None when still missing)."""
    found: list[tuple[float, Any] | None] = [None] * len(items)
    cursor = [0] * len(items)
    deadline = time.monotonic() + timeout
    while True:
        for i, (lst, since, name, pred) in enumerate(items):
            if found[i] is not None:
                continue
            events = lst.events
            for j in range(cursor[i], len(events)):
                t, got, data = events[j]
                if t >= since and got == name and pred(data):
                    found[i] = (t, data)
                    break
            cursor[i] = len(events) if found[i] is None else j
        if all(f is not None for f in found) or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.2)


async def loop_lag(samples: list[tuple[float, float]], period: float = 0.05) -> None:
    """Appends ``(time.time(), lag_s)``: how late this process's event loop woke up from a
    ``period`` sleep (the bench's own delay added to every receive time). Runs until
    cancelled."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(period)
        samples.append((time.time(), time.monotonic() - t - period))


# ---- helpers of the streams benchmark (asyncio side) ---------------------------------------
VENUES = ("binance", "bybit")


def row(rows, symbol: str = "XRPUSDT"):  # type: ignore[no-untyped-def]
    return next((r for r in rows or [] if r.get("symbol") == symbol), None)


def th(ctx: dict, fn, *args, **kw):  # type: ignore[no-untyped-def]
    """Run a blocking call on the bench's thread pool (an awaitable)."""
    return asyncio.get_running_loop().run_in_executor(ctx["pool"], lambda: fn(*args, **kw))


async def admin_stats(ctx: dict) -> dict:
    return (await th(ctx, rest, "GET", ctx["url"] + "/admin/stats",
                     headers={"X-Admin-Token": ctx["server"].admin_token})).json()


def all_live(st: dict) -> bool:
    return st["running"] > 0 and st["by_state"].get("live") == st["running"]


async def wait_states(ctx: dict, done, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    """Poll ``/admin/stats`` ``streams`` every 0.5 s until ``done(streams)``; seconds taken."""
    t0 = time.time()
    while True:
        st = (await admin_stats(ctx))["streams"]
        if done(st) or time.time() - t0 > timeout:
            return {"s": round(time.time() - t0, 2), "reached": done(st), "by_state": st["by_state"]}
        await asyncio.sleep(0.5)


def per_venue(items: list, found: list) -> dict:
    """Latency blocks by venue: ``items`` ``(client, t0, ...)``, ``found`` the
    ``first_events`` results (None = missing)."""
    return {v: {**lat_s([f[0] - it[1] for it, f in zip(items, found) if it[0].exchange == v and f]),
                "missing": sum(1 for it, f in zip(items, found) if it[0].exchange == v and not f)}
            for v in VENUES}


async def sampler(out: list, fetch, stop: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
    """Append ``(mid time, fetch(), call seconds)`` every ~0.5 s until ``stop``."""
    while not stop.is_set():
        t = time.time()
        try:
            got = await fetch()
        except Exception:  # a missed sample only widens the spacing
            continue
        out.append(((t + time.time()) / 2, got, time.time() - t))
        await asyncio.sleep(max(0.0, 0.5 - (time.time() - t)))


def calls_at(sims: list, t: float, venue: str) -> float:
    """Simulator calls of ``venue`` at time ``t``, interpolated between samples."""
    a = max((s for s in sims if s[0] <= t), key=lambda s: s[0], default=sims[0])
    b = min((s for s in sims if s[0] > t), key=lambda s: s[0], default=a)
    return a[1][venue] + ((b[1][venue] - a[1][venue]) * (t - a[0]) / (b[0] - a[0]) if b is not a else 0)
