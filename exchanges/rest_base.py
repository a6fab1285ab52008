"""What every venue's signed REST client does the same way: construction (the key
hint, the egress address, the symbol-rules cache), the clock sync, the clock-skew rule,
admission through the venue's rate governor, the symbol-rules cache and close.
Subclasses supply the library error mapping (``_errors``), the server time
(``_fetch_server_time``) and where the signing offset goes (``_set_clock_offset``),
the instrument list (``_fetch_symbol_rules``), the HTTP session (``_session``) and,
where the venue reports it, the used request weight (``_used_weight``)."""
from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager
from decimal import Decimal
from functools import lru_cache
from typing import Any, TypeVar

import requests

from clock import now_ms
from exchanges.egress import bind_session
from exchanges.errors import ClockSkew, InvalidOrder, RateLimited, ThrottledLocally
from exchanges.governor import QUERY, RateGovernor
from exchanges.spec import VenueSpec
from exchanges.types import SymbolRules, VenueEndpoints

logger = logging.getLogger(__name__)

T = TypeVar("T")

SYMBOL_RULES_TTL_S = 3600.0
CLOCK_SAMPLES = 3
SHARED_CLOCK_TTL_S = 300.0   # a shared clock offset older than this is sampled again

# The offset between this host's clock and a venue's is the same for every key: clients
# built with a governor (the server's) adopt the last offset sampled in this process for
# the same venue host instead of sampling it again (3 requests each). {(exchange,
# rest_url): (offset_ms, time.monotonic() of the sample)}; while one client samples a
# host, the others wait for its result (``_sampling``: the event set when it is done).
_shared_offsets: dict[tuple[str, str], tuple[int, float]] = {}
_sampling: dict[tuple[str, str], threading.Event] = {}
_shared_guard = threading.Lock()


def mask(secret: str | None, keep: int = 4) -> str:
    """First ``keep`` characters of a key or listenKey followed by ``...`` (for logs)."""
    return secret[:keep] + "..." if secret else "-"


def plain(d: Decimal) -> str:
    """Decimal as a plain decimal string (``Decimal("1E-3")`` -> ``"0.001"``)."""
    return f"{Decimal(d):f}"


@lru_cache(maxsize=64)
def _environ_settings(url: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """What ``requests`` would read from the environment for a request to ``url``: the
    proxies (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, honouring ``NO_PROXY``) and the
    CA bundle (``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``). Read once per URL per
    process (the environment of a running server does not change)."""
    proxies = requests.utils.get_environ_proxies(url)
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return tuple(sorted(proxies.items())), bundle


def pin_environment(session: requests.Session, url: str) -> None:
    """Resolve once what ``requests`` otherwise re-reads from the environment on every
    request of ``session`` (the proxies for ``url``'s host and the CA bundle; about a
    third of a request's CPU, scanning ``os.environ`` and ``~/.netrc`` each time) and
    set ``trust_env = False``. Every request of a venue client goes to the one host of
    ``url``. ``~/.netrc`` credentials are no longer looked up: the venues authenticate
    with signed headers/parameters, never HTTP basic auth."""
    if not session.trust_env:
        return
    proxies, bundle = _environ_settings(url)
    session.proxies.update(dict(proxies))   # the environment's win over the session's, as in requests
    if bundle and session.verify is True:
        session.verify = bundle
    session.trust_env = False


class VenueSession(requests.Session):
    """A ``requests.Session`` whose request preparation skips what a venue client's
    requests never use: no cookie jar to merge or attach while the session holds no
    cookie, no session params, auth or hooks to merge, no environment to read
    (``trust_env`` off, ``pin_environment``). Requests that use any of those (a cookie
    the venue set, ``files``, ``json``, ``auth``, hooks, a URL with credentials) take
    requests' own path, so what goes on the wire is the same: the method, URL
    (``prepare_url``), headers (the session's, then the request's, ``None`` removing
    one, validated by ``prepare_headers``) and body (``prepare_body``) are prepared by
    requests' own ``PreparedRequest`` methods. Sending, cookies the reply sets,
    redirects and the reply's body are requests' ``Session.send``.

    Why: in a reconnect storm every stream starts with four REST calls, and requests'
    merging of settings (``merge_setting``'s protocol checks), its cookie jars and its
    environment lookup took about a quarter of each call's CPU."""

    def _lean(self, request: requests.Request) -> bool:
        return (not self.trust_env and not request.cookies and not self.cookies
                and not request.auth and not self.auth and not request.files
                and request.json is None and not self.params
                and not any(request.hooks.values()) and not any(self.hooks.values()))

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """``requests.Session.prepare_request``, without the merges this session has
        nothing for (see the class); anything else goes to requests' own."""
        if not self._lean(request):
            return super().prepare_request(request)
        p = requests.PreparedRequest()
        p.prepare_method(request.method)
        p.prepare_url(request.url or "", request.params)
        headers: MutableMapping[str, Any] = self.headers
        if request.headers:
            headers = requests.structures.CaseInsensitiveDict(self.headers)
            headers.update(request.headers)
        p.prepare_headers({k: v for k, v in headers.items() if v is not None})
        p._cookies = requests.cookies.RequestsCookieJar()  # empty: no Cookie header
        p.prepare_body(request.data, None, None)
        if "@" in (p.url or ""):  # credentials in the URL, as requests takes them
            p.prepare_auth(None, p.url or "")
        return p

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> dict[str, Any]:
        """``requests.Session.merge_environment_settings`` for a session that does not
        read the environment and has no proxies: the call's settings, else the
        session's (anything else goes to requests' own)."""
        if self.trust_env or proxies or self.proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        return {"proxies": {}, "stream": self.stream if stream is None else stream,
                "verify": self.verify if verify is None else verify,
                "cert": self.cert if cert is None else cert}


def lean_session(session: Any) -> None:
    """Make ``session`` (a library client's plain ``requests.Session``, already built
    with its headers and adapters) a ``VenueSession``: the same object and state, the
    lean preparation. Anything else (a subclass, a mock) is left as it is."""
    if type(session) is requests.Session:
        session.__class__ = VenueSession


def order_ref(symbol: str, client_order_id: str | None, order_id: str | None,
              client_id_param: str, **extra: str) -> dict[str, str]:
    """The parameters naming one order: ``extra``, ``symbol`` and ``orderId`` (preferred)
    or ``client_id_param`` (the venue's name for the client order id). Raises
    ValueError when neither id is given."""
    if order_id is not None:
        return {**extra, "symbol": symbol, "orderId": str(order_id)}
    if client_order_id is not None:
        return {**extra, "symbol": symbol, client_id_param: client_order_id}
    raise ValueError("order_id or client_order_id is required")


class GovernedRestClient(ABC):
    """Base of the venue clients: ``spec`` (the venue's ``VenueSpec``) and ``exchange``
    (its name) are class attributes of the subclass, which builds its library client
    in ``_build``. Construction does no network I/O.

    Args:
        api_key, api_secret: the key pair (the secret is never logged).
        testnet: whether ``endpoints`` is the testnet (informational; routing comes
            from ``endpoints``).
        endpoints: the venue's REST and WebSocket base URLs (``VenueEndpoints``).
        timeout_s: per-request ``requests`` timeout, seconds.
        governor: the venue's shared RateGovernor (None: no admission control); its
            ``egress`` address, when set, is where this key's REST session and
            private stream connect from.
    """

    spec: VenueSpec
    exchange: str
    _api_key_hint: str
    _clock_synced: bool
    _governor: RateGovernor | None
    _account_blocked_until: float = 0.0

    def __init__(self, api_key: str, api_secret: str, testnet: bool,
                 endpoints: VenueEndpoints, timeout_s: float = 10.0,
                 governor: RateGovernor | None = None) -> None:
        self._setup(api_key, testnet, endpoints, timeout_s, governor)
        self._build(api_key, api_secret)
        self._bind_egress()
        session = self._session()
        if isinstance(session, requests.Session):
            pin_environment(session, endpoints.rest_url)
            lean_session(session)

    def _setup(self, api_key: str, testnet: bool, endpoints: VenueEndpoints,
               timeout_s: float, governor: RateGovernor | None) -> None:
        """What every client keeps: ``testnet`` (informational), ``endpoints``,
        ``timeout_s`` (seconds), ``created_at`` (ms UTC), the masked key, the governor
        and its egress address, and an empty symbol-rules cache."""
        self.testnet = testnet
        self._governor = governor
        self.created_at = now_ms()
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self._api_key_hint = mask(api_key)
        self._egress = governor.egress if governor is not None else None
        self._closed = False
        self._clock_synced = False
        self._rules_lock = threading.Lock()
        self._rules: dict[str, SymbolRules] = {}
        self._rules_fetched_at: float | None = None   # time.monotonic() of the last fetch

    def _bind_egress(self) -> None:
        """Bind the HTTP session to the governor's egress address, when it has one."""
        if self._egress:
            bind_session(self._session(), self._egress)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(key={self._api_key_hint}, testnet={self.testnet}, "
                f"rest={self.endpoints.rest_url})")

    def _w(self, endpoint: str) -> int:
        """The request weight of ``endpoint`` in the venue's spec."""
        return self.spec.weight(endpoint)

    # ---- hooks: each venue adapter implements these ---------------------------------

    @abstractmethod
    def _build(self, api_key: str, api_secret: str) -> None:
        """Build the library client from the key pair, ``endpoints`` and ``timeout_s``
        (no network I/O)."""

    @abstractmethod
    def _errors(self) -> AbstractContextManager[None]:
        """Maps the library's exceptions to ``exchanges.errors`` (raise ... from e)."""

    @abstractmethod
    def _fetch_server_time(self) -> int:
        """One public request for the server's clock, ms UTC."""

    @abstractmethod
    def _set_clock_offset(self, offset_ms: int) -> None:
        """Make the library sign with local clock + ``offset_ms``."""

    @abstractmethod
    def _fetch_symbol_rules(self) -> dict[str, SymbolRules]:
        """The venue's instrument list, ``{symbol: SymbolRules}``."""

    @abstractmethod
    def _session(self) -> Any:
        """The library's ``requests.Session`` (None once the library dropped it)."""

    def _close_session(self) -> None:
        """Close the library's HTTP session (may raise; ``close`` swallows it)."""
        self._session().close()

    def _used_weight(self) -> int | None:
        """Request weight the venue reported for the last reply, if it does."""
        return None

    # ---- shared ExchangeClient methods ------------------------------------------

    def sync_clock(self) -> int:
        """Sample the server time ``CLOCK_SAMPLES`` times, set the signing offset to the
        median of ``server - local midpoint`` and return it (ms). Raises
        ExchangeUnavailable/ExchangeTimeout/RateLimited."""
        offsets = []
        for _ in range(CLOCK_SAMPLES):
            before = time.time() * 1000
            server = self._fetch_server_time()
            after = time.time() * 1000
            offsets.append(int(server - (before + after) / 2))
        offset = sorted(offsets)[len(offsets) // 2]
        self._set_clock_offset(offset)
        self._clock_synced = True
        if self._governor is not None:
            _shared_offsets[self._clock_key()] = (offset, time.monotonic())
        logger.info("%s clock synced key=%s offset_ms=%s", self.exchange, self._api_key_hint,
                    offset)
        return offset

    def _clock_key(self) -> tuple[str, str]:
        return self.exchange, self.endpoints.rest_url

    def ensure_clock(self) -> None:
        """Make the signing offset known before a signed request: a client built with a
        governor (the server's) adopts the offset sampled in this process for the same
        venue host within ``SHARED_CLOCK_TTL_S`` and samples it (``sync_clock``) only
        when there is none, one client at a time per host (the others wait for its
        result, and sample their own if it failed); a client without one always samples
        its own. A ClockSkew reply still resamples (``_signed``). Raises what
        ``sync_clock`` raises."""
        if self._clock_synced:
            return
        if self._governor is None:
            self.sync_clock()
            return
        key = self._clock_key()
        with _shared_guard:
            if self._adopt_shared_clock(key):
                return
            sampling = _sampling.get(key)
            leader = sampling is None
            if leader:
                sampling = _sampling[key] = threading.Event()
        assert sampling is not None
        if not leader:   # another client is sampling this host's clock: wait for it
            sampling.wait(self.timeout_s * CLOCK_SAMPLES)
            with _shared_guard:
                if self._adopt_shared_clock(key):
                    return
            self.sync_clock()   # its sampling failed: sample our own, as before
            return
        try:
            self.sync_clock()
        finally:
            with _shared_guard:
                _sampling.pop(key, None)
            sampling.set()

    def _adopt_shared_clock(self, key: tuple[str, str]) -> bool:
        shared = _shared_offsets.get(key)
        if shared is None or time.monotonic() - shared[1] >= SHARED_CLOCK_TTL_S:
            return False
        self._set_clock_offset(shared[0])
        self._clock_synced = True
        return True

    def server_time(self) -> int:
        """The venue's clock (one public request), ms UTC."""
        return self._fetch_server_time()

    def get_symbol_rules(self, symbol: str) -> SymbolRules:
        """Rules of ``symbol`` from the venue's instrument list, cached per client for
        ``SYMBOL_RULES_TTL_S`` (an unknown symbol does not refetch within it). Raises
        InvalidOrder with the spec's ``unknown_symbol_code`` for an unknown symbol."""
        with self._rules_lock:
            fetched = self._rules_fetched_at
            fresh = fetched is not None and time.monotonic() - fetched < SYMBOL_RULES_TTL_S
            rules = self._rules.get(symbol) if fresh else None
        if rules is None and not fresh:
            parsed = self._fetch_symbol_rules()
            with self._rules_lock:
                self._rules, self._rules_fetched_at = parsed, time.monotonic()
            rules = parsed.get(symbol)
        if rules is None:
            raise self._unknown_symbol(symbol)
        return rules

    def _unknown_symbol(self, symbol: str) -> InvalidOrder:
        return InvalidOrder(self.exchange, self.spec.unknown_symbol_code, f"Invalid symbol {symbol}.")

    def is_alive(self) -> bool:
        """True until ``close()``; no network I/O."""
        return not self._closed and self._session() is not None

    def close(self) -> None:
        """Close the HTTP session; never raises."""
        self._closed = True
        try:
            self._close_session()
        except Exception as e:  # isolation boundary: close must not raise
            logger.debug("%s close failed key=%s err=%s", self.exchange, self._api_key_hint,
                         type(e).__name__)

    # ---- requests ----------------------------------------------------------------

    def _signed(self, call: Callable[[], T], retry_on_skew: bool, priority: str = QUERY,
                weight: int = 1) -> T:
        """Run a signed call with error mapping and the clock-skew rule: on ClockSkew
        (Binance -1021, Bybit 10002) resample the offset once and, when
        ``retry_on_skew`` (idempotent GETs and ``create_order`` with its fixed client
        order id only), retry once. recvWindow is never widened. ``weight``: the
        request's weight on the venue's IP limit."""
        self.ensure_clock()
        try:
            return self._io(call, priority, weight)
        except ClockSkew:
            logger.warning("clock skew exchange=%s key=%s retry=%s", self.exchange,
                           self._api_key_hint, retry_on_skew)
            self.sync_clock()
            if not retry_on_skew:
                raise
            return self._io(call, priority, weight)

    def _public(self, call: Callable[[], T], weight: int = 1) -> T:
        return self._io(call, QUERY, weight)

    def _io(self, call: Callable[[], T], priority: str, weight: int = 1) -> T:
        """One request through the venue's rate governor (when there is one): refused
        locally while backing off, the reported weight recorded after the reply. A
        limit of this account only (``RateLimited.per_account``: Bybit 10006) holds
        back this client, not the venue."""
        now = time.monotonic()
        if now < self._account_blocked_until:
            raise ThrottledLocally(self.exchange, None, "backing off after this account's rate limit",
                                   None, int((self._account_blocked_until - now) * 1000) + 1)
        gov = self._governor
        if gov is not None:
            gov.before(priority, weight)
        try:
            with self._errors():
                return call()
        except RateLimited as e:
            if e.per_account:
                self._account_blocked_until = time.monotonic() + (e.retry_after_ms or 1000) / 1000
            elif gov is not None:
                gov.on_limited(e)
            raise
        finally:
            if gov is not None:
                gov.after(self._used_weight())
