"""Tokens/s of the training loop run by Ray (inside a Tune trial, and by one Ray Train worker) vs a plain
single-process PyTorch loop, same model, data and objective.

    .venv/bin/python bench/train_throughput.py [--steps 60] [--hidden 256] [--layers 4] [--threads 2]

Every side times the same steady-state window (after a warm-up) of forward + objective + backward +
AdamW steps at the same thread count; the Ray figures are what the loop itself reports. Target: >= 0.9.
On a GPU (bench/gpu/check.py) the plain loop and the Ray Train worker run with the loop's bf16 autocast and
micro-batches.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
import torch
from ray import tune
from transformers import AutoModelForCausalLM, AutoTokenizer

from alphasweep.config import DataSpec, TrainConfig
from alphasweep.data import collate, load_sft_data
from alphasweep.objectives import objective_loss, parse_objective
from alphasweep.synthetic import write_task_files
from alphasweep.tinykit import build_base
from alphasweep.workers.setup import TrainJob
from alphasweep.workers.trainer import build_trainer, train_in_trial


def plain_loop(model_path: str, data: DataSpec, tc: TrainConfig, objective: str, warmup: int,
               device: str = "cpu") -> float:
    """Target tokens/s of steps `warmup`..`tc.steps`: the loop's work (micro-batches of `tc.micro_batch_size`,
    bf16 autocast on CUDA, AdamW, clipping) without Ray."""
    torch.manual_seed(tc.seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    rows = load_sft_data(data, tok, tc.max_length, seed=tc.seed).train
    opt = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay, betas=(0.9, 0.95))
    obj = parse_objective(objective)
    micro = min(tc.micro_batch_size or tc.batch_size, tc.batch_size)
    bf16 = device.startswith("cuda") and tc.bf16
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    tokens, started = 0, 0.0
    for step in range(tc.steps):
        if step == warmup:
            _sync(device)
            tokens, started = 0, time.perf_counter()
        i = step * tc.batch_size % (len(rows) - tc.batch_size + 1)
        for k in range(0, tc.batch_size - micro + 1, micro):
            batch = collate(rows[i + k : i + k + micro], tok.pad_token_id)
            tokens += int(batch["loss_mask"].sum())
            batch = {name: t.to(device) for name, t in batch.items()}
            with autocast:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = objective_loss(logits, batch["labels"], batch["loss_mask"], obj)
            (loss * micro / tc.batch_size).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return tokens / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def steady_tokens_per_s(history: list[dict], warmup: int) -> float:
    steady = [h for h in history if h["step"] > warmup]
    return sum(h["tokens_per_s"] for h in steady) / len(steady)


def ray_train_worker(job: TrainJob, warmup: int, root: Path) -> float:
    """One Ray Train worker (`train.runner: ray_train`)."""
    result = build_trainer(job, storage_path=str(root / "ray"), name="throughput").fit()
    return steady_tokens_per_s(result.return_value, warmup)


def tune_trial(job: TrainJob, warmup: int, root: Path) -> float:
    """The loop inside a Tune trial holding the worker's CPUs (`train.runner: tune`)."""
    def trial(config):
        train_in_trial(job)

    grid = tune.Tuner(tune.with_resources(trial, {"CPU": job.train.cpus_per_worker}),
                      run_config=tune.RunConfig(name="throughput", storage_path=str(root / "tune"), verbose=0)).fit()
    rows = [json.loads(line) for line in (Path(grid[0].path) / "result.json").read_text().splitlines()]
    return steady_tokens_per_s([r for r in rows if "tokens_per_s" in r], warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--objective", default="GeneralFamily-1")
    args = ap.parse_args()
    warmup = 10
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = str(build_base(root / "kit", hidden=args.hidden, layers=args.layers))
        train_file, _ = write_task_files("addition", root / "data", n_train=4000, n_test=10)
        data = DataSpec(path=str(train_file), heldout=0)
        tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=32, workers=1,
                         cpus_per_worker=args.threads, report_every=warmup, eval_every=10**6, warmup_steps=0)
        plain = plain_loop(model, data, tc, args.objective, warmup)
        job = TrainJob(model_path=model, objective=parse_objective(args.objective), data=data, train=tc)
        ray.init(num_cpus=int(tc.cpus_per_worker), include_dashboard=False, log_to_driver=False)
        in_trial = tune_trial(job, warmup, root)
        via_train = ray_train_worker(job, warmup, root)
        ray.shutdown()
    print(f"model hidden={args.hidden} layers={args.layers}, batch {args.batch_size}, {args.threads} threads, "
          f"{args.objective}, steps {warmup}..{args.steps}")
    print(f"{'loop':<22}{'target tokens/s':>16}{'vs plain':>10}")
    for name, rate in (("plain PyTorch", plain), ("Tune trial", in_trial), ("Ray Train worker", via_train)):
        print(f"{name:<22}{rate:>16.0f}{rate / plain:>10.3f}")
    print(f"ratio Ray / plain: Tune trial {in_trial / plain:.3f}, Ray Train worker {via_train / plain:.3f} "
          "(target >= 0.9)")


if __name__ == "__main__":
    main()
