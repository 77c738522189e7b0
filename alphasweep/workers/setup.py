"""Everything the training loop needs, built from one typed job: model, optimiser, schedule, data.

Like a torchtune recipe's `setup`: `loop.train` calls `setup` once and then reads top to bottom as a
plain step loop. A run resumed from a checkpoint gets its model, optimiser, schedule, RNG and position in
the data order back here, so the loop itself never knows whether it was restarted.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from alphasweep.config import DataSpec, TrainConfig
from alphasweep.data import Example, load_sft_data, pack
from alphasweep.objectives import Objective
from alphasweep.tokenizer import load_tokenizer
from alphasweep.workers.checkpoints import load_trainer_state
from alphasweep.workers.session import Session
from alphasweep.workers.signals import BenchmarkSignal, SignalSpec


@dataclass(frozen=True)
class TrainJob:
    """One fine-tune: the base model, the objective, the data and the training settings (with the trial's
    learning rate already in `train`)."""

    model_path: str
    objective: Objective
    data: DataSpec
    train: TrainConfig
    signal: SignalSpec | None = None
    started_at: float = field(default_factory=time.time)  # when the run was asked for: `startup_s` counts from it


@dataclass
class Training:
    """What `setup` hands the loop."""

    model: torch.nn.Module  # on the device, wrapped for DDP / FSDP when there are several workers
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Iterator[list[Example]]  # this worker's rows of each optimizer step, from where the run stands
    heldout: list[Example]
    micro: int  # sequences per forward/backward
    accum: int  # micro-batches per optimizer step
    total_steps: int
    step: int  # steps already done (> 0 when resumed)
    counters: dict[str, int]  # skipped_steps, resumes: carried across restarts in the checkpoint
    resumed: bool
    autocast: contextlib.AbstractContextManager
    signal: BenchmarkSignal | None  # the benchmark signal, when the job asks for it
    startup_s: float  # from `job.started_at` to now, the moment before the first step


def setup(job: TrainJob, session: Session) -> Training:
    entered = time.time()
    tc = job.train
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    if tc.workers:  # as many torch threads as CPUs the worker holds; local mode keeps the caller's setting
        torch.set_num_threads(max(1, int(tc.cpus_per_worker)))

    checkpoint = session.latest_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as resume_dir:
        source = resume_dir or job.model_path
        tokenizer = load_tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        loaded = time.time()
        data = load_sft_data(job.data, tokenizer, tc.max_length, seed=tc.seed)
        tokenized = time.time()
        rows = pack(data.train, tc.max_length) if tc.packing else data.train
        total_steps = tc.total_steps(len(rows))
        model = parallelize(model, tc.strategy, session.world, session.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay,
                                      betas=(0.9, 0.95))
        scheduler = cosine_with_warmup(optimizer, tc.warmup_for(total_steps), total_steps, tc.min_lr_ratio)
        step, counters = 0, {"skipped_steps": 0, "resumes": 0}
        if resume_dir:
            step, counters = load_trainer_state(Path(resume_dir), model, optimizer, scheduler)
            counters["resumes"] += 1

    micro, accum = tc.per_worker
    batches = worker_batches(rows, micro * accum, tc.seed, session.rank, session.world)
    for _ in range(step):  # a resumed run sees the same data order as an uninterrupted one
        next(batches)
    use_bf16 = tc.bf16 and session.device.type == "cuda"
    signal = BenchmarkSignal(job.signal) if job.signal else None
    startup_s = time.time() - job.started_at
    if session.rank == 0:
        print(f"[alphasweep] {job.objective.name}: {len(rows)} rows ({data.stats}), {session.world} worker(s), "
              f"{micro}x{accum} per worker, steps {step}->{total_steps}; start-up {startup_s:.1f} s (until setup "
              f"{entered - job.started_at:.1f}, model {loaded - entered:.1f}, data {tokenized - loaded:.1f})",
              flush=True)
    return Training(
        model=model, tokenizer=tokenizer, optimizer=optimizer, scheduler=scheduler, batches=batches,
        heldout=data.heldout, micro=micro, accum=accum, total_steps=total_steps, step=step, counters=counters,
        resumed=bool(resume_dir), startup_s=startup_s, signal=signal,
        autocast=torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext(),
    )


def parallelize(model: torch.nn.Module, strategy: str, world: int, device: torch.device) -> torch.nn.Module:
    """The model on `device`; with several workers wrapped in torch's DDP, or sharded with FSDP2: `fully_shard`
    on every block the HF model names unsplittable, then the root (Ray's own FSDP wrapper needs GPUs).
    FSDP shards over any process group, a single Ray Train worker's too, so one GPU runs the code path of
    many; a run inside a Tune trial has no process group and trains the plain model."""
    if device.type == "cuda":  # DDP's device_ids and fully_shard's default device mesh use the current device
        torch.cuda.set_device(device)
    model.to(device)
    sharded = strategy == "fsdp" and dist.is_available() and dist.is_initialized()
    if not sharded:
        if world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules())[1:]:
        if type(module).__name__ in blocks:
            fully_shard(module)
    return fully_shard(model)


def cosine_with_warmup(optimizer, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def worker_batches(examples: list[Example], per_worker: int, seed: int, rank: int, world: int):
    """Endless per-rank batches; each epoch is a fresh permutation seeded by (seed, epoch)."""
    epoch = 0
    while True:
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        order = order[: len(order) // world * world][rank::world].tolist() or order.tolist()
        for i in range(0, len(order) - per_worker + 1, per_worker):
            yield [examples[j] for j in order[i : i + per_worker]]
        epoch += 1
