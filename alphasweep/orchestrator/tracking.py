"""MLflow tracking: one experiment per sweep, a parent run per pair, a child run per trial.

Everything is written from the sweep's driver process (a Tune callback), so a local sqlite store works
and workers on other nodes need no access to the tracking server. Runs are laid out for comparing
objectives in the MLflow UI: every child run has a numeric `alpha` (its place on the alpha axis), a
`threshold` only where its family has a cut, its scores at its last training step with the score's 95%
interval over items (`score_ci_low`, `score_ci_high`), its stage (`search`, `seeds`, `confirm`) and seed as
tags, its own config and its sample completions as a table; a parent run holds the pair's config, the
verdict, a results table of means over seeds with their intervals (also in its description, with a link to
each objective's run), the best run's id and a labelled score plot.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from alphasweep.objectives import Objective, parse_objective
from alphasweep.orchestrator.space import objective_of
from alphasweep.plots import plot_weights
from alphasweep.stats import Outcomes

PAIR_TAG, KIND_TAG, OPTUNA_TAG, TUNE_TAG = "alphasweep.pair", "alphasweep.kind", "optuna_trial", "tune_trial_id"
PARENT_TAG, NOTE_TAG = "mlflow.parentRunId", "mlflow.note.content"  # nesting; the run page's description
BEST_RUN_TAG = "best_run_id"
NLL = parse_objective("original")  # every trial's W(p) plot shows NLL's for reference
AT_START = {"startup_s"}  # reported once, with the first training report: logged at step 0
_NOT_METRICS = {"step", "training_iteration", "timestamp", "time_total_s", "time_this_iter_s", "pid",
                "time_since_restore", "iterations_since_restore", "optuna_trial"}


def open_experiment(uri: str, name: str, local_artifacts: Path) -> tuple[MlflowClient, str]:
    """Create the schema and the experiment from the driver first (concurrent first use races).

    With a local sqlite store, artifacts go to `local_artifacts` (MLflow's default is ./mlruns in the
    current directory); a tracking server decides for itself.
    """
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp:
        return client, exp.experiment_id
    location = local_artifacts.as_uri() if uri.startswith("sqlite:") else None
    return client, client.create_experiment(name, artifact_location=location)


VIEW_KEY = "alphasweep"  # the runs table's shared view (columns to compare objectives by)
VIEW_COLUMNS = ["metrics.`score`", "params.`alpha`", "params.`threshold`", "params.`family`", "params.`learning_rate`"]


def share_view(client: MlflowClient, exp_id: str) -> None:
    """A shared view of the runs table that shows the score and the objectives' params as columns (MLflow
    shows none by default): the experiment tag the UI reads for `?viewStateShareKey=` (docs/upstream.md)."""
    view = json.dumps({"selectedColumns": VIEW_COLUMNS})
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{VIEW_KEY}", view)


def experiment_url(ui: str, exp_id: str) -> str:
    """The experiment's runs in the UI's model-training view (a fresh browser opens the GenAI view otherwise),
    with the shared view's columns."""
    return f"{ui.rstrip('/')}/#/experiments/{exp_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"


def run_params(obj: Objective, learning_rate: float) -> dict[str, str | float]:
    """The params every child run has: `alpha` (the alpha axis: NLL 0, `p` 1, ...) on every run, so that the
    UI plots every run against it, and `threshold` (a cut's q or r) only on runs whose family has one."""
    params = {"objective": obj.name, "family": obj.family, "alpha": obj.effective_alpha}
    if obj.threshold is not None:
        params["threshold"] = obj.threshold
    return {**params, "learning_rate": learning_rate}


def run_name(obj: Objective, pair: str, number: int, stage: str = "search", seed: int | None = None) -> str:
    """`p | tiny/addition #3` for a search trial; a repeat (another seed, the confirmation) is numbered in the
    pair's repeats study: `p | tiny/addition confirm #1, seed 2`."""
    if stage == "search":
        return f"{obj.name} | {pair} #{number}"
    return f"{obj.name} | {pair} {stage} #{number}, seed {seed}"


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, lists joined by commas, unset values left out."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = ", ".join(v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True).strip()
                                   for v in value)
        elif value is not None:
            flat[name] = str(value)
    return flat


def _pair_runs(client: MlflowClient, exp_id: str, pair: str, extra: str = "") -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`{PAIR_TAG}` = '{pair}'{extra}", max_results=10_000)


def open_parent_run(client: MlflowClient, exp_id: str, model: str, domain: str, config: dict) -> str:
    """The pair's parent run with the pair's config (params and `config.yaml`), reopened on resume; children a
    dead driver left RUNNING become FAILED. Params are written once: a resumed sweep keeps the first ones."""
    pair = f"{model}/{domain}"
    for run in _pair_runs(client, exp_id, pair, f" and tags.`{KIND_TAG}` = 'trial' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status="FAILED")
    parents = _pair_runs(client, exp_id, pair, f" and tags.`{KIND_TAG}` = 'pair'")
    if parents:
        run_id = parents[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {PAIR_TAG: pair, KIND_TAG: "pair", "model": model, "domain": domain}
        run_id = client.create_run(exp_id, run_name=pair, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in flat_params(config).items()])
    client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
    return run_id


def close_parent_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    """FINISHED, or FAILED when the pair stopped on an error (a hub id that does not load, an interrupt)."""
    client.set_terminated(run_id, status=status)


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


def log_results(client: MlflowClient, run_id: str, rows: list[dict], exp_id: str, verdict: str = "") -> None:
    """The pair's results on its parent run: `results.json`, a table the artifact viewer shows, with the same
    columns as `rows` (one per objective, best first); the same table in the run's description, under the
    verdict, each objective linked to its run; and the best run's id as a tag."""
    if not rows:
        return
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if any(row.get(c) is not None for row in rows)]
    client.log_table(run_id, {c: [row.get(c) for row in rows] for c in columns}, "results.json")
    shown = [c for c in columns if c != "mlflow_run_id"]
    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    for row in rows:
        cells = [_cell(row.get(c)) for c in shown]
        if row.get("mlflow_run_id"):
            cells[0] = f"[{cells[0]}](#/experiments/{exp_id}/runs/{row['mlflow_run_id']})"
        lines.append("| " + " | ".join(cells) + " |")
    best = rows[0]
    score = _cell(best.get("score"))
    if best.get("ci_low") is not None:
        score += f" [{_cell(best['ci_low'])}, {_cell(best['ci_high'])}]"
    client.set_tag(run_id, NOTE_TAG, f"**Best objective: {best['objective']}** (score {score})"
                   + (f"\n\n{verdict}" if verdict else "") + "\n\n" + "\n".join(lines))
    if best.get("mlflow_run_id"):
        client.set_tag(run_id, BEST_RUN_TAG, best["mlflow_run_id"])


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def _numeric(result: dict) -> dict[str, float]:
    return {k.replace("/", "."): float(v) for k, v in result.items()
            if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class TrialTracker(tune.Callback):
    """A Tune callback that mirrors every trial of one pair into a child MLflow run.

    `trial_config(config)` gives what a trial's `config.yaml` holds; `on_run(trial, run_id)` is called once
    a trial's run exists (the sweep records the run id with the Optuna trial)."""

    def __init__(self, client: MlflowClient, exp_id: str, parent_id: str, model: str, domain: str,
                 trial_config, on_run=None):
        self.client, self.exp_id, self.parent_id = client, exp_id, parent_id
        self.model, self.domain, self.pair = model, domain, f"{model}/{domain}"
        self.trial_config, self.on_run = trial_config, on_run
        self.runs: dict[str, str] = {}
        self.last_step: dict[str, int] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:  # Tune restarted the trial from its checkpoint: same trial, same run
            return
        cfg = trial.config
        obj = objective_of(cfg)
        lr = cfg.get("learning_rate") or cfg["train_learning_rate"]
        stage = cfg.get("stage", "search")
        run = self.client.create_run(
            self.exp_id, run_name=run_name(obj, self.pair, cfg["optuna_trial"], stage, cfg.get("seed")),
            tags={PARENT_TAG: self.parent_id, PAIR_TAG: self.pair, KIND_TAG: "trial",
                  "model": self.model, "domain": self.domain, TUNE_TAG: trial.trial_id,
                  OPTUNA_TAG: str(cfg["optuna_trial"]), "stage": stage, "seed": str(cfg.get("seed", ""))},
        )
        run_id = self.runs[trial.trial_id] = run.info.run_id
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in run_params(obj, lr).items()])
        self.client.log_text(run_id, yaml.safe_dump(self.trial_config(cfg), sort_keys=False), "config.yaml")
        log_png(self.client, run_id, lambda p: plot_weights([NLL, obj], p), "weight.png")
        if self.on_run:
            self.on_run(trial, run_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        # the final report (scores) carries no step: it belongs at the last training step, beside the curves
        step = self.last_step[trial.trial_id] = int(result.get("step", self.last_step.get(trial.trial_id, 0)))
        now = int(time.time() * 1000)
        values = _numeric(result)
        if result.get("items"):  # the score's 95% interval over the items, beside the score
            ci = Outcomes.from_json(json.loads(result["items"])).interval()
            values.update(score_ci_low=ci.low, score_ci_high=ci.high)
        metrics = [Metric(k, v, now, 0 if k in AT_START else step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        if result.get("samples"):
            samples = result["samples"]
            columns = list(dict.fromkeys(k for s in samples for k in s))
            self.client.log_table(run_id, {c: [s.get(c) for s in samples] for c in columns}, "samples.json")

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


def ui_command(uri: str, exp_id: str, port: int = 5000) -> tuple[str | None, str]:
    """How to open the UI: the command that serves a local store (None for a tracking server), and the URL."""
    if uri.startswith(("http://", "https://")):
        return None, experiment_url(uri, exp_id)
    return f"mlflow ui --backend-store-uri {uri} --port {port}", experiment_url(f"http://127.0.0.1:{port}", exp_id)
