"""Each private Ray / Optuna API alphasweep uses (alphasweep.compat), against the installed versions.

A failure here means an upgrade moved an internal that compat.py reaches into: fix that shim (and the
versions it names), not the code that calls it.
"""

from __future__ import annotations

import optuna
import ray
import ray.train
from ray.job_submission import JobSubmissionClient
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks import DatasetsCallback
from ray.tune.search.optuna import OptunaSearch

from alphasweep import compat
from alphasweep.workers.trainer import TorchTrainer as LeanTorchTrainer


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("x", 0, 1)


def test_optuna_search_exposes_its_study_and_live_trials(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = OptunaSearch(_space, metric="score", mode="max", study_name="s",
                            storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.suggest("a")
    study, live = compat.searcher_study(searcher), compat.searcher_trials(searcher)
    assert isinstance(study, optuna.Study) and study.study_name == "s"
    assert isinstance(live["a"], optuna.Trial) and live["a"].number == 0
    forgotten = live.pop("a")  # a popped trial is forgotten: the searcher asks the study afresh
    study.tell(forgotten, state=optuna.trial.TrialState.FAIL)
    searcher.suggest("a")
    assert compat.searcher_trials(searcher)["a"].number == 1


def _default_callbacks(trainer_cls, **kwargs) -> list[str]:
    trainer = trainer_cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1), **kwargs)
    return [type(c) for c in trainer._create_default_callbacks()]


def test_ray_data_callback_is_left_out_of_runs_without_datasets(ray_local):
    """`ray.data.range` starts Ray if none runs: take the session's instance, never a second one without
    the resources the sweeps need."""
    assert DatasetsCallback in _default_callbacks(TorchTrainer)  # what Ray starts by default
    lean = _default_callbacks(LeanTorchTrainer)
    assert DatasetsCallback not in lean and len(lean) == len(_default_callbacks(TorchTrainer)) - 1
    assert DatasetsCallback in _default_callbacks(LeanTorchTrainer, datasets={"train": ray.data.range(2)})


def test_jobs_client_knows_the_cluster_ray_version(ray_local):
    client = JobSubmissionClient(ray.get_runtime_context().gcs_address)  # finds the dashboard through the GCS
    assert compat.server_ray_version(client) == ray.__version__
