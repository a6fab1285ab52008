"""The lock files agree with the requirement files: every pin of requirements.txt
(runtime) and requirements-dev.txt is locked at that version with hashes, the
runtime lock holds no development package, and both locks agree on shared versions.
A pin added without ``make lock`` fails here."""
from __future__ import annotations

import re

from config import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.M)


def _pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text()
    return {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in PIN.findall(text)}


def test_every_pin_is_locked_at_its_version() -> None:
    runtime, dev = _pins("requirements.txt"), _pins("requirements-dev.txt")
    runtime_lock, dev_lock = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert runtime and dev
    assert {n: runtime_lock.get(n) for n in runtime} == runtime
    assert {n: dev_lock.get(n) for n in {**runtime, **dev}} == {**runtime, **dev}
    assert not set(dev) & set(runtime_lock), "a development package in the runtime lock"
    assert {n: dev_lock[n] for n in runtime_lock} == runtime_lock


def test_every_locked_package_has_hashes() -> None:
    for name in ("requirements.lock", "requirements-dev.lock"):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / name).read_text())
        unhashed = [b.split()[0] for b in blocks if PIN.match(b) and "--hash=sha256:" not in b]
        assert unhashed == [], name


def test_gunicorn_is_pinned_where_its_eventlet_worker_exists() -> None:
    # 23.0.0 has gunicorn.workers.geventlet; 27.x dropped it ("class uri 'eventlet' invalid")
    assert _pins("requirements.txt")["gunicorn"] == "23.0.0"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eventlet's own deprecation notice on import
        from gunicorn.workers import geventlet
    assert geventlet.EventletWorker  # the worker class gunicorn.conf.py names
