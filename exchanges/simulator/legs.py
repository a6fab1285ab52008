"""Held conditional orders ("legs"), liquidation, ADL, margin calls and funding of the
simulated exchange (protocol-neutral; mixed into ``engine.Engine``).

A leg waits for its trigger and then becomes a MARKET reduce-only order that fills
like any other (taker fee, reported as an order and a fill). Trigger rules (Binance
"New Algo Order": STOP_MARKET SELL fires when the watched price <= trigger, BUY when
>=; TAKE_PROFIT_MARKET the reverse; TRAILING_STOP_MARKET SELL: the highest price since
placement >= ``activate_price`` (when given) and the price <= highest * (1 - rate %),
BUY mirrored; Bybit's trailing stop uses a price distance instead of a rate). The
watched price is the mark (``MARK_PRICE``) or the last price (``CONTRACT_PRICE``).

Statuses follow Binance's Algo Service: NEW -> TRIGGERING -> TRIGGERED (its order is in
the book) -> FINISHED (the order is final); CANCELED by the user; EXPIRED when the
position it protects ends by any path (Binance: the system cancels a closePosition
GTE_GTC conditional order when the position is closed; Bybit "Set Trading Stop": "The
system will cancel these orders if the position is closed"; a reduce-only quantity leg
expires too, the simulator's choice where Binance documents only the close-all GTE_GTC
case); REJECTED when its order is refused at trigger time. Every change is published
as ``LegEvent``. A position "ends" when it goes flat or flips side.

Cost: a price update walks the open legs of its symbol only (a simulator holds few).
"""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from exchanges.simulator.margin import q8
from exchanges.simulator.models import (
    CANCELED,
    CONTRACT_PRICE,
    EXPIRED,
    FINISHED,
    LEG_TYPES,
    MARGIN_ASSET,
    MARK_PRICE,
    MARKET,
    REJECTED,
    SOURCE_LEG,
    SOURCE_LIQUIDATION,
    STOP_MARKET,
    TAKE_PROFIT_MARKET,
    TRAILING_STOP_MARKET,
    TRIGGERED,
    TRIGGERING,
    ZERO,
    Account,
    AccountEvent,
    EngineError,
    FundingEvent,
    IncomeRow,
    Leg,
    LegEvent,
    MarginCallEvent,
    Order,
)


class LegsMixin:
    """Leg book and venue-made closes; the engine provides accounts, prices, orders."""

    prices: dict[str, Decimal]
    last_prices: dict[str, Decimal]
    now_ms: Callable[[], int]

    def _init_legs(self) -> None:
        self.legs: dict[int, Leg] = {}
        self._open_legs: dict[str, dict[int, Leg]] = {s: {} for s in self.symbols}  # type: ignore[attr-defined]

    # ---- placing and canceling ---------------------------------------------------
    def watched_price(self, symbol: str, working_type: str) -> Decimal:
        """The mark (MARK_PRICE) or last (CONTRACT_PRICE) price of ``symbol``."""
        return self.prices[symbol] if working_type == MARK_PRICE else self.last_prices[symbol]

    def place_leg(self, api_key: str, venue: str, symbol: str, side: str, type_: str, *,
                  client_id: str, working_type: str = CONTRACT_PRICE,
                  trigger_price: Decimal | None = None, close_position: bool = True,
                  quantity: Decimal = ZERO, activate_price: Decimal | None = None,
                  callback_rate: Decimal | None = None,
                  trailing_distance: Decimal | None = None,
                  leg_id: int | None = None, label: str = "") -> Leg:
        """Hold a new leg (LegEvent NEW); returns it.

        Raises EngineError: invalid_side, invalid_type, invalid_price (trigger not
        positive or off the tick), would_trigger (the condition already holds: Binance
        -2021), duplicate_client_order_id (an open leg has ``client_id``).
        """
        account, spec = self.account(api_key), self.spec(symbol)  # type: ignore[attr-defined]
        if side not in ("BUY", "SELL"):
            raise EngineError("invalid_side", "Invalid side.")
        if type_ not in LEG_TYPES:
            raise EngineError("invalid_type", "Invalid orderType.")
        if working_type not in (MARK_PRICE, CONTRACT_PRICE):
            raise EngineError("invalid_working_type", "Invalid workingType.")
        price = self.watched_price(symbol, working_type)
        for value in (trigger_price, activate_price):
            if value is not None and (value <= 0 or not spec.on_tick(value)):
                raise EngineError("precision", "Precision is over the maximum defined for "
                                               "this asset.")
        if trigger_price is not None:
            trigger_price = trigger_price.quantize(spec.tick)
        if activate_price is not None:
            activate_price = activate_price.quantize(spec.tick)
        if type_ == TRAILING_STOP_MARKET:
            if (callback_rate is None) == (trailing_distance is None):
                raise EngineError("invalid_callback", "callbackRate is required.")
            if activate_price is not None and (
                    (side == "SELL" and activate_price <= price)
                    or (side == "BUY" and activate_price >= price)):
                raise EngineError("would_trigger", "Order would immediately trigger.")
        else:
            if trigger_price is None:
                raise EngineError("missing_trigger", "triggerPrice is required.")
            if self._fires(type_, side, trigger_price, price):
                raise EngineError("would_trigger", "Order would immediately trigger.")
        if client_id and any(leg.client_id == client_id for leg in
                             self._open_legs[symbol].values() if leg.api_key == api_key):
            raise EngineError("duplicate_client_order_id", "ClientOrderId is duplicated.")
        now = self.now_ms()
        if leg_id is None:
            self._next_order_id += 1  # type: ignore[attr-defined]
            leg_id = self._next_order_id  # type: ignore[attr-defined]
        leg = Leg(leg_id, api_key, venue, symbol, side, type_, working_type, client_id, now, now,
                  trigger_price=trigger_price, close_position=close_position,
                  quantity=quantity, activate_price=activate_price,
                  callback_rate=callback_rate, trailing_distance=trailing_distance,
                  extreme=price, label=label)
        if type_ == TRAILING_STOP_MARKET:
            leg.activated = activate_price is None
        self.legs[leg_id] = account.legs[leg_id] = leg
        self._open_legs[symbol][leg_id] = leg
        self._publish(LegEvent(leg, now))  # type: ignore[attr-defined]
        return leg

    def amend_leg(self, leg: Leg, trigger_price: Decimal | None = None,
                  working_type: str | None = None,
                  trailing_distance: Decimal | None = None,
                  activate_price: Decimal | None = None) -> Leg:
        """Change a waiting leg in place (Bybit trading-stop on an existing Full TP/SL
        modifies it); publishes LegEvent. Raises EngineError(order_not_open)."""
        if not leg.is_open:
            raise EngineError("order_not_open", "Unknown order sent.")
        if trigger_price is not None:
            leg.trigger_price = trigger_price
        if working_type is not None:
            leg.working_type = working_type
        if trailing_distance is not None:
            leg.trailing_distance = trailing_distance
            leg.activate_price = activate_price
            leg.activated = activate_price is None
            leg.extreme = self.watched_price(leg.symbol, leg.working_type)
        self._set_leg(leg, leg.status)
        return leg

    def find_leg(self, api_key: str, leg_id: int | None = None,
                 client_id: str | None = None, symbol: str | None = None) -> Leg:
        """The account's leg by id or client id (the newest with it); raises
        EngineError(unknown_order)."""
        account = self.account(api_key)  # type: ignore[attr-defined]
        leg: Leg | None = account.legs.get(leg_id) if leg_id is not None else None
        if leg is None and leg_id is None and client_id:
            leg = next((known for known in reversed(list(account.legs.values()))
                        if known.client_id == client_id), None)
        if leg is None or (symbol is not None and leg.symbol != symbol):
            raise EngineError("unknown_order", "Order does not exist.")
        return leg

    def cancel_leg(self, leg: Leg, status: str = CANCELED, reason: str = "") -> Leg:
        """Cancel (or expire) a waiting leg; raises EngineError(order_not_open) when it
        is no longer waiting."""
        if not leg.is_open:
            raise EngineError("order_not_open", "Unknown order sent.")
        self._set_leg(leg, status, reason)
        return leg

    def open_legs(self, api_key: str, symbol: str | None = None) -> list[Leg]:
        """The account's waiting legs, oldest first."""
        account = self.account(api_key)  # type: ignore[attr-defined]
        return [leg for leg in account.legs.values() if leg.is_open
                and (symbol is None or leg.symbol == symbol)]

    def _set_leg(self, leg: Leg, status: str, reason: str = "") -> None:
        now = self.now_ms()
        leg.status, leg.update_time = status, now
        if reason:
            leg.reason = reason
        if not leg.is_open:
            self._open_legs[leg.symbol].pop(leg.leg_id, None)
        self._publish(LegEvent(leg, now))  # type: ignore[attr-defined]

    # ---- triggering ----------------------------------------------------------------
    @staticmethod
    def _fires(type_: str, side: str, trigger: Decimal, price: Decimal) -> bool:
        if type_ == STOP_MARKET:
            return price <= trigger if side == "SELL" else price >= trigger
        if type_ == TAKE_PROFIT_MARKET:
            return price >= trigger if side == "SELL" else price <= trigger
        return False

    def _check_legs(self, symbol: str) -> None:
        """Advance trailing stops and fire the legs of ``symbol`` whose condition holds."""
        for leg in self.crossed_legs(symbol):
            self.fire_leg(leg)

    def fire_leg(self, leg: Leg) -> bool:
        """Fire ``leg`` (one of ``crossed_legs``) unless it was fired or canceled
        meanwhile; True if it fired."""
        if not leg.is_open:
            return False
        self._fire(leg)
        return True

    def crossed_legs(self, symbol: str) -> list[Leg]:
        """Advance the trailing stops of ``symbol`` to its price now and return the
        open legs whose condition holds (to fire with ``fire_leg``, in this order)."""
        firing: list[Leg] = []
        for leg in list(self._open_legs[symbol].values()):
            price = self.watched_price(symbol, leg.working_type)
            if leg.type == TRAILING_STOP_MARKET:
                up = leg.side == "SELL"
                if leg.extreme is None or (price > leg.extreme if up else price < leg.extreme):
                    leg.extreme = price
                if not leg.activated and leg.activate_price is not None and (
                        leg.extreme >= leg.activate_price if up
                        else leg.extreme <= leg.activate_price):
                    leg.activated = True
                stop = leg.trailing_trigger()
                if stop is not None and (price <= stop if up else price >= stop):
                    firing.append(leg)
            elif leg.trigger_price is not None and self._fires(leg.type, leg.side,
                                                               leg.trigger_price, price):
                firing.append(leg)
        return firing

    def _fire(self, leg: Leg) -> None:
        """TRIGGERING, then a MARKET reduce-only order (TRIGGERED once accepted), then
        FINISHED when it is final; REJECTED when nothing is left to reduce."""
        now = self.now_ms()
        leg.trigger_time = now
        self._set_leg(leg, TRIGGERING)
        account = self.accounts[leg.api_key]  # type: ignore[attr-defined]
        pos = account.position(leg.symbol)
        reducible = -pos.amount if leg.side == "BUY" else pos.amount
        qty = reducible if leg.close_position else min(leg.quantity, max(reducible, ZERO))

        def accepted(order: Order) -> None:
            leg.order_id = order.order_id
            self._set_leg(leg, TRIGGERED)

        try:
            if qty <= 0:
                raise EngineError("reduce_only_rejected", "ReduceOnly Order is rejected.")
            order = self.place_order(  # type: ignore[attr-defined]
                leg.api_key, leg.symbol, leg.side, MARKET, qty, reduce_only=True,
                client_order_id=leg.client_id, source=SOURCE_LEG, orig_type=leg.type,
                on_accepted=accepted,
                order_id=leg.leg_id if leg.venue == "bybit" else None)
        except EngineError as exc:
            self._set_leg(leg, REJECTED, exc.message)
            return
        if not order.is_open:
            self._set_leg(leg, FINISHED)

    def _position_ended(self, account: Account, symbol: str) -> None:
        """The position of ``symbol`` closed or flipped: its waiting legs expire (what
        both venues do to closePosition / position TP/SL orders)."""
        for leg in [waiting for waiting in self._open_legs[symbol].values() if waiting.api_key == account.api_key]:
            self._set_leg(leg, EXPIRED, "position closed")

    # ---- venue-made closes, margin calls, funding ------------------------------------
    def liquidate(self, api_key: str, symbol: str, kind: str = SOURCE_LIQUIDATION,
                  client_id: str | None = None) -> Order:
        """Close the whole position of ``symbol`` as the venue would in a liquidation
        (``kind`` SOURCE_LIQUIDATION) or an auto-deleveraging (SOURCE_ADL): a MARKET
        reduce-only order with the venue's client id, filled at the book. Raises
        EngineError(no_position)."""
        account = self.account(api_key)  # type: ignore[attr-defined]
        self.spec(symbol)  # type: ignore[attr-defined]
        pos = account.position(symbol)
        if pos.amount == 0:
            raise EngineError("no_position", "No position to liquidate.")
        side = "SELL" if pos.amount > 0 else "BUY"
        now = self.now_ms()
        default = f"autoclose-{now}" if kind == SOURCE_LIQUIDATION else "adl_autoclose"
        order: Order = self.place_order(  # type: ignore[attr-defined]
            api_key, symbol, side, MARKET, abs(pos.amount), reduce_only=True,
            client_order_id=client_id or default, source=kind)
        return order

    def margin_call(self, api_key: str) -> tuple[str, ...]:
        """Publish a MarginCallEvent for the account's open positions; returns their
        symbols. Raises EngineError(no_position) when there is none."""
        account = self.account(api_key)  # type: ignore[attr-defined]
        symbols = tuple(s for s, p in account.positions.items() if p.amount)
        if not symbols:
            raise EngineError("no_position", "No open position.")
        self._publish(MarginCallEvent(account, symbols, self.now_ms()))  # type: ignore[attr-defined]
        return symbols

    def charge_funding(self, symbol: str, rate: Decimal) -> list[IncomeRow]:
        """Charge (rate > 0: longs pay shorts) funding on every position in ``symbol``:
        ``amount = -position * mark * rate`` to each wallet, one IncomeRow
        (FUNDING_FEE) and FundingEvent and AccountEvent(FUNDING_FEE) per account."""
        self.spec(symbol)  # type: ignore[attr-defined]
        mark, rows = self.prices[symbol], []
        for account in self.accounts.values():  # type: ignore[attr-defined]
            pos = account.positions.get(symbol)
            if pos is None or pos.amount == 0:
                continue
            amount = q8(-pos.amount * mark * rate)
            now = self.now_ms()
            self._next_tran_id += 1  # type: ignore[attr-defined]
            row = IncomeRow(self._next_tran_id, account.api_key, symbol, "FUNDING_FEE",  # type: ignore[attr-defined]
                            amount, now, rate=rate, position_qty=pos.amount, mark_price=mark)
            account.balances[MARGIN_ASSET] = account.wallet + amount
            account.update_time = now
            account.income.append(row)
            rows.append(row)
            self._publish(FundingEvent(account, row, now))  # type: ignore[attr-defined]
            self._publish(AccountEvent(account, "FUNDING_FEE", now, (),  # type: ignore[attr-defined]
                                       balance_change=amount))
        return rows
