"""The read-only view of a sweep's results in its Optuna storage: studies, finished trials, pair summaries.

The Optuna storage is the record of a sweep (MLflow mirrors it for browsing): one study per (model,
domain) pair, one trial per objective tried. The sweep driver and the report both read it through here.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from alphasweep.orchestrator.space import MLFLOW_RUN, objective_of

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # ran to the end, or stopped early by the scheduler


def study_name(model: str, domain: str) -> str:
    return f"{model}/{domain}"


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    """The pair's study, or None before its first trial."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def finished_trials(storage: optuna.storages.BaseStorage, name: str) -> list[FrozenTrial]:
    study = load_study(storage, name)
    return [] if study is None else study.get_trials(deepcopy=False, states=FINISHED)


def objective_name(trial: FrozenTrial) -> str:
    return objective_of(trial.params).name


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]


def pair_summary(study: optuna.Study, model: str, domain: str) -> dict:
    """Best objective, its score and every objective's score (the best of its trials) for one pair."""
    complete = _complete(study)
    scores: dict[str, float] = {}
    for t in complete:
        name = objective_name(t)
        scores[name] = max(scores.get(name, float("-inf")), t.value)
    best = max(complete, key=lambda t: t.value, default=None)
    probe = study.user_attrs.get("probe", {})
    return {
        "model": model, "domain": domain, "continuum": probe.get("continuum"),
        "probe_mean_p": probe.get("probe_mean_p"),
        "best_objective": objective_name(best) if best else None,
        "best_score": best.value if best else None,
        "scores": scores,
        "trials": len(complete),
        "stopped_early": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
        "failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
    }


def alpha_points(study: optuna.Study) -> list[tuple[float, float]]:
    """(place on the alpha axis, score) of the study's complete trials, sorted by alpha."""
    return sorted((objective_of(t.params).effective_alpha, t.value) for t in _complete(study))


def objective_table(study: optuna.Study) -> list[dict]:
    """One row per objective scored, best first: its best score, its complete trials, its place on the alpha
    axis, its cut (where it has one) and the MLflow run of its best trial. A new column is a new key (an
    interval belongs beside the score)."""
    best: dict[str, FrozenTrial] = {}
    count: dict[str, int] = {}
    for t in _complete(study):
        name = objective_name(t)
        count[name] = count.get(name, 0) + 1
        if name not in best or t.value > best[name].value:
            best[name] = t
    rows = []
    for name, t in sorted(best.items(), key=lambda item: -item[1].value):
        obj = objective_of(t.params)
        rows.append({"objective": name, "score": t.value, "trials": count[name], "alpha": obj.effective_alpha,
                     "threshold": obj.threshold, "mlflow_run_id": t.user_attrs.get(MLFLOW_RUN)})
    return rows
