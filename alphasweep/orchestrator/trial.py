"""One Tune trial: fine-tune with the proposed objective (a Ray Train run), then score the checkpoint.

This function is the Tune trainable ("train driver"): it takes a custom `TRAIN_DRIVER` resource and no
CPU; the Train workers and the evaluator actor hold the real CPUs/GPUs (docs/upstream.md).
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

    def signal_spec(self) -> dict | None:
        if self.signal_limit is None:
            return None
        return {"benchmarks": [b.model_dump(mode="json") for b in self.benchmarks], "limit": self.signal_limit,
                "eval": self.eval.model_dump(mode="json")}

    @property
    def slug(self) -> str:
        return f"{self.model}--{self.domain}".replace("/", "_")


def run_trial(config: dict, job: PairJob) -> None:
    started_at = time.time()  # the trial's start-up overhead (`startup_s`) counts from here
    from alphasweep.evaluation.actor import evaluate_on_pool, get_evaluator_pool
    from alphasweep.orchestrator.space import objective_of
    from alphasweep.workers.trainer import build_trainer, final_checkpoint_path

    objective = objective_of(config)
    train = job.train.model_copy(update={"seed": config["seed"]}) if "seed" in config else job.train
    trainer = build_trainer(
        model_path=job.model_path, data=job.data, train=train, objective=objective.name,
        storage_path=job.storage_path, name=f"{job.slug}-{config.get('stage', 'search')}{config['optuna_trial']:04d}",
        learning_rate=config.get("learning_rate"), callbacks=[TuneReportCallback()], started_at=started_at,
        signal=job.signal_spec(),
    )
    checkpoint = final_checkpoint_path(trainer.fit())
    scores = evaluate_on_pool(get_evaluator_pool(job.eval), checkpoint, job.benchmarks, limit=job.eval.limit)
    if "error" in scores:
        raise RuntimeError(f"evaluation of {checkpoint} failed: {scores['error']}")
    tune.report({
        "score": scores["mean_score"],
        **{f"score/{name}": s for name, s in scores["scores"].items()},
        "eval_seconds": scores["seconds"],
        "eval_replica": scores["replica"],  # which of the pool's evaluators scored it
        "checkpoint_path": checkpoint,
        "samples": scores["records"][: job.eval.samples_logged],
        "items": json.dumps(Outcomes.from_records(scores["records"], scores["k"]).to_json()),  # for the report
    })
