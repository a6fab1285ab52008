"""Summaries of the collapsed stacks ``bench/cpu_sampler/sitecustomize.py`` writes
(see there)."""
from __future__ import annotations

import collections
from pathlib import Path

PERIOD_S = 0.005  # CPU seconds per sample


def summary(paths: list[Path], top: int = 40) -> list[tuple[str, float, float]]:
    """``[(function, share of the samples, CPU seconds)]`` by inclusive samples (a
    function counted once per stack it is on), most first, for the ``top`` functions."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            total += int(n)
            for frame in set(stack.split(";")):
                inclusive[frame] += int(n)
    return [(f, n / total, n * PERIOD_S) for f, n in inclusive.most_common(top)] if total else []
