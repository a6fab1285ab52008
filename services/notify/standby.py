"""Account streams kept running for users who would be notified, while no socket of
theirs is open (the app asleep).

A key's account stream runs while one of its user's sockets is subscribed; without
one the server would see a fill made at the venue (an order placed elsewhere, a
resting limit crossed, a leg or a liquidation) only at the next reconciliation, so
the phone would not hear of it until then. ``StandbyStreams`` asks the database every
``STANDBY_S`` (and soon after a device or a setting changes) which users have a device
and at least one account notification on (``fills``, ``protection`` or ``risk``), and
keeps their keys' streams running here (``StreamManager.keep``: the last socket
leaving does not stop them). With several processes each one asks; the stream lease
decides where a key's stream runs and the others follow it (and take it over when
its process dies). A user who no longer qualifies and has no socket in this process
has their kept streams stopped at the next round.

A kept stream with no socket builds no push (the push layer has no audience for it)
but records every fill in the ledger, and the ledger's batch writes the fill's
notifications (``services.notify.outbox``).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import exists, or_, select

from models import Database, Device, ExchangeKey, NotificationSettings
from services.errors import NotFound
from services.lifecycle import StopFlag

logger = logging.getLogger(__name__)

STANDBY_S = 30.0  # seconds between two rounds (a device or setting change: sooner)
POKE_DELAY_S = 0.5  # a change's round runs within this long (changes together: one round)


class KeptStreams(Protocol):
    """What the standby rounds need of ``services.stream_manager.StreamManager``."""

    def keep(self, keys: dict[int, int]) -> dict[int, int]:
        """Replace the kept keys (``key_id -> user_id``); returns the ones dropped."""

    def tracks(self, key_id: int) -> bool:
        """True when the key's stream runs here or this process follows it."""

    def ensure(self, user_id: int, key_id: int) -> object:
        """Start the key's stream here unless another process holds its lease."""

    def stop_user(self, user_id: int) -> list[int]:
        """Stop the user's streams that are not kept."""


def wanted_keys(db: Database) -> dict[int, int]:
    """``{key_id: user_id}``: every key of a user who has at least one device and
    whose settings (the defaults when never set: all on) leave one of ``fills``,
    ``protection`` or ``risk`` on."""
    s_ = NotificationSettings
    with db.session() as s:
        rows = s.execute(
            select(ExchangeKey.id, ExchangeKey.user_id)
            .outerjoin(s_, s_.user_id == ExchangeKey.user_id)
            .where(exists().where(Device.user_id == ExchangeKey.user_id))
            .where(or_(s_.user_id.is_(None), s_.fills, s_.protection, s_.risk)))
        return {int(key_id): int(user_id) for key_id, user_id in rows}


class StandbyStreams:
    """Keeps the streams of ``wanted_keys`` running (see the module doc).

    Args:
        db: the database.
        streams: the process's stream manager (``KeptStreams``).
        online: ``online(user_id)``: True while a socket of the user is open in this
            process (its streams then stop when the last one leaves, as usual).
        sleep: the cooperative sleep (seconds).
        interval_s: seconds between two rounds.
    """

    def __init__(self, db: Database, streams: KeptStreams, online: Callable[[int], bool],
                 sleep: Callable[[float], None], interval_s: float = STANDBY_S) -> None:
        self._db = db
        self._streams = streams
        self._online = online
        self._interval_s = interval_s
        self._poked = threading.Event()
        self.stopping = StopFlag(sleep)
        self.rounds = 0
        self.kept = 0
        self.failed = 0

    def poke(self, _user_id: int | None = None) -> None:
        """A device or a setting changed: run a round within ``POKE_DELAY_S``."""
        self._poked.set()

    def round(self) -> dict[str, int]:
        """One round: read the wanted keys, keep them, start the streams not running
        anywhere, stop the dropped ones of users not online here. Returns
        ``{"kept", "started_or_followed", "stopped_users", "failed"}``. Raises what the
        database raises (the loop retries)."""
        wanted = wanted_keys(self._db)
        dropped = self._streams.keep(wanted)
        ensured = failed = 0
        for key_id, user_id in wanted.items():
            if self.stopping.is_set():
                break
            if self._streams.tracks(key_id):
                continue
            try:
                self._streams.ensure(user_id, key_id)
                ensured += 1
            except NotFound:  # deleted since the read
                continue
            except Exception as e:  # isolation boundary: one key's start must not stop the rest
                failed += 1
                logger.warning("standby stream start failed key_id=%s error=%s",
                               key_id, type(e).__name__)
        stopped = 0
        for user_id in sorted(set(dropped.values()) - set(wanted.values())):
            if not self._online(user_id):
                self._streams.stop_user(user_id)
                stopped += 1
        self.rounds += 1
        self.kept, self.failed = len(wanted), self.failed + failed
        return {"kept": len(wanted), "started_or_followed": ensured,
                "stopped_users": stopped, "failed": failed}

    def run(self) -> None:
        """A round now, then every ``interval_s`` or soon after ``poke()``, until
        ``stop()``."""
        while not self.stopping.is_set():
            self._poked.clear()
            try:
                figures = self.round()
                if figures["stopped_users"] or figures["failed"]:
                    logger.info("standby streams kept=%s stopped_users=%s failed=%s",
                                figures["kept"], figures["stopped_users"], figures["failed"])
            except Exception:  # isolation boundary: the database may be back next round
                logger.exception("standby streams round failed")
            waited = 0.0
            while waited < self._interval_s and not self._poked.is_set():
                if self.stopping.wait(POKE_DELAY_S):
                    return
                waited += POKE_DELAY_S

    def stop(self) -> None:
        """Ask the loop to end."""
        self.stopping.set()

    def stats(self) -> dict[str, int]:
        """``{"rounds", "kept", "failed"}`` (``/admin/stats`` ``notifications.standby``)."""
        return {"rounds": self.rounds, "kept": self.kept, "failed": self.failed}
