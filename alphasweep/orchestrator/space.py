"""The search over objectives for one pair: the space Optuna searches and the searcher that drives it.

Every trial of a pair's study carries the same parameters, so that Optuna's analyses (optuna-dashboard's
importance, slice and parallel-coordinate plots, TPE's multivariate model) read every trial alike:

- `family`: the objective family;
- `alpha`: the objective's place on the alpha axis (`Objective.effective_alpha`: NLL 0, `p` and `dft` 1,
  GeneralFamily its alpha, a cut family its loss's), searched for the general family, set by the family
  for the others;
- one cut parameter per kind of cut the searched families use, set to "no cut" where a family has none:
  `min_p` (Top*P-q keeps p >= q; 0 otherwise), `max_p` (Bottom*P-q keeps p < q; 1 otherwise),
  `min_quantile` and `max_quantile` (the same for the r of the quantile families);
- `learning_rate`, when it is searched.

A parameter of one family only (alpha only on GeneralFamily trials) would look all-important to the
dashboard's importance, which compares the trials that have it with all trials. `ObjectiveSampler` wraps
the search's sampler (TPE) to set the values a family fixes, to keep searched values at 3 significant
digits inside their configured range (so the stored parameters are the ones trained with), and to draw no
objective the study already holds while an untried one is left. `PairSearch` is Ray Tune's `OptunaSearch`
with what a sweep needs on top: Optuna trial numbers in the configs, the scheduler's signal as intermediate
values, links to MLflow, each run's seed and per-item outcomes as user attributes (what the report's intervals
and paired comparisons read), and an end to the search once a finite space is exhausted. `warm_points` and
`search_sampler` are the warm start and the sampler a sweep searches with (bench/search_efficiency.py replays
them).
"""

from __future__ import annotations

import json
import math
import random

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from alphasweep import compat
from alphasweep.config import ConfigError, RangeSpec, SearchSpec
from alphasweep.objectives import SPECS, Objective, family_spec, parse_objective
from alphasweep.objectives.registry import FamilySpec

OBJECTIVE, MLFLOW_RUN = "objective", "mlflow_run_id"  # user attrs of every trial
SEED, ITEMS = "seed", "items"  # user attrs of every run's Optuna trial: its training seed, its per-item outcomes
GUIDED_REDRAWS = 3  # proposals of the wrapped sampler tried before the untried point nearest to one is taken
_HELD = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)  # tried or to be tried
_NO_CUT = {"min": 0.0, "max": 1.0}


def cut_param(spec: FamilySpec) -> str | None:
    """The study parameter that holds a cut family's q or r: `min_p`, `max_p`, `min_quantile`, `max_quantile`."""
    if spec.field != "threshold":
        return None
    return f"{'min' if spec.side == 'top' else 'max'}_{'p' if spec.param == 'threshold' else 'quantile'}"


def _significant(x: float) -> float:
    """3 significant digits: readable objective names, and no difference a fine-tune could tell."""
    return float(f"{x:.3g}")


def objective_of(config: dict) -> Objective:
    """The objective of a point of the space (an Optuna trial's params or a Tune trial's config)."""
    spec = family_spec(config["family"])
    if spec.field == "alpha":
        return Objective(config["family"], alpha=config["alpha"])
    if spec.field == "threshold":
        return Objective(config["family"], threshold=config[cut_param(spec)])
    return Objective(config["family"])


class SearchSpace:
    """The define-by-run function OptunaSearch calls with an Optuna trial (a class: Tune pickles it), and the
    distribution of every parameter; `ObjectiveSampler` decides the values a family fixes."""

    def __init__(self, search: SearchSpec):
        self.search = search
        specs = [family_spec(f) for f in search.families]
        alphas = [s.fixed_alpha for s in specs if s.fixed_alpha is not None]
        if "general" in search.families:
            alphas += [search.alpha.low, search.alpha.high]
        log = search.alpha.log and min(alphas) > 0  # NLL's 0 has no place on a log scale
        self.distributions: dict[str, BaseDistribution] = {
            "family": CategoricalDistribution(list(search.families)),
            "alpha": FloatDistribution(min(alphas), max(alphas), log=log),
        }
        for spec in specs:
            name = cut_param(spec)
            if name and name not in self.distributions:
                cut = search.threshold
                uncut = any(cut_param(s) != name for s in specs)  # some family leaves this cut at "no cut"
                low = min(cut.low, _NO_CUT["min"]) if uncut and name.startswith("min") else cut.low
                high = max(cut.high, _NO_CUT["max"]) if uncut and name.startswith("max") else cut.high
                self.distributions[name] = FloatDistribution(low, high)
        if search.learning_rate:
            lr = search.learning_rate
            self.distributions["learning_rate"] = FloatDistribution(lr.low, lr.high, log=lr.log)

    def __call__(self, trial: optuna.Trial) -> None:
        for name, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                trial.suggest_categorical(name, list(dist.choices))
            else:
                trial.suggest_float(name, dist.low, dist.high, log=dist.log)

    def searched(self, family: str, name: str) -> RangeSpec | None:
        """The configured range `name` is drawn from for `family`, or None where the family fixes it."""
        spec = family_spec(family)
        if name == "learning_rate":
            return self.search.learning_rate
        if name == "alpha":
            return self.search.alpha if spec.field == "alpha" else None
        return self.search.threshold if name == cut_param(spec) else None

    def fixed(self, family: str, name: str) -> float:
        """The value a family gives a parameter it does not search (its alpha, or "no cut")."""
        if name == "alpha":
            return family_spec(family).fixed_alpha
        return _NO_CUT[name.split("_")[0]]

    def point(self, objective: Objective, learning_rate: float | None = None) -> dict:
        """The full point of the space for an objective (a warm start to enqueue)."""
        spec, point = objective.spec, {"family": objective.family, "alpha": objective.effective_alpha}
        for name in self.distributions:
            if name not in ("family", "alpha", "learning_rate"):
                point[name] = objective.threshold if name == cut_param(spec) else self.fixed(objective.family, name)
        if self.search.learning_rate and learning_rate:
            point["learning_rate"] = learning_rate
        return point

    def key(self, params: dict) -> tuple[str, float | None]:
        """What makes two points the same experiment: the objective and the learning rate."""
        return objective_of(params).name, params.get("learning_rate")

    def fresh_families(self, study: optuna.Study, number: int) -> list[str]:
        """The families with an objective the study does not hold yet: every family with a searched parameter,
        and each parameterless one until it has been tried (any family while the learning rate is searched)."""
        if self.search.learning_rate:
            return list(self.search.families)
        held = {t.params.get("family") for t in study.get_trials(deepcopy=False, states=_HELD) if t.number != number}
        return [f for f in self.search.families if family_spec(f).field is not None or f not in held]

    def held(self, study: optuna.Study, number: int) -> set[tuple]:
        return {self.key(t.params) for t in study.get_trials(deepcopy=False, states=_HELD)
                if t.number != number and "family" in t.params}


def point_of(name: str, search: SearchSpec, learning_rate: float | None = None) -> dict:
    """The point of the space for an objective name; its family must be one the search allows."""
    obj = parse_objective(name)
    if obj.family not in search.families:
        raise ConfigError(
            f"search.enqueue: {name} has family {obj.family!r}, which is not in search.families "
            f"({', '.join(search.families)})"
        )
    return SearchSpace(search).point(obj, learning_rate)


class ObjectiveSampler(optuna.samplers.BaseSampler):
    """Wraps the search's sampler: the family's fixed values, searched values at 3 significant digits inside
    their configured ranges, and no objective the study already holds while an untried one is left (the
    wrapped sampler's proposal is redrawn, then an untried family drawn at random). A repeat is never a trial
    of its own, so the study holds no failed or skipped trials for proposals that were not meant to run."""

    def __init__(self, space: SearchSpace, base: optuna.samplers.BaseSampler, seed: int = 0):
        self.space, self.base = space, base
        self._rng = random.Random(seed)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.base.after_trial(study, trial, state, values)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        if "family" not in search_space:  # the wrapped sampler's start-up: every parameter is drawn alone
            return self.base.sample_relative(study, trial, search_space)
        fresh, held = self.space.fresh_families(study, trial.number), self.space.held(study, trial.number)
        for _ in range(GUIDED_REDRAWS):
            proposal = self.base.sample_relative(study, trial, search_space)
            params = self._settled(proposal)
            if params.get("family") in fresh and self._key(params) not in held:
                return params
        # the wrapped sampler insists on what the study holds (a parameterless objective it found good): of its
        # proposal's values under each untried family, the point nearest to the one it wants (not the same point)
        candidates = [self._settled({**proposal, "family": f}) for f in fresh]
        candidates = [c for c in candidates if self._key(c) not in held and self._distance(c, params) > 0]
        if candidates:
            return min(candidates, key=lambda c: self._distance(c, params))
        family = self._rng.choice(fresh or list(self.space.search.families))
        return {name: family if name == "family" else self._random(family, name) for name in proposal}

    def _distance(self, a: dict, b: dict) -> float:
        """How far apart two points lie, each parameter scaled by the width of its distribution."""
        dists = self.space.distributions
        return sum(abs(a[n] - b[n]) / ((dists[n].high - dists[n].low) or 1.0) for n in a if n != "family" and n in b)

    def _key(self, params: dict) -> tuple | None:
        """The point's experiment, or None where the relative draw leaves its parameter to be drawn alone."""
        try:
            return self.space.key(params)
        except KeyError:
            return None

    def _random(self, family: str, name: str) -> float:
        searched = self.space.searched(family, name)
        if searched is None:
            return self.space.fixed(family, name)
        if searched.log:
            return self._settle(math.exp(self._rng.uniform(math.log(searched.low), math.log(searched.high))), searched)
        return self._settle(self._rng.uniform(searched.low, searched.high), searched)

    def sample_independent(self, study, trial: FrozenTrial, name: str, distribution: BaseDistribution):
        if name == "family":
            fresh = self.space.fresh_families(study, trial.number)
            for _ in range(GUIDED_REDRAWS):
                family = self.base.sample_independent(study, trial, name, distribution)
                if family in fresh or not fresh:
                    return family
            return self._rng.choice(fresh)
        family = trial.params["family"]
        searched = self.space.searched(family, name)
        if searched is None:
            return self.space.fixed(family, name)
        own = FloatDistribution(searched.low, searched.high, log=searched.log)
        return self._settle(self.base.sample_independent(study, trial, name, own), searched)

    def _settled(self, params: dict) -> dict:
        """The family's fixed values in place of what the wrapped sampler drew; searched values rounded."""
        family = params.get("family")
        if family is None:
            return params
        settled = {"family": family}
        for name, value in params.items():
            if name != "family":
                searched = self.space.searched(family, name)
                settled[name] = self.space.fixed(family, name) if searched is None else self._settle(value, searched)
        return settled

    @staticmethod
    def _settle(value: float, searched: RangeSpec) -> float:
        return min(max(_significant(value), searched.low), searched.high)


class PairSearch(OptunaSearch):
    """OptunaSearch for one pair's study: its space sampled through `ObjectiveSampler`, each config tagged
    with its Optuna trial number, the scheduler's signal kept as intermediate values (oriented so that higher
    is better, like the score: a held-out NLL is negated), the objective's name and the trial's MLflow run as
    user attributes, and the search finished once every objective of a finite space has been tried.

    A trial the scheduler stops never reports `score`, so it reaches the study as PRUNED, whose value Optuna
    takes from its last intermediate value; TPE ranks pruned trials below every complete one, and the report
    reads complete trials only."""

    def __init__(self, space: SearchSpace, *args, sampler: optuna.samplers.BaseSampler, constants: dict,
                 signal: tuple[str, str] | None = None, seed: int = 0, **kwargs):
        super().__init__(space, *args, sampler=ObjectiveSampler(space, sampler, seed), **kwargs)
        self._pair_space, self._constants, self._signal = space, constants, signal

    def suggest(self, trial_id: str):
        live = compat.searcher_trials(self)
        study = compat.searcher_study(self)
        if trial_id not in live and self._exhausted(study):
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            trial = live[trial_id]
            trial.set_user_attr(OBJECTIVE, objective_of(config).name)
            if "seed" in self._constants:
                trial.set_user_attr(SEED, self._constants["seed"])
            config.update(self._constants, optuna_trial=trial.number)
        return config

    def _exhausted(self, study: optuna.Study) -> bool:
        """Every objective of a space without a searched parameter has been tried (and none waits to run)."""
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return False
        return not self._pair_space.fresh_families(study, -1)

    def annotate(self, trial_id: str, key: str, value) -> None:
        """A user attribute on the live Optuna trial of a Tune trial (e.g. its MLflow run id)."""
        trial = compat.searcher_trials(self).get(trial_id)
        if trial is not None:
            trial.set_user_attr(key, value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial the scheduler stops ends on a training report, which Tune passes here and not to
        `on_trial_result`: it is the stopped trial's last intermediate value, and so its value. A scored run's
        per-item outcomes are kept with its trial (`record_run`)."""
        if result and not error:
            self.on_trial_result(trial_id, result)
            trial = compat.searcher_trials(self).get(trial_id)
            if trial is not None:
                record_run(trial, result)
        super().on_trial_complete(trial_id, result, error)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Training reports carry no `score`; the signal the scheduler compares becomes an intermediate value."""
        if self._signal is None:
            return
        metric, mode = self._signal
        trial = compat.searcher_trials(self).get(trial_id)
        if trial is not None and metric in result and "step" in result:
            value = float(result[metric])
            trial.report(value if mode == "max" else -value, int(result["step"]))


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
