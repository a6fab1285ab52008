"""What every venue client shares in one process: the clock offset to a venue host
(sampled once, adopted by every key's client built with a governor) and the
environment settings ``requests`` would otherwise re-read on every request."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from exchanges import rest_base
from exchanges.binance.client import BinanceFuturesClient
from exchanges.bybit.client import BybitLinearClient
from exchanges.governor import RateGovernor
from exchanges.types import VenueEndpoints

ENDPOINTS = VenueEndpoints("http://127.0.0.1:9/", "ws://127.0.0.1:9")


@pytest.fixture(autouse=True)
def fresh_shared(monkeypatch):
    monkeypatch.setattr(rest_base, "_shared_offsets", {})
    monkeypatch.setattr(rest_base, "_sampling", {})
    rest_base._environ_settings.cache_clear()
    yield
    rest_base._environ_settings.cache_clear()


def binance(n: int, calls: list, server_ms: int = 10_000_000_000_000, governor=True):  # type: ignore[no-untyped-def]
    gov = RateGovernor("binance") if governor else None
    c = BinanceFuturesClient(f"key{n:06d}", "secret", testnet=False, endpoints=ENDPOINTS,
                             timeout_s=1, governor=gov)

    def futures_time():  # type: ignore[no-untyped-def]
        calls.append(n)
        return {"serverTime": server_ms}
    c._client.futures_time = futures_time
    c._client.futures_get_open_orders = lambda **kw: []
    return c


def test_clients_with_a_governor_adopt_the_offset_sampled_once():
    calls: list = []
    first, second = binance(1, calls), binance(2, calls)
    first.ensure_clock()
    assert len(calls) == 3                      # one client sampled (median of three)
    second.ensure_clock()
    assert len(calls) == 3                      # the other adopted it: no request
    assert second._client.timestamp_offset == first._client.timestamp_offset
    assert second._client.timestamp_offset > 1_000_000_000_000


def test_a_stale_shared_offset_is_sampled_again(monkeypatch):
    calls: list = []
    binance(1, calls).ensure_clock()
    key = ("binance", ENDPOINTS.rest_url)
    off, at = rest_base._shared_offsets[key]
    rest_base._shared_offsets[key] = (off, at - rest_base.SHARED_CLOCK_TTL_S - 1)
    binance(2, calls).ensure_clock()
    assert len(calls) == 6


def test_without_a_governor_each_client_samples_its_own():
    calls: list = []
    binance(1, calls, governor=False).ensure_clock()
    binance(2, calls, governor=False).ensure_clock()
    assert len(calls) == 6
    assert rest_base._shared_offsets == {}


def test_concurrent_clients_wait_for_the_one_sampling():
    calls: list = []
    gate = threading.Event()
    leader = binance(1, calls)
    slow_time = leader._client.futures_time

    def slow():  # type: ignore[no-untyped-def]
        gate.wait(2)
        return slow_time()
    leader._client.futures_time = slow
    others = [binance(i, calls) for i in range(2, 6)]
    threads = [threading.Thread(target=leader.ensure_clock)]
    threads[0].start()
    time.sleep(0.05)
    threads += [threading.Thread(target=c.ensure_clock) for c in others]
    for t in threads[1:]:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == [1, 1, 1]                   # only the leader asked the venue
    assert all(c._clock_synced for c in others)


def test_a_failed_sampling_lets_the_waiters_sample_their_own():
    from exchanges.errors import ExchangeUnavailable
    calls: list = []
    leader = binance(1, calls)

    def down():  # type: ignore[no-untyped-def]
        time.sleep(0.1)
        raise requests.ConnectionError("down")
    leader._client.futures_time = down
    other = binance(2, calls)
    errors: list = []

    def run_leader() -> None:
        try:
            leader.ensure_clock()
        except ExchangeUnavailable as e:
            errors.append(e)
    t = threading.Thread(target=run_leader)
    t.start()
    time.sleep(0.02)
    other.ensure_clock()
    t.join(5)
    assert len(errors) == 1 and calls == [2, 2, 2] and other._clock_synced


def test_signed_call_uses_the_shared_clock():
    calls: list = []
    assert binance(1, calls).get_open_orders() == []
    assert binance(2, calls).get_open_orders() == []
    assert len(calls) == 3


def test_bybit_clients_share_too_and_not_with_binance():
    calls: list = []
    b = binance(1, calls)
    b.ensure_clock()
    by = [BybitLinearClient(f"bkey{i}", "secret", testnet=False, endpoints=ENDPOINTS,
                            timeout_s=1, governor=RateGovernor("bybit")) for i in range(2)]
    asked: list = []
    for c in by:
        c._http.get_server_time = lambda: asked.append(1) or {  # type: ignore[misc]
            "retCode": 0, "retMsg": "OK", "result": {"timeNano": str(20_000_000_000_000 * 10**6),
                                                     "timeSecond": "20000000000"},
            "time": 20_000_000_000_000}
        c.ensure_clock()
    assert len(asked) == 3 and by[0].time_offset_ms == by[1].time_offset_ms
    assert b._client.timestamp_offset != by[0].time_offset_ms


def test_environment_is_resolved_once_per_session(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    c = BinanceFuturesClient("key1", "secret", testnet=False,
                             endpoints=VenueEndpoints("https://fapi.example", "wss://x"), timeout_s=1)
    s = c._session()
    assert s.trust_env is False
    assert s.proxies["https"] == "http://proxy.example:3128"
    assert s.verify == "/etc/ssl/certs/ca-certificates.crt"
    # what requests would have used per request with trust_env, it uses now
    settings = s.merge_environment_settings("https://fapi.example/fapi/v1/time", {}, None, None, None)
    assert settings["proxies"]["https"] == "http://proxy.example:3128"
    assert settings["verify"] == "/etc/ssl/certs/ca-certificates.crt"


def test_no_proxy_is_honoured(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    c = BinanceFuturesClient("key1", "secret", testnet=False, endpoints=ENDPOINTS, timeout_s=1)
    assert c._session().trust_env is False
    assert "http" not in c._session().proxies


# ---- VenueSession: the lean request preparation ------------------------------------------

def _prepared(session: requests.Session, method: str, url: str, **kw):  # type: ignore[no-untyped-def]
    session.trust_env = False
    req = requests.Request(method=method.upper(), url=url, headers=kw.pop("headers", None),
                           data=kw.pop("data", None) or {}, params=kw.pop("params", None) or {}, **kw)
    p = session.prepare_request(req)
    return p.method, p.url, dict(p.headers), p.body


@pytest.mark.parametrize("method,url,kw", [
    ("get", "http://127.0.0.1:9/fapi/v1/openOrders",
     {"params": "symbol=XRP%2FUSDT&timestamp=1&signature=ab c"}),
    ("get", "http://127.0.0.1:9/fapi/v2/account", {"params": {"a": "1", "b": ["x", "y"]}}),
    ("post", "http://127.0.0.1:9/fapi/v1/order",
     {"data": [("symbol", "XRPUSDT"), ("quantity", "1.5"), ("signature", "f0")],
      "headers": {"Content-Type": "application/x-www-form-urlencoded"}}),
    ("delete", "http://127.0.0.1:9/fapi/v1/listenKey?x=1", {"data": {"listenKey": "k é"}}),
    ("put", "http://127.0.0.1:9/fapi/v1/listenKey", {"headers": {"X-Session": None, "X-New": "2"}}),
    ("post", "http://127.0.0.1:9/v5/order/create", {"data": '{"a": 1}'}),
])
def test_venue_session_prepares_what_requests_prepares(method, url, kw):  # type: ignore[no-untyped-def]
    """Method, URL (params encoded and quoted), headers (the session's, the request's,
    None removing one) and body are byte for byte requests' own."""
    sessions = []
    for cls in (requests.Session, rest_base.VenueSession):
        s = cls()
        s.headers.update({"X-MBX-APIKEY": "key1", "X-Session": "s"})
        sessions.append(s)
    plain, lean = (_prepared(s, method, url, **dict(kw)) for s in sessions)
    assert lean == plain


def test_clients_get_a_venue_session_and_sign_with_their_own_key_over_one_adapter():
    """Both venues' clients get the lean session; two keys' clients sending through one
    adapter (the egress address's shared pool) still each send their own API key and
    signature."""
    import hashlib
    import hmac
    from urllib.parse import parse_qsl, urlsplit

    class Recorder(requests.adapters.BaseAdapter):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[requests.PreparedRequest] = []

        def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
            self.sent.append(request)
            r = requests.Response()
            r.status_code, r._content, r.url, r.request = 200, b"[]", request.url, request
            return r

        def close(self) -> None:
            pass

    shared = Recorder()
    clients = [BinanceFuturesClient(f"key{n}", f"secret{n}", testnet=False, endpoints=ENDPOINTS,
                                    timeout_s=1) for n in (1, 2)]
    bybit = BybitLinearClient("bkey", "bsecret", testnet=False, endpoints=ENDPOINTS, timeout_s=1)
    assert type(bybit._session()) is rest_base.VenueSession
    for c in clients:
        assert type(c._session()) is rest_base.VenueSession
        c._session().mount("http://", shared)
        c._client.timestamp_offset, c._clock_synced = 0, True
        assert c.get_open_orders() == []
    assert len(shared.sent) == 2
    for n, sent in zip((1, 2), shared.sent, strict=True):
        assert sent.headers["X-MBX-APIKEY"] == f"key{n}"
        query = urlsplit(sent.url).query
        unsigned, _, signature = query.rpartition("&signature=")
        assert signature == hmac.new(f"secret{n}".encode(), unsigned.encode(), hashlib.sha256).hexdigest()
        assert dict(parse_qsl(unsigned))["timestamp"]


def test_venue_session_keeps_a_cookie_the_venue_sets():
    """A reply's Set-Cookie is kept and sent back on the next request, as requests does
    (the lean preparation steps aside while the session holds a cookie)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Set-Cookie", "aws=t1; Path=/")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = rest_base.VenueSession()
        s.trust_env = False
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        assert s.get(url, timeout=5).json() == {}
        assert s.get(url, params="a=1", timeout=5).status_code == 200
        assert seen == [None, "aws=t1"]
    finally:
        server.shutdown()
        server.server_close()


def test_venue_session_takes_credentials_in_the_url_as_requests_does():
    plain, lean = requests.Session(), rest_base.VenueSession()
    url = "http://user:p%40ss@127.0.0.1:9/x"
    assert _prepared(lean, "get", url) == _prepared(plain, "get", url)
    assert _prepared(lean, "get", url)[2]["Authorization"].startswith("Basic ")
