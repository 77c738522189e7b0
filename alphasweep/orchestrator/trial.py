"""One Tune trial: fine-tune with the proposed objective, then score the final checkpoint.

`run_trial` is the Tune function trainable. How it trains depends on `train.runner` (`TrainConfig.runs_in_trial`):
- in the trial itself (one worker, the default for `workers: 1`): the trial holds the worker's CPUs/GPUs and
  runs the loop; reports and checkpoints go through Tune, and Tune's `FailureConfig` restarts a failed trial
  from its latest checkpoint (`train.max_failures` times);
- through Ray Train (several workers, DDP / FSDP): the trial starts a `TorchTrainer` run whose workers hold
  the CPUs/GPUs, so the trial itself takes only a custom `TRAIN_DRIVER` resource (no CPU); Ray Train
  retries its own workers, so Tune does not restart the trial.
Either way the evaluator pool's actors hold their own CPUs/GPUs (docs/upstream.md says what each relies on).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from alphasweep.config import BenchmarkSpec, DataSpec, EvalConfig, TrainConfig
from alphasweep.stats import Outcomes


@dataclass(frozen=True)
class PairJob:
    """What every trial of one (model, domain) pair shares."""

    model: str
    domain: str
    model_path: str
    data: DataSpec
    benchmarks: list[BenchmarkSpec]
    train: TrainConfig
    eval: EvalConfig
    storage_path: str
    signal_limit: int | None = None  # score this many items per benchmark during training (ASHA's signal)

    @property
    def slug(self) -> str:
        return f"{self.model}--{self.domain}".replace("/", "_")


def trainable(job: PairJob):
    """`run_trial` bound to the pair, asking for the resources its trials hold."""
    train = job.train
    if train.runs_in_trial:
        resources = {"CPU": train.cpus_per_worker, **({"GPU": train.gpus_per_worker} if train.gpus_per_worker else {})}
    else:
        resources = {"TRAIN_DRIVER": 1}
    return tune.with_resources(tune.with_parameters(run_trial, job=job), resources)


def failure_config(job: PairJob) -> tune.FailureConfig:
    """Tune retries a trial that trains in itself; a Ray Train run retries its own workers."""
    return tune.FailureConfig(max_failures=job.train.max_failures if job.train.runs_in_trial else 0)


def reuse_actors(job: PairJob) -> bool:
    """A trial that trains in itself hands its process (Ray, torch and transformers imported, on a GPU the CUDA
    context) to the pair's next trial. A trial that runs Ray Train does not: killing its actor is what ends
    the Train run of a trial that ASHA stops."""
    return job.train.runs_in_trial


def run_trial(config: dict, job: PairJob) -> None:
    started_at = time.time()  # the trial's start-up overhead (`startup_s`) counts from here, imports included
    from alphasweep.evaluation.actor import evaluate_on_pool, get_evaluator_pool
    from alphasweep.orchestrator.space import objective_of
    from alphasweep.workers.setup import TrainJob
    from alphasweep.workers.signals import SignalSpec
    from alphasweep.workers.trainer import build_trainer, final_checkpoint_path, train_in_trial

    updates = {key: config[key] for key in ("learning_rate", "seed") if config.get(key) is not None}
    train_job = TrainJob(
        model_path=job.model_path, objective=objective_of(config), data=job.data,
        train=job.train.model_copy(update=updates),
        signal=SignalSpec(tuple(job.benchmarks), job.signal_limit, job.eval) if job.signal_limit else None,
        started_at=started_at,
    )
    if job.train.runs_in_trial:
        checkpoint = train_in_trial(train_job)
    else:
        name = f"{job.slug}-{config.get('stage', 'search')}{config['optuna_trial']:04d}"
        trainer = build_trainer(train_job, storage_path=job.storage_path, name=name, callbacks=[TuneReportCallback()])
        checkpoint = final_checkpoint_path(trainer.fit())
    scores = evaluate_on_pool(get_evaluator_pool(job.eval), checkpoint, job.benchmarks, limit=job.eval.limit)
    if "error" in scores:
        raise RuntimeError(f"evaluation of {checkpoint} failed: {scores['error']}")
    tune.report({
        "score": scores["mean_score"],
        **{f"score/{name}": s for name, s in scores["scores"].items()},  # the metric each benchmark names
        **{f"{name}/{metric}": v for name, values in scores["metrics"].items() if len(values) > 1
           for metric, v in values.items()},
        "eval_seconds": scores["seconds"],
        "eval_replica": scores["replica"],  # which of the pool's evaluators scored it
        "checkpoint_path": checkpoint,
        "samples": scores["records"][: job.eval.samples_logged],
        "items": json.dumps(Outcomes.from_records(scores["records"], scores["k"]).to_json()),  # for the report
    })
