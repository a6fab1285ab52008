"""Waiting on a condition in tests: the tests wait on what they assert, not on a fixed
time."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout_s: float = 10.0, every_s: float = 0.02) -> T:
    """Call ``condition()`` every ``every_s`` seconds until it returns something truthy
    (returned) or ``timeout_s`` passed (then its last, falsy, value is returned)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)
