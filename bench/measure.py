"""Measurement helpers of the benchmarks: percentiles, /proc figures (RSS, CPU), an
optional py-spy profile, log problems, ``section.figure: value`` printing, and the
set-up every long benchmark run makes. Times are seconds unless a name ends in
``_ms``."""
from __future__ import annotations

import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # figures and logs of the runs


def _interrupted(*_args) -> None:  # type: ignore[no-untyped-def]
    raise KeyboardInterrupt("SIGTERM")


def prepare_long_run() -> int:
    """For a benchmark's ``main``: SIGTERM raises KeyboardInterrupt (so the ``finally``
    that stops every started process runs), and the open-file limit is raised to its
    hard limit (inherited by every child: thousands of sockets). Returns that limit."""
    signal.signal(signal.SIGTERM, _interrupted)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def lat_ms(values_ms: list[float]) -> dict:
    """``{"n", "p50_ms", "p99_ms", "max_ms"}`` of latencies given in milliseconds."""
    r = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {"n": len(values_ms), "p50_ms": r(pct(values_ms, 0.5)),
            "p99_ms": r(pct(values_ms, 0.99)), "max_ms": r(max(values_ms) if values_ms else None)}


def lat_s(values_s: list[float]) -> dict:
    """``lat_ms`` of latencies given in seconds."""
    return lat_ms([v * 1000 for v in values_s])


def rss_mb(pid: int | None) -> float | None:
    """Resident set size (VmRSS of /proc/<pid>/status) in MiB; None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return round(int(match.group(1)) / 1024, 1) if match else None


def cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system, /proc/<pid>/stat) used by the process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(pid: int, seconds: float, path: Path) -> subprocess.Popen | None:
    """Start ``py-spy record`` (sampling, 50 Hz, collapsed stacks ``path``) on ``pid``
    for ``seconds``; None when py-spy is not installed (``pip install py-spy``: a
    developer tool, not a dependency of the project)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("profile: py-spy not found, not profiling", flush=True)
        return None
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50",
                             "-f", "raw", "-o", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def log_problems(path: Path, start: int = 0, end: int | None = None, limit: int = 6) -> dict:
    """In bytes ``[start, end)`` of a log file: the count of ``ERROR``/``Traceback`` lines
    (and the first ``limit``) and of ``WARNING`` lines."""
    try:
        with path.open("rb") as f:
            f.seek(start)
            lines = f.read(None if end is None else max(0, end - start)).decode(errors="replace").splitlines()
    except OSError:
        return {"errors": None, "warnings": None, "first": []}
    bad = [ln for ln in lines if " ERROR " in ln or ln.startswith("Traceback")]
    return {"errors": len(bad), "warnings": sum(" WARNING " in ln for ln in lines),
            "first": [ln[:240] for ln in bad[:limit]]}



def print_lines(prefix: str, value: object) -> None:
    """Print ``value`` as ``prefix.key: json`` lines, one per figure (nested dicts
    flattened, latency blocks and a few summaries kept whole)."""
    if prefix.endswith("series"):
        print(f"{prefix}:")
        for line in value:  # type: ignore[attr-defined]
            print("   ", line)
    elif isinstance(value, dict) and value and not {"p50_ms", "by_type"} & value.keys() \
            and not prefix.endswith(("by_state", "top", "cpu_pct", "errors")):
        for k, v in value.items():
            print_lines(f"{prefix}.{k}" if prefix else str(k), v)
    else:
        print(f"{prefix}: {json.dumps(value)}", flush=True)


def write_results(results: dict, name: str) -> Path:
    """Write ``results`` as ``bench/results/<name>.json`` and say where; exit with
    status 1 when the run recorded a ``failure`` (the figures are written first)."""
    out = RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")
    if "failure" in results:
        raise SystemExit(1)
    return out


def rank_profile(path: Path, top: int = 30) -> list[tuple[str, float, float]]:
    """Rank the frames of a py-spy collapsed-stack file (``frame;frame;... count`` per
    line): ``(frame, self %, inclusive %)`` of all samples, by inclusive share."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    ranked = sorted(incl, key=lambda f: -incl[f])[:top]
    return [(f, 100 * own.get(f, 0) / max(1, total), 100 * incl[f] / max(1, total)) for f in ranked]


if __name__ == "__main__":  # python -m bench.measure PROFILE.txt [TOP]
    for frame, self_pct, incl_pct in rank_profile(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 40):
        print(f"{incl_pct:5.1f} {self_pct:5.1f}  {frame[:150]}")
