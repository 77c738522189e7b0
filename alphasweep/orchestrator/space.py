"""The define-by-run search space: alpha only for the general family, a cut only for thresholded ones.

Optuna proposes `{family, alpha?, threshold?, learning_rate?}`; `objective_of` turns that into an
`Objective`, and `point_of` turns an objective name into the point to enqueue (a warm start).
"""

from __future__ import annotations

from alphasweep.config import ConfigError, SearchSpec
from alphasweep.objectives import Objective, objective_from_params, parse_objective

ALPHA_FAMILIES = {"general"}


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
