"""The define-by-run search space: alpha only for the general family, a cut only for thresholded ones.

Optuna proposes `{family, alpha?, threshold?, learning_rate?}`; `objective_of` turns that into an
`Objective`, and `point_of` turns an objective name into the point to enqueue (a warm start).
"""

from __future__ import annotations

import json

import optuna

from alphasweep.config import ConfigError, SearchSpec
from alphasweep.objectives import Objective, objective_from_params, parse_objective

ALPHA_FAMILIES = {"general"}
SKIPPED = "skipped"  # user attr of a proposal that repeated an earlier objective and never ran
SEED, ITEMS = "seed", "items"  # user attrs of every run's Optuna trial: its training seed, its per-item outcomes


def needs_threshold(family: str) -> bool:
    return family not in ALPHA_FAMILIES and family not in {"nll", "p", "dft"}


class SearchSpace:
    """The define-by-run function OptunaSearch calls with an Optuna trial (a class: Tune pickles it)."""

    def __init__(self, search: SearchSpec):
        self.search = search

    def __call__(self, trial) -> None:
        search = self.search
        family = trial.suggest_categorical("family", list(search.families))
        if family in ALPHA_FAMILIES:
            trial.suggest_float("alpha", search.alpha.low, search.alpha.high, log=search.alpha.log)
        elif needs_threshold(family):
            trial.suggest_float("threshold", search.threshold.low, search.threshold.high, log=search.threshold.log)
        if search.learning_rate:
            lr = search.learning_rate
            trial.suggest_float("learning_rate", lr.low, lr.high, log=lr.log)


def _short(x: float | None) -> float | None:
    """3 significant digits: readable objective names, and no difference a fine-tune could tell."""
    return None if x is None else float(f"{x:.3g}")


def objective_of(config: dict) -> Objective:
    return objective_from_params(config["family"], alpha=_short(config.get("alpha")),
                                 threshold=_short(config.get("threshold")))


def point_of(name: str, search: SearchSpec, learning_rate: float | None = None) -> dict:
    """The Optuna point for an objective name; its family must be one the search allows."""
    obj = parse_objective(name)
    if obj.family not in search.families:
        raise ConfigError(
            f"search.enqueue: {name} has family {obj.family!r}, which is not in search.families "
            f"({', '.join(search.families)})"
        )
    point: dict = {"family": obj.family}
    if obj.family in ALPHA_FAMILIES:
        point["alpha"] = obj.alpha
    elif needs_threshold(obj.family):
        point["threshold"] = obj.threshold
    if search.learning_rate and learning_rate:
        point["learning_rate"] = learning_rate
    return point


def warm_points(search: SearchSpec, suggestions: list[str], tried: set[str] = frozenset()) -> list[dict]:
    """The warm start: the config's `enqueue` list, then the probe's suggestions (where `probe_warm_start`),
    those whose family the search allows and not yet tried, in that order."""
    names = list(search.enqueue) + (list(suggestions) if search.probe_warm_start else [])
    return [point_of(n, search) for n in dict.fromkeys(names)
            if n not in tried and parse_objective(n).family in search.families]


def search_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """The sampler that proposes after the warm start."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=4)


def record_run(trial: optuna.Trial, result: dict) -> None:
    """Keep a scored run's per-item outcomes (`stats.Outcomes`, sent as JSON by the trial) with its Optuna
    trial: the study is what the report reads, and they are what its intervals and paired comparisons need."""
    if result.get(ITEMS):
        trial.set_user_attr(ITEMS, json.loads(result[ITEMS]))
