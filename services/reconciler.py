"""Reconciliation: the exchange is the source of truth, the ledger is made to agree.

Per account (one API key; keys are never mixed), at start-up, after every stream
reconnect, every ``interval_s`` and on ``POST /admin/reconcile``:

1. settle recent ``pending`` trades by ``client_order_id``;
2. record fills the exchange has and the ledger lacks (symbols the ledger or the
   exchange show activity in, over ``fill_lookback_ms``);
3. compare open positions both ways: the ledger's net quantity per symbol (signed
   filled quantity of its ``open``/``closing``/``exit_failed`` trades) against the
   exchange's; each difference is reported (answer, log, counters) and, with
   ``repair``, closed by an adjusting ``open`` trade at the exchange's entry price
   (``order_type`` ``RECONCILED``), so that the ledger again matches the exchange.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Collection
from decimal import Decimal
from typing import Callable

from sqlalchemy import select

from exchanges.base import ExchangeClient
from exchanges.errors import ExchangeError
from exchanges.types import Position
from models import Database, ExchangeKey, Trade, TradeStatus, now_ms
from services import ledger
from services.errors import ServiceError
from services.orders import OrderService
from services.serialize import dec

logger = logging.getLogger(__name__)

HOLDING = (TradeStatus.OPEN.value, TradeStatus.CLOSING.value, TradeStatus.EXIT_FAILED.value)


class Reconciler:
    """Settles the ledger against the exchange.

    Args:
        db: the database; orders: the OrderService (settles pending trades);
        client_for: the cached exchange client of an ExchangeKey row;
        repair: write adjusting trades for position differences (``RECONCILE_REPAIR``);
        pending_max_age_ms / fill_lookback_ms: how far back to look.
        confirm_delay_s: a position difference must still be there this much later.
    """

    def __init__(self, db: Database, orders: OrderService,
                 client_for: Callable[[ExchangeKey], ExchangeClient], repair: bool = False,
                 pending_max_age_ms: int = 7 * 86_400_000,
                 fill_lookback_ms: int = 86_400_000, confirm_delay_s: float = 1.0) -> None:
        self._db = db
        self._orders = orders
        self._client_for = client_for
        self.repair = repair
        self._pending_max_age_ms = pending_max_age_ms
        self._fill_lookback_ms = fill_lookback_ms
        self.confirm_delay_s = confirm_delay_s
        self._cursor = 0  # last key id of the previous periodic batch
        self._lock = threading.Lock()
        self.runs = 0
        self.differences = 0
        self.repaired = 0
        self.last_run_ms = 0

    # ---- entry points ---------------------------------------------------------
    def reconcile(self, user_id: int | None = None, batch: int | None = None) -> dict:
        """Every account with ledger activity (or all of ``user_id``'s keys).
        ``{"checked", "fixed", "details": [...]}`` as ``POST /admin/reconcile`` answers.

        With ``batch`` (the periodic run), every account with a ``pending`` trade plus
        the next ``batch`` other active accounts in key order (round robin): the REST
        load stays bounded however many accounts there are (Binance counts request
        weight per IP: 1,000 accounts every minute would spend the whole budget)."""
        stmt = select(ExchangeKey).where(ExchangeKey.status != "deleted")
        if user_id is not None:
            keys = self._keys(stmt.where(ExchangeKey.user_id == user_id))
        else:
            active = select(Trade.key_id).where(Trade.status.in_(HOLDING + (TradeStatus.PENDING.value,)))
            keys = self._keys(stmt.where(ExchangeKey.id.in_(active)))
            if batch is not None:
                keys = self._next_batch(keys, batch)
        total = {"checked": 0, "fixed": 0, "details": []}
        for key in keys:
            result = self.reconcile_key(key)
            for k in ("checked", "fixed"):
                total[k] += result[k]
            total["details"] += result["details"]
        return total

    def _keys(self, stmt) -> list[ExchangeKey]:  # type: ignore[no-untyped-def]
        with self._db.session() as s:
            return list(s.scalars(stmt.order_by(ExchangeKey.id)))

    def _next_batch(self, keys: list[ExchangeKey], batch: int) -> list[ExchangeKey]:
        with self._db.session() as s:
            pending = set(s.scalars(select(Trade.key_id).where(
                Trade.status == TradeStatus.PENDING.value).distinct()))
        rest = [k for k in keys if k.id not in pending]
        after = [k for k in rest if k.id > self._cursor] + [k for k in rest if k.id <= self._cursor]
        chosen = after[:batch]
        if chosen:
            self._cursor = chosen[-1].id
        return [k for k in keys if k.id in pending] + chosen

    def reconcile_key(self, key: ExchangeKey, positions: list[Position] | None = None,
                      fills_checked: Collection[str] = ()) -> dict:
        """One account. Exchange errors are reported in ``details``, never raised.

        ``positions``: the exchange's positions when the caller just fetched them
        (None: asked here); ``fills_checked``: symbols whose recent fills the caller
        just fetched and handed to the ledger (a reconnected stream's gap fill), not
        asked again (every fill before the gap went through the stream and the
        write-behind, which never drops one; what a crash lost, the start-up run
        finds)."""
        details: list[dict] = []
        checked = fixed = 0
        try:
            client = self._client_for(key)
            checked, fixed = self._settle_pending(key, client, details)
            if positions is None:
                positions = client.get_positions()  # one call serves steps 2 and 3
            fixed += self._missing_fills(key, client, {p.symbol for p in positions}, details,
                                         skip=fills_checked)
            checked += 1
            fixed += self._positions(key, client, positions, details)
        except (ExchangeError, ServiceError, ValueError) as e:
            details.append({"key_id": key.id, "error": f"{type(e).__name__}: {e}"})
        with self._lock:
            self.runs += 1
            self.last_run_ms = now_ms()
        return {"checked": checked, "fixed": fixed, "details": details}

    def run_periodic(self, interval_s: float, sleep: Callable[[float], None],
                     first_delay_s: float = 2.0, leases=None,  # type: ignore[no-untyped-def]
                     batch: int = 50) -> None:
        """Reconcile every account with ledger activity now (start-up) and then every
        ``interval_s`` seconds, forever (a background task). With several processes
        only the one holding the ``reconciler`` lease runs a period. Each period covers
        the accounts with pending trades and ``batch`` others, round robin."""
        sleep(first_delay_s)
        while True:
            if leases is not None and not leases.acquire("reconciler"):
                sleep(interval_s)
                continue
            try:
                result = self.reconcile(batch=batch)
                if result["fixed"]:
                    logger.info("reconcile run checked=%s fixed=%s", result["checked"], result["fixed"])
            except Exception:  # isolation boundary: the next period tries again
                logger.exception("reconcile run failed")
            sleep(interval_s)

    def reconcile_key_id(self, key_id: int, positions: list[Position] | None = None,
                         fills_checked: Collection[str] = ()) -> None:
        """Reconcile one account by key id (after a stream reconnect: with the
        positions of its snapshot and the symbols its gap fill covered, see
        ``reconcile_key``)."""
        with self._db.session() as s:
            key = s.get(ExchangeKey, key_id)
        if key is not None and key.status != "deleted":
            self.reconcile_key(key, positions, fills_checked)

    def stats(self) -> dict:
        """``{"runs", "differences", "repaired", "last_run_ms", "repair"}``."""
        with self._lock:
            return {"runs": self.runs, "differences": self.differences,
                    "repaired": self.repaired, "last_run_ms": self.last_run_ms,
                    "repair": self.repair}

    # ---- the three steps ----------------------------------------------------------
    def _settle_pending(self, key: ExchangeKey, client: ExchangeClient,
                        details: list[dict]) -> tuple[int, int]:
        since = now_ms() - self._pending_max_age_ms
        with self._db.session() as s:
            pending = list(s.scalars(select(Trade).where(
                Trade.key_id == key.id, Trade.status == TradeStatus.PENDING.value,
                Trade.created_at >= since).order_by(Trade.id).limit(500)))
        fixed = 0
        for trade in pending:
            status = self._orders.settle_pending(trade, client)
            if status != trade.status:
                fixed += 1
                details.append({"client_order_id": trade.client_order_id, "key_id": key.id,
                                "from": trade.status, "to": status})
        return len(pending), fixed

    def _missing_fills(self, key: ExchangeKey, client: ExchangeClient, held: set[str],
                       details: list[dict], skip: Collection[str] = ()) -> int:
        since = now_ms() - self._fill_lookback_ms
        with self._db.session() as s:
            symbols = set(s.scalars(select(Trade.symbol).where(
                Trade.key_id == key.id, Trade.created_at >= since).distinct()))
        symbols = (symbols | held) - set(skip)
        new = 0
        for symbol in sorted(symbols):
            fills = client.get_fills(symbol, start_time=since)
            with self._db.transaction() as s:
                for fill in fills:
                    if ledger.apply_fill(s, key.id, fill):
                        new += 1
                        details.append({"key_id": key.id, "symbol": symbol,
                                        "fill_recorded": fill.trade_id})
        return new

    def _nets(self, key: ExchangeKey, positions: list[Position]
              ) -> tuple[dict[str, Decimal], dict[str, Decimal], dict[str, Decimal]]:
        """``(exchange net, ledger net, exchange entry price)`` per symbol."""
        exchange_net: dict[str, Decimal] = {}
        entry: dict[str, Decimal] = {}
        for p in positions:
            exchange_net[p.symbol] = p.size if p.side == "LONG" else -p.size
            entry[p.symbol] = p.entry_price
        with self._db.session() as s:
            rows = s.execute(select(Trade.symbol, Trade.side, Trade.filled_quantity).where(
                Trade.key_id == key.id, Trade.status.in_(HOLDING))).all()
        ledger_net: dict[str, Decimal] = {}
        for r in rows:
            signed = r.filled_quantity if r.side == "BUY" else -r.filled_quantity
            ledger_net[r.symbol] = ledger_net.get(r.symbol, Decimal(0)) + signed
        return exchange_net, ledger_net, entry

    def _differences(self, key: ExchangeKey, positions: list[Position]) -> dict[str, tuple]:
        ex, led, entry = self._nets(key, positions)
        return {sym: (ex.get(sym, Decimal(0)), led.get(sym, Decimal(0)), entry.get(sym))
                for sym in set(ex) | set(led) if ex.get(sym, Decimal(0)) != led.get(sym, Decimal(0))}

    def _positions(self, key: ExchangeKey, client: ExchangeClient, positions: list[Position],
                   details: list[dict]) -> int:
        """Differences seen twice, ``confirm_delay_s`` apart with the same figures, are
        real: a fill in flight (sent by the exchange, not yet through the write-behind
        queue) shows once and is gone on the second look."""
        first = self._differences(key, positions)
        if not first:
            return 0
        time.sleep(self.confirm_delay_s)
        second = self._differences(key, client.get_positions())
        repaired = 0
        for symbol in sorted(s for s in second if first.get(s, (None, None))[:2] == second[s][:2]):
            ex, led, price = second[symbol]
            kind = ("exchange_only" if led == 0 else "ledger_only" if ex == 0 else "size_mismatch")
            diff = {"key_id": key.id, "symbol": symbol, "difference": kind,
                    "exchange": dec(ex), "ledger": dec(led), "repaired": False}
            with self._lock:
                self.differences += 1
            if self.repair:
                self._adjust(key, symbol, ex - led, price)
                diff["repaired"] = True
                repaired += 1
                with self._lock:
                    self.repaired += 1
            logger.warning("reconcile position difference key_id=%s symbol=%s kind=%s "
                           "exchange=%s ledger=%s repaired=%s", key.id, symbol, kind,
                           diff["exchange"], diff["ledger"], diff["repaired"])
            details.append(diff)
        return repaired

    def _adjust(self, key: ExchangeKey, symbol: str, delta: Decimal, price: Decimal | None) -> None:
        with self._db.transaction() as s:
            s.add(Trade(user_id=key.user_id, key_id=key.id, exchange=key.exchange, symbol=symbol,
                        side="BUY" if delta > 0 else "SELL", order_type="RECONCILED",
                        quantity=abs(delta), filled_quantity=abs(delta), entry_price=price,
                        status=TradeStatus.OPEN.value, opened_at=now_ms(),
                        client_order_id="recon-" + uuid.uuid4().hex[:26],
                        error_message="adjustment recorded by reconciliation"))
