"""The continuum over seeds: run `configs/continuum.yaml` once per seed and print mean +- std per objective.

    .venv/bin/python bench/continuum_table.py [--seeds 0 1 2] [--out runs/continuum]

Each seed changes the training rows, the noise draws and the fine-tunes' data order (`demo.tasks.*.seed`,
`seeds`) on the one base (as the paper's seeds are training seeds on one model), one sweep per seed;
`alphasweep sweep configs/continuum.yaml` alone runs its training seeds (`seeds:`) in one command, then its
confirmation stage. The table checks the paper's direction: on the strong pair `p` beats NLL, on the weak pair
NLL beats `p`, in between they are level, in every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "continuum.yaml"


def run_seed(seed: int, out: Path) -> dict:
    tasks = yaml.safe_load(CONFIG.read_text())["demo"]["tasks"]
    sets = [f"output_dir={out}/seed{seed}", f"seeds=[{seed}]", "confirm=null",
            *(f"demo.tasks.{task}.seed={seed}" for task in tasks)]
    args = sum((["--set", s] for s in sets), [])
    print(f"seed {seed}: alphasweep sweep {CONFIG} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "alphasweep.cli", "sweep", str(CONFIG), "--resume", *args], check=True,
                   stdout=subprocess.DEVNULL)
    report = subprocess.run([sys.executable, "-m", "alphasweep.cli", "report", f"{out}/seed{seed}", "--json"],
                            check=True, capture_output=True, text=True)
    return {p["domain"]: p for p in json.loads(report.stdout)["pairs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("runs/continuum"))
    args = ap.parse_args()
    results = {seed: run_seed(seed, args.out.resolve()) for seed in args.seeds}
    for domain in next(iter(results.values())):
        print(f"\n{domain}: probe mean p " + ", ".join(f"{results[s][domain]['probe_mean_p']:.3f}" for s in args.seeds))
        objectives = list(results[args.seeds[0]][domain]["scores"])
        print(f"{'objective':<22}" + "".join(f"{'seed ' + str(s):>9}" for s in args.seeds) + f"{'mean ± std':>16}")
        for obj in objectives:
            vals = [100 * results[s][domain]["scores"][obj] for s in args.seeds]
            spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
            mean = f"{statistics.mean(vals):>10.1f} ± {spread:4.1f}"
            print(f"{obj:<22}" + "".join(f"{v:>9.1f}" for v in vals) + mean)
        gaps = [100 * (results[s][domain]["scores"]["p"] - results[s][domain]["scores"]["original"])
                for s in args.seeds]
        print(f"{'p - original':<22}" + "".join(f"{g:>+9.1f}" for g in gaps) + f"{statistics.mean(gaps):>+10.1f}")


if __name__ == "__main__":
    main()
