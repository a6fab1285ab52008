"""A seeded chaos run against real processes: random orders and faults, kill -9 of the
server at chosen moments, restarts, then reconcile until quiet and compare the
ledger with the simulator's truth. Used by ``tests/e2e/test_chaos.py`` (a few seeds)
and ``bench/chaos.py`` (many).

One run = one seed = one fresh user and key (Binance or Bybit) on a shared simulator
and a fresh database. Each round picks an action (MARKET, resting LIMIT, LIMIT with
``timeout_s``, IOC/FOK, close via ``POST /api/positions/close``, a later full or
partial fill of a resting order through the simulator's control API; protection legs
of issue 20: set a stop-loss / take-profit in exchange or server mode, remove them,
move the price through them, a manual close racing a trigger) and maybe a fault
(kill -9 during an order request, while the exchange's reply is held back, between
an order and its fill, during an exit chase, between a leg's row and the exchange's
ack; a leg firing while the server is down; the stream dropped while a leg fires;
``drop_ws``, ``expire_listen_key`` (Binance), 5xx, timeout, latency, 429,
``reject_orders``, each also while legs are placed or canceled).

The comparison (``Figures``): every exchange fill exactly once in the ledger
(``lost``/``doubled``), no trade ``pending`` or ``closing`` and no exit ``working``
after the quiet reconcile (``stuck_pending``/``stranded_exits``), every trade's
filled quantity equal to its exchange order's executed quantity (``state_mismatches``),
and the ledger's net position per symbol (the book of its fills) equal to the
exchange's (``position_mismatches``); the risk figures of issue 20
(``figure_mismatches``): each trade's stored ``open_quantity`` equal to the book's,
and the realized figure (the ledger's running sum, and ``GET /api/account/pnl``)
equal to the trades' ``realized_pnl`` plus the funding fees; the protection checks
(``leg_problems``): no leg left on the exchange (nor a live server-mode rule) for a
closed position, no position opened or flipped by a leg's or an exit's fill, and the
ledger's held quantities (the trades' ``open_quantity``, signed) equal to the
exchange positions.
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import requests
from cryptography.fernet import Fernet
from sqlalchemy import select

from exchanges.simulator.bybit_format import exec_uuid
from models import LIVE_LEG_STATUSES, Database, Exit, Fill, FundingFee, ProtectionLeg, Trade
from services import book, ledger
from tests.support.server import ServerProcess, free_port, start_server

SYMBOLS = {"BTCUSDT": (Decimal("60000"), Decimal("0.10"), ("0.002", "0.003", "0.005")),
           "ETHUSDT": (Decimal("3400"), Decimal("0.01"), ("0.030", "0.050", "0.080"))}
ACTIONS = ("market", "market", "market", "rest", "rest", "timeout", "timeout", "ioc", "fok",
           "close", "close", "fill", "fill", "fill", "fill", "move", "pair",
           "protect", "protect", "protect", "unprotect", "fire", "fire", "race")
FAULTS = (None, None, None, None, "kill_request", "kill_held", "kill_before_fill",
          "kill_exit", "drop_ws", "expire_listen_key", "http_5xx", "timeout", "latency",
          "http_429", "reject_orders", "kill_leg", "kill_fire", "drop_fire")
LEG_KINDS = ("stop_loss", "take_profit", "trailing_stop")
LEG_TYPES = ("STOP_MARKET", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")
FINAL = ("open", "closed", "canceled", "failed", "exit_failed")


def plain_orders(state: dict) -> list[dict]:
    """The orders of a ``/_sim/state`` answer without its held legs (rows of their own
    shape, numbered apart from the orders)."""
    return [o for o in state["orders"] if o.get("type") not in LEG_TYPES]


@dataclass
class Figures:
    """What one run found (all of lost .. state_mismatches must be 0)."""

    seed: int
    database: str
    rounds: int = 0
    kills: int = 0
    orders: int = 0
    fills: int = 0
    lost: int = 0
    doubled: int = 0
    stuck_pending: int = 0
    stranded_exits: int = 0
    position_mismatches: int = 0
    state_mismatches: int = 0
    figure_mismatches: int = 0
    leg_problems: int = 0
    legs_set: int = 0
    leg_fills: int = 0  # ledger fills with a leg's reason (legs that fired)
    quiet_s: float = 0.0
    reconciles: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing was lost, doubled, stuck, stranded or mismatched."""
        return not (self.lost or self.doubled or self.stuck_pending or self.stranded_exits
                    or self.position_mismatches or self.state_mismatches
                    or self.figure_mismatches or self.leg_problems)


class ChaosRun:
    """One seeded run (see the module docstring). ``sim``: a SimulatorProcess;
    ``database_url``: a fresh, empty database; ``log_dir``: where server logs go."""

    def __init__(self, sim, database_url: str, log_dir: Path, seed: int, rounds: int = 12,  # type: ignore[no-untyped-def]
                 database: str = "sqlite", exchange: str = "binance") -> None:
        self.sim, self.url, self.log_dir = sim, database_url, log_dir
        self.exchange = exchange
        self.rng = random.Random(seed)
        self.rounds = rounds
        self.figures = Figures(seed=seed, database=database)
        self.port = free_port()
        self.env = {"SECRET_KEY": uuid.uuid4().hex, "ADMIN_TOKEN": uuid.uuid4().hex,
                    "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                    "EXCHANGE_TIMEOUT_S": "2", "ORDER_CONFIRM_TIMEOUT_S": "2",
                    "RECONCILE_INTERVAL_S": "5", "EXIT_DEADLINE_S": "8",
                    "EXIT_MAX_SLIPPAGE": "5"}
        self.server: ServerProcess | None = None
        self.api_key = "chaos" + uuid.uuid4().hex
        self.api_secret = "sec" + uuid.uuid4().hex
        self.token = ""
        self.key_id = 0
        self.user_id = 0
        self.last_fault = time.monotonic()

    # ---- processes ------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart) the server on the run's port and database."""
        self.server = start_server(self.url, self.sim.url, self.sim.ws_url, self.log_dir,
                                   extra_env=self.env, port=self.port)

    def kill(self) -> None:
        """kill -9 the server, then start it again."""
        assert self.server is not None
        self.server.kill()
        self.figures.kills += 1
        self.start()

    def stop(self) -> None:
        """Stop the server (SIGTERM)."""
        if self.server is not None:
            self.server.stop()

    # ---- REST -----------------------------------------------------------------------
    def _req(self, method: str, path: str, body: dict | None = None, admin: bool = False,
             timeout: float = 20) -> requests.Response | None:
        assert self.server is not None
        headers = ({"X-Admin-Token": self.server.admin_token} if admin
                   else {"Authorization": f"Bearer {self.token}"} if self.token else {})
        try:
            return requests.request(method, self.server.url + path, json=body,
                                    headers=headers, timeout=timeout)
        except requests.RequestException:
            return None  # the server was killed under the request

    def setup(self) -> None:
        """Fund the account on the simulator, register, log in, add the key."""
        self.sim.create_account(self.api_key, self.api_secret, balances={"USDT": "1000000"})
        for symbol, (price, _, _) in SYMBOLS.items():
            self.sim.set_price(symbol, f"{price:f}")
        user, pw = "c" + uuid.uuid4().hex[:10], "pw-" + uuid.uuid4().hex
        assert self._req("POST", "/api/auth/register", {"username": user, "password": pw}).status_code == 201
        self.token = self._req("POST", "/api/auth/login", {"username": user, "password": pw}).json()["access_token"]
        r = self._req("POST", "/api/exchange/keys", {"exchange": self.exchange, "api_key": self.api_key,
                                                     "api_secret": self.api_secret, "label": "chaos"})
        assert r is not None and r.status_code == 201, r.text if r is not None else None
        self.key_id = r.json()["id"]
        self.user_id = self._req("GET", "/api/auth/me").json()["id"]

    # ---- actions --------------------------------------------------------------------
    def _order_body(self, kind: str) -> dict:
        symbol = self.rng.choice(sorted(SYMBOLS))
        price, tick, sizes = SYMBOLS[symbol]
        mark = Decimal(self.sim.state()["prices"][symbol]["price"])
        side = self.rng.choice(("BUY", "SELL"))
        body = {"key_id": self.key_id, "symbol": symbol, "side": side,
                "quantity": self.rng.choice(sizes)}
        away = (mark * Decimal("0.98") if side == "BUY" else mark * Decimal("1.02"))
        through = (mark * Decimal("1.01") if side == "BUY" else mark * Decimal("0.99"))
        quant = lambda p: f"{(p / tick).to_integral_value() * tick:f}"  # noqa: E731
        if kind == "market":
            body["type"] = "MARKET"
        elif kind in ("rest", "timeout"):
            body.update(type="LIMIT", price=quant(away))
            if kind == "timeout":
                body["timeout_s"] = self.rng.choice((1, 2, 3))
        else:  # ioc / fok: marketable or not
            body.update(type="LIMIT", time_in_force=kind.upper(),
                        price=quant(through if self.rng.random() < 0.7 else away))
        return body

    def _resting(self) -> list[dict]:
        return [o for o in plain_orders(self.sim.state(self.api_key))
                if o["status"] in ("NEW", "PARTIALLY_FILLED")]

    def _fill_some(self) -> None:
        resting = self._resting()
        if not resting:
            return
        o = self.rng.choice(resting)
        left = Decimal(o["orig_qty"]) - Decimal(o["executed_qty"])
        step = Decimal("0.001")
        qty = left if self.rng.random() < 0.5 or left <= step else (
            (left / 2 / step).to_integral_value() * step)
        try:
            self.sim.fill(o["order_id"], quantity=f"{qty:f}")
        except Exception:
            pass

    def _positions(self) -> list[dict]:
        return [p for p in self.sim.state(self.api_key)["positions"] if Decimal(p["amount"]) != 0]

    # ---- protection legs (issue 20) -------------------------------------------------
    def _protect(self) -> None:
        """Set a stop-loss and/or take-profit (and sometimes a trailing stop) about 1 %
        from the mark on a held position, in exchange or server mode."""
        held = self._positions()
        if not held:
            return
        p = self.rng.choice(held)
        symbol, long_ = p["symbol"], Decimal(p["amount"]) > 0
        tick = SYMBOLS[symbol][1]
        mark = Decimal(self.sim.state()["prices"][symbol]["price"])
        quant = lambda x: f"{(x / tick).to_integral_value() * tick:f}"  # noqa: E731
        off = Decimal("0.01") * self.rng.choice((1, 1, 2))
        body: dict = {"key_id": self.key_id, "symbol": symbol,
                      "mode": self.rng.choice(("exchange", "server"))}
        kinds = self.rng.sample(LEG_KINDS[:2], self.rng.choice((1, 2)))
        if "stop_loss" in kinds:
            body["stop_loss"] = {"trigger_price": quant(mark * (1 - off if long_ else 1 + off))}
        if "take_profit" in kinds:
            body["take_profit"] = {"trigger_price": quant(mark * (1 + off if long_ else 1 - off))}
        if self.rng.random() < 0.25 and (body["mode"] == "server" or self.exchange == "binance"):
            body["trailing_stop"] = {"callback_rate": "1"}
        self.figures.legs_set += 1
        self._req("PUT", "/api/positions/protection", body)

    def _unprotect(self) -> None:
        held = self._positions()
        if held:
            symbol = self.rng.choice(held)["symbol"]
            self._req("DELETE", f"/api/positions/protection?key_id={self.key_id}&symbol={symbol}")

    def _fire(self) -> None:
        """Move a held position's price 1.5-3 % up or down: the legs it reaches fire
        (on the exchange, or by the server's rules)."""
        held = self._positions()
        if not held:
            return
        symbol = self.rng.choice(held)["symbol"]
        tick = SYMBOLS[symbol][1]
        mark = Decimal(self.sim.state()["prices"][symbol]["price"])
        move = Decimal(self.rng.choice(("0.015", "0.025", "0.03"))) * self.rng.choice((-1, 1))
        self.sim.set_price(symbol, f"{(mark * (1 + move) / tick).to_integral_value() * tick:f}")

    def _race(self) -> None:
        """A manual close racing a trigger: the close request and the price move at once."""
        held = self._positions()
        if not held:
            return
        symbol = self.rng.choice(held)["symbol"]
        t = threading.Thread(target=self._req, args=(
            "POST", "/api/positions/close", {"key_id": self.key_id, "symbol": symbol}), daemon=True)
        t.start()
        time.sleep(self.rng.choice((0.0, 0.05, 0.2)))
        self._fire()
        t.join(30)

    def _act(self, kind: str) -> None:
        if kind == "protect":
            self._protect()
            return
        if kind == "unprotect":
            self._unprotect()
            return
        if kind == "fire":
            self._fire()
            time.sleep(0.3)
            return
        if kind == "race":
            self._race()
            return
        if kind == "fill":
            self._fill_some()
            return
        if kind == "move":  # the market moves a little (resting orders it crosses fill)
            symbol = self.rng.choice(sorted(SYMBOLS))
            price, tick, _ = SYMBOLS[symbol]
            step = price * Decimal("0.002") * self.rng.choice((-1, 1))
            mark = Decimal(self.sim.state()["prices"][symbol]["price"]) + step
            self.sim.set_price(symbol, f"{(mark / tick).to_integral_value() * tick:f}")
            return
        if kind == "pair":  # two orders at once
            kinds = [self.rng.choice(("market", "rest", "timeout", "ioc")) for _ in range(2)]
            bodies = [self._order_body(k) for k in kinds]
            self.figures.orders += 2
            threads = [threading.Thread(target=self._req, args=("POST", "/api/orders", b),
                                        daemon=True) for b in bodies]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return
        if kind == "close":
            held = self._positions()
            if held:
                self._req("POST", "/api/positions/close",
                          {"key_id": self.key_id, "symbol": self.rng.choice(held)["symbol"]})
            return
        self.figures.orders += 1
        self._req("POST", "/api/orders", self._order_body(kind))

    def _in_thread_then_kill(self, kind: str, after_s: float) -> None:
        t = threading.Thread(target=self._act, args=(kind,), daemon=True)
        t.start()
        time.sleep(after_s)
        self.kill()
        t.join(30)

    def round(self) -> None:
        """One round: an action, maybe under a fault."""
        kind = self.rng.choice(ACTIONS)
        fault = self.rng.choice(FAULTS)
        if fault == "kill_exit":
            kind = "close"
        if fault in ("kill_leg", "kill_fire", "drop_fire"):
            kind = "protect"
        if fault == "expire_listen_key" and self.exchange != "binance":
            fault = "drop_ws"  # Bybit's private stream has no listen key
        if (kind == "move" and fault is not None and fault.startswith("kill_")) or (
                kind == "close" and not self._positions()):
            kind = "market"
        key = self.api_key
        if fault is not None:
            self.last_fault = time.monotonic()
        if fault == "kill_request":       # killed while its request is under way
            self.sim.add_fault(kind="latency", api_key=key, ms=1500, count=2)
            self._in_thread_then_kill(kind if kind != "fill" else "market", 0.6)
            self.sim.clear_faults()
        elif fault == "kill_held":        # executed by the exchange, reply held back
            self.sim.add_fault(kind="timeout", api_key=key, ms=4000, count=1)
            self._in_thread_then_kill(kind if kind != "fill" else "market", 0.8)
            self.sim.clear_faults()
        elif fault == "kill_before_fill":  # between an order and its fill
            self._act("rest")
            self.kill_only()
            self._fill_some()
            self.start()
        elif fault == "kill_exit":        # during an exit chase
            self.sim.add_fault(kind="reject_orders", api_key=key, count=self.rng.choice((1, 2, 3)))
            self.sim.add_fault(kind="latency", api_key=key, ms=700, count=4)
            self._in_thread_then_kill("close", self.rng.choice((0.5, 1.2, 2.0)))
            self.sim.clear_faults()
        elif fault == "kill_leg":         # between the leg's row and the exchange's ack
            if not self._positions():
                self._act("market")
            self.sim.add_fault(kind="latency", api_key=key, ms=1500, count=2)
            self._in_thread_then_kill("protect", self.rng.choice((0.3, 0.6, 1.0)))
            self.sim.clear_faults()
        elif fault == "kill_fire":        # a leg fires while the server is down
            if not self._positions():
                self._act("market")
            self._act("protect")
            self.kill_only()
            self._fire()
            time.sleep(0.5)
            self.start()
        elif fault == "drop_fire":        # the stream is dropped while a leg fires
            if not self._positions():
                self._act("market")
            self._act("protect")
            self.sim.add_fault(kind="drop_ws", api_key=key)
            self._fire()
            time.sleep(0.5)
        elif fault in ("drop_ws", "expire_listen_key"):
            self.sim.add_fault(kind=fault, api_key=key)
            self._act(kind)
        elif fault is not None:
            extra = {"latency": {"ms": 800, "count": 3}, "timeout": {"ms": 3000, "count": 1},
                     "http_429": {"count": 1, "ms": 1000}}.get(fault, {"count": 1})
            self.sim.add_fault(kind=fault, api_key=key, **extra)
            self._act(kind)
            self.sim.clear_faults()
            if fault == "http_429":
                time.sleep(1.2)  # the server backs off for the Retry-After (1 s)
        else:
            self._act(kind)
        self.figures.rounds += 1

    def kill_only(self) -> None:
        """kill -9 without the restart (the caller starts it again)."""
        assert self.server is not None
        self.server.kill()
        self.figures.kills += 1

    # ---- the end --------------------------------------------------------------------
    def reconcile_until_quiet(self, max_s: float = 90.0) -> None:
        """``POST /admin/reconcile`` until one run fixes nothing and the ledger has no
        pending trade, no closing trade and no working exit (or ``max_s`` passed)."""
        start = time.monotonic()
        while time.monotonic() - start < max_s:
            r = self._req("POST", "/admin/reconcile", {"user_id": self.user_id}, admin=True,
                          timeout=60)
            self.figures.reconciles += 1
            if r is not None and r.status_code == 200:
                out = r.json()
                if out["fixed"] == 0 and not self._unsettled():
                    break
            time.sleep(1.0)
        self.figures.quiet_s = round(time.monotonic() - self.last_fault, 1)

    def _unsettled(self) -> bool:
        """A trade pending that the exchange does not show resting untouched, a trade
        closing, an exit working, or a LIMIT timeout not carried out yet."""
        resting = {o["client_order_id"] for o in plain_orders(self.sim.state(self.api_key))
                   if o["status"] == "NEW" and Decimal(o["executed_qty"]) == 0}
        db = Database(self.url)
        try:
            with db.session() as s:
                pending = [c for c in s.scalars(select(Trade.client_order_id).where(
                    Trade.key_id == self.key_id, Trade.status == "pending")) if c not in resting]
                other = s.scalars(select(Trade.id).where(
                    Trade.key_id == self.key_id,
                    (Trade.status == "closing") | Trade.cancel_at.is_not(None))).first()
                working = s.scalars(select(Exit.id).where(
                    Exit.key_id == self.key_id, Exit.status == "working")).first()
            return bool(pending) or other is not None or working is not None
        finally:
            db.dispose()

    def compare(self) -> Figures:
        """Compare the ledger with the simulator's orders, fills and positions."""
        f = self.figures
        truth = self.sim.state(self.api_key)
        trade_id = (lambda t: str(t)) if self.exchange == "binance" else (
            lambda t: exec_uuid(int(t)))
        sim_fills = Counter((x["symbol"], trade_id(x["trade_id"])) for x in truth["fills"])
        f.fills = len(sim_fills)
        orders = {o["client_order_id"]: o for o in plain_orders(truth)}
        db = Database(self.url)
        try:
            with db.session() as s:
                stored = list(s.scalars(select(Fill).where(Fill.key_id == self.key_id)))
                led = Counter((x.symbol, x.exchange_trade_id) for x in stored)
                f.leg_fills = sum(1 for x in stored if x.reason in LEG_KINDS)
                trades = list(s.scalars(select(Trade).where(Trade.key_id == self.key_id)))
                exits = list(s.scalars(select(Exit).where(Exit.key_id == self.key_id)))
                legs = list(s.scalars(select(ProtectionLeg).where(
                    ProtectionLeg.key_id == self.key_id,
                    ProtectionLeg.status.in_(LIVE_LEG_STATUSES))))
            with db.session() as s:
                books = {sym: book.load(s, self.key_id, sym, lock=False)[0] for sym in SYMBOLS}
                nets = {sym: b.net for sym, b in books.items()}
                funding = sum((x.amount for x in s.scalars(select(FundingFee).where(
                    FundingFee.key_id == self.key_id))), Decimal(0))
            figure = ledger.realized_pnl(db, self.key_id).all_time
        finally:
            db.dispose()
        self._compare_figures(trades, books, figure, funding)
        self._compare_legs(truth, trades, legs)
        for k in sim_fills:
            if k not in led:
                f.lost += 1
                f.problems.append(f"fill lost {k}")
        for k, n in led.items():
            if k not in sim_fills or n > 1:
                f.doubled += 1
                f.problems.append(f"fill not on the exchange or doubled {k}")
        for t in trades:
            o = orders.get(t.client_order_id)
            if t.status == "pending" and o is not None and o["status"] == "NEW" \
                    and Decimal(o["executed_qty"]) == 0:
                continue  # resting, nothing filled: pending is the exchange's verdict too
            if t.status == "pending":
                f.stuck_pending += 1
                f.problems.append(f"trade {t.id} {t.client_order_id} pending")
                continue
            if t.status == "closing":
                f.stranded_exits += 1
                f.problems.append(f"trade {t.id} closing with no exit working")
            if t.order_type == "RECONCILED":
                f.problems.append(f"reconciled trade {t.id} {t.side} {t.quantity}")
                f.state_mismatches += 1
                continue
            executed = Decimal(o["executed_qty"]) if o else Decimal(0)
            if t.filled_quantity != executed:
                f.state_mismatches += 1
                f.problems.append(f"trade {t.id} {t.status} filled {t.filled_quantity} "
                                  f"exchange {executed} ({o and o['status']})")
            if t.status in ("canceled", "failed") and executed > 0:
                f.state_mismatches += 1
                f.problems.append(f"trade {t.id} {t.status} with exchange fills {executed}")
        for e in exits:
            if e.status == "working":
                f.stranded_exits += 1
                f.problems.append(f"exit {e.id} working")
            filled = [o for c, o in orders.items() if c.startswith(f"exit-{e.id}-")
                      and Decimal(o["executed_qty"]) > 0]
            if (e.status == "filled") != bool(filled):
                f.state_mismatches += 1
                f.problems.append(f"exit {e.id} {e.status}, exchange filled {len(filled)}")
        positions = {p["symbol"]: Decimal(p["amount"]) for p in truth["positions"]}
        for sym in SYMBOLS:
            if positions.get(sym, Decimal(0)) != nets[sym]:
                f.position_mismatches += 1
                f.problems.append(f"position {sym} exchange {positions.get(sym, 0)} "
                                  f"ledger {nets[sym]}")
        return f

    def _compare_figures(self, trades: list, books: dict, figure: Decimal,
                         funding: Decimal) -> None:
        """The risk figures (issue 20) against what the ledger's rows say."""
        f = self.figures
        for t in trades:
            held = books[t.symbol].trades.get(t.id) if t.symbol in books else None
            want = held.open_quantity if held is not None and t.filled_quantity > 0 else 0
            if t.open_quantity != want:
                f.figure_mismatches += 1
                f.problems.append(f"trade {t.id} open_quantity {t.open_quantity} book {want}")
        summed = sum((t.realized_pnl or Decimal(0) for t in trades), Decimal(0)) + funding
        r = self._req("GET", f"/api/account/pnl?key_id={self.key_id}")
        rest = Decimal(r.json()["data"]["realized_pnl"]) if r is not None and r.ok else None
        for name, value in (("running sum", figure), ("GET /api/account/pnl", rest)):
            if value != summed:
                f.figure_mismatches += 1
                f.problems.append(f"realized {name} {value}, trades + funding {summed}")

    def _compare_legs(self, truth: dict, trades: list, live_rows: list) -> None:
        """No leg held for a closed position, none opening or flipping one, and the
        trades' signed ``open_quantity`` equal to the exchange position per symbol."""
        f = self.figures
        positions = {p["symbol"]: Decimal(p["amount"]) for p in truth["positions"]}
        for o in truth["orders"]:
            if o.get("type") in LEG_TYPES and o["status"] == "NEW" \
                    and positions.get(o["symbol"], Decimal(0)) == 0:
                f.leg_problems += 1
                f.problems.append(f"leg {o['client_order_id']} {o['type']} held on the "
                                  f"exchange for the closed {o['symbol']} position")
        for row in live_rows:
            if positions.get(row.symbol, Decimal(0)) == 0:
                f.leg_problems += 1
                f.problems.append(f"leg row {row.id} {row.mode} {row.kind} {row.status} "
                                  f"live for the closed {row.symbol} position")
        coids = {o["order_id"]: o["client_order_id"] or "" for o in plain_orders(truth)}
        held: dict[str, Decimal] = {}
        for x in sorted(truth["fills"], key=lambda x: int(x["trade_id"])):
            before = held.get(x["symbol"], Decimal(0))
            after = before + Decimal(x["qty"]) * (1 if x["side"] == "BUY" else -1)
            held[x["symbol"]] = after
            closing = x.get("source") == "leg" or coids.get(x["order_id"], "").startswith("exit-")
            if closing and (before == 0 or before * after < 0):
                f.leg_problems += 1
                f.problems.append(f"fill {x['trade_id']} of a leg/exit took {x['symbol']} "
                                  f"from {before} to {after}")
        for sym in SYMBOLS:
            signed = sum((t.open_quantity * (1 if t.side == "BUY" else -1) for t in trades
                          if t.symbol == sym and t.open_quantity), Decimal(0))
            if signed != positions.get(sym, Decimal(0)):
                f.leg_problems += 1
                f.problems.append(f"open_quantity {sym} {signed} exchange "
                                  f"{positions.get(sym, 0)}")

    def _legs_settled(self) -> bool:
        """No exchange leg held for a flat position and no live leg row for one."""
        truth = self.sim.state(self.api_key)
        flat = {s for s in SYMBOLS} - {p["symbol"] for p in truth["positions"]
                                       if Decimal(p["amount"]) != 0}
        if any(o.get("type") in LEG_TYPES and o["status"] == "NEW" and o["symbol"] in flat
               for o in truth["orders"]):
            return False
        db = Database(self.url)
        try:
            with db.session() as s:
                return s.scalars(select(ProtectionLeg.id).where(
                    ProtectionLeg.key_id == self.key_id, ProtectionLeg.symbol.in_(flat),
                    ProtectionLeg.status.in_(LIVE_LEG_STATUSES))).first() is None
        finally:
            db.dispose()

    def run(self) -> Figures:
        """Set up, play the rounds, clear the faults, reconcile until quiet, compare."""
        self.start()
        try:
            self.setup()
            for _ in range(self.rounds):
                self.round()
            self.sim.clear_faults()
            time.sleep(0.5)
            self.reconcile_until_quiet()
            deadline = time.monotonic() + 30  # the legs' own reconcile runs every 10 s
            while time.monotonic() < deadline and not self._legs_settled():
                time.sleep(1.0)
            self.reconcile_until_quiet(max_s=30)
            return self.compare()
        finally:
            self.stop()
