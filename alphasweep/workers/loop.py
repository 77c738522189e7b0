"""The Ray Train loop run by every worker: fine-tune a causal LM with one SFT objective.

A plain loop in the nanoGPT spirit: AdamW, cosine schedule with warm-up, gradient accumulation,
grad-norm clipping, non-finite steps skipped and counted, bf16 autocast on GPU, DDP through
`ray.train.torch.prepare_model` or FSDP through torch's `fully_shard` (on CPU as on GPUs; Ray's own FSDP
wrapper needs GPUs). The objective is applied by `objective_loss` on every path. Reports go
through `ray.train.report`; under Tune they become trial results (TuneReportCallback).
"""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from alphasweep.config import DataSpec, TrainConfig
from alphasweep.data import Example, collate, load_sft_data, pack
from alphasweep.objectives import objective_loss_with_stats, parse_objective
from alphasweep.workers.checkpoints import load_trainer_state, save_checkpoint, unwrap

NLL = parse_objective("original")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def cosine_with_warmup(optimizer, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _forward_loss(model, batch, objective, device, autocast):
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return objective_loss_with_stats(logits, batch["labels"], batch["loss_mask"], objective)


def parallelize(model: torch.nn.Module, strategy: str, world: int) -> torch.nn.Module:
    """DDP via Ray Train, or FSDP2: `fully_shard` on every block the HF model names unsplittable, then the root.
    FSDP shards over any process group, a single worker's too, so one GPU runs the code path of many."""
    if strategy == "ddp" or not (dist.is_available() and dist.is_initialized()):
        return ray.train.torch.prepare_model(model, parallel_strategy="ddp" if world > 1 else None)
    from torch.distributed.fsdp import fully_shard

    device = ray.train.torch.get_device()
    if device.type == "cuda":  # fully_shard's default device mesh uses the current CUDA device
        torch.cuda.set_device(device)
    model.to(device)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules())[1:]:
        if type(module).__name__ in blocks:
            fully_shard(module)
    return fully_shard(model)


def grad_sync(model, sync: bool):
    """Skip the gradient reduction on accumulation micro-steps (DDP `no_sync`, FSDP2 `set_requires_gradient_sync`)."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    elif not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def heldout_nll(model, examples: list[Example], pad_id: int, batch_size: int, device, autocast, rank: int,
                world: int) -> float:
    """Mean -log p of held-out completion tokens: a yardstick common to every objective.

    Every rank runs the same number of forwards (FSDP gathers weights in each); a rank whose shard ran
    out forwards one example and does not count it."""
    model.eval()
    total, tokens = 0.0, 0.0
    shard = examples[rank::world]
    for i in range(0, math.ceil(len(examples) / world), batch_size):
        rows = shard[i : i + batch_size]
        loss, stats = _forward_loss(model, collate(rows or examples[:1], pad_id), NLL, device, autocast)
        if rows:
            n = float(stats["tokens"])
            total, tokens = total + float(loss) * n, tokens + n
    model.train()
    total, tokens = _all_reduce_sum([total, tokens], device)
    return total / max(tokens, 1.0)


def _batches(examples: list[Example], per_worker: int, seed: int, rank: int, world: int):
    """Endless per-rank batches; each epoch is a fresh permutation seeded by (seed, epoch)."""
    epoch = 0
    while True:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        order = order[: len(order) // world * world][rank::world].tolist() or order.tolist()
        for i in range(0, len(order) - per_worker + 1, per_worker):
            yield [examples[j] for j in order[i : i + per_worker]]
        epoch += 1


class BenchmarkSignal:
    """Accuracy of the model being trained on a few benchmark items: an intermediate signal comparable
    across objectives (held-out NLL favours NLL itself). Every rank generates the same prompts (FSDP
    gathers weights in each forward); greedy decoding keeps the ranks in step."""

    def __init__(self, spec: dict):
        from alphasweep.evaluation.actor import Evaluator

        self.benchmarks, self.limit = spec["benchmarks"], spec["limit"]
        self.evaluator = Evaluator({**spec["eval"], "backend": "hf", "temperature": 0.0, "n_samples": 1}, log=None)

    def __call__(self, model, tokenizer, step: int) -> float:
        inner = unwrap(model)
        inner.eval()
        try:
            result = self.evaluator.evaluate_model(inner, tokenizer, self.benchmarks, self.limit, f"step {step}")
        finally:
            inner.train()
        return result["mean_score"]


def train_loop_per_worker(cfg: dict) -> list[dict]:
    """Ray Train entry point. `cfg`: model_path, objective, data (DataSpec), train (TrainConfig), learning_rate,
    started_at (the `time.time()` the run was asked for, to report the start-up overhead as `startup_s`),
    signal (optional: benchmarks, limit and eval settings for a `signal_score` every `eval_every` steps).

    Returns the metrics of every report of this attempt (rank 0's list becomes `Result.return_value`).
    """
    entered = time.time()
    from transformers import AutoModelForCausalLM

    from alphasweep.tokenizer import load_tokenizer

    tc = TrainConfig.model_validate(cfg["train"])
    spec = DataSpec.model_validate(cfg["data"])
    objective = parse_objective(cfg["objective"])
    lr = cfg.get("learning_rate") or tc.learning_rate
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(tc.seed)
    if tc.workers:  # as many torch threads as CPUs the worker holds; local mode keeps the caller's setting
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))

    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as resume_dir:
        source = resume_dir or cfg["model_path"]
        tokenizer = load_tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        loaded = time.time()
        data = load_sft_data(spec, tokenizer, tc.max_length, seed=tc.seed)
        tokenized = time.time()
        train_rows = pack(data.train, tc.max_length) if tc.packing else data.train

        per_worker = max(1, tc.batch_size // world)
        micro = min(tc.micro_batch_size or per_worker, per_worker)
        accum = max(1, per_worker // micro)
        model = parallelize(model, tc.strategy, world)
        device = ray.train.torch.get_device()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tc.weight_decay, betas=(0.9, 0.95))
        scheduler = cosine_with_warmup(optimizer, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        step, counters = 0, {"skipped_steps": 0, "resumes": 0}
        if resume_dir:
            step, counters = load_trainer_state(Path(resume_dir), model, optimizer, scheduler)
            counters["resumes"] += 1
    signal = BenchmarkSignal(cfg["signal"]) if cfg.get("signal") else None
    use_bf16 = tc.bf16 and device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    batches = _batches(train_rows, micro * accum, tc.seed, rank, world)
    for _ in range(step):  # a resumed run sees the same data order as an uninterrupted one
        next(batches)
    started_at = cfg.get("started_at", entered)
    startup_s = time.time() - started_at
    if rank == 0:
        print(f"[alphasweep] {objective.name}: {len(train_rows)} rows ({data.stats}), {world} worker(s), "
              f"{micro}x{accum} per worker, steps {step}->{tc.steps}; start-up {startup_s:.1f} s (workers up "
              f"{entered - started_at:.1f}, model {loaded - entered:.1f}, data {tokenized - loaded:.1f})", flush=True)

    window = {"loss": 0.0, "selected_share": 0.0, "mean_p": 0.0, "tokens": 0.0, "n": 0, "t0": time.perf_counter()}
    model.train()
    history = []
    while step < tc.steps:
        rows = next(batches)
        for k in range(accum):
            with grad_sync(model, sync=k == accum - 1):
                loss, stats = _forward_loss(model, collate(rows[k * micro : (k + 1) * micro], tokenizer.pad_token_id),
                                            objective, device, autocast)
                (loss / accum).backward()
            window["loss"] += float(loss.detach()) / accum
            window["selected_share"] += float(stats["selected_share"]) / accum
            window["mean_p"] += float(stats["mean_p"]) / accum
            window["tokens"] += float(stats["tokens"])
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, the norm over every shard
            grad_norm = grad_norm.full_tensor()
        if torch.isfinite(grad_norm):
            optimizer.step()
        else:
            counters["skipped_steps"] += 1
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        window["n"] += 1

        final = step == tc.steps
        if step % tc.report_every == 0 or final or step % tc.eval_every == 0:
            elapsed = time.perf_counter() - window["t0"]
            n = window["n"]
            metrics = {
                "step": step,
                "loss": window["loss"] / n,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": _all_reduce_sum([window["tokens"]], device)[0] / max(elapsed, 1e-9),
                "selected_share": window["selected_share"] / n,
                "mean_p": window["mean_p"] / n,
                **counters,
            }
            if not history and not resume_dir:  # a resumed attempt's start is not the run's
                metrics["startup_s"] = startup_s
            if step % tc.eval_every == 0 or final:
                if data.heldout:
                    metrics["heldout_nll"] = heldout_nll(model, data.heldout, tokenizer.pad_token_id, micro,
                                                         device, autocast, rank, world)
                if signal:
                    metrics["signal_score"] = signal(model, tokenizer, step)
            window = {**{k: 0.0 for k in window}, "n": 0, "t0": time.perf_counter()}
            save = final or (tc.checkpoint_every and step % tc.checkpoint_every == 0)
            if save:
                with tempfile.TemporaryDirectory(prefix="alphasweep-ckpt-") as tmp:
                    save_checkpoint(Path(tmp), model, tokenizer, optimizer, scheduler, step, counters, rank)
                    ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
                    ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:06d}")
            else:
                ray.train.report(metrics)
            history.append(metrics)
    return history
