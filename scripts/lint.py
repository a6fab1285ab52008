"""`make lint`: ruff (lint and import order) and mypy against a per-file baseline.

Both tools were adopted on a codebase that had findings; those are recorded in
``lint-baseline.json`` as counts per tool and file. A run fails when a file has more
findings than its baseline (a new file has a baseline of 0), and says which; a file
that has fewer is reported so the baseline can be lowered with ``--record``. The
baseline only shrinks: ``--record`` refuses to raise a count unless ``--allow-growth``
is given (meant for the adoption itself, never for a change).

Usage: ``python scripts/lint.py [--record [--allow-growth]]``. Exit status 0 when no
file grew, 1 otherwise, 2 when a tool could not run.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "lint-baseline.json"
_MYPY_LINE = re.compile(r"^(?P<path>[^:\s]+\.py):\d+(?::\d+)?: error: ")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


def ruff_counts() -> tuple[Counter[str], list[str]]:
    """Findings per file of ``ruff check`` (ruff.toml) and their printable lines."""
    proc = _run([sys.executable, "-m", "ruff", "check", "--output-format", "json", "."])
    if proc.returncode not in (0, 1):
        raise SystemExit(f"ruff failed to run (exit {proc.returncode}): {proc.stderr.strip()}")
    counts: Counter[str] = Counter()
    lines = []
    for item in json.loads(proc.stdout or "[]"):
        path = str(Path(item["filename"]).resolve().relative_to(ROOT))
        counts[path] += 1
        loc = item.get("location") or {}
        lines.append(f"{path}:{loc.get('row')}: {item.get('code')} {item.get('message')}")
    return counts, lines


def mypy_counts() -> tuple[Counter[str], list[str]]:
    """Errors per file of ``mypy`` (mypy.ini) and their lines."""
    proc = _run([sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty"])
    if proc.returncode not in (0, 1):
        raise SystemExit(f"mypy failed to run (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    counts: Counter[str] = Counter()
    lines = []
    for line in proc.stdout.splitlines():
        m = _MYPY_LINE.match(line)
        if m:
            counts[m.group("path")] += 1
            lines.append(line)
    return counts, lines


def main(argv: list[str] | None = None) -> int:
    """Run both tools, compare with the baseline; see the module doc."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="write the current counts as the baseline")
    ap.add_argument("--allow-growth", action="store_true", help="with --record: let a count grow")
    args = ap.parse_args(argv)
    baseline: dict[str, dict[str, int]] = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    current: dict[str, dict[str, int]] = {}
    findings: dict[str, list[str]] = {}
    for tool, fn in (("ruff", ruff_counts), ("mypy", mypy_counts)):
        counts, lines = fn()
        current[tool] = dict(sorted(counts.items()))
        findings[tool] = lines
    grew, shrank = [], []
    for tool, counts in current.items():
        base = baseline.get(tool, {})
        for path in sorted(set(counts) | set(base)):
            now, was = counts.get(path, 0), base.get(path, 0)
            if now > was:
                grew.append((tool, path, was, now))
            elif now < was:
                shrank.append((tool, path, was, now))
    if args.record:
        if grew and not args.allow_growth:
            for tool, path, was, now in grew:
                print(f"refused: {tool} {path} would grow {was} -> {now}")
            return 1
        BASELINE.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        total = {tool: sum(c.values()) for tool, c in current.items()}
        print(f"baseline written: {total}")
        return 0
    for tool, path, was, now in grew:
        print(f"{tool}: {path} has {now} findings, its baseline is {was}:")
        for line in findings[tool]:
            if line.startswith(path + ":"):
                print("  " + line)
    for tool, path, was, now in shrank:
        print(f"{tool}: {path} went from {was} to {now}: lower the baseline "
              "(python scripts/lint.py --record)")
    totals = {tool: (sum(current[tool].values()), sum(baseline.get(tool, {}).values()))
              for tool in current}
    print("lint: " + ", ".join(f"{tool} {now} (baseline {was})" for tool, (now, was) in totals.items())
          + (" FAILED" if grew else " ok"))
    return 1 if grew else 0


if __name__ == "__main__":
    sys.exit(main())
