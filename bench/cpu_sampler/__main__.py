"""``python -m bench.cpu_sampler FILE... [--top N]``: the functions with the most CPU
samples (inclusive) over the collapsed-stack files."""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cpu_sampler import summary

p = argparse.ArgumentParser(prog="python -m bench.cpu_sampler")
p.add_argument("files", nargs="+", type=Path)
p.add_argument("--top", type=int, default=40)
args = p.parse_args()
for frame, share, cpu_s in summary(args.files, args.top):
    print(f"{share * 100:5.1f} % {cpu_s:7.1f} s  {frame}")
