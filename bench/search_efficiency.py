"""Does alphasweep's search find a pair's best objective in fewer trials than a grid?

    .venv/bin/python bench/search_efficiency.py                 # (a) the grid, if not cached, then (b)
    .venv/bin/python bench/search_efficiency.py --replay-only   # (b) on the committed table

(a) The grid (slow, once): every demo pair trained and scored through the real system on `GRID` (NLL, `p`,
    GeneralFamily at alpha 0.05 .. 8 on a log scale, top cuts over the searched threshold range) with
    every seed of `SEEDS`: one `alphasweep sweep` of `configs/demo.yaml` with the grid enqueued, the
    probe's warm start off and `seeds:` set. Saved as `bench/data/search_efficiency.json`: per pair, the
    probe's verdict and each grid objective's score per seed, plus the kit that made it
    (the demo config's `demo:` section) and the search space and warm start the demo sweeps with.

(b) The replay (seconds, no training): each strategy proposes with the project's own code (`PairSearch`
    over `SearchSpace`, the sweep's TPE sampler and warm-start points) and the table answers instead of a
    training run. A proposal between grid points is scored by linear interpolation on the grid's curve of
    its family: GeneralFamily along log(alpha), with `p` as alpha = 1; the top cut along the threshold;
    outside the grid the nearest end. Seed noise: each proposal is answered from the curve of one seed
    drawn at random, so a strategy sees the between-seed noise the grid measured; whether it has found the
    best is judged on the mean over seeds. A strategy has found the best at the first trial whose objective
    is within 1 point of the grid's best mean score. Strategies: alphasweep (the probe's suggestions for the
    pair's measured continuum, from today's `probe.SUGGESTIONS`, the config's `enqueue`, then TPE, as
    `alphasweep sweep` runs a pair), TPE without the warm start, random
    (Optuna's RandomSampler over the same space), and the grid in its own order. Every sampler goes through
    `PairSearch`'s `ObjectiveSampler`, as in a sweep: no strategy spends a trial on an objective it has run.

Prints, per pair and strategy, the trials needed (median, 90th percentile) and as a share of the grid's
size; the last line is the summary the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import optuna
import yaml

from alphasweep.config import SearchSpec
from alphasweep.objectives import parse_objective
from alphasweep.orchestrator.space import (
    PairSearch,
    SearchSpace,
    objective_of,
    point_of,
    search_sampler,
    warm_points,
)
from alphasweep.probe import SUGGESTIONS

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "bench" / "data" / "search_efficiency.json"
DEMO = ROOT / "configs" / "demo.yaml"
GRID = ["original", "GeneralFamily-0.05", "GeneralFamily-0.1", "GeneralFamily-0.2", "GeneralFamily-0.4", "p",
        "GeneralFamily-2", "GeneralFamily-4", "GeneralFamily-8", "OnlyTopLogP-0.05", "OnlyTopLogP-0.25",
        "OnlyTopLogP-0.5", "OnlyTopLogP-0.75", "OnlyTopLogP-0.9"]
SEEDS = [0, 1]
WITHIN = 0.01  # "found the best": within 1 point of the grid's best mean score
STRATEGIES = ("alphasweep", "tpe", "random", "grid")
TARGET = 0.25
ATTEMPTS = 3


# ---------------------------------------------------------------- (a) the grid


def run_grid(out: Path, sets: list[str]) -> dict:
    """One sweep of the demo with the grid enqueued, every seed; returns the table."""
    demo = yaml.safe_load(DEMO.read_text())
    overrides = [f"output_dir={out}", f"search.enqueue={json.dumps(GRID)}", "search.probe_warm_start=false",
                 f"budget.trials_per_pair={len(GRID)}", f"seeds={json.dumps(SEEDS)}", *sets]
    args = [sys.executable, "-m", "alphasweep.cli", "sweep", str(DEMO), "--resume",
            *sum((["--set", s] for s in overrides), [])]
    print("grid: " + " ".join(args[1:]), flush=True)
    started = time.time()
    for attempt in range(1, ATTEMPTS + 1):  # each attempt resumes: a trial that failed (OOM, a timeout) reruns
        subprocess.run(args, stdout=subprocess.DEVNULL)
        report = json.loads(subprocess.run([sys.executable, "-m", "alphasweep.cli", "report", str(out), "--json"],
                                           check=True, capture_output=True, text=True).stdout)
        missing = [f"{p['model']}/{p['domain']} lacks {o}" for p in report["pairs"] for o in GRID
                   if len(p["objectives"].get(o, {}).get("seeds", {})) < len(SEEDS)]
        if report["pairs"] and not missing:
            break
        print(f"grid: attempt {attempt} left {len(missing)} objective(s) short of {len(SEEDS)} seeds", flush=True)
    else:
        raise SystemExit(f"grid: {'; '.join(missing) or 'no pair ran'} (run it again to resume)")
    storage = optuna.storages.RDBStorage(report["optuna_storage"])
    pairs = {}
    for p in report["pairs"]:
        name = f"{p['model']}/{p['domain']}"
        probe = optuna.load_study(study_name=name, storage=storage).user_attrs["probe"]
        per_seed = p["objectives"]
        pairs[name] = {"continuum": probe["continuum"], "probe_mean_p": probe["probe_mean_p"],
                       "scores": {o: [per_seed[o]["seeds"][str(s)] for s in SEEDS] for o in GRID}}
    print(f"grid: done in {(time.time() - started) / 60:.0f} min", flush=True)
    return {"command": " ".join(["bench/search_efficiency.py", *sum((["--set", s] for s in sets), [])]),
            "kit": demo["demo"], "search": demo["search"], "grid": GRID, "seeds": SEEDS, "pairs": pairs}


# ---------------------------------------------------------------- (b) the replay


class Answers:
    """One pair's grid as a function of the objective: per seed, or the mean over seeds."""

    def __init__(self, scores: dict[str, list[float]]):
        self.nseeds = len(next(iter(scores.values())))
        self.plain: dict[str, np.ndarray] = {}
        alpha, cut = [], []
        for name, values in scores.items():
            obj, v = parse_objective(name), np.asarray(values, dtype=float)
            if obj.family == "general" or obj.family == "p":
                alpha.append((np.log(obj.alpha if obj.family == "general" else 1.0), v))
            elif obj.family == "top_logp":
                cut.append((obj.threshold, v))
            else:
                self.plain[obj.family] = v
        self.curves = {"general": sorted(alpha, key=lambda x: x[0]), "top_logp": sorted(cut, key=lambda x: x[0])}
        self.best = max(float(np.mean(v)) for v in scores.values())

    def value(self, config: dict, seed: int | None) -> float:
        """The score of a proposal on seed `seed` (an index into the table's seeds), or the mean (None)."""
        obj = objective_of(config)
        pick = (lambda v: float(np.mean(v))) if seed is None else (lambda v: float(v[seed]))
        if obj.family in self.plain:
            return pick(self.plain[obj.family])
        if obj.family == "p":
            at, curve = 0.0, self.curves["general"]
        elif obj.family == "general":
            at, curve = np.log(obj.alpha), self.curves["general"]
        elif obj.family == "top_logp":
            at, curve = obj.threshold, self.curves["top_logp"]
        else:
            raise ValueError(f"the grid has no {obj.family} objective to answer {obj.name}")
        return float(np.interp(at, [x for x, _ in curve], [pick(v) for _, v in curve]))


def trials_to_best(strategy: str, search: SearchSpec, answers: Answers, suggestions: list[str], rep: int,
                   grid: list[str], cap: int) -> int:
    """Trials until a proposal is within `WITHIN` of the grid's best; `cap + 1` if none within `cap`."""
    rng = np.random.default_rng(rep)
    if strategy == "grid":
        for i, name in enumerate(grid, 1):
            if answers.value(point_of(name, search), None) >= answers.best - WITHIN:
                return i
        return cap + 1
    points = warm_points(search, suggestions) if strategy == "alphasweep" else None
    sampler = optuna.samplers.RandomSampler(seed=rep) if strategy == "random" else search_sampler(rep)
    searcher = PairSearch(SearchSpace(search), metric="score", mode="max", points_to_evaluate=points,
                          sampler=sampler, seed=rep, study_name=f"replay-{rep}", constants={})
    for i in range(1, cap + 1):
        config = searcher.suggest(str(i))
        if answers.value(config, None) >= answers.best - WITHIN:
            return i
        searcher.on_trial_complete(str(i), {"score": answers.value(config, int(rng.integers(answers.nseeds)))})
    return cap + 1


def replay(table: dict, reps: int) -> dict[str, dict[str, list[int]]]:
    search, grid = SearchSpec.model_validate(table["search"]), table["grid"]
    cap = 2 * len(grid)
    results = {}
    for pair, data in table["pairs"].items():
        answers = Answers(data["scores"])
        results[pair] = {s: [trials_to_best(s, search, answers, SUGGESTIONS[data["continuum"]],
                                            rep + zlib.crc32(pair.encode()), grid, cap) for rep in range(reps)]
                         for s in STRATEGIES}
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay-only", action="store_true", help="Replay on the committed table; no training.")
    ap.add_argument("--regrid", action="store_true", help="Train the grid again even if the table exists.")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "search-grid", help="The grid sweep's output_dir.")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="An override for the grid sweep.")
    ap.add_argument("--reps", type=int, default=100, help="Repetitions per strategy and pair.")
    ap.add_argument("--table", type=Path, default=TABLE, help="Where the grid's table is (or goes).")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's `group`
    if args.regrid or not (args.replay_only or args.table.exists()):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(json.dumps(run_grid(args.out.resolve(), args.sets), indent=1) + "\n")
        print(f"grid saved to {args.table}")
    table = json.loads(args.table.read_text())
    started = time.time()
    results = replay(table, args.reps)
    size = len(table["grid"])
    print(f"\n{args.reps} repetitions per strategy; grid of {size} objectives x {len(table['seeds'])} seeds; "
          f"trials until within {100 * WITHIN:g} point of the grid's best ({time.time() - started:.0f} s)")
    print(f"{'pair':<24}{'strategy':<12}{'median':>8}{'p90':>6}{'median share':>14}{'p90 share':>11}")
    shares: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for pair, by_strategy in results.items():
        best = max(table["pairs"][pair]["scores"].items(), key=lambda kv: np.mean(kv[1]))
        print(f"{pair} ({table['pairs'][pair]['continuum']}): grid best {best[0]} {100 * np.mean(best[1]):.1f}")
        for s, trials in by_strategy.items():
            median, p90 = np.median(trials), np.percentile(trials, 90)
            shares[s].append(median / size)
            print(f"{'':<24}{s:<12}{median:>8.1f}{p90:>6.1f}{median / size:>14.2f}{p90 / size:>11.2f}")
    print(f"search efficiency: alphasweep median share {max(shares['alphasweep']):.2f} (target <= {TARGET}), "
          f"random {max(shares['random']):.2f}, grid {max(shares['grid']):.2f}")


if __name__ == "__main__":
    main()
