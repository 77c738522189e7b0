"""The offline GPU check: one run that writes OUT_DIR/gpu-check.json (figures) and OUT_DIR/gpu-check.log.

    bench/gpu/check.sh [--dry-run] OUT_DIR          # unpacks the bundle first, then runs this
    python bench/gpu/check.py [--dry-run] [--parts info,train] [--budget-s 450] OUT_DIR

Parts, in this order (bench/gpu/parts.py): `info` (machine, packages, bf16 matmul rate), `objective` (the loss
kernels vs cross_entropy at vocab 152064), `train` (plain loop vs one Ray Train worker on a ~1.5B Llama: MFU
and ratio), `sweep` (a 2-trial sweep on the GPU: start-up overhead, GPU memory per trial), `fsdp` (the FSDP2
path). Each runs in its own process with its own time box, its share of what is left of the run's budget, so a
part that fails or overruns is stopped (with every process it started) and the next one still runs. The
JSON is rewritten after every part; a part's error is recorded beside whatever it measured before it.
This process imports neither torch nor Ray: the GPU belongs to the parts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Each part's time box is its share of what is left of the run's budget (this part's and the later parts'
# shares), so time an early part leaves unused goes to the later ones. With 450 s: info 30 s at first, train
# ~170 s, sweep and fsdp what remains.
SHARES = {"info": 1, "objective": 2, "train": 5, "sweep": 4, "fsdp": 3}
# Peak dense bf16 rate of the chip by its name (vendor datasheet, SXM parts), the usual MFU denominator.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}
TARGETS = {"mfu": 0.40, "ray_vs_plain": 0.95, "objective_vs_cross_entropy_time": 1.10, "gpu_mib_spread": 256}
JSON_NAME, LOG_NAME = "gpu-check.json", "gpu-check.log"


def run_part(name: str, work: Path, timeout: float, dry_run: bool, log: TextIO) -> dict:
    """Run one part in a new process session; stop it and every process it started after `timeout` seconds.
    Returns its figures (what it wrote) with `ok`, `seconds` and `error`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(HERE / "parts.py"), name, str(work), *(["--dry-run"] if dry_run else [])]
    started, error = time.monotonic(), None
    log.write(f"\n===== {name} (time box {timeout:.0f} s)\n")
    log.flush()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    try:
        code = proc.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        stop_tree(proc)
        code, error = None, f"stopped at its time box of {timeout:.0f} s"
    if code:
        error = f"exit code {code}: {last_error(Path(log.name))}"
    figures = _read(work / f"{name}.json")
    return {**figures, "ok": error is None, "seconds": round(time.monotonic() - started, 1), "error": error}


def stop_tree(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the part and all its descendants (Ray's daemons and workers included),
    by process id: only what this run started."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in family:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=10)
        family = alive
    proc.wait()


def last_error(log: Path) -> str:
    """The last line of the last traceback in the log (or its last line)."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Traceback"):
            tail = [ln for ln in lines[i:] if not ln.startswith(" ")]
            return tail[-1] if tail else lines[-1]
    return lines[-1] if lines else "no output"


def summarize(result: dict) -> dict:
    """MFU from the parts' figures, and each target with its value and whether it is met (None: not measured,
    or a speed target in a dry run, whose toy sizes on a CPU say nothing about the GPU)."""
    info, train, fsdp = result.get("info", {}), result.get("train", {}), result.get("fsdp", {})
    objective, sweep = result.get("objective", {}), result.get("sweep", {})
    name = info.get("gpu") or ""
    datasheet = next((rate for chip, rate in PEAK_BF16.items() if chip in name), None)
    measured = (info.get("matmul") or {}).get("tflops")
    flops = (train.get("model") or fsdp.get("model") or {}).get("flops_per_token")

    def mfu(part: dict, key: str) -> dict | None:
        rate, ratio = part.get(key), part.get("tokens_per_target")
        if not (rate and ratio and flops):
            return None
        achieved = rate * ratio * flops
        return {"tflops": achieved / 1e12, "of_datasheet": achieved / datasheet if datasheet else None,
                "of_measured_matmul": achieved / (measured * 1e12) if measured else None}

    mfus = {"plain": mfu(train, "plain_target_tokens_per_s"),
            "ray_worker": mfu(train, "ray_worker_target_tokens_per_s"),
            "fsdp_per_gpu": mfu(fsdp, "target_tokens_per_s_per_gpu")}
    ray_mfu = (mfus["ray_worker"] or {}).get("of_datasheet") or (mfus["ray_worker"] or {}).get("of_measured_matmul")
    spread = sweep.get("gpu_mib_spread_after_trials")

    def target(value, bound, larger_is_better=True, speed=True):
        measured = value is not None and not (speed and result.get("dry_run"))
        met = (value >= bound if larger_is_better else value <= bound) if measured else None
        return {"value": value, "target": bound, "met": met}

    return {
        "peak_bf16_tflops": {"datasheet": datasheet / 1e12 if datasheet else None, "measured_matmul": measured},
        "mfu": mfus,
        "targets": {
            "train_mfu": target(ray_mfu, TARGETS["mfu"]),
            "train_ray_vs_plain": target(train.get("ratio"), TARGETS["ray_vs_plain"]),
            "objective_vs_cross_entropy_time": target(objective.get("time_vs_cross_entropy"),
                                                      TARGETS["objective_vs_cross_entropy_time"], False),
            "sweep_gpu_mib_spread_after_trials": target(spread, TARGETS["gpu_mib_spread"], False, speed=False),
            "sweep_ran": target(sweep.get("ok"), True, speed=False),
            "fsdp_ran": target(fsdp.get("ok"), True, speed=False),
        },
    }


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for gpu-check.json and gpu-check.log")
    ap.add_argument("--dry-run", action="store_true", help="every part on the CPU at toy sizes (same keys)")
    ap.add_argument("--parts", default=",".join(SHARES), help=f"comma-separated subset of {','.join(SHARES)}")
    ap.add_argument("--budget-s", type=float, default=450, help="the whole run's time (default: 450)")
    ap.add_argument("--work", type=Path, help="scratch folder, kept (default: a temporary one, removed after; it "
                    "holds GBs on the GPU, which must stay out of OUT, whose files come back)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in parts if p not in SHARES]:
        sys.exit(f"--parts: unknown part {unknown[0]!r}; expected some of {', '.join(SHARES)}")
    work = (args.work or Path(tempfile.mkdtemp(prefix="alphasweep-gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    result = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": args.budget_s}
    with (args.out / LOG_NAME).open("w") as log:  # written as the parts run: a cut-off run still has it
        for i, name in enumerate(parts):
            left = deadline - time.monotonic()
            if left < 5:
                result[name] = {"ok": False, "seconds": 0, "error": "not run: the run's budget was spent"}
            else:
                box = left * SHARES[name] / sum(SHARES[p] for p in parts[i:])
                result[name] = run_part(name, work, box, args.dry_run, log)
            result.update(summarize(result), seconds=round(args.budget_s - (deadline - time.monotonic()), 1))
            (args.out / JSON_NAME).write_text(json.dumps(result, indent=2, default=str) + "\n")
            status = "ok" if result[name]["ok"] else f"FAILED: {result[name]['error']}"
            print(f"[gpu-check] {name}: {status} ({result[name]['seconds']} s)", flush=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    for key, t in result["targets"].items():
        print(f"[gpu-check] {key:36} {_fmt(t['value']):>10} target {_fmt(t['target'])}: "
              f"{'met' if t['met'] else 'not measured' if t['met'] is None else 'MISSED'}")
    print(f"[gpu-check] figures: {args.out / JSON_NAME}")


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
