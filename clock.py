"""The wall clock in the product's unit: integer milliseconds since the Unix epoch, UTC.

One definition shared by every layer. It lives at the top level, beside
``logsetup.py``, because ``exchanges/`` may not import ``models/`` or ``services/`` and
``models/`` may not import ``exchanges/`` (docs/DESIGN.md): a module that imports
nothing of the product is the one place all of them may import. (The simulator's
``Faults.now_ms`` is another thing: the exchange's clock with an injected skew.)
"""
from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, UTC (``time.time()``, truncated)."""
    return int(time.time() * 1000)
