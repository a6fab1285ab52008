"""How account streams hand their changes to the push layer, without knowing it.

A stream calls ``push.offer(state, kind, source, as_of, mark)`` when a type changed
and ``push.deliver(state, envelope)`` with an envelope already built (``fills``,
``stale`` values). The server's implementation is the push hub (``ws.hub.PushHub``:
per connection, conflated, encoded once); ``DirectPush`` is the plain one over a
``publish(envelope)`` callable (snapshots, tests).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from services.account_state import AccountState


class Push(Protocol):
    """Where an account stream's changes go."""

    def offer(self, state: AccountState, kind: str, source: str, as_of: int,
              mark: bool) -> None:
        """``kind`` of ``state`` changed (``mark``: by a mark price move, known changed;
        else compare with the last envelope). ``as_of`` ms UTC."""

    def deliver(self, state: AccountState, env: dict) -> None:
        """Send a built envelope now."""


class DirectPush:
    """Builds each change at once and hands it to ``publish``; ``audience(user_id,
    kind)`` False: nobody would receive it, so it is noted and built on demand."""

    def __init__(self, publish: Callable[[dict], None],
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

    def deliver(self, state: AccountState, env: dict) -> None:
        """See ``Push.deliver``."""
        self._publish(env)
