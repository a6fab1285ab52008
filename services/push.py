"""How account streams hand their changes to the push layer, without knowing it.

A stream calls ``push.offer(state, kind, source, as_of, mark)`` when a type changed
and ``push.deliver(state, envelope)`` with an envelope already built (``fills``,
``stale`` values). The server's implementation is the push hub (``ws.hub.PushHub``:
per connection, conflated, encoded once); ``DirectPush`` is the plain one over a
``publish(envelope)`` callable (snapshots, tests).

``PushSource`` is what the fan-out (``ws.fanout``) reads of a key's push sequence:
the key's ``AccountState`` in the process running its stream, a ``ws.remote_state.RemoteState``
(the envelopes received from that process) elsewhere.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from services.account_state import AccountState


class PushSource(Protocol):
    """A key's push sequence as the fan-out reads it: the envelopes of each type, their
    ``epoch`` and ``seq`` (CONTRACT.md), and a newer change held back for connections
    inside their ``max_hz`` interval (``pending``). Envelopes are CONTRACT.md dicts;
    ``as_of`` ms UTC; ``kind`` a state type (``services.account_kinds``)."""

    @property
    def key_id(self) -> int:
        """The API key the envelopes are of."""

    @property
    def user_id(self) -> int:
        """The key's owner."""

    @property
    def epoch(self) -> str | None:
        """The epoch of the envelopes (None: none known yet)."""

    def seq(self, kind: str) -> int:
        """The newest ``seq`` of ``kind`` in ``epoch`` (0: none yet)."""

    def last(self, kind: str) -> dict[str, Any] | None:
        """The newest envelope of ``kind`` handed out (do not change it), or None."""

    def pending(self, kind: str) -> bool:
        """True while a change of ``kind`` is held, not built or not sent yet."""

    def build_pending(self, kind: str) -> dict[str, Any] | None:
        """The envelope of the held change of ``kind``, now the last one (its
        ``sent_at`` now); None when none is held."""

    def envelope_of_change(self, kind: str, source: str, as_of: int,
                           mark: bool) -> dict[str, Any] | None:
        """The envelope of a change of ``kind``, now the last one: by a mark price move
        (``mark``) built without comparing; otherwise None when the content did not
        change. ``source`` ``stream`` | ``rest``."""


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

    def online(self, user_id: int) -> bool:
        """True while a connection of ``user_id`` is open in this process."""

    def key_changed(self, user_id: int, key_id: int) -> None:
        """Tell the other processes that ``key_id`` changed (they forget their copy)."""

    def stream_local(self, key_id: int, state: AccountState | None) -> None:
        """The stream of ``key_id`` now runs in this process (``state``: its
        ``AccountState``) or no longer does (None)."""

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
        env = state.envelope_of_change(kind, source, as_of, mark)
        if env is not None:
            self._publish(env)

    def deliver(self, state: AccountState, env: dict[str, Any]) -> None:
        """See ``Push.deliver``."""
        self._publish(env)
