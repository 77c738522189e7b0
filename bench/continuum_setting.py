"""Which setting makes the embedded demo show the three regimes on every numeric path, in every seed?

A setting is a list of `--set` overrides on `configs/demo.yaml`. For each setting, seed and numeric path
(a cell) this study builds the demo exactly as `alphasweep sweep` does (`demo.prepare_demo`: the tiny base
and the synthetic files), probes each pair with `alphasweep.probe`, fine-tunes the base with each objective
in a plain loop that mirrors the Ray Train worker with one worker (`alphasweep.data`, `objective_loss`, the
worker's schedule and data order) and scores it with the real `Evaluator` (hf backend). So a number here is
what a sweep trial gets, without the minutes of Ray start-up per trial.

Numeric paths: PyTorch picks its CPU kernels once, at import, from `ATEN_CPU_CAPABILITY` (unset: the best
the CPU has; `avx2`; `default`), and each path gives different but run-to-run identical weights. So every
cell runs in its own process, and each path has its own cache directory (a base's cache key cannot see the
path it was trained on). Seed s sets every `demo.tasks.*.seed` (training rows, noise) and `train.seed`
(data order): the base is one model per path, as the paper's seeds are training seeds on one model.

    .venv/bin/python bench/continuum_setting.py                         # the chosen setting, 3 seeds x 3 paths
    .venv/bin/python bench/continuum_setting.py --settings a b --seeds 0 --paths native
    .venv/bin/python bench/continuum_setting.py --list

Results are cached in --work (one JSON line per fine-tune, keyed by everything that determines it), so an
interrupted study resumes and a second call only prints. Two cells run at a time, one torch thread each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Each cell is its own process (`--cell`), started with its ATEN_CPU_CAPABILITY already set: torch reads it here.
import torch  # noqa: E402
from robustness import PATHS, REGIMES, check_pair  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from alphasweep.config import load_config  # noqa: E402
from alphasweep.data import collate, load_sft_data  # noqa: E402
from alphasweep.demo import prepare_demo  # noqa: E402
from alphasweep.evaluation.actor import Evaluator  # noqa: E402
from alphasweep.objectives import objective_loss, parse_objective  # noqa: E402
from alphasweep.probe import probe_capability  # noqa: E402
from alphasweep.workers.setup import cosine_with_warmup, worker_batches  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"
OBJECTIVES = ["original", "GeneralFamily-0.25", "GeneralFamily-0.5", "p", "GeneralFamily-4", "OnlyTopLogP-0.5"]

# Settings: overrides on configs/demo.yaml (see docs/continuum-setting.md for what each one taught).
SETTINGS: dict[str, list[str]] = {
    "chosen": [],
    "smoke": ["demo.base.steps=50", "train.steps=20"],
}


# ------------------------------------------------------------------------------------------ one cell
def seed_overrides(cfg_raw: dict, seed: int) -> list[str]:
    """The `--set` overrides that move a demo config to seed `seed` (every task's data, the training order)."""
    return [f"train.seed={seed}", *(f"demo.tasks.{task}.seed={seed}" for task in cfg_raw["demo"]["tasks"])]


def _key(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def fine_tune(base: str, data, tc, objective_name: str):
    """The Ray Train worker's loop with one worker: same seeding, data split and order, optimizer, schedule,
    clipping and loss, so the weights are the ones a sweep trial trains (one torch thread)."""
    objective = parse_objective(objective_name)
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rows = load_sft_data(data, tokenizer, tc.max_length, seed=tc.seed).train
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay,
                                  betas=(0.9, 0.95))
    total_steps = tc.total_steps(len(rows))
    scheduler = cosine_with_warmup(optimizer, tc.warmup_for(total_steps), total_steps, tc.min_lr_ratio)
    batches = worker_batches(rows, tc.batch_size, tc.seed, 0, 1)
    model.train()
    for _ in range(total_steps):
        batch = collate(next(batches), tokenizer.pad_token_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        objective_loss(logits, batch["labels"], batch["loss_mask"], objective).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        if torch.isfinite(grad_norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    model.eval()
    return model, tokenizer


def run_cell(spec: dict) -> None:
    """Build the demo for one (setting, seed, path), then probe, score the base and fine-tune every objective."""
    torch.set_num_threads(1)
    raw_cfg = load_config(DEMO, spec["overrides"])
    overrides = [*spec["overrides"], *seed_overrides(raw_cfg.model_dump(), spec["seed"]),
                 f"demo.cache_dir={spec['cache']}"]
    raw_cfg = load_config(DEMO, overrides)
    t0 = time.perf_counter()
    cfg = prepare_demo(raw_cfg, log=lambda msg: None)
    base_s = time.perf_counter() - t0
    base = cfg.models[0].path
    evaluator = Evaluator(cfg.eval.model_copy(update={"backend": "hf"}), log=None)
    out = Path(spec["out"])
    known = {}  # results of any setting, by key: a pair that a setting leaves as it was is not rerun
    for f in out.parent.glob("*.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            known[row["key"]] = row
    mine = {json.loads(line)["key"] for line in out.read_text().splitlines()} if out.exists() else set()
    for raw_domain, domain in zip(raw_cfg.domains, cfg.domains, strict=True):
        if spec["domains"] and domain.name not in spec["domains"]:
            continue
        tc = cfg.train_for(domain)
        common = dict(base=raw_cfg.demo.base.model_dump(),
                      tasks={k: v.model_dump() for k, v in raw_cfg.demo.tasks.items()},
                      domain=raw_domain.model_dump(), train=tc.model_dump(), eval=cfg.eval.model_dump(),
                      path=spec["path"])
        for objective in [None, *spec["objectives"]]:
            key = _key(**common, objective=objective)
            if key in mine:
                continue
            if key in known:
                with out.open("a") as f:
                    f.write(json.dumps({**known[key], "setting": spec["setting"]}) + "\n")
                continue
            row = {"key": key, "setting": spec["setting"], "seed": spec["seed"], "path": spec["path"],
                   "domain": domain.name, "objective": objective or "base"}
            t1 = time.perf_counter()
            if objective is None:
                probe = probe_capability(base, domain.train, max_length=tc.max_length, seed=tc.seed)
                row.update(probe_mean_p=probe.mean_p, continuum=probe.continuum, base_s=round(base_s, 1))
                model, tokenizer = None, None
                result = evaluator.evaluate(base, domain.benchmarks)
            else:
                model, tokenizer = fine_tune(base, domain.train, tc, objective)
                row["train_s"] = round(time.perf_counter() - t1, 1)
                result = evaluator.evaluate_model(model, tokenizer, domain.benchmarks)
            row["accuracy"] = 100 * result["mean_score"]
            row["eval_s"] = round(result["seconds"], 1)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{spec['setting']:>14} seed {spec['seed']} {spec['path']:>7} {domain.name:>15} "
                  f"{row['objective']:>18}: {row['accuracy']:5.1f}"
                  + (f"  probe {row['probe_mean_p']:.3f}" if objective is None else f"  ({row['train_s']:.0f} s)"),
                  flush=True)


# ------------------------------------------------------------------------------------------- driver
def run_all(settings: list[str], seeds: list[int], paths: list[str], objectives: list[str], domains: list[str],
            work: Path, parallel: int) -> list[dict]:
    """Every cell in its own process (the numeric path is fixed at torch import), `parallel` at a time."""
    (work / "cells").mkdir(parents=True, exist_ok=True)
    specs = []
    for name in settings:
        for seed in seeds:
            for path in paths:
                out = work / "cells" / f"{name}-s{seed}-{path}.jsonl"
                specs.append({"setting": name, "overrides": SETTINGS[name], "seed": seed, "path": path,
                              "objectives": objectives, "domains": domains, "cache": str(work / f"cache-{path}"),
                              "out": str(out)})
    running: list[subprocess.Popen] = []
    for spec in specs:
        while len(running) >= parallel:
            running = [p for p in running if p.poll() is None]
            time.sleep(0.5)
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
                   HF_DATASETS_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
        if PATHS[spec["path"]]:
            env["ATEN_CPU_CAPABILITY"] = PATHS[spec["path"]]
        running.append(subprocess.Popen([sys.executable, __file__, "--cell", json.dumps(spec)], env=env))
    failed = [p.args for p in running if p.wait() != 0]
    if failed:
        print(f"{len(failed)} cell(s) failed", file=sys.stderr)
    rows = []
    for spec in specs:
        if Path(spec["out"]).exists():
            rows += [json.loads(line) for line in Path(spec["out"]).read_text().splitlines()]
    return rows


def report(rows: list[dict], settings: list[str], seeds: list[int], paths: list[str]) -> None:
    """Per setting and pair: each objective over the cells (min, mean, max), then the regime's checks per cell."""
    for name in settings:
        mine = [r for r in rows if r["setting"] == name]
        print(f"\n== {name}: {' '.join(SETTINGS[name]) or '(configs/demo.yaml as is)'}")
        cells = [(s, p) for s in seeds for p in paths]
        print(f"{'pair':<16}{'objective':<20}" + "".join(f"{f's{s} {p[:4]}':>9}" for s, p in cells)
              + f"{'min':>7}{'mean':>7}{'max':>7}")
        for domain in dict.fromkeys(r["domain"] for r in mine):
            table = {(r["seed"], r["path"], r["objective"]): r for r in mine if r["domain"] == domain}
            objectives = list(dict.fromkeys(r["objective"] for r in mine if r["domain"] == domain))
            probe = [table.get((s, p, "base"), {}).get("probe_mean_p") for s, p in cells]
            print(f"{domain:<16}{'probe mean p':<20}" + "".join(f"{v:9.3f}" if v is not None else f"{'-':>9}"
                                                               for v in probe))
            for obj in objectives:
                vals = [table.get((s, p, obj), {}).get("accuracy") for s, p in cells]
                got = [v for v in vals if v is not None]
                print(f"{domain:<16}{obj:<20}" + "".join(f"{v:9.1f}" if v is not None else f"{'-':>9}" for v in vals)
                      + (f"{min(got):7.1f}{statistics.mean(got):7.1f}{max(got):7.1f}" if got else ""))
            regime = REGIMES.get(domain)
            if regime:
                per_cell = [{o: table[(s, p, o)]["accuracy"] for o in objectives if (s, p, o) in table}
                            | {"probe_mean_p": table.get((s, p, "base"), {}).get("probe_mean_p")} for s, p in cells]
                for line in check_pair(regime, per_cell, best_of_run=True):
                    print(f"{domain:<16}{line}")
        train_s = [r["train_s"] for r in mine if "train_s" in r]
        if train_s:
            print(f"fine-tune {statistics.mean(train_s):.1f} s (max {max(train_s):.1f}) on one thread")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="*", default=["chosen"])
    ap.add_argument("--objectives", nargs="*", default=OBJECTIVES)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--paths", nargs="*", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--domains", nargs="*", default=[], help="only these pairs (default: every pair)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/alphasweep-continuum"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        return run_cell(json.loads(args.cell))
    if args.list:
        for name, overrides in SETTINGS.items():
            print(f"{name}: {' '.join(overrides)}")
        return
    t0 = time.time()
    if args.report_only:
        rows = [json.loads(line) for f in (args.work / "cells").glob("*.jsonl") for line in f.read_text().splitlines()]
    else:
        rows = run_all(args.settings, args.seeds, args.paths, args.objectives, args.domains, args.work, args.parallel)
    report(rows, args.settings, args.seeds, args.paths)
    print(f"\n({time.time() - t0:.0f} s wall)")


if __name__ == "__main__":
    main()
