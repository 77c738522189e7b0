"""The sweep driver: for each (model, domain) pair, probe, search objectives with Tune + Optuna, then train
what the search ran with other seeds and confirm the finalists (`repeats.py`).

Resume and extend work the same way: the Optuna studies in their RDB storage are the record of a sweep. A
new Tuner continues a study; trials a dead driver left RUNNING (or enqueued and never started) are marked
FAIL and retried; the Tuners run only the trials the budget and the repeats still lack. Tune's own
experiment restore is never used (after a hard kill it breaks on an RDB-backed study, and it cannot extend
a finished experiment; docs/upstream.md).
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from alphasweep.config import ConfigError, SweepConfig
from alphasweep.console import quiet_libraries
from alphasweep.evaluation.actor import get_evaluator_pool
from alphasweep.objectives import parse_objective
from alphasweep.orchestrator import tracking
from alphasweep.orchestrator.repeats import RepeatSearch, missing_confirmations, missing_seeds, pending
from alphasweep.orchestrator.results import (
    FINISHED,
    finished_trials,
    load_study,
    objective_name,
    objective_table,
    pair_summary,
    repeats_study_name,
    study_name,
)
from alphasweep.orchestrator.space import (
    MLFLOW_RUN,
    PairSearch,
    SearchSpace,
    objective_of,
    search_sampler,
    warm_points,
)
from alphasweep.orchestrator.trial import PairJob, failure_config, reuse_actors, trainable
from alphasweep.plots import plot_objective_scores, plot_weights
from alphasweep.probe import probe_capability

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


def start_probe(job: PairJob) -> ray.ObjectRef:
    """The pair's probe as a Ray task. The sweep starts every pair's probe at once, so they share the cluster
    before the first pair's trials instead of each one leaving all but one core idle between two pairs."""
    remote = ray.remote(num_cpus=1, num_gpus=min(job.train.gpus_per_worker, 1))(probe_capability)
    return remote.remote(job.model_path, job.data, max_length=job.train.max_length, seed=job.train.seed)


def probed(storage: optuna.storages.BaseStorage) -> set[str]:
    """The studies that already hold their pair's probe (a resumed sweep measures it once)."""
    return {s.study_name for s in optuna.get_all_study_summaries(storage) if "probe" in s.user_attrs}


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
    probe: ray.ObjectRef | None = None  # the probe started by the sweep; None: the study holds it

    @property
    def name(self) -> str:
        return study_name(self.job.model, self.job.domain)

    def run(self, budget: int) -> dict:
        """Run the trials the pair still needs to reach `budget`, then its repeats (other seeds, the
        confirmation stage); returns the pair's summary."""
        name, client = self.name, self.client
        stale = fail_stale_trials(self.storage, name) + fail_stale_trials(self.storage, repeats_study_name(name))
        done = len(finished_trials(self.storage, name))
        parent = tracking.open_parent_run(client, self.exp_id, self.job.model, self.job.domain, self.pair_config())
        try:
            summary = self._run_in(parent, stale, done, budget)
        except BaseException:  # a hub id that does not load, an interrupt: the parent run says so
            tracking.close_parent_run(client, parent, status="FAILED")
            raise
        tracking.close_parent_run(client, parent)
        return summary

    def _run_in(self, parent: str, stale: int, done: int, budget: int) -> dict:
        name, client = self.name, self.client
        remaining = budget - done
        study = optuna.create_study(study_name=name, storage=self.storage, direction="maximize", load_if_exists=True)
        study.set_metric_names([SEARCH_METRIC])
        probe = self._probe_once(study, parent)
        points = self._warm_points(study, probe)[:remaining]
        parts = [f"probe: mean p {probe['probe_mean_p']:.3f} ({probe['continuum']})"]
        if done or stale:
            parts.append(f"{done}/{budget} trials done"
                         + (f", {stale} interrupted trial(s) marked failed" if stale else ""))
        if remaining > 0:
            parts.append(f"{remaining} to run, {self.cfg.budget.max_concurrent} at a time"
                         + (f", first: {', '.join(objective_of(p).name for p in points)}" if points else ""))
        self.log(f"[{name}] " + " | ".join(parts))
        if remaining > 0:
            if points:  # what ran first, beside the probe's suggestions (outside the searched families: a twin or none)
                study.set_user_attr("warm_start", [objective_of(p).name for p in points])
            self._search(study, parent, points, remaining, done, budget)
        repeats = self._repeat(study, parent)
        summary = pair_summary(study, self.job.model, self.job.domain, repeats)  # read back from storage
        if summary["best_objective"]:
            rows = objective_table(summary)
            tracking.log_summary(client, parent, summary)
            tracking.log_results(client, parent, rows, self.exp_id, summary["verdict"])
            tracking.log_png(client, parent, lambda p: plot_objective_scores(
                {r["objective"]: r["score"] for r in rows}, p, title=name), "score_vs_alpha.png")
            tracking.log_png(client, parent,
                             lambda p: plot_weights([parse_objective(o) for o in summary["scores"]], p), "weights.png")
        return summary

    def pair_config(self) -> dict:
        """What every trial of the pair shares, as the parent run records it."""
        cfg, job = self.cfg, self.job
        model = next(m for m in cfg.models if m.name == job.model)
        domain = next(d for d in cfg.domains if d.name == job.domain)
        return {"model": model.model_dump(mode="json"),
                "domain": domain.model_dump(mode="json", exclude={"train_overrides"}),
                "train": job.train.model_dump(mode="json"), "eval": job.eval.model_dump(mode="json"),
                **{k: getattr(cfg, k).model_dump(mode="json") for k in ("search", "budget", "scheduler")},
                "seeds": cfg.sweep_seeds(), "confirm": cfg.confirm.model_dump(mode="json") if cfg.confirm else None}

    def trial_config(self, config: dict) -> dict:
        """One trial's own config, as its child run records it: its objective and what it trained with."""
        job = self.job
        lr = config.get("learning_rate") or config["train_learning_rate"]
        return {**tracking.run_params(objective_of(config), lr), "seed": config.get("seed", job.train.seed),
                "stage": config.get("stage", "search"), "optuna_trial": config["optuna_trial"],
                "model": {"name": job.model, "path": job.model_path},
                "domain": job.domain, "data": job.data.model_dump(mode="json"),
                "benchmarks": [b.model_dump(mode="json") for b in job.benchmarks],
                "train": {**job.train.model_dump(mode="json"), "learning_rate": lr},
                "eval": job.eval.model_dump(mode="json")}

    def _probe_once(self, study: optuna.Study, parent: str) -> dict:
        """The probe's figures, measured on the first run and kept in the study for every later one."""
        if "probe" not in study.user_attrs:
            result = ray.get(self.probe)
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

    def _repeat(self, study: optuna.Study, parent: str) -> optuna.Study | None:
        """The seeds stage, then the confirmation (which ranks what the seeds stage added): each runs the repeats
        still missing as trials of the pair's repeats study. Returns that study (None while it has none)."""
        name = repeats_study_name(self.name)
        repeats = load_study(self.storage, name)
        for stage in (missing_seeds, missing_confirmations):
            todo = stage(self.cfg, study, repeats)
            if todo:
                repeats = optuna.create_study(study_name=name, storage=self.storage, direction="maximize",
                                              load_if_exists=True)
                repeats.set_metric_names([SEARCH_METRIC])
                self.log(f"[{self.name}] {todo[0].stage} stage: {len(todo)} run(s): "
                         + ", ".join(f"{r.candidate.objective} seed {r.seed}" for r in todo))
                printer = TrialPrinter(self.name, self.log, total=len(todo), concurrency=self.cfg.budget.max_concurrent)
                self._tune(RepeatSearch(repeats, todo, self._constants()), FIFOScheduler(), len(todo), parent, printer)
        return repeats

    def _search(self, study: optuna.Study, parent: str, points: list[dict], remaining: int, done: int,
                budget: int) -> None:
        cfg, job, name = self.cfg, self.job, self.name
        signal = SIGNALS[cfg.scheduler.signal]
        seed = cfg.search.seed + len(study.trials) + zlib.crc32(name.encode())  # differs per pair and per resume
        searcher = PairSearch(
            SearchSpace(cfg.search), metric=SEARCH_METRIC, mode="max", points_to_evaluate=points or None,
            sampler=search_sampler(seed), seed=seed, study_name=name, storage=self.storage, signal=signal,
            constants={**self._constants(), "seed": cfg.sweep_seeds()[0], "stage": "search"},
        )
        if cfg.scheduler.kind == "asha":
            metric, mode = signal
            # max_t one past the last step: ASHA stops any trial whose step reaches max_t, and a trial that
            # trained to the end must still be evaluated and report its score
            # (with `epochs` the last step is known only once the trial has loaded its data: any bound past it does)
            last_step = job.train.steps or 2**31
            scheduler = ASHAScheduler(time_attr="step", metric=metric, mode=mode, max_t=last_step + 1,
                                      grace_period=cfg.scheduler.grace_steps,
                                      reduction_factor=cfg.scheduler.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        printer = TrialPrinter(name, self.log, total=budget, done=done, concurrency=cfg.budget.max_concurrent)
        self._tune(searcher, scheduler, remaining, parent, printer)

    def _tune(self, searcher: PairSearch | RepeatSearch, scheduler, num_samples: int, parent: str,
              printer: TrialPrinter) -> None:
        """One Tuner over `num_samples` trials that `searcher` proposes, mirrored into MLflow (each run's id
        kept with its Optuna trial)."""
        cfg, job = self.cfg, self.job
        tracker = tracking.TrialTracker(self.client, self.exp_id, parent, job.model, job.domain, self.trial_config,
                                        on_run=lambda trial, run_id: searcher.annotate(trial.trial_id, MLFLOW_RUN,
                                                                                       run_id))
        tuner = tune.Tuner(
            trainable(job),
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=cfg.budget.max_concurrent,
                                        reuse_actors=reuse_actors(job)),
            run_config=tune.RunConfig(
                name=f"{job.slug}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=cfg.checkpoint_root(), verbose=0,
                callbacks=[tracker, printer, JsonLoggerCallback(), CSVLoggerCallback()],
                failure_config=failure_config(job), checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
        tuner.fit()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TrialPrinter(tune.Callback):
    """One console line per trial event, instead of Tune's wide tables; each finished trial's line ends with
    the pair's progress: trials done, running and queued, the time so far and an estimate of the rest (each
    trial taking the mean time of this run's finished ones, as many at once as the sweep runs)."""

    def __init__(self, pair: str, log, *, total: int, done: int = 0, concurrency: int = 1):
        self.pair, self.log, self.total, self.done, self.concurrency = pair, log, total, done, concurrency
        self.started_at = time.monotonic()
        self.starts: dict[str, float] = {}
        self.durations: list[float] = []

    def _line(self, trial, what: str) -> str:
        """`[pair] #3 p: ...` for a search trial, `[pair] confirm #1 p seed 2: ...` for a repeat (numbered in
        the repeats study)."""
        config = trial.config
        label = f"#{config['optuna_trial']} {objective_of(config).name}"
        if config.get("stage", "search") != "search":
            label = f"{config['stage']} {label} seed {config['seed']}"
        return f"[{self.pair}] {label}: {what}"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.starts.setdefault(trial.trial_id, time.monotonic())
        self.log(self._line(trial, "started"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        took = self._finished(trial)
        what = f"score {r['score']:.3f}" if "score" in r else f"stopped early at step {r.get('step', '?')}"
        self.log(self._line(trial, f"{what} in {_duration(took)}") + self._progress(trials))

    def on_trial_error(self, iteration, trials, trial, **info):
        """The error's own last line (e.g. the evaluator's `ValueError: benchmark ...: line 3: ...`) on the
        trial's line, then the whole trace (the driver's copy of it, written before this call)."""
        took = self._finished(trial)
        error = Path(trial.error_file) if trial.error_file else None
        text = error.read_text(errors="replace").rstrip() if error and error.is_file() else ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        self.log(self._line(trial, f"FAILED after {_duration(took)}" + (f": {lines[-1]}" if lines else ""))
                 + self._progress(trials))
        self.log(text or "(no error file: see the sweep's log)")

    def _finished(self, trial) -> float:
        took = time.monotonic() - self.starts.pop(trial.trial_id, self.started_at)
        self.durations.append(took)
        self.done += 1
        return took

    def _progress(self, trials) -> str:
        running = [t for t in trials if t.status == "RUNNING" and t.trial_id in self.starts]
        queued = max(self.total - self.done - len(running), 0)
        if not running and not queued:
            return ""
        now, mean = time.monotonic(), sum(self.durations) / len(self.durations)
        slots = [max(mean - (now - self.starts[t.trial_id]), 0.0) for t in running]
        slots += [0.0] * max(self.concurrency - len(slots), 0)
        for _ in range(queued):  # each queued trial takes the slot that frees first
            slots.sort()
            slots[0] += mean
        rest = max(slots)
        return (f" | {self.done}/{self.total} done, {len(running)} running, {queued} queued"
                f" | {_duration(now - self.started_at)} elapsed, ~{_duration(rest)} left")


def run_sweep(cfg: SweepConfig, *, resume: bool = False, extend: int = 0, log=print) -> list[dict]:
    """Every pair of the config, one after another; returns the per-pair summaries.

    An interrupted sweep (trials done, budget or repeats not met) continues only with `resume` or `extend`, so
    a second run never mixes into an earlier sweep by accident; a finished one just reports again.
    The inputs are the caller's to check first (`alphasweep.validate`, as the CLI does before Ray starts).
    """
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # training reports carry no `score`
    quiet_libraries()
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "sweep.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    storage = optuna.storages.RDBStorage(cfg.optuna_storage())
    client, exp_id = tracking.open_experiment(cfg.mlflow_uri(), cfg.name, cfg.out / "mlartifacts")
    tracking.share_view(client, exp_id)
    names = [study_name(m.name, d.name) for m, d in cfg.pairs()]
    done = [len(finished_trials(storage, name)) for name in names]
    unfinished = min(done) < cfg.budget.trials_per_pair or any(pending(cfg, storage, name) for name in names)
    if any(done) and unfinished and not (resume or extend):
        raise ConfigError(f"{cfg.optuna_storage()} holds an unfinished sweep {cfg.name!r} ({sum(done)} trials): "
                          "pass --resume to continue it, or --extend N to add trials")
    jobs = [PairJob(model=model.name, domain=domain.name, model_path=model.path,
                    data=cfg.data_for(model, domain), benchmarks=cfg.benchmarks_for(model, domain),
                    train=cfg.train_for(domain, model), eval=cfg.eval, storage_path=cfg.checkpoint_root(),
                    signal_limit=cfg.scheduler.signal_limit if cfg.scheduler.signal == "benchmark" else None)
             for model, domain in cfg.pairs()]
    have_probe = probed(storage)
    probes = [None if name in have_probe else start_probe(job) for name, job in zip(names, jobs, strict=True)]
    evaluators = get_evaluator_pool(cfg.eval)  # created by the driver, so it outlives every trial that uses it
    try:
        summaries = []
        for job, finished, probe in zip(jobs, done, probes, strict=True):
            budget = max(cfg.budget.trials_per_pair, finished + extend) if extend else cfg.budget.trials_per_pair
            summaries.append(PairRun(cfg, job, storage, client, exp_id, log, probe).run(budget))
        return summaries
    finally:
        # End the dispatcher (a threaded actor) here: left to die with the driver it aborts, and its stack dump
        # reaches the console after the sweep's last line (a user error's included). Its replicas end cleanly.
        ray.kill(evaluators)
