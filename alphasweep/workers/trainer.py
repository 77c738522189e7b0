"""Build the Ray Train `TorchTrainer` for one fine-tune: the same object for `alphasweep train` and sweeps."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import ray.train
import ray.train.torch
from ray.train.torch import TorchConfig

from alphasweep import compat
from alphasweep.config import DataSpec, TrainConfig
from alphasweep.workers.loop import train_loop_per_worker

# Ray Train settings that Train V2 passes from the process calling `fit` to its controller and workers.
# The controller polls its workers every 2 s by default, and a worker's `ray.train.report` waits until the
# controller has taken the previous report (a queue of one): a worker that reported every 1.5 s ran at
# 0.47x a plain loop, and a short fine-tune spent ~5 s between its last step and `fit` returning.
# The preemption watcher (an extra actor process per run, for spot-node observability) costs ~0.5 s of
# start-up. Set either variable to override.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class TorchTrainer(compat.WithoutRayDataCallback, ray.train.torch.TorchTrainer):
    """Ray's `TorchTrainer` without its Ray Data callback when the run has no `datasets` (ours never has: the
    loop reads its own files). That callback starts a `DatasetManager` actor for every run, one more process
    importing Ray Data (~1.3 s of CPU) while the run starts; on a small node that slows the other trials."""


def build_trainer(
    *,
    model_path: str,
    data: DataSpec,
    train: TrainConfig,
    objective: str,
    storage_path: str,
    name: str,
    learning_rate: float | None = None,
    callbacks: Sequence = (),
    started_at: float | None = None,
    signal: dict | None = None,
) -> TorchTrainer:
    """A trainer whose run `name` is deterministic, so a restarted run finds its own checkpoints.
    `started_at` (default: now) is when the run was asked for; the first report's `startup_s` counts from it.
    `signal` ({benchmarks, limit, eval}): score a benchmark subset every `eval_every` steps (`signal_score`)."""
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    use_gpu = train.gpus_per_worker > 0
    resources = {"CPU": train.cpus_per_worker, **({"GPU": train.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model_path": model_path,
            "objective": objective,
            "data": data.model_dump(),
            "train": train.model_dump(),
            "learning_rate": learning_rate,
            "started_at": started_at or time.time(),
            "signal": signal,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train.workers, use_gpu=use_gpu, resources_per_worker=resources if train.workers else None
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )


def final_checkpoint_path(result) -> str:
    """The directory of the last checkpoint of a finished fit, as a path evaluation can load."""
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint: {result.error or 'no error recorded'}")
    return result.checkpoint.path
