"""The two ways a fine-tune runs on Ray, both around the one loop (`loop.train`):

- `train_in_trial`: inside a Tune function trial, one worker, no Ray Train processes. The trial holds the
  worker's CPUs/GPUs, reports and checkpoints go through `ray.tune`, and Tune's `FailureConfig` retries a
  failed trial from its latest checkpoint.
- `build_trainer`: a Ray Train `TorchTrainer` (any number of workers, DDP or FSDP), for `alphasweep train`
  and for sweep trials with several workers (reported to Tune through `TuneReportCallback`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ray.train
import ray.train.torch
import ray.tune
from ray.train.torch import TorchConfig

from alphasweep import compat
from alphasweep.workers.loop import train
from alphasweep.workers.session import RayTrainSession, TuneTrialSession
from alphasweep.workers.setup import TrainJob

# Ray Train settings that Train V2 passes from the process calling `fit` to its controller and workers.
# The controller polls its workers every 2 s by default, and a worker's `ray.train.report` waits until the
# controller has taken the previous report (a queue of one): a worker that reported every 1.5 s ran at
# 0.47x a plain loop, and a short fine-tune spent ~5 s between its last step and `fit` returning.
# The preemption watcher (an extra actor process per run, for spot-node observability) costs ~0.5 s of
# start-up. Set either variable to override.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


def train_in_trial(job: TrainJob) -> str:
    """Run `job` in the calling Tune trial (resumed from the trial's latest checkpoint on a retry); returns the
    path of the final checkpoint, as Tune persisted it in the trial's storage."""
    train(job, TuneTrialSession(use_gpu=job.train.gpus_per_worker > 0))
    return ray.tune.get_checkpoint().path


def train_loop_per_worker(config: dict) -> list[dict]:
    """Ray Train entry point: `config["job"]` is the `TrainJob`. Rank 0's list of reported metrics becomes
    `Result.return_value`."""
    return train(config["job"], RayTrainSession())


class TorchTrainer(compat.WithoutRayDataCallback, ray.train.torch.TorchTrainer):
    """Ray's `TorchTrainer` without its Ray Data callback when the run has no `datasets` (ours never has: the
    loop reads its own files). That callback starts a `DatasetManager` actor for every run, one more process
    importing Ray Data (~1.3 s of CPU) while the run starts; on a small node that slows the other trials."""


def build_trainer(job: TrainJob, *, storage_path: str, name: str, callbacks: Sequence = ()) -> TorchTrainer:
    """A trainer whose run `name` is deterministic, so a restarted run finds its own checkpoints."""
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    train = job.train
    use_gpu = train.gpus_per_worker > 0
    resources = {"CPU": train.cpus_per_worker, **({"GPU": train.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
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
