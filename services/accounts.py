"""Users and their exchange API keys.

A key is checked with one signed exchange call before it is saved; its secret is
stored Fernet-encrypted and never returned. Changing a key drops the cached client
and restarts its stream with the new values (subscribers keep receiving); deleting
it stops the stream (subscribers get ``stream_status`` ``down``). ``get_owned_key``
is the one place that decides "not yours = not found" for every service.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from exchanges.base import ExchangeClient
from models import Database, ExchangeKey, User, now_ms
from services.coalesce import Coalescer
from services.errors import Conflict, NotFound, Unauthorized, ValidationFailed
from services.security import KeyCipher, TokenService, hash_password, verify_password

if TYPE_CHECKING:  # annotations only: stream_manager imports get_owned_key from here
    from services.client_cache import TradingService
    from services.stream_manager import StreamManager

logger = logging.getLogger(__name__)

# (exchange, api_key, api_secret, testnet) -> a fresh, uncached client
BuildClient = Callable[[str, str, str, bool, int], ExchangeClient]  # + the owner's user id


def get_owned_key(db: Database, user_id: int, key_id: int) -> ExchangeKey:
    """The key ``key_id`` if it belongs to ``user_id`` and is not deleted.

    Raises NotFound (``key_not_found``, field ``key_id``) otherwise, also for another
    user's key, so that its existence is never revealed.
    """
    with db.session() as s:
        key = s.get(ExchangeKey, key_id)
    if key is None or key.user_id != user_id or key.status == "deleted":
        raise NotFound("key_not_found", f"no API key {key_id}", "key_id")
    return key


class KeyCache:
    """API keys read once and kept, so that a subscribe (and a stream start) needs no
    database round trip per key: ``get(user_id, key_id)`` as ``get_owned_key``, and
    ``of_user(user_id)`` the user's keys, oldest first.

    Misses that arrive together (a reconnect storm after a restart) are read in one
    query each way (``services.coalesce.Coalescer``: ``WHERE id IN (...)`` /
    ``WHERE user_id IN (...)``, at most ``batch_max`` at a time).

    Kept at most ``ttl_s`` seconds. ``changed(user_id, key_id)`` (a key was added,
    changed or deleted here) forgets what is cached of the user and the key and calls
    ``on_change(user_id, key_id)`` (the server broadcasts it to its other processes,
    which call ``invalidate``). Database errors propagate.
    """

    def __init__(self, db: Database, ttl_s: float = 300.0,
                 on_change: Callable[[int, int], None] | None = None,
                 batch_wait_s: float = 0.002, batch_max: int = 500,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._db = db
        self.ttl_s = ttl_s
        self.on_change = on_change
        self._lock = threading.Lock()
        self._keys: dict[int, tuple[ExchangeKey, float]] = {}  # id -> (row, read at)
        self._users: dict[int, tuple[tuple[int, ...], float]] = {}  # user -> (key ids, read at)
        self._generation = 0  # bumped by invalidate: a read begun before it is not kept
        self._by_id = Coalescer(self._read_ids, sleep, batch_wait_s, batch_max)
        self._by_user = Coalescer(self._read_users, sleep, batch_wait_s, batch_max)
        self.hits = 0
        self.misses = 0

    def get(self, user_id: int, key_id: int) -> ExchangeKey:
        """The key ``key_id`` if it belongs to ``user_id`` and is not deleted. Raises
        NotFound (``key_not_found``, field ``key_id``) otherwise."""
        now = time.monotonic()
        with self._lock:
            held = self._keys.get(key_id)
        if held is not None and now - held[1] < self.ttl_s:
            self.hits += 1
            key: ExchangeKey | None = held[0]
        else:
            self.misses += 1
            key = self._by_id.get(key_id)
        if key is None or key.user_id != user_id or key.status == "deleted":
            raise NotFound("key_not_found", f"no API key {key_id}", "key_id")
        return key

    def of_user(self, user_id: int) -> list[ExchangeKey]:
        """The user's keys that are not deleted, oldest first."""
        now = time.monotonic()
        with self._lock:
            held = self._users.get(user_id)
            if held is not None and now - held[1] < self.ttl_s:
                rows = [self._keys.get(i) for i in held[0]]
                if all(r is not None and now - r[1] < self.ttl_s for r in rows):
                    self.hits += 1
                    return [r[0] for r in rows]  # type: ignore[index]
        self.misses += 1
        return list(self._by_user.get(user_id) or ())

    def changed(self, user_id: int, key_id: int) -> None:
        """A key of ``user_id`` was added, changed or deleted in this process: forget
        it here and tell the other processes (``on_change``)."""
        self.invalidate(user_id, key_id)
        if self.on_change is not None:
            try:
                self.on_change(user_id, key_id)
            except Exception:  # the TTL bounds what another process may still hold
                logger.exception("key change broadcast failed key_id=%s", key_id)

    def invalidate(self, user_id: int | None = None, key_id: int | None = None) -> None:
        """Forget the user's key list and the key (None: everything)."""
        with self._lock:
            self._generation += 1
            if user_id is None and key_id is None:
                self._keys.clear()
                self._users.clear()
                return
            if user_id is not None:
                self._users.pop(user_id, None)
            if key_id is not None:
                self._keys.pop(key_id, None)

    def stats(self) -> dict:
        """``{"keys", "hits", "misses", "queries"}``."""
        with self._lock:
            return {"keys": len(self._keys), "hits": self.hits, "misses": self.misses,
                    "queries": self._by_id.reads + self._by_user.reads}

    # ---- batched reads -----------------------------------------------------------------
    def _keep(self, generation: int, rows: list[ExchangeKey],
              users: dict[int, tuple[int, ...]] | None = None) -> None:
        read_at = time.monotonic()
        with self._lock:
            if generation != self._generation:
                return  # a change came in while reading: do not keep what may be older
            for r in rows:
                self._keys[r.id] = (r, read_at)
            for user_id, ids in (users or {}).items():
                self._users[user_id] = (ids, read_at)

    def _read_ids(self, key_ids: list[int]) -> dict[int, ExchangeKey]:
        generation = self._generation
        with self._db.session() as s:
            rows = list(s.scalars(select(ExchangeKey).where(ExchangeKey.id.in_(key_ids))))
        self._keep(generation, rows)
        return {r.id: r for r in rows}

    def _read_users(self, user_ids: list[int]) -> dict[int, list[ExchangeKey]]:
        generation = self._generation
        with self._db.session() as s:
            rows = list(s.scalars(select(ExchangeKey).where(
                ExchangeKey.user_id.in_(user_ids), ExchangeKey.status != "deleted")
                .order_by(ExchangeKey.id)))
        out: dict[int, list[ExchangeKey]] = {u: [] for u in user_ids}
        for r in rows:
            out[r.user_id].append(r)
        self._keep(generation, rows, {u: tuple(k.id for k in ks) for u, ks in out.items()})
        return out


class UserService:
    """Registration, login and lookup of users."""

    def __init__(self, db: Database, tokens: TokenService) -> None:
        self._db = db
        self.tokens = tokens

    def register(self, username: str, password: str, is_admin: bool = False) -> User:
        """Create a user. Raises Conflict when the username is taken."""
        user = User(username=username, password_hash=hash_password(password), is_admin=is_admin)
        try:
            with self._db.transaction() as s:
                s.add(user)
        except IntegrityError as e:
            raise Conflict("username_taken", "username is already taken", "username") from e
        logger.info("user registered user_id=%s", user.id)
        return user

    def login(self, username: str, password: str) -> tuple[str, int]:
        """``(access_token, expires_in_s)``. Raises Unauthorized on a bad pair
        (same answer and cost for an unknown user)."""
        with self._db.session() as s:
            user = s.scalars(select(User).where(User.username == username)).first()
        if not verify_password(user.password_hash if user else None, password) or user is None:
            raise Unauthorized("invalid_credentials", "wrong username or password")
        return self.tokens.issue(user.id, user.is_admin), self.tokens.expires_s

    def get(self, user_id: int) -> User:
        """The user. Raises Unauthorized when it no longer exists (stale token)."""
        with self._db.session() as s:
            user = s.get(User, user_id)
        if user is None:
            raise Unauthorized("unauthorized", "user no longer exists")
        return user

    def by_username(self, username: str) -> User | None:
        """The user named ``username`` or None."""
        with self._db.session() as s:
            return s.scalars(select(User).where(User.username == username)).first()


class KeyService:
    """CRUD of exchange API keys, scoped to their owner."""

    def __init__(self, db: Database, cipher: KeyCipher, build_client: BuildClient,
                 trading: TradingService, streams: StreamManager,
                 cache: KeyCache | None = None) -> None:
        self._db = db
        self.cache = cache or KeyCache(db, ttl_s=0.0, batch_wait_s=0.0)
        self._cipher = cipher
        self._build = build_client
        self._trading = trading
        self._streams = streams

    def list(self, user_id: int) -> list[ExchangeKey]:
        """The user's keys, oldest first (``KeyCache``: read once, kept until changed)."""
        return self.cache.of_user(user_id)

    def get(self, user_id: int, key_id: int) -> ExchangeKey:
        """One of the user's keys (``KeyCache``). Raises NotFound (also for another
        user's key)."""
        return self.cache.get(user_id, key_id)

    def resolve(self, user_id: int, key_id: int | None) -> ExchangeKey:
        """``key_id``'s key, or the user's only key when ``key_id`` is None.
        Raises NotFound, or ValidationFailed when the user has several keys."""
        if key_id is not None:
            return self.get(user_id, key_id)
        keys = self.list(user_id)
        if len(keys) == 1:
            return keys[0]
        if not keys:
            raise NotFound("key_not_found", "the user has no API key", "key_id")
        raise ValidationFailed("key_id_required", "key_id is required when the user has "
                               "more than one key", "key_id")

    def _check(self, user_id: int, exchange: str, api_key: str, api_secret: str,
               testnet: bool) -> None:
        client = self._build(exchange, api_key, api_secret, testnet, user_id)
        try:
            client.validate_credentials()
        finally:
            client.close()

    def create(self, user_id: int, exchange: str, api_key: str, api_secret: str,
               testnet: bool, label: str) -> ExchangeKey:
        """Validate with the exchange, then store. Raises AuthFailed (the exchange's
        code), Conflict (a key for this exchange and network exists), Exchange*."""
        existing = [k for k in self.list(user_id) if k.exchange == exchange and k.testnet == testnet]
        if existing:
            raise Conflict("key_exists", f"a {exchange} {'testnet' if testnet else 'mainnet'} "
                           f"key exists (id {existing[0].id}); update it instead", "exchange")
        self._check(user_id, exchange, api_key, api_secret, testnet)
        key = ExchangeKey(user_id=user_id, exchange=exchange, testnet=testnet, label=label,
                          api_key=api_key, api_secret_encrypted=self._cipher.encrypt(api_secret))
        with self._db.transaction() as s:
            s.add(key)
        self.cache.changed(user_id, key.id)
        logger.info("api key added user_id=%s key_id=%s exchange=%s testnet=%s",
                    user_id, key.id, exchange, testnet)
        return key

    def update(self, user_id: int, key_id: int, changes: dict) -> ExchangeKey:
        """Apply any of ``api_key``, ``api_secret``, ``label``, ``testnet``; a new
        credential is validated first. Drops the cached client and restarts a running
        stream with the new values on the same push state, so subscribers keep
        receiving without subscribing again and the sequence continues."""
        key = self.get(user_id, key_id)
        api_key = changes.get("api_key", key.api_key)
        testnet = changes.get("testnet", key.testnet)
        credential_changed = any(k in changes for k in ("api_key", "api_secret", "testnet"))
        if credential_changed:
            secret = changes.get("api_secret") or self._cipher.decrypt(key.api_secret_encrypted)
            self._check(user_id, key.exchange, api_key, secret, testnet)
        with self._db.transaction() as s:
            row = s.get(ExchangeKey, key_id)
            assert row is not None
            old_testnet = row.testnet
            row.api_key, row.testnet = api_key, testnet
            row.label = changes.get("label", row.label)
            if "api_secret" in changes:
                row.api_secret_encrypted = self._cipher.encrypt(changes["api_secret"])
            row.status = "active"
            row.updated_at = now_ms()
        self.cache.changed(user_id, key_id)
        self._trading.clear_user_cache(user_id, key.exchange, old_testnet)
        if credential_changed:  # a label is no stream value: the stream stays as it is
            self._streams.restart_key(user_id, key_id)
        logger.info("api key updated user_id=%s key_id=%s", user_id, key_id)
        return row

    def delete(self, user_id: int, key_id: int) -> None:
        """Delete the key: its secret is erased and it disappears from every answer,
        while the row stays so that the ledger keeps its trades and fills. Drops the
        cached client and stops the stream (its subscribers get ``stream_status``
        ``down``; its push state is forgotten)."""
        key = self.get(user_id, key_id)
        self.cache.changed(user_id, key_id)  # no new stream from a cached copy
        self._streams.stop_key(key_id)
        self._trading.clear_user_cache(user_id, key.exchange, key.testnet)
        with self._db.transaction() as s:
            row = s.get(ExchangeKey, key_id)
            assert row is not None
            row.status = "deleted"
            row.api_secret_encrypted = b""
            row.updated_at = now_ms()
        self.cache.changed(user_id, key_id)
        logger.info("api key deleted user_id=%s key_id=%s", user_id, key_id)
