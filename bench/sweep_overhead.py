"""Per-trial overhead and CPU utilisation of a sweep (default: the embedded demo).

    .venv/bin/python bench/sweep_overhead.py [CONFIG] [--set key=value ...]

Overhead = trial start -> first training step: the `startup_s` metric of each trial's first report (the
trial asks Ray Train for its run, the first step begins), read from Tune's per-trial `result.json`. Busy
share = CPU time used by all processes divided by (wall time x cores), sampled while the sweep runs.
Targets: overhead <= 10 s, busy >= 80%. It also prints where the CPU went, per kind of process (a Ray
worker that hosts an actor is titled `ray::<Class>`), per trial.
"""

from __future__ import annotations

import argparse
import collections
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


def process_kind(proc: psutil.Process) -> str:
    """`ray::<Class>` for a Ray worker once it hosts an actor (Ray sets the process title), else the program."""
    cmd = " ".join(proc.cmdline())
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    for marker, kind in (("alphasweep.cli", "sweep driver"), ("default_worker", "ray worker, no actor yet"),
                         ("raylet", "raylet"), ("gcs_server", "gcs"), ("dashboard", "dashboard + agents")):
        if marker in cmd:
            return kind
    return "other"


def run_sampling(cmd: list[str], log: Path) -> tuple[int, dict[str, float], dict[str, int]]:
    """Run `cmd` (output to `log`), sampling the CPU time of every process it starts; a process's last
    sample is its total. Returns the exit code, CPU seconds by process kind and processes by kind."""
    seen: dict[int, tuple[str, float]] = {}
    with log.open("w") as out, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT) as proc:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            for p in [root, *root.children(recursive=True)]:
                try:
                    times = p.cpu_times()
                    seen[p.pid] = (process_kind(p), times.user + times.system)
                except psutil.Error:
                    pass
            time.sleep(0.25)
    cpu, count = collections.Counter(), collections.Counter()
    for kind, seconds in seen.values():
        cpu[kind] += seconds
        count[kind] += 1
    return proc.returncode, cpu, count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "alphasweep.cli", "sweep", *([args.config] if args.config else []),
               "--set", f"output_dir={tmp}/out", *sum((["--set", o] for o in args.overrides), [])]
        cpu0, t0 = psutil.cpu_times(), time.time()
        log = Path(tmp) / "sweep.log"
        returncode, by_kind, counts = run_sampling(cmd, log)
        wall, cpu1 = time.time() - t0, psutil.cpu_times()
        if returncode:
            sys.exit(log.read_text()[-4000:])
        busy = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "system", "nice"))
        overheads = trial_overheads(Path(tmp) / "out" / "ray")
        cfg = yaml.safe_load((Path(tmp) / "out" / "sweep.yaml").read_text())
    trials = len(overheads)
    print(f"sweep {cfg['name']}: {trials} trials in {wall:.0f} s on {psutil.cpu_count()} cores")
    print(f"per-trial overhead (start -> first step): median {statistics.median(overheads):.1f} s, "
          f"max {max(overheads):.1f} s (target <= 10 s)")
    print(f"CPU busy: {busy / (wall * psutil.cpu_count()):.0%} of {psutil.cpu_count()} cores (target >= 80%)")
    print(f"CPU seconds by process kind ({sum(by_kind.values()):.0f} s in all):")
    for kind, seconds in by_kind.most_common():
        print(f"  {kind:26s} {counts[kind]:4d} processes {seconds:7.1f} s  ({seconds / trials:.1f} s per trial)")


if __name__ == "__main__":
    main()
