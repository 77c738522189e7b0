"""The training loop: fine-tune a causal LM with one SFT objective. One loop for every way it is run.

A plain loop in the nanoGPT spirit: AdamW, cosine schedule with warm-up, gradient accumulation, grad-norm
clipping, non-finite steps skipped and counted, bf16 autocast on GPU; DDP or FSDP2 when there are several
workers (`setup.parallelize`). The objective is applied by the objective loss on every path. What runs the
loop (a Tune trial, or Ray Train workers) is behind `session`: rank, device, reports, checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from alphasweep.data import Example, collate
from alphasweep.objectives import objective_loss_with_stats, parse_objective
from alphasweep.workers.checkpoints import save_checkpoint
from alphasweep.workers.session import Session
from alphasweep.workers.setup import TrainJob, setup

NLL = parse_objective("original")


def train(job: TrainJob, session: Session) -> list[dict]:
    """Run `job` from where its latest checkpoint left it; returns the metrics of every report of this attempt."""
    run = setup(job, session)
    tc, model = job.train, run.model
    pad_id = run.tokenizer.pad_token_id
    history: list[dict] = []
    window = Window()
    model.train()
    while run.step < run.total_steps:
        rows = next(run.batches)
        micro_batches = [collate(rows[k * run.micro : (k + 1) * run.micro], pad_id) for k in range(run.accum)]
        step_stats = forward_backward(model, micro_batches, job.objective, tc.loss_normalization, session.device,
                                      run.autocast, session.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, the norm over every shard
            grad_norm = grad_norm.full_tensor()
        if torch.isfinite(grad_norm):
            run.optimizer.step()
        else:
            run.counters["skipped_steps"] += 1
        run.optimizer.zero_grad(set_to_none=True)
        run.scheduler.step()
        run.step += 1
        window.add(step_stats)

        step, final = run.step, run.step == run.total_steps
        evaluate = step % tc.eval_every == 0 or final
        if not (step % tc.report_every == 0 or evaluate):
            continue
        metrics = {"step": step, **window.metrics(session.device), "lr": run.scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), **run.counters}
        if not history and not run.resumed:  # a resumed attempt's start is not the run's
            metrics["startup_s"] = run.startup_s
        if evaluate and run.heldout:
            metrics["heldout_nll"] = heldout_nll(model, run.heldout, pad_id, run.micro, session, run.autocast)
        if evaluate and run.signal:
            metrics["signal_score"] = run.signal(model, run.tokenizer, step)
        window = Window()
        if final or (tc.checkpoint_every and step % tc.checkpoint_every == 0):
            with tempfile.TemporaryDirectory(prefix="alphasweep-ckpt-") as tmp:
                save_checkpoint(Path(tmp), model, run.tokenizer, run.optimizer, run.scheduler, step, run.counters,
                                session.rank)
                session.report(metrics, checkpoint_dir=Path(tmp))
        else:
            session.report(metrics)
        history.append(metrics)
    return history


def forward_backward(model, micro_batches: list[dict], objective, normalization: str, device, autocast,
                     world: int) -> dict[str, float]:
    """Forward and backward of one optimizer step's micro-batches on this worker; the gradients are reduced
    across workers on the last one. Returns this step's loss (as normalised) and statistics.

    per_micro_batch: each micro-batch's mean over its selected tokens, averaged over micro-batches here and
    over workers by DDP / FSDP. global_tokens: the sum over the selected tokens of the whole global batch,
    divided by their number; that number is known only after every forward (a cut selects by p), so each
    micro-batch backpropagates its sum and the reduced gradient (a mean over workers) is scaled by
    workers / selected tokens afterwards."""
    accum = len(micro_batches)
    summed = normalization == "global_tokens"
    loss_total, selected, stats_total = 0.0, 0.0, {"selected_share": 0.0, "mean_p": 0.0, "tokens": 0.0}
    for k, batch in enumerate(micro_batches):
        with grad_sync(model, sync=k == accum - 1):
            loss, stats = forward_loss(model, batch, objective, device, autocast, reduction="sum" if summed else "mean")
            (loss if summed else loss / accum).backward()
        loss_total += float(loss.detach()) if summed else float(loss.detach()) / accum
        selected += stats["selected"]
        stats_total["selected_share"] += stats["selected_share"] / accum
        stats_total["mean_p"] += stats["mean_p"] / accum
        stats_total["tokens"] += stats["tokens"]
    if summed:
        loss_total, selected = all_reduce_sum([loss_total, selected], device)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(world / max(selected, 1.0))
        loss_total /= max(selected, 1.0)
    return {"loss": loss_total, **stats_total}


def forward_loss(model, batch: dict, objective, device, autocast, reduction: str = "mean"):
    batch = {k: v.to(device) for k, v in batch.items()}
    with autocast:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return objective_loss_with_stats(logits, batch["labels"], batch["loss_mask"], objective, reduction=reduction)


def grad_sync(model, sync: bool):
    """Skip the gradient reduction on accumulation micro-steps (DDP `no_sync`, FSDP2 `set_requires_gradient_sync`)."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    elif not sync and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


class Window:
    """Training statistics since the last report: means per step, tokens/s over every worker."""

    def __init__(self) -> None:
        self.steps, self.tokens, self.started = 0, 0.0, time.perf_counter()
        self.sums = {"loss": 0.0, "selected_share": 0.0, "mean_p": 0.0}

    def add(self, step_stats: dict[str, float]) -> None:
        self.steps += 1
        self.tokens += step_stats["tokens"]
        for key in self.sums:
            self.sums[key] += step_stats[key]

    def metrics(self, device) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        tokens = all_reduce_sum([self.tokens], device)[0]
        return {**{k: v / self.steps for k, v in self.sums.items()}, "tokens_per_s": tokens / max(elapsed, 1e-9)}


@torch.no_grad()
def heldout_nll(model, examples: list[Example], pad_id: int, batch_size: int, session: Session, autocast) -> float:
    """Mean -log p of held-out completion tokens: a yardstick common to every objective.

    Every rank runs the same number of forwards (FSDP gathers weights in each); a rank whose shard ran
    out forwards one example and does not count it."""
    model.eval()
    total, tokens = 0.0, 0.0
    shard = examples[session.rank :: session.world]
    for i in range(0, math.ceil(len(examples) / session.world), batch_size):
        rows = shard[i : i + batch_size]
        loss, stats = forward_loss(model, collate(rows or examples[:1], pad_id), NLL, session.device, autocast)
        if rows:
            n = float(stats["tokens"])
            total, tokens = total + float(loss) * n, tokens + n
    model.train()
    total, tokens = all_reduce_sum([total, tokens], session.device)
    return total / max(tokens, 1.0)
