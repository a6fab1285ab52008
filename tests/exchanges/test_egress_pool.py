"""The egress address's shared connection pool (``exchanges.egress``): an idle
kept-alive connection is reused, and one the venue closed meanwhile is noticed before
reuse (``_PeekedIdle``: a zero-timeout poll of the socket) and replaced, so the request
still succeeds."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from exchanges import egress


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the handler closes

    def do_GET(self) -> None:  # noqa: N802
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # /close: hang up after the reply without saying so (as a venue's idle timeout does)
        self.close_connection = self.path.startswith("/close")

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def server():  # type: ignore[no-untyped-def]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def session_for(address: str) -> tuple[requests.Session, egress.SharedSourceAdapter]:
    adapter = egress.SharedSourceAdapter(address, pool_maxsize=4)
    s = requests.Session()
    s.trust_env = False
    s.mount("http://", adapter)
    return s, adapter


def opened(adapter: egress.SharedSourceAdapter) -> int:
    pools = adapter.poolmanager.pools
    return sum(pools[k].num_connections for k in pools.keys())


def test_an_idle_connection_is_reused(server) -> None:  # type: ignore[no-untyped-def]
    s, adapter = session_for("127.0.0.6")
    for _ in range(3):
        assert s.get(server + "/x", timeout=5).json() == {}
    assert opened(adapter) == 1
    pools = adapter.poolmanager.pools
    assert all(isinstance(pools[k], egress._Pool) for k in pools.keys())


def test_a_connection_the_venue_closed_is_replaced_before_reuse(server) -> None:  # type: ignore[no-untyped-def]
    s, adapter = session_for("127.0.0.7")
    assert s.get(server + "/close", timeout=5).status_code == 200
    time.sleep(0.2)  # the server's FIN has arrived: the kept connection is readable
    pools = adapter.poolmanager.pools
    pool = pools[next(iter(pools.keys()))]
    idle = pool.pool.queue[-1]
    assert idle is not None and not idle.is_connected
    dead = idle.sock
    assert s.get(server + "/x", timeout=5).json() == {}  # on a new connection
    live = pool.pool.queue[-1]
    assert live is not None and live.is_connected and live.sock is not dead


def test_the_check_asks_the_kernel_even_under_eventlet() -> None:
    """Under eventlet's monkey patching the check uses the original ``select`` module
    (a zero-timeout poll), not the green one that parks the caller in the hub."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import eventlet.patcher

    assert egress._native_select() is eventlet.patcher.original("select")
    assert hasattr(egress._native_select(), "poll")


def test_the_pool_key_is_requests_own_computed_once_per_host(server, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """requests computes which pool serves a request (stat of the CA bundle included)
    for every request; the shared adapter asks it once per host and settings, and
    gets requests' answer."""
    from requests.adapters import HTTPAdapter
    calls: list[str] = []
    original = HTTPAdapter.build_connection_pool_key_attributes

    def counted(self, request, verify, cert=None):  # type: ignore[no-untyped-def]
        calls.append(request.url)
        return original(self, request, verify, cert)
    monkeypatch.setattr(HTTPAdapter, "build_connection_pool_key_attributes", counted)
    s, adapter = session_for("127.0.0.8")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    for path in ("/a", "/b?x=1", "/c"):
        assert s.get(server + path, timeout=5).json() == {}
    req = requests.Request("GET", server + "/d").prepare()
    ours = adapter.build_connection_pool_key_attributes(req, str(bundle))
    assert ours == original(adapter, req, str(bundle))
    assert len(calls) == 2  # once for verify=True (the three requests), once for the bundle
    other = requests.Request("GET", server.replace("127.0.0.1", "localhost") + "/").prepare()
    assert adapter.build_connection_pool_key_attributes(other, True)[0]["host"] == "localhost"
