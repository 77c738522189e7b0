"""The search over objectives for one pair: the define-by-run space and the Optuna searcher that drives it.

Optuna proposes `{family, alpha | threshold, learning_rate?}`, the parameter being the one the family's
registry spec names (none for parameterless families); `objective_of` turns a proposal into an
`Objective`, and `point_of` an objective name into the point to enqueue (a warm start). `PairSearch` is
Ray Tune's `OptunaSearch` with what a sweep needs on top: trial numbers in the config, pruned rather than
complete trials for early stops, no rerun of an objective that already ran, and each run's seed and per-item
outcomes kept with its Optuna trial. `warm_points` and `search_sampler` are the warm start and the sampler a
sweep searches with (the search-efficiency bench replays them).
"""

from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from alphasweep import compat
from alphasweep.config import ConfigError, SearchSpec
from alphasweep.objectives import SPECS, Objective, family_spec, objective_from_params, parse_objective

SKIPPED = "skipped"  # user attr of a proposal that repeated an earlier objective and never ran
SEED, ITEMS = "seed", "items"  # user attrs of every run's Optuna trial: its training seed, its per-item outcomes
GUIDED_REDRAWS, MAX_REDRAWS = 5, 20
_TRIED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)  # ran, stopped early, or running now


class SearchSpace:
    """The define-by-run function OptunaSearch calls with an Optuna trial (a class: Tune pickles it)."""

    def __init__(self, search: SearchSpec):
        self.search = search

    def __call__(self, trial: optuna.Trial) -> None:
        search = self.search
        field = family_spec(trial.suggest_categorical("family", list(search.families))).field
        if field is not None:  # the family's one parameter, from the searched range of that name
            searched = getattr(search, field)
            trial.suggest_float(field, searched.low, searched.high, log=searched.log)
        if search.learning_rate:
            lr = search.learning_rate
            trial.suggest_float("learning_rate", lr.low, lr.high, log=lr.log)


def _short(x: float | None) -> float | None:
    """3 significant digits: readable objective names, and no difference a fine-tune could tell."""
    return None if x is None else float(f"{x:.3g}")


def objective_of(config: dict) -> Objective:
    """The objective of a proposal (an Optuna trial's params or a Tune trial's config)."""
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
    point = {k: v for k, v in obj.params().items() if v is not None}
    if search.learning_rate and learning_rate:
        point["learning_rate"] = learning_rate
    return point


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
        study, live = compat.searcher_study(self), compat.searcher_trials(self)
        guided = study.sampler
        try:
            for attempt in range(1, MAX_REDRAWS + 1):
                config = super().suggest(trial_id)
                if (not isinstance(config, dict) or attempt == MAX_REDRAWS
                        or not self._repeats(study, config, live[trial_id].number)):
                    break
                repeat = live.pop(trial_id)  # the searcher asks the study afresh for this Tune trial
                repeat.set_user_attr(SKIPPED, f"repeats {objective_of(config).name}")
                study.tell(repeat, state=TrialState.FAIL)
                if attempt == GUIDED_REDRAWS:
                    study.sampler = optuna.samplers.RandomSampler(seed=repeat.number)
        finally:
            study.sampler = guided
        if isinstance(config, dict):
            if "seed" in self._constants:
                live[trial_id].set_user_attr(SEED, self._constants["seed"])
            config.update(self._constants, optuna_trial=live[trial_id].number)
        return config

    @staticmethod
    def _repeats(study: optuna.Study, config: dict, number: int) -> bool:
        key = (objective_of(config).name, config.get("learning_rate"))
        return any((objective_of(t.params).name, t.params.get("learning_rate")) == key
                   for t in study.get_trials(deepcopy=False, states=_TRIED) if t.number != number)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Training reports carry no `score`; the searcher only learns from finished trials."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        live = compat.searcher_trials(self)
        if result and trial_id in live:
            record_run(live[trial_id], result)
        super().on_trial_complete(trial_id, result, error)


def warm_points(search: SearchSpec, suggestions: list[str], tried: set[str] = frozenset()) -> list[dict]:
    """The warm start: the probe's suggestions (where `probe_warm_start`), then the config's `enqueue` list;
    each as an objective the search allows (`searched`), those not yet tried, in that order. The probe's
    guesses come first because they are the pair's own: where the budget is small they are the trials that
    find the best soonest (bench/search_efficiency.py); `enqueue` holds what every pair is compared with."""
    names = (list(suggestions) if search.probe_warm_start else []) + list(search.enqueue)
    allowed = (searched(n, search) for n in names)
    return [point_of(n, search) for n in dict.fromkeys(n for n in allowed if n) if n not in tried]


def searched(name: str, search: SearchSpec) -> str | None:
    """`name` if the search allows its family; for a cut family it does not, the twin it does allow (the same
    cut on the same side of p with the other loss: `OnlyTopP-0.5` -> `OnlyTopLogP-0.5`), since the cut, which
    tokens train, is the point of the suggestion; else None."""
    obj = parse_objective(name)
    if obj.family in search.families:
        return obj.name
    twin = next((f for f in search.families if obj.spec.side and SPECS[f].side == obj.spec.side
                 and SPECS[f].param == obj.spec.param), None)
    return Objective(twin, threshold=obj.threshold).name if twin else None


def search_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """The sampler that proposes after the warm start."""
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=4)


def record_run(trial: optuna.Trial, result: dict) -> None:
    """Keep a scored run's per-item outcomes (`stats.Outcomes`, sent as JSON by the trial) with its Optuna
    trial: the study is what the report reads, and they are what its intervals and paired comparisons need."""
    if result.get(ITEMS):
        trial.set_user_attr(ITEMS, json.loads(result[ITEMS]))
