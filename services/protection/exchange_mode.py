"""Exchange-held legs (``mode: "exchange"``): placed through the ``ExchangeClient``
protection-leg methods (Binance Algo Service, Bybit trading-stop), so they fire while
this server is down.

Pending-first: a leg's row is written ``pending`` with its client order id before the
request is sent, and becomes ``active`` with the venue's ids when the venue accepts it.
A request is all or nothing as far as the venue lets it be: when a leg is refused, the
legs this request placed are taken off again, the legs it took off are placed again
(as new rows), and the refusal is raised (HTTP 422 with the venue's code). A leg
whose fate is unknown (timeout) stays ``pending`` for the reconcile.

``reconcile_key`` (start-up, after a stream gap, periodically, and on each leg event of
the account stream) brings the rows to the venue's truth: pending -> active when the
venue holds the leg; a leg the venue no longer holds -> ``triggered`` when it fired
(its close is recorded from the venue's fills and its siblings are canceled), or
placed again while the position lasts, or ``canceled`` when the position ended
(one-cancels-the-others: the other legs of an ended position are taken off the venue).
A leg never opens or flips a position: the venue adapters place close-all /
reduce-only legs only (Binance ``closePosition=true``, Bybit ``tpslMode=Full``).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy import select

from exchanges import types as ex
from exchanges.errors import (
    ExchangeError,
    ExchangeRejected,
    ExchangeTimeout,
    ProtectionLegNotFound,
)
from exchanges.venues import venue
from models import (
    LIVE_LEG_STATUSES,
    Database,
    ExchangeKey,
    LegStatus,
    ProtectionLeg,
    now_ms,
)
from services import book, ledger
from services.protection.reasons import mark_fill_reasons
from services.protection.rules import LegSpec

logger = logging.getLogger(__name__)

COID_PREFIX = {"stop_loss": "psl", "take_profit": "ptp", "trailing_stop": "pts"}
IN_FLIGHT_GRACE_MS = 10_000  # a pending leg the venue does not list may still be in flight
MISSING_GRACE_MS = 5_000  # a leg gone from the venue without a trace is placed again only
                          # when the position is still there this long after (a leg that
                          # just fired is between the venue's lists meanwhile)
FIRED = (ex.ProtectionStatus.TRIGGERED, ex.ProtectionStatus.FILLED)


def new_client_order_id(kind: str) -> str:
    """A fresh leg id within Binance's ``^[.A-Z:/a-z0-9_-]{1,36}$``."""
    return f"{COID_PREFIX[kind]}-{uuid.uuid4().hex[:28]}"


def legs_are_attributes(exchange: str) -> bool:
    """True when the venue keeps one leg per kind on the position (Bybit): placing a
    leg of a kind replaces the one held."""
    spec = venue(exchange).protection
    return bool(spec and spec.legs_are_position_attributes)


class ExchangeLegs:
    """Placement, removal and reconcile of exchange-held legs.

    Args:
        db: the database; client_for: the cached exchange client of a key row;
        on_fired: ``on_fired(row, leg)`` after a leg is found fired (the alert).
    """

    def __init__(self, db: Database, client_for: Callable,
                 on_fired: Callable[[ProtectionLeg, ex.ProtectionLeg], None]) -> None:
        self._db = db
        self._client_for = client_for
        self._on_fired = on_fired
        self._missing_since: dict[int, int] = {}  # leg id -> ms it was first found missing
        self._hints: dict[tuple[int, str], ex.ProtectionLeg] = {}  # (key, venue id) -> update

    def note_update(self, key_id: int, leg: ex.ProtectionLeg) -> None:
        """Keep a stream update of a leg for the next reconcile of its key (a fired leg
        may be in neither of the venue's lists for a moment)."""
        if len(self._hints) > 10_000:  # bounded: a hint matters for a few seconds only
            self._hints.clear()
        self._hints[(key_id, leg.client_order_id)] = leg
        self._hints[(key_id, f"{leg.symbol}:{leg.kind.value}")] = leg

    # ---- PUT / DELETE ---------------------------------------------------------------
    def apply(self, key: ExchangeKey, symbol: str, side: str, working_type: str,
              wanted: list[LegSpec], cancel: list[ProtectionLeg]) -> None:
        """Place ``wanted`` and take the exchange-held rows of ``cancel`` off the venue
        (a server-mode row in ``cancel`` is only marked). Raises ExchangeRejected after
        the rollback; ExchangeError (unreachable, timeout) with the leg in flight left
        ``pending``."""
        client = self._client_for(key)
        attrs = legs_are_attributes(key.exchange)
        now = now_ms()
        rows = [ProtectionLeg(user_id=key.user_id, key_id=key.id, exchange=key.exchange,
                              symbol=symbol, side=side, kind=s.kind, mode="exchange",
                              working_type=working_type, trigger_price=s.trigger_price,
                              callback_rate=s.callback_rate, activation_price=s.activation_price,
                              status=LegStatus.PENDING.value,
                              client_order_id=new_client_order_id(s.kind),
                              created_at=now, updated_at=now) for s in wanted]
        placing = {r.kind for r in rows}
        held_old = [r for r in cancel if r.mode == "exchange"]
        with self._db.transaction() as s:  # intent first: the old legs leave the live set
            for old in cancel:             # (the partial unique index), the new are pending
                held = s.get(ProtectionLeg, old.id, with_for_update=True)
                if held is not None and held.status in LIVE_LEG_STATUSES:
                    held.status, held.error_message = LegStatus.CANCELED.value, "replaced or removed"
            s.flush()
            s.add_all(rows)
        taken_off: list[ProtectionLeg] = []
        placed: list[ProtectionLeg] = []
        current: ProtectionLeg | None = None
        try:
            for old in held_old:
                if attrs and old.kind in placing:
                    continue  # the venue replaces it in place with the new leg
                self._take_off(client, old)
                taken_off.append(old)
            for row in rows:
                current = row
                leg = self._place_or_find(client, row, attrs)
                self._mark_active(row.id, leg)
                placed.append(row)
            current = None
        except ExchangeRejected as e:
            self._rollback(client, key, attrs, rows, placed, current, taken_off, held_old, e)
            raise
        except ExchangeError:
            # unreachable or timed out: the leg in flight stays pending (the reconcile
            # settles it), the rows never sent are canceled, what was done stays done,
            # and an old leg not reached yet is live again
            for row in rows:
                if row is not current and row not in placed:
                    self._set(row.id, LegStatus.CANCELED.value, None, "not sent: the venue failed")
            touched = {r.kind for r in placed} | ({current.kind} if current is not None else set())
            for old in held_old:
                if old not in taken_off and not (attrs and old.kind in touched):
                    self._restore(old.id)
            raise

    def _rollback(self, client, key: ExchangeKey, attrs: bool, rows: list[ProtectionLeg],  # type: ignore[no-untyped-def]
                  placed: list[ProtectionLeg], refused: ProtectionLeg | None,
                  taken_off: list[ProtectionLeg], held_old: list[ProtectionLeg],
                  error: ExchangeRejected) -> None:
        """A leg was refused: the venue back to what it held before the request. The
        legs placed are taken off (on a venue of position attributes, one that replaced
        an old leg is overwritten by the old values instead); the old legs taken off or
        replaced are placed again (new rows); the old legs not reached are live again."""
        code = str(error.code if error.code is not None else type(error).__name__)
        if refused is not None:
            self._set(refused.id, LegStatus.FAILED.value, code, error.message)
        old_kinds = {o.kind for o in held_old}
        placed_kinds = {r.kind for r in placed}
        for row in placed:
            if not (attrs and row.kind in old_kinds):
                try:
                    self._take_off(client, row, record=False)
                except ExchangeError as e:
                    logger.warning("protection rollback could not cancel leg_id=%s kind=%s",
                                   row.id, type(e).__name__)
            self._set(row.id, LegStatus.CANCELED.value, None, "rolled back: another leg was refused",
                      only_live=False)
        for row in rows:
            if row is not refused and row not in placed:
                self._set(row.id, LegStatus.CANCELED.value, None, "not sent: another leg was refused")
        for old in held_old:
            if old in taken_off or (attrs and old.kind in placed_kinds):
                self._replace_row(client, key, old, "restored after a refused request")
            else:
                self._restore(old.id)
        logger.info("protection request rolled back key_id=%s code=%s placed=%s", key.id, code,
                    len(placed))

    def _restore(self, leg_id: int) -> None:
        """An old leg this request marked canceled but never touched is live again."""
        with self._db.transaction() as s:
            row = s.get(ProtectionLeg, leg_id, with_for_update=True)
            if row is not None and row.status == LegStatus.CANCELED.value:
                row.status, row.error_message = LegStatus.ACTIVE.value, None

    def remove(self, key: ExchangeKey, rows: list[ProtectionLeg]) -> None:
        """Take exchange-held rows off the venue (their rows are already canceled by
        the caller's transaction or are canceled here). Raises ExchangeError when the
        venue cannot be reached (the rows stay as they were)."""
        client = self._client_for(key)
        for row in rows:
            self._take_off(client, row)

    # ---- venue calls ----------------------------------------------------------------
    def _place_or_find(self, client, row: ProtectionLeg, attrs: bool) -> ex.ProtectionLeg:  # type: ignore[no-untyped-def]
        """Place the leg; when the venue timed out (fate unknown), ask for it once by its
        id (on a venue of position attributes, by kind): held -> the leg; else the
        ExchangeTimeout goes on (the row stays ``pending`` for the reconcile)."""
        try:
            return self._place(client, row)
        except ExchangeTimeout:
            try:
                if attrs:
                    held = next((leg for leg in client.open_protection_legs(row.symbol)
                                 if leg.kind.value == row.kind), None)
                else:
                    held = client.get_protection_leg(row.symbol, row.client_order_id)
            except ExchangeError:
                held = None
            if held is None or held.status.is_final:
                raise
            logger.info("protection leg found after a timeout leg_id=%s", row.id)
            return held

    def _place(self, client, row: ProtectionLeg) -> ex.ProtectionLeg:  # type: ignore[no-untyped-def]
        return client.place_protection_leg(
            row.symbol, row.side, ex.ProtectionKind(row.kind), row.client_order_id,
            trigger_price=row.trigger_price, callback_rate=row.callback_rate,
            activation_price=row.activation_price, working_type=ex.WorkingType(row.working_type))

    def _take_off(self, client, row: ProtectionLeg, record: bool = True,  # type: ignore[no-untyped-def]
                  code: str | None = None, message: str | None = None) -> bool:
        """Cancel a leg on the venue (the row ``canceled`` with ``code``/``message`` when
        given); when the venue no longer holds it, look it up: a fired one is recorded
        as ``triggered`` (``record``). Returns True when it was canceled or never held."""
        venue_id = row.venue_leg_id or row.client_order_id
        try:
            client.cancel_protection_leg(row.symbol, venue_id)
            self._set(row.id, LegStatus.CANCELED.value, code, message, only_live=False,
                      keep_message=message is None)
            return True
        except ProtectionLegNotFound:
            pass
        try:
            leg = client.get_protection_leg(row.symbol, venue_id)
        except ProtectionLegNotFound:
            leg = None
        if leg is not None and leg.status in FIRED and leg.updated_at >= row.created_at:
            if record:
                self._fired(client, row, leg)
            return False
        if code is not None:
            self._set(row.id, LegStatus.CANCELED.value, code, message)
        return True

    def _replace_row(self, client, key: ExchangeKey, old: ProtectionLeg, why: str) -> ProtectionLeg | None:  # type: ignore[no-untyped-def]
        """Place ``old``'s values again as a new row (a new client order id)."""
        now = now_ms()
        row = ProtectionLeg(user_id=old.user_id, key_id=old.key_id, exchange=old.exchange,
                            symbol=old.symbol, side=old.side, kind=old.kind, mode="exchange",
                            working_type=old.working_type, trigger_price=old.trigger_price,
                            callback_rate=old.callback_rate, activation_price=old.activation_price,
                            status=LegStatus.PENDING.value,
                            client_order_id=new_client_order_id(old.kind),
                            error_message=why, created_at=now, updated_at=now)
        with self._db.transaction() as s:
            held = s.get(ProtectionLeg, old.id, with_for_update=True)
            if held is not None and held.status in LIVE_LEG_STATUSES:
                held.status, held.error_message = LegStatus.CANCELED.value, f"placed again as {row.client_order_id}"
            s.flush()
            s.add(row)
        try:
            self._mark_active(row.id, self._place(client, row))
            return row
        except ExchangeRejected as e:
            self._set(row.id, LegStatus.FAILED.value, str(e.code or type(e).__name__), e.message)
        except ExchangeError as e:  # in flight: the next reconcile settles it
            logger.warning("protection re-place unsure leg_id=%s kind=%s", row.id, type(e).__name__)
        return None

    # ---- rows -----------------------------------------------------------------------
    def _mark_active(self, leg_id: int, leg: ex.ProtectionLeg) -> None:
        with self._db.transaction() as s:
            row = s.get(ProtectionLeg, leg_id, with_for_update=True)
            if row is None or row.status != LegStatus.PENDING.value:
                return
            row.status, row.order_id = LegStatus.ACTIVE.value, leg.order_id or None
            row.venue_leg_id = leg.client_order_id or row.client_order_id

    def _set(self, leg_id: int, status: str, code: str | None, message: str | None,
             only_live: bool = True, keep_message: bool = False) -> None:
        with self._db.transaction() as s:
            row = s.get(ProtectionLeg, leg_id, with_for_update=True)
            if row is None or (only_live and row.status not in LIVE_LEG_STATUSES):
                return
            row.status, row.error_code = status, code
            if not keep_message:
                row.error_message = (message or "")[:255] or None

    def _fired(self, client, row: ProtectionLeg, leg: ex.ProtectionLeg) -> None:  # type: ignore[no-untyped-def]
        """The venue fired ``row``'s leg: record its close from the venue's fills (FIFO
        by the book), mark it ``triggered``, take its siblings off (one-cancels-the-
        others) and alert."""
        order_id = leg.triggered_order_id or leg.order_id or None
        if order_id:
            try:
                fills = client.get_fills(row.symbol, order_id=order_id)
                with self._db.transaction() as s:
                    book.lock_keys(s, [row.key_id])
                    for fill in fills:
                        ledger.upsert_fill(s, row.key_id, fill, None)
                    s.flush()
                    mark_fill_reasons(s, row.key_id, row.kind, order_ids=[order_id])
                    book.settle_symbol(s, row.key_id, row.symbol)
            except ExchangeError as e:  # the fills come by the stream or the next reconcile
                logger.warning("protection fill lookup failed leg_id=%s kind=%s", row.id, type(e).__name__)
        with self._db.transaction() as s:
            held = s.get(ProtectionLeg, row.id, with_for_update=True)
            if held is None or held.status == LegStatus.TRIGGERED.value:
                return
            held.status, held.order_id = LegStatus.TRIGGERED.value, order_id or held.order_id
            held.fired_price = leg.avg_price or leg.trigger_price
            siblings = list(s.scalars(select(ProtectionLeg).where(
                ProtectionLeg.key_id == row.key_id, ProtectionLeg.symbol == row.symbol,
                ProtectionLeg.id != row.id, ProtectionLeg.status.in_(LIVE_LEG_STATUSES))))
        logger.info("protection leg fired on the venue leg_id=%s key_id=%s symbol=%s kind=%s order_id=%s",
                    row.id, row.key_id, row.symbol, row.kind, order_id)
        for other in siblings:
            if other.mode == "exchange":
                try:
                    self._take_off(client, other, record=False)
                except ExchangeError as e:  # the periodic reconcile tries again
                    logger.warning("protection OCO cancel failed leg_id=%s kind=%s", other.id,
                                   type(e).__name__)
                    continue
            self._set(other.id, LegStatus.CANCELED.value, None,
                      f"one-cancels-the-others: {row.kind} fired")
        self._on_fired(row, leg)

    # ---- reconcile ------------------------------------------------------------------
    def reconcile_key(self, key: ExchangeKey, symbol: str | None = None) -> dict:
        """Bring the key's live exchange-held rows (of ``symbol``, or all) to the venue's
        truth (see the module doc). Returns counts ``{"activated", "fired", "placed",
        "canceled"}``. Raises ExchangeError when the venue cannot be asked (nothing is
        changed then)."""
        stmt = select(ProtectionLeg).where(ProtectionLeg.key_id == key.id,
                                           ProtectionLeg.mode == "exchange",
                                           ProtectionLeg.status.in_(LIVE_LEG_STATUSES))
        if symbol is not None:
            stmt = stmt.where(ProtectionLeg.symbol == symbol)
        with self._db.session() as s:
            rows = list(s.scalars(stmt.order_by(ProtectionLeg.id)))
        counts = {"activated": 0, "fired": 0, "placed": 0, "canceled": 0}
        if not rows:
            return counts
        client = self._client_for(key)
        attrs = legs_are_attributes(key.exchange)
        # positions first: a leg that fires between the two reads is then missing from
        # the legs (and found fired), never "held by the venue for a flat position"
        positions = {(p.symbol, p.side) for p in client.get_positions() if p.size != 0}
        open_legs = client.open_protection_legs(symbol)
        for row in rows:
            venue_id = row.venue_leg_id or row.client_order_id
            held = next((l for l in open_legs if l.client_order_id == venue_id
                         or (attrs and l.symbol == row.symbol and l.kind.value == row.kind)), None)
            has_position = (row.symbol, row.side) in positions
            if held is not None:
                if not has_position:  # OCO: the position ended by another path
                    if self._take_off(client, row, code="position_closed",
                                      message="one-cancels-the-others: the position ended"):
                        counts["canceled"] += 1
                    else:
                        counts["fired"] += 1
                elif row.status == LegStatus.PENDING.value:
                    self._mark_active(row.id, held)
                    counts["activated"] += 1
                continue
            if row.status == LegStatus.PENDING.value and now_ms() - row.created_at < IN_FLIGHT_GRACE_MS:
                continue  # may still be in flight
            try:
                leg = client.get_protection_leg(row.symbol, venue_id)
            except ProtectionLegNotFound:
                leg = None
            hint = self._hints.get((key.id, venue_id)) or (
                self._hints.get((key.id, f"{row.symbol}:{row.kind}")) if attrs else None)
            if (leg is None or leg.status not in FIRED) and hint is not None and \
                    hint.status in FIRED and hint.updated_at >= row.created_at:
                leg = hint  # the stream saw it fire; the venue's lists lag
            if leg is not None and leg.status in FIRED and leg.updated_at >= row.created_at:
                self._fired(client, row, leg)
                self._missing_since.pop(row.id, None)
                counts["fired"] += 1
            elif has_position:
                first = self._missing_since.setdefault(row.id, now_ms())
                if now_ms() - first < MISSING_GRACE_MS:
                    continue  # looked at again by the next round
                self._missing_since.pop(row.id, None)
                self._replace_row(client, key, row, f"the venue no longer held {row.client_order_id}")
                counts["placed"] += 1
            else:
                self._missing_since.pop(row.id, None)
                self._set(row.id, LegStatus.CANCELED.value, "position_closed",
                          "one-cancels-the-others: the position ended")
                counts["canceled"] += 1
        if any(counts.values()):
            logger.info("protection reconciled key_id=%s %s", key.id,
                        " ".join(f"{k}={v}" for k, v in counts.items()))
        return counts
