"""CPU-time sampling profiler for a server started by a benchmark (``bench.storm
--profile``): with this directory on ``PYTHONPATH`` and ``PUSHSRV_CPU_SAMPLES`` set,
a process running ``app.py`` takes a sample every 5 ms of its CPU time (SIGPROF,
``ITIMER_PROF``): the interrupted stack, i.e. that of the green thread running then,
counted while the file ``PUSHSRV_CPU_SAMPLES_MARK`` exists (always when unset), and
written every 5 s as collapsed stacks (``frame;frame;... count`` lines) to
``<PUSHSRV_CPU_SAMPLES>.<pid>.txt``. Samples are proportional to CPU time, waiting
(epoll, a socket) takes none; py-spy (``bench.measure.profile``) needs no code in the
process but is a developer tool that may not be installed. Summary:
``python -m bench.cpu_sampler FILE...``."""
from __future__ import annotations

import collections
import os
import signal
import sys
import time

PERIOD_S = 0.005


def _start(out: str, mark: str | None) -> None:
    counts: collections.Counter[str] = collections.Counter()
    state = {"written": time.monotonic(), "checked": 0.0, "on": False}
    path = f"{out}.{os.getpid()}.txt"

    def sample(signum, frame) -> None:  # type: ignore[no-untyped-def]
        now = time.monotonic()
        if now - state["checked"] > 0.2:
            state["checked"] = now
            state["on"] = mark is None or os.path.exists(mark)
        if state["on"]:
            stack = []
            while frame is not None:
                code = frame.f_code
                stack.append(f"{code.co_filename.split('/site-packages/')[-1]}:{code.co_name}")
                frame = frame.f_back
            counts[";".join(reversed(stack))] += 1
        if now - state["written"] > 5:
            state["written"] = now
            with open(path + ".tmp", "w") as fh:
                fh.writelines(f"{k} {v}\n" for k, v in counts.most_common())
            os.replace(path + ".tmp", path)

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, PERIOD_S, PERIOD_S)


if os.environ.get("PUSHSRV_CPU_SAMPLES") and sys.argv and sys.argv[0].endswith("app.py"):
    _start(os.environ["PUSHSRV_CPU_SAMPLES"], os.environ.get("PUSHSRV_CPU_SAMPLES_MARK"))
