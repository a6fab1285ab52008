"""services.leases.RedisLeases and the StreamManager's lease upkeep against a real
``redis-server`` of this module on a free port (it is flushed and killed here; the
shared Redis on 6379 is left alone)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.heartbeat import HeartbeatProcess, RedisBeat, beat_settings
from services.leases import RedisLeases, redis_client
from services.stream_manager import StreamManager
from tests.support.server import free_port
from tests.support.waits import wait_for


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
    # A killed: no heartbeat; its key expires within alive_ms
    assert wait_for(lambda: not client.exists(f"t:alive:{a.owner}"), timeout_s=5)
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
    lease = leases(redis_url, client, ttl_ms=400)
    rival = leases(redis_url, client, ttl_ms=400)
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
        time.sleep(1.0)                                # 2.5 TTLs while _start waits
        assert rival.acquire("stream:5") is False      # still ours: it was renewed
        gate.set()
        t.join(5)
        assert got and got[0] is not None and sm.get(5) is got[0]
        assert client.get("t:lease:stream:5") == lease.owner.encode()
    finally:
        gate.set()
        sm.stop_all()


# A child process monkey-patched as the server is: its lease's heartbeat (the heartbeat
# process, or, as the control, the former green task) beats while the
# parent watches the key; on "block" the child stalls for BLOCK_S: its event loop
# (``time.sleep`` of the original module: nothing green runs) or its GIL (libc's
# ``usleep`` called through ``ctypes.PyDLL``, which keeps the GIL for the whole call: no
# other thread of it runs, as in a collector pause, for exactly BLOCK_S), then says
# "unblocked".
_CHILD = r"""
import eventlet
eventlet.monkey_patch()
import ctypes, sys
from eventlet.patcher import original
from services.leases import RedisLeases
url, mode, block, block_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
alive_ms, beat_s = int(sys.argv[5]), float(sys.argv[6])  # CHILD_ALIVE_MS, CHILD_BEAT_S
lease = RedisLeases(url, "t", 60_000, alive_ms=alive_ms, beat_interval_s=beat_s)
lease.heartbeat()
if mode == "process":
    lease.start_heartbeat()
    while lease.heartbeat_status().beats < 1:  # the child is up (it took 0.8 s at a load of 12)
        eventlet.sleep(0.02)
else:  # the former way: a green task beating every beat_s
    def beat():
        while True:
            eventlet.sleep(beat_s)
            lease.heartbeat()
    eventlet.spawn(beat)
t = original("time")
eventlet.sleep(0.2)
print(lease.owner, lease._beater.pid, flush=True)
sys.stdin.readline()
if block == "loop":
    t.sleep(block_s)
else:
    ctypes.PyDLL(None).usleep(int(block_s * 1e6))  # the GIL held throughout
print("unblocked", flush=True)
sys.stdin.readline()
"""
# the server's 4000 ms key life and 1 s beat scaled down (8 beats per life; the server
# has 4): the block outlasts the key's life by half a second
CHILD_ALIVE_MS, CHILD_BEAT_S = 800, 0.1
BLOCK_S = CHILD_ALIVE_MS / 1000 + 0.5
WATCH_S = 0.025  # the parent reads the key's PTTL this often


def _stall_child(redis_url: str, mode: str, block: str) -> tuple[subprocess.Popen, str, int]:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", _CHILD, redis_url, mode, block,
                             str(BLOCK_S), str(CHILD_ALIVE_MS), str(CHILD_BEAT_S)], cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    owner, _, pid = proc.stdout.readline().strip().partition(" ")  # type: ignore[union-attr]
    assert owner, "the child did not start"
    return proc, f"t:alive:{owner}", int(pid) if pid.isdigit() else 0


def _watch_while_blocked(proc: subprocess.Popen, client, key: str,  # type: ignore[no-untyped-def]
                         until_gone: bool = False) -> list[int]:
    """The key's PTTL every WATCH_S while the child is blocked (``until_gone``: or
    until the key is gone, -2)."""
    proc.stdin.write("block\n")  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]
    seen: list[int] = []
    done = threading.Event()
    threading.Thread(target=lambda: (proc.stdout.readline(), done.set()),  # type: ignore[union-attr]
                     daemon=True).start()
    deadline = time.monotonic() + 6 * BLOCK_S
    while not done.is_set() and time.monotonic() < deadline:
        seen.append(client.pttl(key))
        if until_gone and seen[-1] == -2:
            return seen
        time.sleep(WATCH_S)
    assert done.is_set(), "the child never unblocked"
    return seen


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("block", ["loop", "gil"])
def test_the_heartbeat_process_keeps_a_process_alive_while_its_loop_or_gil_is_held(
        redis_url, client, block) -> None:  # type: ignore[no-untyped-def]
    """The event loop or the GIL is held for longer than the key's life: the key never
    expires (the heartbeat process renewed it meanwhile); killed with -9, the process's
    heartbeat child ends and the key is gone within that life."""
    proc, key, beater = _stall_child(redis_url, "process", block)
    try:
        seen = _watch_while_blocked(proc, client, key)
        assert len(seen) > BLOCK_S / WATCH_S / 4 and min(seen) > 0, seen  # -2: gone (a live process "dead")
        # renewed during the block's second half (past the life of the last beat before it)
        assert max(seen[len(seen) // 2:]) > CHILD_ALIVE_MS - 4 * CHILD_BEAT_S * 1000
        assert beater and _pid_alive(beater)
        proc.kill()
        proc.wait(5)
        killed = time.monotonic()
        while client.exists(key) and time.monotonic() - killed < 10:
            time.sleep(0.05)
        assert not client.exists(key)
        assert time.monotonic() - killed <= CHILD_ALIVE_MS / 1000 + 0.3  # failover does not grow
        assert not _pid_alive(beater)                  # the heartbeat child ended with it
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.parametrize("block", ["loop", "gil"])
def test_control_a_green_heartbeat_dies_with_a_held_loop_or_gil(
        redis_url, client, block) -> None:  # type: ignore[no-untyped-def]
    """The control of the test above: a beat on a green task dies with either block
    (so each block outlasts the key's life). A native thread's beat also died with a held
    GIL (docs/push-stream.md: a 5.3 s collector pause), hence a process."""
    proc, key, _ = _stall_child(redis_url, "green", block)
    try:
        seen = _watch_while_blocked(proc, client, key, until_gone=True)
        assert seen[0] > 0 and -2 in seen, seen
    finally:
        proc.kill()
        proc.wait(5)


def test_the_heartbeat_process_stops_with_the_stream_manager_and_reports_failures(
        redis_url, client) -> None:  # type: ignore[no-untyped-def]
    lease = RedisLeases(redis_url, "t", 10_000, client=client, alive_ms=1000,
                        beat_interval_s=0.1)
    sm = StreamManager(db=None, cipher=None, trading=None, publish=lambda e: None,  # type: ignore[arg-type]
                       spawn=lambda fn, *a: threading.Thread(target=fn, args=a, daemon=True).start(),
                       sleep=time.sleep, ledger=None, leases=lease)
    sm.start()
    key = f"t:alive:{lease.owner}"
    # the child's start-up (it imports redis-py) took 0.8 s at a load of 7
    status = wait_for(lambda: (lambda st: st if st.beats >= 3 else None)(lease.heartbeat_status()))
    assert status is not None and status.running and status.beats >= 3 and status.failures == 0
    assert 0 < client.pttl(key) <= 1000
    sm.stop_all()
    assert not lease.heartbeat_status().running  # type: ignore[union-attr]
    client.delete(key)
    time.sleep(0.4)
    assert not client.exists(key)                      # nothing beats any more

    dead = HeartbeatProcess(beat_settings(f"redis://127.0.0.1:{free_port()}/0", "t:alive:x",
                                          1000, interval_s=0.05, timeout_s=0.5))
    dead.start()
    assert wait_for(lambda: dead.status().failures >= 2)
    dead.stop()
    status = dead.status()
    assert status.failures >= 2 and status.beats == 0 and not status.running
    assert status.error == "ConnectionError" and status.failed_at is not None


def test_a_heartbeat_process_that_died_is_restarted(redis_url, client) -> None:  # type: ignore[no-untyped-def]
    lease = RedisLeases(redis_url, "t", 10_000, client=client, alive_ms=1000,
                        beat_interval_s=0.1)
    lease.start_heartbeat()
    try:
        first = lease._beater.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not lease.heartbeat_status().running)  # type: ignore[union-attr]
        assert lease.restart_heartbeat() is True and lease._beater.pid != first
        client.delete(f"t:alive:{lease.owner}")
        assert wait_for(lambda: client.exists(f"t:alive:{lease.owner}"))  # the new child beats
        assert lease.restart_heartbeat() is False      # running: nothing to do
    finally:
        lease.stop_heartbeat()


def test_the_heartbeat_speaks_to_the_db_of_the_url(redis_url, client) -> None:  # type: ignore[no-untyped-def]
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    beat = RedisBeat(beat_settings(f"redis://127.0.0.1:{port}/3", "t:alive:db3", 5000))
    beat.beat()
    db3 = redis_client(f"redis://127.0.0.1:{port}/3")
    assert 4000 < db3.pttl("t:alive:db3") <= 5000 and not client.exists("t:alive:db3")
    beat.close()
