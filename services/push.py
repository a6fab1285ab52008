"""How account streams hand their changes to the push layer, without knowing it.

A stream calls ``push.offer(state, kind, source, as_of, mark)`` when a type changed
and ``push.deliver(state, envelope)`` with an envelope already built (``fills``,
``stale`` values). The server's implementation is the push hub (``ws.hub.PushHub``:
per connection, conflated, encoded once); ``DirectPush`` is the plain one over a
``publish(envelope)`` callable (snapshots, tests).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from services.account_state import AccountState


class Push(Protocol):
    """Where an account stream's changes go."""

    def offer(self, state: AccountState, kind: str, source: str, as_of: int,
              mark: bool) -> None:
        """``kind`` of ``state`` changed (``mark``: by a mark price move, known changed;
        else compare with the last envelope). ``as_of`` ms UTC."""

    def deliver(self, state: AccountState, env: dict[str, Any]) -> None:
        """Send a built envelope now."""


class PushLayer(Push, Protocol):
    """What the services need of the push layer of a process (``ws.hub.PushHub``), and
    the callbacks they hand it. Built before the services, given to ``build_services``.

    Callbacks the services set (``None`` or a no-op until then):
    ``on_key_changed(user_id, key_id)``: another process changed a key;
    ``on_released(key_id)``: another process released the stream of a key this process
    follows; ``on_stream_latency(seconds)``: exchange event -> push delay;
    ``on_delivered(envelope)``: a ``fills`` / ``alerts`` envelope reached a connection.
    """

    on_key_changed: Callable[[int, int], None]
    on_released: Callable[[int], object]
    on_stream_latency: Callable[[float], None] | None
    on_delivered: Callable[[dict[str, Any]], None] | None

    def publish(self, envelope: dict[str, Any]) -> None:
        """Send a built envelope (any type) to its room(s), in every process."""

    def has_audience(self, user_id: int, kind: str) -> bool:
        """False when no connection anywhere could want ``kind`` of ``user_id`` now."""

    def key_changed(self, user_id: int, key_id: int) -> None:
        """Tell the other processes that ``key_id`` changed (they forget their copy)."""

    def stream_local(self, key_id: int, state: Any) -> None:
        """The stream of ``key_id`` now runs in this process (``state``: its
        ``AccountState``)."""

    def stream_released(self, key_id: int) -> None:
        """The stream of ``key_id`` stopped running in this process."""

    def stats(self) -> dict[str, Any]:
        """Connection and push counters (``/admin/stats`` ``push``)."""

    def connections(self) -> list[Any]:
        """A snapshot of this process's connections (``ws.hub.Connection``)."""

    def stop(self) -> None:
        """End the push layer's own background work (the conflation timer)."""


class DirectPush:
    """Builds each change at once and hands it to ``publish``; ``audience(user_id,
    kind)`` False: nobody would receive it, so it is noted and built on demand."""

    def __init__(self, publish: Callable[[dict[str, Any]], None],
                 audience: Callable[[int, str], bool] | None = None) -> None:
        self._publish = publish
        self._audience = audience

    def offer(self, state: AccountState, kind: str, source: str, as_of: int,
              mark: bool) -> None:
        """See ``Push.offer``."""
        if self._audience is not None and not self._audience(state.user_id, kind):
            state.note_unseen(kind, source, as_of)
            return
        env = (state.envelope(kind, source, as_of) if mark
               else state.envelope_if_changed(kind, source, as_of))
        if env is not None:
            self._publish(env)

    def deliver(self, state: AccountState, env: dict[str, Any]) -> None:
        """See ``Push.deliver``."""
        self._publish(env)
