"""Tokens/s of one Ray Train worker vs a plain single-process PyTorch loop, same model, data and objective.

    .venv/bin/python bench/train_throughput.py [--steps 60] [--hidden 256] [--layers 4] [--threads 2]

Both sides time the same steady-state window (after a warm-up) of forward + objective + backward +
AdamW steps at the same thread count; the Ray figure is what the worker itself reports. Target: >= 0.9.
On a GPU (bench/gpu/check.py) both run with the loop's bf16 autocast and micro-batches.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alphasweep.config import DataSpec, TrainConfig
from alphasweep.data import collate, load_sft_data
from alphasweep.objectives import objective_loss, parse_objective
from alphasweep.synthetic import write_task_files
from alphasweep.tinykit import build_base
from alphasweep.workers.trainer import build_trainer


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


def ray_worker(model_path: str, data: DataSpec, tc: TrainConfig, objective: str, warmup: int, root: Path) -> float:
    ray.init(num_cpus=int(tc.cpus_per_worker * max(1, tc.workers)), include_dashboard=False, log_to_driver=False)
    result = build_trainer(model_path=model_path, data=data, train=tc, objective=objective,
                           storage_path=str(root / "ray"), name="throughput").fit()
    ray.shutdown()
    steady = [h for h in result.return_value if h["step"] > warmup]
    return sum(h["tokens_per_s"] for h in steady) / len(steady)


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
        via_ray = ray_worker(model, data, tc, args.objective, warmup, root)
    print(f"model hidden={args.hidden} layers={args.layers}, batch {args.batch_size}, {args.threads} threads, "
          f"{args.objective}, steps {warmup}..{args.steps}")
    print(f"{'loop':<22}{'target tokens/s':>16}")
    print(f"{'plain PyTorch':<22}{plain:>16.0f}")
    print(f"{'Ray Train worker':<22}{via_ray:>16.0f}")
    print(f"ratio Ray / plain: {via_ray / plain:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
