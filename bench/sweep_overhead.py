"""Per-trial overhead and CPU utilisation of a sweep (default: the embedded demo).

    .venv/bin/python bench/sweep_overhead.py [CONFIG] [--set key=value ...]

Overhead = trial start -> first training step: the `startup_s` metric of each trial's first report (the
trial asks Ray Train for its run, the first step begins), read from Tune's per-trial `result.json`. Busy share = CPU time used by all processes
divided by (wall time x cores), sampled while the sweep runs. Targets: overhead <= 10 s, busy >= 80%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml


def trial_overheads(ray_dir: Path) -> list[float]:
    out = []
    for path in ray_dir.glob("*/*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out += [r["startup_s"] for r in rows[:1] if "startup_s" in r]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "alphasweep.cli", "sweep", *([args.config] if args.config else []),
               "--set", f"output_dir={tmp}/out", *sum((["--set", o] for o in args.overrides), [])]
        cpu0, t0 = psutil.cpu_times(), time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall, cpu1 = time.time() - t0, psutil.cpu_times()
        if proc.returncode:
            sys.exit(proc.stdout[-2000:] + proc.stderr[-2000:])
        busy = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "system", "nice"))
        overheads = trial_overheads(Path(tmp) / "out" / "ray")
        cfg = yaml.safe_load((Path(tmp) / "out" / "sweep.yaml").read_text())
    print(f"sweep {cfg['name']}: {len(overheads)} trials in {wall:.0f} s on {psutil.cpu_count()} cores")
    print(f"per-trial overhead (start -> first step): median {statistics.median(overheads):.1f} s, "
          f"max {max(overheads):.1f} s (target <= 10 s)")
    print(f"CPU busy: {busy / (wall * psutil.cpu_count()):.0%} of {psutil.cpu_count()} cores (target >= 80%)")


if __name__ == "__main__":
    main()
