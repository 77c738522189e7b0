"""Does the demo show the same three regimes on any machine? `alphasweep sweep` over 3 seeds x 3 numeric paths.

    .venv/bin/python bench/robustness.py [--seeds 0 1 2] [--paths native avx2 default] [--out runs/robustness]

A numeric path is the CPU kernel set PyTorch picks at import (`ATEN_CPU_CAPABILITY`: unset, `avx2`,
`default`); each gives different but run-to-run identical weights, so it stands in for another machine.
Every (seed, path) cell is the demo (`configs/demo.yaml`) run by the real system: an `alphasweep sweep`
process with the seed's `--set` overrides (`train.seed` and every `demo.tasks.*.seed`: the data and the training
order; the base is one per path) and a fresh `ALPHASWEEP_CACHE` per path (a base's cache key cannot see the
path it was trained on; the first cell of a path pays for its base), then `alphasweep report --json`, and
`alphasweep eval` of the base model on the pairs' benchmarks. One row per (pair, seed, path), then the checks
of each regime per cell and on the means, and the wall time. A finished cell is read back, not rerun (delete
--out to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alphasweep.objectives import parse_objective  # noqa: E402
from alphasweep.probe import continuum_of  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"
PATHS = {"native": None, "avx2": "avx2", "default": "default"}  # name -> ATEN_CPU_CAPABILITY (None: unset)
REGIMES = {"addition-noisy": "strong", "recode": "intermediate", "cipher": "weak"}  # the demo's pairs
STRONG_GAP, WEAK_NLL, WEAK_P, CLOSE_CELL, CLOSE_MEAN = 10.0, 70.0, 10.0, 12.0, 5.0
ABOVE_BASE = 25.0  # intermediate: NLL and p this many points above the base model's own score


def prior_leaning(name: str) -> bool:
    objective = parse_objective(name)
    return (objective.alpha is not None and objective.alpha >= 1) or objective.family in ("p", "top_p", "top_logp")


def data_averse(name: str) -> bool:
    objective = parse_objective(name)
    return objective.family == "nll" or (objective.alpha is not None and objective.alpha <= 0.25)


def best_of(scores: dict[str, float]) -> str:
    """The best objective as the report picks it: the highest score, the first run (NLL first) on a tie."""
    return max(scores, key=lambda o: scores[o])


def check_pair(regime: str, cells: list[dict], best_of_run: bool = False) -> list[str]:
    """Item 2 of issue 10 for one pair over its cells. A cell: objective -> accuracy in %, `probe_mean_p`,
    `base` (the base model's accuracy) and `best_objective` (else the best of the objectives in the cell).
    Returns one line per check: the figure per cell, its worst margin, PASS or FAIL."""
    lines = []

    def check(what: str, values: list[float | None], ok, margin) -> None:
        got = [v for v in values if v is not None]
        passed = len(got) == len(values) and all(ok(v) for v in got)
        worst = min((margin(v) for v in got), default=float("nan"))
        lines.append(f"{what:<34}" + " ".join(f"{v:7.2f}" if v is not None else f"{'-':>7}" for v in values)
                     + f"   worst margin {worst:+.2f} -> {'PASS' if passed else 'FAIL'}")

    def score(cell: dict, name: str) -> float | None:
        return cell.get(name)

    probe = [c.get("probe_mean_p") for c in cells]
    cut = {"strong": lambda v: v - 0.5, "weak": lambda v: 0.2 - v,
           "intermediate": lambda v: min(v - 0.2, 0.5 - v)}[regime]
    check(f"probe mean p -> {regime}", probe, lambda v: continuum_of(v) == regime, cut)
    best = []
    for c in cells:
        scores = {k: v for k, v in c.items() if k not in ("probe_mean_p", "base", "best_objective") and v is not None}
        best.append(c.get("best_objective") if not best_of_run and c.get("best_objective") else
                    (best_of(scores) if scores else None))
    nll, p = [score(c, "original") for c in cells], [score(c, "p") for c in cells]
    both = [(a, b) for a, b in zip(nll, p, strict=True)]
    if regime == "strong":
        check(f"p - NLL >= {STRONG_GAP:g}", [b - a if None not in (a, b) else None for a, b in both],
              lambda v: v >= STRONG_GAP, lambda v: v - STRONG_GAP)
        lines.append(f"{'best prior-leaning':<34}{', '.join(map(str, best))} -> "
                     f"{'PASS' if all(b and prior_leaning(b) for b in best) else 'FAIL'}")
    elif regime == "weak":
        check(f"NLL >= {WEAK_NLL:g}", nll, lambda v: v >= WEAK_NLL, lambda v: v - WEAK_NLL)
        check(f"p <= {WEAK_P:g}", p, lambda v: v <= WEAK_P, lambda v: WEAK_P - v)
        lines.append(f"{'best NLL or alpha <= 0.25':<34}{', '.join(map(str, best))} -> "
                     f"{'PASS' if all(b and data_averse(b) for b in best) else 'FAIL'}")
    else:
        check(f"|NLL - p| <= {CLOSE_CELL:g}", [abs(a - b) if None not in (a, b) else None for a, b in both],
              lambda v: v <= CLOSE_CELL, lambda v: CLOSE_CELL - v)
        base = [c.get("base") for c in cells]
        above = [min(a, b) - c if None not in (a, b, c) else None for (a, b), c in zip(both, base, strict=True)]
        check(f"min(NLL, p) - base >= {ABOVE_BASE:g}", above, lambda v: v >= ABOVE_BASE, lambda v: v - ABOVE_BASE)
        if None not in nll + p:
            gap = abs(statistics.mean(nll) - statistics.mean(p))
            lines.append(f"{'|mean NLL - mean p| <= 5':<34}{gap:7.2f}   margin {CLOSE_MEAN - gap:+.2f} -> "
                         f"{'PASS' if gap <= CLOSE_MEAN else 'FAIL'}")
    return lines


# ------------------------------------------------------------------------------------- the real system
def seed_sets(seed: int) -> list[str]:
    tasks = yaml.safe_load(DEMO.read_text())["demo"]["tasks"]
    return [f"train.seed={seed}", *(f"demo.tasks.{t}.seed={seed}" for t in tasks)]


def run_cell(seed: int, path: str, out: Path) -> dict:
    """One demo sweep, its report, and the base model's own scores; cached in `<cell>/cell.json`."""
    cell_dir = out / path / f"seed{seed}"
    done = cell_dir / "cell.json"
    if done.exists():
        return json.loads(done.read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "RAY_ADDRESS")}
    env.update(ALPHASWEEP_CACHE=str(out / f"cache-{path}"), PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled")
    if PATHS[path]:
        env["ATEN_CPU_CAPABILITY"] = PATHS[path]
    sets = sum((["--set", s] for s in [f"output_dir={cell_dir}", *seed_sets(seed)]), [])
    cli = [sys.executable, "-m", "alphasweep.cli"]
    started = time.time()
    log = cell_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        subprocess.run([*cli, "sweep", str(DEMO), "--resume", *sets], env=env, check=True, stdout=f, stderr=f)
    sweep_s = time.time() - started
    report = json.loads(subprocess.run([*cli, "report", str(cell_dir), "--json"], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    resolved = yaml.safe_load((cell_dir / "sweep.yaml").read_text())
    benches = {b["name"]: b["path"] for d in resolved["domains"] for b in d["benchmarks"]}
    records = cell_dir / "base_records.jsonl"
    subprocess.run([*cli, "eval", "--checkpoint", resolved["models"][0]["path"], "--backend", "hf",
                    "--max-new-tokens", str(resolved["eval"]["max_new_tokens"]), "--out", str(records),
                    "--benchmarks", ",".join(f"{n}={p}" for n, p in benches.items())],
                   env=env, check=True, capture_output=True, text=True)
    base: dict[str, list[bool]] = {}
    for line in records.read_text().splitlines():
        r = json.loads(line)
        base.setdefault(r["benchmark"], []).append(r["correct"])
    bench_of = {d["name"]: d["benchmarks"][0]["name"] for d in resolved["domains"]}
    cell = {"seed": seed, "path": path, "sweep_s": round(sweep_s), "pairs": {}}
    for pair in report["pairs"]:
        marks = base[bench_of[pair["domain"]]]
        cell["pairs"][pair["domain"]] = {
            **{k: 100 * v for k, v in pair["scores"].items()}, "probe_mean_p": pair["probe_mean_p"],
            "continuum": pair["continuum"], "best_objective": pair["best_objective"],
            "best_score": 100 * pair["best_score"], "base": 100 * sum(marks) / len(marks)}
    done.write_text(json.dumps(cell, indent=1))
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--out", type=Path, default=Path("runs/robustness"))
    args = ap.parse_args()
    out = args.out.resolve()
    started = time.time()
    cells = []
    print(f"{'pair':<16}{'seed':>5}{'path':>8}{'base':>7}{'NLL':>7}{'p':>7}  {'best objective':<24}{'best':>6}"
          f"{'probe':>8}  continuum   (sweep s)", flush=True)
    for seed in args.seeds:  # every path of a seed first: the first seed alone already compares machines
        for path in args.paths:
            cell = run_cell(seed, path, out)
            cells.append(cell)
            for domain, r in cell["pairs"].items():
                print(f"{domain:<16}{seed:>5}{path:>8}{r['base']:7.1f}{r.get('original', float('nan')):7.1f}"
                      f"{r.get('p', float('nan')):7.1f}  {r['best_objective']:<24}{r['best_score']:6.1f}"
                      f"{r['probe_mean_p']:8.3f}  {r['continuum']:<12}({cell['sweep_s']})", flush=True)
    print()
    failed = False
    for domain, regime in REGIMES.items():
        rows = [c["pairs"][domain] for c in cells if domain in c["pairs"]]
        print(f"{domain} ({regime}), {len(rows)} cells:")
        for line in check_pair(regime, rows):
            print(f"  {line}")
            failed |= line.endswith("FAIL")
        for name in ("base", "original", "p", "best_score"):
            vals = [r[name] for r in rows if name in r]
            print(f"  {name:<12} min {min(vals):5.1f}  mean {statistics.mean(vals):5.1f}  max {max(vals):5.1f}")
    print(f"\n{'every cell meets item 2' if not failed else 'SOME CHECK FAILED'}; "
          f"wall time {time.time() - started:.0f} s (sweeps {sum(c['sweep_s'] for c in cells)} s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
