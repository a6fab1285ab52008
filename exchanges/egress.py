"""Egress addresses: the local source address an API key's exchange traffic leaves from.

Binance counts request weight per IP (2,400 a minute on USD-M) and Bybit its 600
requests per 5 s per IP, so one address caps how many accounts one server can
snapshot, poll and recover after a reconnect storm. With ``EGRESS_IPS`` set, each key
is assigned one of the host's addresses by its owner's user id modulo their number
(stable: the same key always leaves from the same one, in every process and after
restarts; even: users are numbered in order, and a user has one key per venue
network), its REST session and its private
WebSocket bind to it, and the rate governor is kept per (venue, address). Every
address must be routable from the host and, where the exchange key has an IP
whitelist, be on it. Public market streams are not bound (they carry no weight).
"""
from __future__ import annotations

import select
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import requests
from requests_toolbelt.adapters.source import SourceAddressAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


def egress_for(slot: int, addresses: Sequence[str]) -> str | None:
    """The source address of an account's traffic among ``addresses``: the one at
    ``slot`` (a stable integer of the account, its owner's user id) modulo their
    number, or None (the operating system's choice) when none are configured.

    Why not a hash of the API key: a hash spreads keys only on average. With 4,000 keys
    on 134 addresses (30 each on average) the busiest held 42-48, and at about 51 of
    Binance request weight a stream start (2,400 a minute per IP) their last streams
    of a reconnect storm waited for the next minute (docs/push-stream.md)."""
    if not addresses:
        return None
    return addresses[slot % len(addresses)]


# keep-alive connections kept per venue host and address (a request finding none idle
# opens one and never waits: an order does not queue behind a storm's snapshots; beyond
# this many at once, the extra ones are closed after use)
POOL_MAXSIZE = 256


def _native_select() -> ModuleType:
    """The operating system's ``select`` module, also under eventlet's monkey patching
    (whose green ``select`` parks the caller and goes through the event hub even for a
    zero timeout)."""
    patcher = sys.modules.get("eventlet.patcher")
    return patcher.original("select") if patcher is not None else select


class _PeekedIdle:
    """urllib3's check of a kept-alive connection before it is reused (readable while
    idle: the venue closed it, or sent what nobody asked for; then a new one is
    opened), asked of the kernel with a zero-timeout ``poll`` instead of urllib3's
    ``select``: under eventlet that one was a green wait, a timer and a switch through
    the hub for every pooled request of a storm."""

    sock: socket.socket | None

    @property
    def is_connected(self) -> bool:
        """False when there is no socket or it is readable (closed or unexpected bytes)."""
        sock = self.sock
        if sock is None:
            return False
        native = _native_select()
        poller = native.poll()
        poller.register(sock.fileno(), native.POLLIN)
        return not poller.poll(0)


class _Connection(_PeekedIdle, HTTPConnection):
    """urllib3's HTTPConnection with the ``_PeekedIdle`` check."""


class _TLSConnection(_PeekedIdle, HTTPSConnection):
    """urllib3's HTTPSConnection with the ``_PeekedIdle`` check."""


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class SharedSourceAdapter(SourceAddressAdapter):  # type: ignore[misc]  # toolbelt is untyped
    """requests-toolbelt's SourceAddressAdapter shared by every session of one address
    (``shared_adapter``): its connection pool outlives any one client, so ``close()``
    (a session's, when its key's client is dropped) keeps it. Its pools check an idle
    connection before reuse without yielding (``_PeekedIdle``)."""

    def __init__(self, source_address: str, **kwargs: object) -> None:
        self._pool_keys: dict[tuple[str, object, object], tuple[dict[str, Any], dict[str, Any]]] = {}
        super().__init__(source_address, **kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False) -> None:
        """requests-toolbelt's pool manager (bound to the address), with pools of
        ``_PeekedIdle`` connections."""
        super().init_poolmanager(connections, maxsize, block)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def build_connection_pool_key_attributes(self, request: requests.PreparedRequest, verify: object,
                                             cert: object = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """requests' pool key for ``request`` (which pool of the manager serves it),
        computed once per (scheme and host, ``verify``, ``cert``): requests builds it
        for every request, including a ``stat`` of the CA bundle's path (an
        ``isdir``) when ``verify`` names one."""
        url = request.url or ""
        key = ("/".join(url.split("/", 3)[:3]), verify, cert)
        cached = self._pool_keys.get(key)
        if cached is None:
            cached = super().build_connection_pool_key_attributes(request, verify, cert)
            if len(self._pool_keys) < 64:
                self._pool_keys[key] = cached
        host_params, pool_kwargs = cached
        return dict(host_params), dict(pool_kwargs)

    def close(self) -> None:
        """Nothing: the other keys of the address use the pool."""


_shared: dict[str, SharedSourceAdapter] = {}
_shared_lock = threading.Lock()


def shared_adapter(source_address: str) -> SharedSourceAdapter:
    """The process's one adapter for ``source_address``: its keep-alive connections to
    a venue host are reused by every key leaving from that address (a key's first
    request no longer opens a connection, and on ``https`` no TLS handshake, of its
    own: in a reconnect storm every stream's snapshot is a key's first request), at
    most ``POOL_MAXSIZE`` kept per host."""
    with _shared_lock:
        adapter = _shared.get(source_address)
        if adapter is None:
            adapter = _shared[source_address] = SharedSourceAdapter(
                source_address, pool_maxsize=POOL_MAXSIZE)
        return adapter


def bind_session(session: requests.Session, source_address: str) -> None:
    """Make every connection ``session`` opens leave from ``source_address``, through
    the address's ``shared_adapter`` on ``http://`` and ``https://`` (the session's
    own headers, e.g. a key's API key header, stay its own)."""
    adapter = shared_adapter(source_address)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


def bound_socket(url: str, timeout_s: float, source_address: str) -> socket.socket:
    """A TCP connection to ``url``'s host (``ws://`` or ``wss://``) from
    ``source_address``, TLS-wrapped (certificate and host name checked) for ``wss``,
    for ``websocket.create_connection(url, socket=...)`` (which then skips its own
    connect and TLS). Raises OSError (socket.timeout, ssl.SSLError)."""
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    sock = socket.create_connection((host, port), timeout=timeout_s,
                                    source_address=(source_address, 0))
    if not secure:
        return sock
    try:
        return ssl.create_default_context().wrap_socket(sock, server_hostname=host)
    except Exception:
        sock.close()
        raise
