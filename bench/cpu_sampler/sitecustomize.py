"""CPU-time sampling profiler for a server started by a benchmark (``bench.storm
--profile``): with this directory on ``PYTHONPATH`` and ``PUSHSRV_CPU_SAMPLES`` set,
a process running ``app.py`` takes a sample every 5 ms of its CPU time (SIGPROF,
``ITIMER_PROF``): the interrupted stack, i.e. that of the green thread running then,
counted while the file ``PUSHSRV_CPU_SAMPLES_MARK`` exists (always when unset), and
written every 5 s as collapsed stacks (``frame;frame;... count`` lines) to
``<PUSHSRV_CPU_SAMPLES>.<pid>.txt``; while the mark file holds a name (one word), its
samples go to ``<PUSHSRV_CPU_SAMPLES>.<pid>.<name>.txt`` instead (a benchmark names
its windows: ``bench.fanout --cpu-samples``). Samples are proportional to CPU time, waiting
(epoll, a socket) takes none; py-spy (``bench.measure.profile``) needs no code in the
process but is a developer tool that may not be installed. Summary:
``python -m bench.cpu_sampler FILE...``."""
from __future__ import annotations

import collections
import os
import signal
import sys
import time
from typing import Any

PERIOD_S = 0.005


def _bucket(mark: str | None) -> str | None:
    """The samples' bucket now: "" (the plain file) or the name the mark file holds;
    None while the mark file does not exist."""
    if mark is None:
        return ""
    try:
        with open(mark) as fh:
            name = fh.read().strip()
    except OSError:
        return None
    return name if name.replace("_", "").replace("-", "").isalnum() else ""


def _start(out: str, mark: str | None) -> None:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    state: dict[str, Any] = {"written": time.monotonic(), "checked": 0.0, "bucket": None}
    base = f"{out}.{os.getpid()}"

    def sample(signum, frame) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        if now - state["checked"] > 0.2:
            state["checked"] = now
            state["bucket"] = _bucket(mark)
        if state["bucket"] is not None:
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{code.co_filename.split('/site-packages/')[-1]}:{code.co_name}")
                frame = frame.f_back
            counts[state["bucket"]][";".join(reversed(stack))] += 1
        if now - state["written"] > 5:
            state["written"] = now
            for bucket, c in counts.items():
                path = f"{base}.{bucket}.txt" if bucket else f"{base}.txt"
                with open(path + ".tmp", "w") as fh:
                    fh.writelines(f"{k} {v}\n" for k, v in c.most_common())
                os.replace(path + ".tmp", path)

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, PERIOD_S, PERIOD_S)


if os.environ.get("PUSHSRV_CPU_SAMPLES") and sys.argv and sys.argv[0].endswith("app.py"):
    _start(os.environ["PUSHSRV_CPU_SAMPLES"], os.environ.get("PUSHSRV_CPU_SAMPLES_MARK"))
