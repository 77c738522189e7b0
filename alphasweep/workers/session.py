"""The seam between the training loop and what runs it: rank, device, reports and checkpoints.

The loop (`workers/loop.py`) is one piece of code. A one-worker sweep trial runs it inside the Tune trial
itself (`TuneTrialSession`: reports and checkpoints through `ray.tune`, retries through Tune's
`FailureConfig`, which restores the latest reported checkpoint); several workers (DDP, FSDP) run it in
Ray Train workers (`RayTrainSession`: `ray.train`, a process group set up by Ray Train, retries by Ray
Train). The loop sees only this interface, so both paths share every line of training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import ray.train
import ray.train.torch
import ray.tune
import torch


class Session(Protocol):
    rank: int  # this worker's rank among `world` workers; rank 0 writes checkpoints and its reports count
    world: int
    device: torch.device

    def latest_checkpoint(self) -> ray.train.Checkpoint | None:
        """The checkpoint to resume from (a retried run), or None for a fresh start."""

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        """Hand metrics (and, on every rank at once, a checkpoint written to `checkpoint_dir`) to Ray."""


class RayTrainSession:
    """Inside a Ray Train worker: Ray Train started the process group; reports go to its controller."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def latest_checkpoint(self) -> ray.train.Checkpoint | None:
        return ray.train.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        if checkpoint_dir is None:
            ray.train.report(metrics)
            return
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if self.rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{metrics['step']:06d}")


class TuneTrialSession:
    """Inside a Tune function trial that holds the worker's CPUs/GPUs itself: one worker, no process group.

    `ray.tune.report` persists a checkpoint to the trial's storage and makes it what `ray.tune.get_checkpoint()`
    returns, both in this attempt (the final checkpoint to evaluate) and in a retried one (where to resume)."""

    rank, world = 0, 1

    def __init__(self, use_gpu: bool) -> None:
        # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU, so it is device 0 here.
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")

    def latest_checkpoint(self) -> ray.tune.Checkpoint | None:
        return ray.tune.get_checkpoint()

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)
