"""services.leases.RedisLeases and the StreamManager's lease upkeep against a real
``redis-server`` of this module on a free port (it is flushed and killed here; the
shared Redis on 6379 is left alone)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.heartbeat import HeartbeatError, NativeHeartbeat
from services.leases import ALIVE_MS, RedisLeases, redis_client
from services.stream_manager import StreamManager
from tests.support.server import free_port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.skip("redis-server not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--logfile", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def client(redis_url):  # type: ignore[no-untyped-def]
    c = redis_client(redis_url, socket_timeout_s=2)
    c.flushall()
    return c


def leases(redis_url: str, client, ttl_ms: int = 10_000, alive_ms: int = 4000) -> RedisLeases:  # type: ignore[no-untyped-def]
    return RedisLeases(redis_url, "t", ttl_ms, client=client, alive_ms=alive_ms)


def test_a_renewal_that_finds_the_lease_gone_takes_it_again_and_a_rival_then_loses(
        redis_url, client) -> None:  # type: ignore[no-untyped-def]
    a, b = leases(redis_url, client), leases(redis_url, client)
    a.heartbeat(), b.heartbeat()
    assert a.acquire("stream:1") and not b.acquire("stream:1")
    client.flushall()                                  # Redis came back empty
    a.heartbeat(), b.heartbeat()
    assert a.renew("stream:1") is True                 # taken again (SET NX), not lost
    assert a.renew_many(["stream:1"]) == [True]
    assert b.acquire("stream:1") is False              # the rival cannot start it
    assert client.get("t:lease:stream:1") == a.owner.encode()
    client.set("t:lease:stream:1", b.owner)            # someone else's: renewal fails
    assert a.renew("stream:1") is False and a.renew_many(["stream:1"]) == [False]


def test_a_lease_of_a_process_whose_heartbeat_is_gone_is_taken_over_at_once(
        redis_url, client) -> None:  # type: ignore[no-untyped-def]
    a = leases(redis_url, client, ttl_ms=60_000, alive_ms=300)
    b = leases(redis_url, client, ttl_ms=60_000, alive_ms=300)
    a.heartbeat(), b.heartbeat()
    assert a.acquire_many(["stream:2"]) == [True]
    assert b.acquire("stream:2") is False              # A is alive
    time.sleep(0.5)                                    # A killed: no heartbeat
    b.heartbeat()
    assert client.pttl("t:lease:stream:2") > 50_000    # the lease itself has not expired
    assert b.acquire_many(["stream:2"]) == [True]
    assert a.renew("stream:2") is False                # A (if alive after all) stops


def test_the_heartbeat_does_not_wait_for_the_shared_pool(redis_url, client) -> None:  # type: ignore[no-untyped-def]
    """A storm holds every connection of the shared bounded pool: the heartbeat still
    goes at once on its own connection (it waited longer than ``alive_ms`` in the
    pool's queue, and the other process took this live one's streams over)."""
    shared = redis_client(redis_url, max_connections=1, pool_timeout_s=3, socket_timeout_s=2)
    lease = RedisLeases(redis_url, "t", 10_000, client=shared, alive_ms=4000)
    held = shared.connection_pool.get_connection("PING")   # the storm has the only one
    try:
        t0 = time.monotonic()
        lease.heartbeat()
        assert time.monotonic() - t0 < 1.0
        assert client.pttl(f"t:alive:{lease.owner}") > 3000
    finally:
        shared.connection_pool.release(held)


class _Stream:
    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        self.state, self.status, self.stream = state, "starting", None

    def run(self) -> None:
        pass

    def stop(self, quiet: bool = False) -> None:
        self.status = "stopped"


def test_a_lease_taken_on_subscribe_is_renewed_while_the_stream_start_waits(
        redis_url, client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A connect burst: ``ensure`` took the lease, ``_start`` waits for the database
    longer than the lease's TTL; the upkeep renews it meanwhile, so no other
    process can take it and the stream starts here."""
    lease = leases(redis_url, client, ttl_ms=600)
    rival = leases(redis_url, client, ttl_ms=600)
    gate = threading.Event()
    key = SimpleNamespace(id=5, exchange="binance", testnet=True, api_key="k",
                          api_secret_encrypted=b"")

    class Keys:
        calls = 0

        def get(self, user_id, key_id):  # type: ignore[no-untyped-def]
            Keys.calls += 1
            if Keys.calls == 2:                        # _start's read: a long pool wait
                gate.wait(5)
            return key

    def spawn(fn, *args):  # type: ignore[no-untyped-def]
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        return t

    monkeypatch.setattr("services.stream_manager.AccountStream",
                        lambda state, **kw: _Stream(state))
    monkeypatch.setattr("services.stream_manager.HEARTBEAT_S", 0.1)
    sm = StreamManager(db=None, cipher=None, trading=None, publish=lambda e: None,  # type: ignore[arg-type]
                       spawn=spawn, sleep=time.sleep, ledger=None, leases=lease, keys=Keys())
    sm.start()
    rival.heartbeat()
    try:
        got: list = []
        t = spawn(lambda: got.append(sm.ensure(1, 5)))
        time.sleep(1.5)                                # 2.5 TTLs while _start waits
        assert rival.acquire("stream:5") is False      # still ours: it was renewed
        gate.set()
        t.join(5)
        assert got and got[0] is not None and sm.get(5) is got[0]
        assert client.get("t:lease:stream:5") == lease.owner.encode()
    finally:
        gate.set()
        sm.stop_all()


# A child process monkey-patched as the server is: its lease's heartbeat (the native
# thread, or, as the control, the former green task) beats while the parent watches
# the key; on "block" its event loop stalls for BLOCK_S (``time.sleep`` of the
# original module: nothing green runs), then it says "unblocked".
_CHILD = r"""
import eventlet
eventlet.monkey_patch()
import sys
from services.heartbeat import native
from services.leases import RedisLeases
url, mode, block_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
lease = RedisLeases(url, "t", 60_000)
lease.heartbeat()
if mode == "native":
    lease.start_heartbeat()
else:  # the former way: a green task beating every second
    def beat():
        while True:
            eventlet.sleep(1.0)
            lease.heartbeat()
    eventlet.spawn(beat)
eventlet.sleep(0.2)
print(lease.owner, flush=True)
sys.stdin.readline()
native("time").sleep(block_s)
print("unblocked", flush=True)
sys.stdin.readline()
"""
BLOCK_S = ALIVE_MS / 1000 + 2.0


def _stall_child(redis_url: str, mode: str) -> tuple[subprocess.Popen, str]:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", _CHILD, redis_url, mode,
                             str(BLOCK_S)], cwd=root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    owner = proc.stdout.readline().strip()  # type: ignore[union-attr]
    assert owner, "the child did not start"
    return proc, f"t:alive:{owner}"


def _watch_while_blocked(proc: subprocess.Popen, client, key: str) -> list[int]:  # type: ignore[no-untyped-def]
    """The key's PTTL every 50 ms while the child's event loop is blocked."""
    proc.stdin.write("block\n")  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]
    seen: list[int] = []
    done = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.readline(), done.set()),  # type: ignore[union-attr]
                     daemon=True).start()
    deadline = time.monotonic() + BLOCK_S + 10
    while not done.is_set() and time.monotonic() < deadline:
        seen.append(client.pttl(key))
        time.sleep(0.05)
    assert done.is_set(), "the child never unblocked"
    return seen


def test_the_heartbeat_thread_keeps_a_process_alive_while_its_event_loop_is_blocked(
        redis_url, client) -> None:  # type: ignore[no-untyped-def]
    """The loop stalls for longer than ALIVE_MS: the key never expires (the native
    thread renewed it meanwhile); killed with -9, the key is gone within ALIVE_MS."""
    proc, key = _stall_child(redis_url, "native")
    try:
        seen = _watch_while_blocked(proc, client, key)
        assert len(seen) > 40 and min(seen) > 0, seen  # -2: gone (a live process "dead")
        assert max(seen[len(seen) // 2:]) > ALIVE_MS - 1100  # renewed during the block
        proc.kill()
        proc.wait(5)
        killed = time.monotonic()
        while client.exists(key) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        assert not client.exists(key)
        assert time.monotonic() - killed <= ALIVE_MS / 1000 + 0.3  # failover does not grow
    finally:
        proc.kill()
        proc.wait(5)


def test_control_a_green_heartbeat_dies_with_a_blocked_event_loop(redis_url, client) -> None:  # type: ignore[no-untyped-def]
    """The control of the test above: with the beat on a green task, the same block
    lets the key expire (so the block really stalls the loop)."""
    proc, key = _stall_child(redis_url, "green")
    try:
        seen = _watch_while_blocked(proc, client, key)
        assert seen[0] > 0 and -2 in seen, seen
    finally:
        proc.kill()
        proc.wait(5)


def test_the_heartbeat_thread_stops_with_the_stream_manager_and_reports_failures(
        redis_url, client) -> None:  # type: ignore[no-untyped-def]
    lease = RedisLeases(redis_url, "t", 10_000, client=client, alive_ms=1000,
                        beat_interval_s=0.1)
    sm = StreamManager(db=None, cipher=None, trading=None, publish=lambda e: None,  # type: ignore[arg-type]
                       spawn=lambda fn, *a: threading.Thread(target=fn, args=a, daemon=True).start(),
                       sleep=time.sleep, ledger=None, leases=lease)
    sm.start()
    key = f"t:alive:{lease.owner}"
    time.sleep(0.5)
    status = lease.heartbeat_status()
    assert status is not None and status.running and status.beats >= 3
    assert 0 < client.pttl(key) <= 1000
    sm.stop_all()
    assert not lease.heartbeat_status().running  # type: ignore[union-attr]
    client.delete(key)
    time.sleep(0.4)
    assert not client.exists(key)                      # nothing beats any more

    dead = NativeHeartbeat(f"redis://127.0.0.1:{free_port()}/0", "t:alive:x", 1000,
                           interval_s=0.05, timeout_s=0.5)
    dead.start()
    time.sleep(0.3)
    dead.stop()
    status = dead.status()
    assert status.failures >= 2 and status.beats == 0 and not status.running
    assert status.error == "ConnectionRefusedError" and status.failed_at is not None


def test_the_heartbeat_speaks_to_the_db_and_password_of_the_url(redis_url, client) -> None:  # type: ignore[no-untyped-def]
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    hb = NativeHeartbeat(f"redis://127.0.0.1:{port}/3", "t:alive:db3", 5000)
    hb.beat()
    db3 = redis_client(f"redis://127.0.0.1:{port}/3")
    assert 4000 < db3.pttl("t:alive:db3") <= 5000 and not client.exists("t:alive:db3")
    wrong = NativeHeartbeat(f"redis://:nope@127.0.0.1:{port}/0", "t:alive:pw", 5000)
    with pytest.raises(HeartbeatError):                # no password set: AUTH is refused
        wrong.beat()
