"""The sweep driver: for each (model, domain) pair, probe, then search objectives with Tune + Optuna.

Resume and extend work the same way (stack notes 2 and 8): the Optuna study in its RDB storage is the
source of truth. A new Tuner continues the study; trials a dead driver left RUNNING are marked FAIL and
retried; the Tuner runs only the trials the budget still lacks. Tune's own restore is never used.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from alphasweep.config import ConfigError, SweepConfig
from alphasweep.evaluation.actor import get_evaluator
from alphasweep.orchestrator import tracking
from alphasweep.orchestrator.space import SearchSpace, point_of
from alphasweep.orchestrator.trial import PairJob, run_trial

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SEARCH_METRIC = "score"
SIGNALS = {"heldout_nll": ("heldout_nll", "min"), "benchmark": ("signal_score", "max")}  # ASHA's metric, mode
SKIPPED = "skipped"  # user attr of a proposal that repeated an earlier objective and never ran
GUIDED_REDRAWS, MAX_REDRAWS = 5, 20


class PairSearch(OptunaSearch):
    """OptunaSearch that tags each config with its Optuna trial number and keeps training reports out
    of the study. A trial ASHA stops never reports `score`, so Optuna records it as PRUNED with no value
    (TPE ranks it below every complete trial) rather than COMPLETE with an early, misleading value;
    an intermediate held-out NLL would otherwise become the pruned trial's value in a study that
    maximises accuracy. The training curves live in MLflow."""

    def __init__(self, *args, constants: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self._constants = constants

    def suggest(self, trial_id: str):
        """A proposal that repeats an objective already run (TPE often redraws `p` or `original`, which have
        no parameters) is recorded as a skipped FAIL and redrawn: a rerun would only repeat a known score.
        After `GUIDED_REDRAWS` repeats the redraws come from a random sampler (a TPE sure of a parameterless
        objective proposes it again and again); a proposal that still repeats after `MAX_REDRAWS` runs."""
        guided = self._ot_study.sampler
        try:
            for attempt in range(1, MAX_REDRAWS + 1):
                config = super().suggest(trial_id)
                if (not isinstance(config, dict) or attempt == MAX_REDRAWS
                        or not self._repeats(config, self._ot_trials[trial_id].number)):
                    break
                repeat = self._ot_trials.pop(trial_id)
                repeat.set_user_attr(SKIPPED, f"repeats {_point_name(config)}")
                self._ot_study.tell(repeat, state=TrialState.FAIL)
                if attempt == GUIDED_REDRAWS:
                    self._ot_study.sampler = optuna.samplers.RandomSampler(seed=repeat.number)
        finally:
            self._ot_study.sampler = guided
        if isinstance(config, dict):
            config.update(self._constants, optuna_trial=self._ot_trials[trial_id].number)
        return config

    def _repeats(self, config: dict, number: int) -> bool:
        key = (_point_name(config), config.get("learning_rate"))
        return any((_objective_name(t), t.params.get("learning_rate")) == key
                   for t in self._ot_study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
                   if t.number != number)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Training reports carry no `score`; the searcher only learns from finished trials."""


def study_name(model: str, domain: str) -> str:
    return f"{model}/{domain}"


def fail_stale_trials(storage: optuna.storages.BaseStorage, name: str) -> int:
    """Trials left RUNNING (or WAITING) by a killed driver become FAIL, so they are retried, not lost."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    stale = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for t in stale:
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return len(stale)


def finished_trials(storage, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=FINISHED)
    except KeyError:
        return []


def _probe(job: PairJob):
    import ray

    from alphasweep.probe import probe_capability

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
        """Run the trials the pair still needs to reach `budget`; returns the pair's summary."""
        name, client = self.name, self.client
        stale = fail_stale_trials(self.storage, name)
        remaining = budget - len(finished_trials(self.storage, name))
        self.log(f"[{name}] {budget - remaining}/{budget} trials done"
                 + (f", {stale} interrupted trial(s) marked failed" if stale else ""))
        parent = tracking.open_parent_run(client, self.exp_id, self.job.model, self.job.domain)
        study = optuna.create_study(study_name=name, storage=self.storage, direction="maximize", load_if_exists=True)
        probe = self._probe_once(study, parent)
        self.log(f"[{name}] probe: mean p {probe['probe_mean_p']:.3f} -> {probe['continuum']}")
        if remaining > 0:
            self._search(study, parent, self._warm_points(study, probe)[:remaining], remaining)
        summary = pair_summary(study, self.job.model, self.job.domain)  # the study reads trials from storage
        if summary["best_objective"]:
            from alphasweep.objectives import parse_objective, plot_weights
            from alphasweep.orchestrator.report import alpha_points, plot_score_vs_alpha

            client.set_tag(parent, "best_objective", summary["best_objective"])
            client.log_metric(parent, "best_score", summary["best_score"])
            points = alpha_points(study)
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
        """The config's `enqueue` list, then the probe's suggestions: those allowed and not yet run, in order."""
        search = self.cfg.search
        tried = {_objective_name(t) for t in study.get_trials(deepcopy=False, states=FINISHED)}
        points, seen = [], set()
        for obj_name in list(search.enqueue) + (probe["suggestions"] if search.probe_warm_start else []):
            point = point_of(obj_name, search) if _family_allowed(obj_name, self.cfg) else None
            if point and obj_name not in tried and obj_name not in seen:
                points.append(point)
                seen.add(obj_name)
        return points

    def _search(self, study: optuna.Study, parent: str, points: list[dict], remaining: int) -> None:
        cfg, job, name = self.cfg, self.job, self.name
        searcher = PairSearch(
            SearchSpace(cfg.search), metric=SEARCH_METRIC, mode="max", points_to_evaluate=points or None,
            # a seed per pair and per resume, so pairs and continued sweeps draw different proposals
            sampler=optuna.samplers.TPESampler(seed=cfg.search.seed + len(study.trials) + zlib.crc32(name.encode()),
                                               multivariate=True, group=True, n_startup_trials=4),
            study_name=name, storage=self.storage,
            constants={"train_learning_rate": job.train.learning_rate},
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
        config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        self.log(f"[{name}] running {remaining} trial(s), {cfg.budget.max_concurrent} at a time"
                 + (f"; first: {', '.join(_point_name(p) for p in points)}" if points else ""))
        trainable = tune.with_resources(tune.with_parameters(run_trial, job=job), {"TRAIN_DRIVER": 1})
        # No actor reuse: killing the trial's actor is what ends the Train run of a trial that ASHA stops.
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                        max_concurrent_trials=cfg.budget.max_concurrent, reuse_actors=False),
            run_config=tune.RunConfig(
                name=f"{job.slug}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=cfg.checkpoint_root(), verbose=0,
                callbacks=[tracking.TrialTracker(self.client, self.exp_id, parent, job.model, job.domain, config_yaml),
                           TrialPrinter(name, self.log)],
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()


def _family_allowed(obj_name: str, cfg: SweepConfig) -> bool:
    from alphasweep.objectives import parse_objective

    return parse_objective(obj_name).family in cfg.search.families


def _point_name(point: dict) -> str:
    from alphasweep.orchestrator.space import objective_of

    return objective_of(point).name


def _objective_name(trial: optuna.trial.FrozenTrial) -> str:
    return _point_name(trial.params)


class TrialPrinter(tune.Callback):
    """One progress line per trial event, instead of Tune's wide tables."""

    def __init__(self, pair: str, log):
        self.pair, self.log = pair, log

    def on_trial_start(self, iteration, trials, trial, **info):
        self.log(f"[{self.pair}] trial #{trial.config['optuna_trial']} {_point_name(trial.config)}: training")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        what = f"score {r['score']:.3f}" if "score" in r else f"stopped early at step {r.get('step', '?')}"
        self.log(f"[{self.pair}] trial #{trial.config['optuna_trial']} {_point_name(trial.config)}: {what}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"[{self.pair}] trial #{trial.config['optuna_trial']} {_point_name(trial.config)}: FAILED "
                 f"({trial.error_file or 'see the Ray logs'})")


def pair_summary(study: optuna.Study, model: str, domain: str) -> dict:
    """Best objective, its score and every objective's score (the best of its trials) for one pair."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    scores: dict[str, float] = {}
    for t in complete:
        name = _objective_name(t)
        scores[name] = max(scores.get(name, float("-inf")), t.value)
    best = max(complete, key=lambda t: t.value, default=None)
    probe = study.user_attrs.get("probe", {})
    return {
        "model": model, "domain": domain, "continuum": probe.get("continuum"),
        "probe_mean_p": probe.get("probe_mean_p"),
        "best_objective": _objective_name(best) if best else None,
        "best_score": best.value if best else None,
        "scores": scores,
        "trials": len(complete),
        "stopped_early": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
        "failed": sum(SKIPPED not in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
    }


def run_sweep(cfg: SweepConfig, *, resume: bool = False, extend: int = 0, log=print) -> list[dict]:
    """Every pair of the config, one after another; returns the per-pair summaries.

    An interrupted sweep (trials done, budget not met) continues only with `resume` or `extend`, so a
    second run never mixes into an earlier sweep by accident; a finished one just reports again.
    """
    from alphasweep.data import load_rows

    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # training reports carry no `score`
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "sweep.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    for domain in cfg.domains:  # fail on missing data before any trial starts
        load_rows(domain.train)
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    client, exp_id = tracking.open_experiment(cfg.mlflow_uri(), cfg.name, cfg.out / "mlartifacts")
    evaluator = get_evaluator(cfg.eval)  # created by the driver, so it outlives every trial that uses it
    done = [len(finished_trials(storage, study_name(m.name, d.name))) for m, d in cfg.pairs()]
    if any(done) and min(done) < cfg.budget.trials_per_pair and not (resume or extend):
        raise ConfigError(f"{cfg.optuna_storage()} holds an unfinished sweep {cfg.name!r} ({sum(done)} trials): "
                          "pass --resume to continue it, or --extend N to add trials")
    summaries = []
    for (model, domain), finished in zip(cfg.pairs(), done, strict=True):
        job = PairJob(model=model.name, domain=domain.name, model_path=model.path, data=cfg.data_for(model, domain),
                      benchmarks=cfg.benchmarks_for(model, domain), train=cfg.train_for(domain, model), eval=cfg.eval,
                      storage_path=cfg.checkpoint_root(),
                      signal_limit=cfg.scheduler.signal_limit if cfg.scheduler.signal == "benchmark" else None)
        budget = max(cfg.budget.trials_per_pair, finished + extend) if extend else cfg.budget.trials_per_pair
        summaries.append(PairRun(cfg, job, storage, client, exp_id, log).run(budget))
    del evaluator
    return summaries
