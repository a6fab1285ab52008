"""Unbound Flask extensions, bound in ``create_app`` (the Socket.IO server is made per app
there, ``app.extensions["socketio"]``)."""
from __future__ import annotations

from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

# Key: request.remote_addr: the TCP peer, or with TRUSTED_PROXIES > 0 the address the
# nearest trusted proxy saw (``trust_proxies``: werkzeug's ProxyFix)
limiter = Limiter(key_func=get_remote_address, default_limits=[])


def trust_proxies(app: Flask, count: int) -> None:
    """Behind ``count`` reverse proxies (nginx: 1), take the client's address, scheme
    and host from their ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` (werkzeug's
    ``ProxyFix``, the last ``count`` values of each: a client cannot forge them past
    the proxies). 0: trust no header (the TCP peer is the client). Raises ValueError
    for a negative ``count``."""
    if count < 0:
        raise ValueError("TRUSTED_PROXIES must be >= 0")
    if count:
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count,  # type: ignore[method-assign]
                                x_host=count)


def limiter_storage_uri(storage_uri: str | None, message_queue_url: str | None) -> str:
    """Where rate-limit counters live: ``RATELIMIT_STORAGE_URI`` when set, else the
    Redis of ``MESSAGE_QUEUE_URL`` (so that several server processes share one count),
    else process memory. Every backend increments atomically (memory: a lock per key;
    Redis: one Lua INCRBY+EXPIRE)."""
    return storage_uri or message_queue_url or "memory://"


def init_limiter(app: Flask, storage_uri: str | None, message_queue_url: str | None,
                 key_prefix: str = "pushsrv") -> None:
    """Bind ``limiter`` to ``app`` with the storage chosen by ``limiter_storage_uri``.
    A storage failure raises ``limits.errors.StorageError`` (answered 503 by
    api/errors.py: the limits fail closed), within 1 s for Redis."""
    uri = limiter_storage_uri(storage_uri, message_queue_url)
    app.config["RATELIMIT_STORAGE_URI"] = uri
    options: dict = {"wrap_exceptions": True}
    if uri.startswith(("redis", "rediss")):
        # one deployment's counters apart from another's on a shared Redis
        options.update(socket_timeout=1, socket_connect_timeout=1, key_prefix=f"LIMITS:{key_prefix}")
    app.config["RATELIMIT_STORAGE_OPTIONS"] = options
    app.config["RATELIMIT_KEY_PREFIX"] = key_prefix
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter.init_app(app)
