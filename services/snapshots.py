"""Account snapshots for REST: the live stream's last envelope, or one REST fetch."""
from __future__ import annotations

from clock import now_ms
from models import ExchangeKey
from services.account_state import AccountState
from services.stream_manager import StreamManager


class SnapshotService:
    """Answers ``GET /api/account/<type>`` with the envelope a push would carry.

    Args:
        streams: running streams (their state is reused when present).
        client_for: the cached exchange client of an ExchangeKey row.
        realized_pnl: the ledger's realized PnL of a key id.
    """

    def __init__(self, streams: StreamManager, client_for, realized_pnl) -> None:  # type: ignore[no-untyped-def]
        self._streams = streams
        self._client_for = client_for
        self._realized_pnl = realized_pnl

    def envelope(self, user_id: int, key: ExchangeKey, kind: str) -> dict:
        """The envelope of ``kind`` for the key. A running stream's value comes back
        with ``source: "cache"`` (``stale`` as the stream knows it); otherwise the
        exchange is asked (``source: "rest"``). Raises ExchangeError when the
        exchange cannot answer and nothing is known."""
        stream = self._streams.get(key.id)
        if stream is not None and stream.state.user_id == user_id:
            cached = stream.state.cached([kind])
            if cached:
                return cached[0]
        state = AccountState(user_id, key.id, key.exchange, key.testnet)
        state.protection_of, state.legs_of = self._streams.protection_of, self._streams.legs_of
        client = self._client_for(key)
        if kind == "balance":
            state.set_balance(client.get_balance())
        elif kind in ("positions", "pnl"):
            state.set_positions(client.get_positions())
            state.realized_pnl = self._realized_pnl(key.id)
        else:
            state.set_orders(client.get_open_orders())
        env = state.envelope_if_changed(kind, "rest", now_ms())
        assert env is not None
        env["seq"] = 0  # not part of the pushed sequence
        env["sent_at"] = now_ms()
        return env



