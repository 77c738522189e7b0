"""MLflow tracking: one experiment per sweep, a parent run per pair, a child run per trial.

Everything is written from the sweep's driver process (a Tune callback), so a local sqlite store works
and workers on other nodes need no access to the tracking server. Every child run carries the same
params (objective, family, alpha, threshold, learning_rate), so runs compare cleanly in the MLflow UI.
"""

from __future__ import annotations

import json
import math
import tempfile
import urllib.request
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from alphasweep.config import ConfigError
from alphasweep.objectives import parse_objective
from alphasweep.orchestrator.space import objective_of
from alphasweep.plots import plot_weights
from alphasweep.stats import Outcomes

PAIR_TAG, KIND_TAG, OPTUNA_TAG, TUNE_TAG = "alphasweep.pair", "alphasweep.kind", "optuna_trial", "tune_trial_id"
PARENT_TAG = "mlflow.parentRunId"
NLL = parse_objective("original")  # every trial's W(p) plot shows NLL's for reference
_NOT_METRICS = {"step", "training_iteration", "timestamp", "time_total_s", "time_this_iter_s", "pid",
                "time_since_restore", "iterations_since_restore", "optuna_trial"}


def check_reachable(uri: str) -> None:
    """Fail before any trial starts when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as r:
            r.read()
    except OSError as e:
        raise ConfigError(f"tracking server {uri} is unreachable: {getattr(e, 'reason', e)}") from None


def open_experiment(uri: str, name: str, local_artifacts: Path) -> tuple[MlflowClient, str]:
    """Create the schema and the experiment from the driver first (concurrent first use races).

    With a local sqlite store, artifacts go to `local_artifacts` (MLflow's default is ./mlruns in the
    current directory); a tracking server decides for itself.
    """
    check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp:
        return client, exp.experiment_id
    location = local_artifacts.as_uri() if uri.startswith("sqlite:") else None
    return client, client.create_experiment(name, artifact_location=location)


def _pair_runs(client: MlflowClient, exp_id: str, pair: str, extra: str = "") -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`{PAIR_TAG}` = '{pair}'{extra}", max_results=10_000)


def open_parent_run(client: MlflowClient, exp_id: str, model: str, domain: str) -> str:
    """The pair's parent run, reopened on resume; children a dead driver left RUNNING become FAILED."""
    pair = f"{model}/{domain}"
    for run in _pair_runs(client, exp_id, pair, f" and tags.`{KIND_TAG}` = 'trial' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status="FAILED")
    parents = _pair_runs(client, exp_id, pair, f" and tags.`{KIND_TAG}` = 'pair'")
    if parents:
        run_id = parents[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {PAIR_TAG: pair, KIND_TAG: "pair", "model": model, "domain": domain}
    run = client.create_run(exp_id, run_name=pair, tags=tags)
    return run.info.run_id


def close_parent_run(client: MlflowClient, run_id: str) -> None:
    client.set_terminated(run_id, status="FINISHED")


def log_summary(client: MlflowClient, run_id: str, summary: dict) -> None:
    """The pair's answer on its parent run: best objective, its score and interval, the paired comparisons
    with NLL and the runner-up (difference, interval), whether it is decided, and the verdict sentence."""
    client.set_tag(run_id, "best_objective", summary["best_objective"])
    client.set_tag(run_id, "verdict", summary["verdict"])
    client.set_tag(run_id, "decided", str(summary["decided"]).lower())
    metrics = {"best_score": summary["best_score"]}
    if summary["best_ci"]:
        metrics["best_ci_low"], metrics["best_ci_high"] = summary["best_ci"]
    for key in ("vs_nll", "vs_runner_up"):
        if summary[key]:
            metrics[key] = summary[key]["difference"]
            metrics[f"{key}_low"], metrics[f"{key}_high"] = summary[key]["ci"]
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)


def log_png(client: MlflowClient, run_id: str, draw, name: str) -> None:
    """Draw a figure with `draw(path)` in a temporary folder and log it as an artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        draw(path)
        client.log_artifact(run_id, str(path))


def _numeric(result: dict) -> dict[str, float]:
    return {k.replace("/", "."): float(v) for k, v in result.items()
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TrialTracker(tune.Callback):
    """A Tune callback that mirrors every trial of one pair into a child MLflow run."""

    def __init__(self, client: MlflowClient, exp_id: str, parent_id: str, model: str, domain: str, config_yaml: str):
        self.client, self.exp_id, self.parent_id = client, exp_id, parent_id
        self.model, self.domain, self.config_yaml = model, domain, config_yaml
        self.runs: dict[str, str] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        cfg = trial.config
        obj = objective_of(cfg)
        lr = cfg.get("learning_rate") or cfg["train_learning_rate"]
        stage = cfg.get("stage", "search")
        number = f"#{cfg['optuna_trial']}"  # a repeat (other seed, confirmation) is numbered in the repeats study
        label = number if stage == "search" else f"{stage} {number}, seed {cfg['seed']}"
        run = self.client.create_run(
            self.exp_id, run_name=f"{obj.name} ({label})",
            tags={PARENT_TAG: self.parent_id, PAIR_TAG: f"{self.model}/{self.domain}", KIND_TAG: "trial",
                  "model": self.model, "domain": self.domain, TUNE_TAG: trial.trial_id,
                  OPTUNA_TAG: str(cfg["optuna_trial"]), "stage": stage, "seed": str(cfg.get("seed", ""))},
        )
        run_id = self.runs[trial.trial_id] = run.info.run_id
        params = {"objective": obj.name, **obj.params(), "learning_rate": lr}
        for k, v in params.items():
            self.client.log_param(run_id, k, "none" if v is None else v)
        self.client.log_text(run_id, self.config_yaml, "config.yaml")
        log_png(self.client, run_id, lambda p: plot_weights([NLL, obj], p), "weight.png")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result.get("step") or result.get("training_iteration") or 0)
        for k, v in _numeric(result).items():
            self.client.log_metric(run_id, k, v, step=step)
        if result.get("samples"):
            self.client.log_text(run_id, "\n".join(json.dumps(s) for s in result["samples"]), "samples.jsonl")
        if result.get("items"):  # the score's 95% interval over the items
            ci = Outcomes.from_json(json.loads(result["items"])).interval()
            self.client.log_metric(run_id, "score_ci_low", ci.low, step=step)
            self.client.log_metric(run_id, "score_ci_high", ci.high, step=step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id:
            stopped = "score" not in (trial.last_result or {})
            self.client.set_tag(run_id, "stopped_early", str(stopped).lower())
            self.client.set_terminated(run_id, status="KILLED" if stopped else "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id:
            self.client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))

