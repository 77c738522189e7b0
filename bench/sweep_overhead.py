"""Per-trial overhead and CPU utilisation of a sweep (default: the embedded demo), per `train.runner`.

    .venv/bin/python bench/sweep_overhead.py [CONFIG] [--set key=value ...] [--runners ray_train,tune]

Runs the sweep once per runner (`--set train.runner=...`, fresh output directory each time): `ray_train`
starts a Ray Train run from every trial (the path every trial took before `tune` existed), `tune` runs a
one-worker trial's loop inside the Tune trial. Overhead = trial start -> first training step: the
`startup_s` metric of each trial's first report (from the trial function's start, imports included; the
trial actor's own process start comes before it and shows in the wall time and CPU figures), read from
Tune's per-trial `result.json`. Busy share = CPU time used by the sweep's own processes (the CLI, the
local Ray instance it starts, every worker and actor) divided by (wall time x cores), sampled while the
sweep runs; the machine-wide share (every process on the machine) is printed beside it, since on a shared
machine other work fills the cores too. Each runner's table shows where the CPU went, per kind of process (a Ray
worker that hosts an actor is titled `ray::<Class>`; a Tune trial is `ray::ImplicitFunc`), per trial.
Targets: overhead median <= 5 s, busy >= 85%. The last line is the runner the config itself resolves to.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from alphasweep.cli import DEMO_CONFIG
from alphasweep.config import load_config
from alphasweep.demo import prepare_demo


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


@dataclass
class Measure:
    runner: str
    trials: int
    wall: float
    overhead_median: float
    overhead_max: float
    busy: float  # the sweep's own processes
    machine_busy: float  # every process on the machine
    load: tuple[float, float]  # 1-minute load average before and after
    by_kind: collections.Counter
    counts: collections.Counter


def measure(config: str | None, overrides: list[str], runner: str) -> Measure:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "alphasweep.cli", "sweep", *([config] if config else []),
               "--set", f"output_dir={tmp}/out", *sum((["--set", o] for o in overrides), []),
               "--set", f"train.runner={runner}"]
        load0, cpu0, t0 = os.getloadavg()[0], psutil.cpu_times(), time.time()
        log = Path(tmp) / "sweep.log"
        returncode, by_kind, counts = run_sampling(cmd, log)
        wall, cpu1, load1 = time.time() - t0, psutil.cpu_times(), os.getloadavg()[0]
        if returncode:
            sys.exit(log.read_text()[-4000:])
        used = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "system", "nice"))
        overheads = trial_overheads(Path(tmp) / "out" / "ray")
    capacity = wall * psutil.cpu_count()
    return Measure(runner, len(overheads), wall, statistics.median(overheads), max(overheads),
                   sum(by_kind.values()) / capacity, used / capacity, (load0, load1), by_kind, counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--runners", default="ray_train,tune", help="train.runner values to measure, in this order")
    args = ap.parse_args()
    cfg = load_config(args.config or DEMO_CONFIG, args.overrides)
    if cfg.demo:  # build (or find cached) the demo's base and data before anything is timed
        prepare_demo(cfg, log=lambda msg: None)
    train = cfg.train
    default = "tune" if train.runs_in_trial else "ray_train"
    runners = args.runners.split(",")
    runners = [r for r in runners if r != default] + [default]  # the config's own path last
    results = [measure(args.config, args.overrides, runner) for runner in runners]
    print(f"{psutil.cpu_count()} cores; {args.config or 'the demo'}"
          + (f" with {' '.join(args.overrides)}" if args.overrides else ""))
    for m in results:
        print(f"\ntrain.runner={m.runner}: {m.trials} trials in {m.wall:.0f} s; overhead (start -> first step) "
              f"median {m.overhead_median:.1f} s, max {m.overhead_max:.1f} s; CPU busy {m.busy:.0%} (machine "
              f"{m.machine_busy:.0%}); load average "
              f"{m.load[0]:.1f} before, {m.load[1]:.1f} after")
        print(f"CPU seconds by process kind ({sum(m.by_kind.values()):.0f} s in all):")
        for kind, seconds in m.by_kind.most_common():
            print(f"  {kind:26s} {m.counts[kind]:4d} processes {seconds:7.1f} s  "
                  f"({seconds / m.trials:.1f} s per trial)")
    print(f"\n{'runner':<12}{'wall s':>8}{'overhead median s':>19}{'max s':>7}{'busy':>6}{'machine':>9}")
    for m in results:
        print(f"{m.runner:<12}{m.wall:>8.0f}{m.overhead_median:>19.1f}{m.overhead_max:>7.1f}{m.busy:>6.0%}"
              f"{m.machine_busy:>9.0%}")
    last = results[-1]
    print(f"sweep overhead: median {last.overhead_median:.1f} s (target <= 5), "
          f"busy {last.busy * 100:.0f}% (target >= 85)")


if __name__ == "__main__":
    main()
