"""The sweep driver: for each (model, domain) pair, probe, then search objectives with Tune + Optuna.

Resume and extend work the same way: the Optuna study in its RDB storage is the record of a sweep. A new
Tuner continues the study; trials a dead driver left RUNNING (or enqueued and never started) are marked
FAIL and retried; the Tuner runs only the trials the budget still lacks. Tune's own experiment restore is
never used (after a hard kill it breaks on an RDB-backed study, and it cannot extend a finished
experiment; docs/upstream.md).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import ray
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from alphasweep.config import ConfigError, SweepConfig
from alphasweep.evaluation.actor import get_evaluator_pool
from alphasweep.objectives import parse_objective
from alphasweep.orchestrator import tracking
from alphasweep.orchestrator.repeats import RepeatSearch, missing_confirmations, missing_seeds, pending
from alphasweep.orchestrator.results import (
    FINISHED,
    alpha_points,
    finished_trials,
    load_study,
    objective_name,
    pair_summary,
    repeats_study_name,
    study_name,
)
from alphasweep.orchestrator.space import PairSearch, SearchSpace, objective_of, search_sampler, warm_points
from alphasweep.orchestrator.trial import PairJob, run_trial
from alphasweep.plots import plot_score_vs_alpha, plot_weights
from alphasweep.probe import probe_capability
from alphasweep.rows import load_rows

SEARCH_METRIC = "score"
SIGNALS = {"heldout_nll": ("heldout_nll", "min"), "benchmark": ("signal_score", "max")}  # ASHA's metric, mode


def fail_stale_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    """Trials a killed driver left RUNNING, and enqueued points it never started (WAITING), become FAIL, so
    they are retried, not lost. Only called before the sweep's one driver starts its Tuner, so every such
    trial is stale (Optuna's heartbeat-based `fail_stale_trials` does not fit: docs/upstream.md)."""
    study = load_study(storage, name)
    if study is None:
        return 0
    study_id = storage.get_study_id_from_name(name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for t in stale:
        storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                       TrialState.FAIL)
    return len(stale)


def _probe(job: PairJob):
    remote = ray.remote(num_cpus=1, num_gpus=min(job.train.gpus_per_worker, 1))(probe_capability)
    return ray.get(remote.remote(job.model_path, job.data, max_length=job.train.max_length, seed=job.train.seed))


@dataclass
class PairRun:
    """One pair's part of a sweep: probe once, search the objectives the budget still lacks, summarise.

    `storage` (Optuna) and the MLflow `client` / `exp_id` are shared by every pair of the sweep."""

    cfg: SweepConfig
    job: PairJob
    storage: optuna.storages.BaseStorage
    client: MlflowClient
    exp_id: str
    log: Callable[[str], None] = print

    @property
    def name(self) -> str:
        return study_name(self.job.model, self.job.domain)

    def run(self, budget: int) -> dict:
        """Run the trials the pair still needs to reach `budget`, then its repeats (other seeds, the
        confirmation stage); returns the pair's summary."""
        name, client, repeats_name = self.name, self.client, repeats_study_name(self.name)
        stale = fail_stale_trials(self.storage, name) + fail_stale_trials(self.storage, repeats_name)
        remaining = budget - len(finished_trials(self.storage, name))
        self.log(f"[{name}] {budget - remaining}/{budget} trials done"
                 + (f", {stale} interrupted trial(s) marked failed" if stale else ""))
        parent = tracking.open_parent_run(client, self.exp_id, self.job.model, self.job.domain)
        study = optuna.create_study(study_name=name, storage=self.storage, direction="maximize", load_if_exists=True)
        probe = self._probe_once(study, parent)
        self.log(f"[{name}] probe: mean p {probe['probe_mean_p']:.3f} -> {probe['continuum']}")
        if remaining > 0:
            self._search(study, parent, self._warm_points(study, probe)[:remaining], remaining)
        repeats = load_study(self.storage, repeats_name)
        for stage in (missing_seeds, missing_confirmations):  # the confirmation ranks what the seeds stage added
            todo = stage(self.cfg, study, repeats)
            if todo:
                repeats = optuna.create_study(study_name=repeats_name, storage=self.storage, direction="maximize",
                                              load_if_exists=True)
                self.log(f"[{name}] {todo[0].stage} stage: {len(todo)} run(s): "
                         + ", ".join(f"{r.candidate.objective} seed {r.seed}" for r in todo))
                self._tune(RepeatSearch(repeats, todo, self._constants()), FIFOScheduler(), len(todo), parent)
        summary = pair_summary(study, self.job.model, self.job.domain, repeats)  # read back from storage
        self.log(f"[{name}] {summary['verdict']}")
        if summary["best_objective"]:
            tracking.log_summary(client, parent, summary)
            points = alpha_points(study, repeats)
            tracking.log_png(client, parent, lambda p: plot_score_vs_alpha({name: points}, p), "score_vs_alpha.png")
            tracking.log_png(client, parent,
                             lambda p: plot_weights([parse_objective(o) for o in summary["scores"]], p), "weights.png")
        tracking.close_parent_run(client, parent)
        return summary

    def _probe_once(self, study: optuna.Study, parent: str) -> dict:
        """The probe's figures, measured on the first run and kept in the study for every later one."""
        if "probe" not in study.user_attrs:
            self.log(f"[{self.name}] probing the base model on {self.job.data.path}")
            result = _probe(self.job)
            study.set_user_attr("probe", {**result.metrics(), "continuum": result.continuum,
                                          "suggestions": result.suggestions})
            for k, v in result.metrics().items():
                self.client.log_metric(parent, k, v)
            self.client.set_tag(parent, "continuum", result.continuum)
        return study.user_attrs["probe"]

    def _warm_points(self, study: optuna.Study, probe: dict) -> list[dict]:
        tried = {objective_name(t) for t in study.get_trials(deepcopy=False, states=FINISHED)}
        return warm_points(self.cfg.search, probe["suggestions"], tried)

    def _constants(self) -> dict:
        return {"train_learning_rate": self.job.train.learning_rate}

    def _search(self, study: optuna.Study, parent: str, points: list[dict], remaining: int) -> None:
        cfg, job, name = self.cfg, self.job, self.name
        searcher = PairSearch(
            SearchSpace(cfg.search), metric=SEARCH_METRIC, mode="max", points_to_evaluate=points or None,
            # a seed per pair and per resume, so pairs and continued sweeps draw different proposals
            sampler=search_sampler(cfg.search.seed + len(study.trials) + zlib.crc32(name.encode())),
            study_name=name, storage=self.storage,
            constants={**self._constants(), "seed": cfg.sweep_seeds()[0], "stage": "search"},
        )
        if cfg.scheduler.kind == "asha":
            metric, mode = SIGNALS[cfg.scheduler.signal]
            # max_t one past the last step: ASHA stops any trial whose step reaches max_t, and a trial that
            # trained to the end must still be evaluated and report its score
            scheduler = ASHAScheduler(time_attr="step", metric=metric, mode=mode, max_t=job.train.steps + 1,
                                      grace_period=cfg.scheduler.grace_steps,
                                      reduction_factor=cfg.scheduler.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        self.log(f"[{name}] running {remaining} trial(s), {cfg.budget.max_concurrent} at a time"
                 + (f"; first: {', '.join(_trial_objective(p) for p in points)}" if points else ""))
        self._tune(searcher, scheduler, remaining, parent)

    def _tune(self, searcher, scheduler, num_samples: int, parent: str) -> None:
        """One Tuner over `num_samples` trials that `searcher` proposes, mirrored into MLflow."""
        cfg, job = self.cfg, self.job
        config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        trainable = tune.with_resources(tune.with_parameters(run_trial, job=job), {"TRAIN_DRIVER": 1})
        # No actor reuse: killing the trial's actor is what ends the Train run of a trial that ASHA stops.
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=cfg.budget.max_concurrent, reuse_actors=False),
            run_config=tune.RunConfig(
                name=f"{job.slug}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=cfg.checkpoint_root(), verbose=0,
                callbacks=[tracking.TrialTracker(self.client, self.exp_id, parent, job.model, job.domain, config_yaml),
                           TrialPrinter(self.name, self.log)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()


def _trial_objective(config: dict) -> str:
    return objective_of(config).name


class TrialPrinter(tune.Callback):
    """One progress line per trial event, instead of Tune's wide tables."""

    def __init__(self, pair: str, log):
        self.pair, self.log = pair, log

    def on_trial_start(self, iteration, trials, trial, **info):
        self.log(f"[{self.pair}] {_label(trial.config)}: training")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        what = f"score {r['score']:.3f}" if "score" in r else f"stopped early at step {r.get('step', '?')}"
        self.log(f"[{self.pair}] {_label(trial.config)}: {what}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"[{self.pair}] {_label(trial.config)}: FAILED ({trial.error_file or 'see the Ray logs'})")


def _label(config: dict) -> str:
    """`trial #3 p` for a search trial, `confirm #1 p seed 2` for a repeat (numbered in the repeats study)."""
    stage, name = config.get("stage", "search"), _trial_objective(config)
    if stage == "search":
        return f"trial #{config['optuna_trial']} {name}"
    return f"{stage} #{config['optuna_trial']} {name} seed {config['seed']}"


def run_sweep(cfg: SweepConfig, *, resume: bool = False, extend: int = 0, log=print) -> list[dict]:
    """Every pair of the config, one after another; returns the per-pair summaries.

    An interrupted sweep (trials done, budget or repeats not met) continues only with `resume` or `extend`, so a
    second run never mixes into an earlier sweep by accident; a finished one just reports again.
    """
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # training reports carry no `score`
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "sweep.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    for domain in cfg.domains:  # fail on missing data before any trial starts
        load_rows(domain.train.path, split=domain.train.split, subset=domain.train.subset, what="data")
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    client, exp_id = tracking.open_experiment(cfg.mlflow_uri(), cfg.name, cfg.out / "mlartifacts")
    evaluators = get_evaluator_pool(cfg.eval)  # created by the driver, so it outlives every trial that uses it
    names = [study_name(m.name, d.name) for m, d in cfg.pairs()]
    done = [len(finished_trials(storage, name)) for name in names]
    unfinished = min(done) < cfg.budget.trials_per_pair or any(pending(cfg, storage, name) for name in names)
    if any(done) and unfinished and not (resume or extend):
        raise ConfigError(f"{cfg.optuna_storage()} holds an unfinished sweep {cfg.name!r} ({sum(done)} trials): "
                          "pass --resume to continue it, or --extend N to add trials")
    summaries = []
    for (model, domain), finished in zip(cfg.pairs(), done, strict=True):
        job = PairJob(model=model.name, domain=domain.name, model_path=model.path, data=domain.train,
                      benchmarks=domain.benchmarks, train=cfg.train_for(domain), eval=cfg.eval,
                      storage_path=cfg.checkpoint_root(),
                      signal_limit=cfg.scheduler.signal_limit if cfg.scheduler.signal == "benchmark" else None)
        budget = max(cfg.budget.trials_per_pair, finished + extend) if extend else cfg.budget.trials_per_pair
        summaries.append(PairRun(cfg, job, storage, client, exp_id, log).run(budget))
    del evaluators
    return summaries
