"""The read-only view of a sweep's results in its Optuna storage: studies, finished trials, pair summaries.

The Optuna storage is the record of a sweep (MLflow mirrors it for browsing): per (model, domain) pair, a
study of the search (one trial per objective tried, first seed) and a study of its repeats (other seeds,
the confirmation stage; `repeats.py`). Every scored run keeps its per-item outcomes as a user attribute, so
the summary can say how sure it is: an interval per objective and paired comparisons of the best objective
with NLL and with the runner-up (`stats.py`). The sweep driver and the report both read it through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from alphasweep.objectives import parse_objective
from alphasweep.orchestrator.space import ITEMS, MLFLOW_RUN, SEED, objective_of
from alphasweep.stats import Outcomes, SeedSummary, compare, over_seeds

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # ran to the end, or stopped early by the scheduler
STAGE, OF_TRIAL = "stage", "of_trial"  # user attrs of a repeat: `seeds` or `confirm`; the search trial it repeats
NLL = "original"


def study_name(model: str, domain: str) -> str:
    return f"{model}/{domain}"


def repeats_study_name(pair: str) -> str:
    """The pair's repeats live in a study of their own, which no sampler reads."""
    return f"{pair}/repeats"


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study | None:
    """The study, or None before its first trial."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def finished_trials(storage: optuna.storages.BaseStorage, name: str) -> list[FrozenTrial]:
    study = load_study(storage, name)
    return [] if study is None else study.get_trials(deepcopy=False, states=FINISHED)


def objective_name(trial: FrozenTrial) -> str:
    return objective_of(trial.params).name


def _complete(study: optuna.Study | None) -> list[FrozenTrial]:
    if study is None:
        return []
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]


@dataclass(frozen=True)
class Run:
    """One scored training run: its score and, where recorded, its per-item outcomes."""

    score: float
    outcomes: Outcomes | None

    @classmethod
    def of(cls, trial: FrozenTrial) -> Run:
        items = trial.user_attrs.get(ITEMS)
        return cls(trial.value, Outcomes.from_json(items) if items else None)


@dataclass
class Candidate:
    """One objective of a pair (with its learning rate, where that is searched) and its runs, one per seed.

    A repeated proposal with the same seed is the same experiment: the first run of a seed counts."""

    objective: str
    params: dict
    trial: int  # the search trial that first ran it
    mlflow_run: str | None = None  # that trial's MLflow run
    runs: dict[int | None, Run] = field(default_factory=dict)  # seed -> run (None: recorded before seeds)
    confirmed: bool = False  # a finalist of the confirmation stage

    def summary(self, seeds: Iterable[int | None] | None = None) -> SeedSummary:
        """Mean, spread and t interval over its seeds (or over those of `seeds` it has)."""
        chosen = [r.score for s, r in self.runs.items() if seeds is None or s in seeds]
        return over_seeds(chosen, bounds=(0, 1)) if chosen else SeedSummary(float("-inf"), 0.0, 0, None)

    def interval(self) -> tuple[list[float], str] | tuple[None, None]:
        """The 95% interval of its score: over items for one run; over several seeds, the envelope of the t
        interval over seeds and the interval over items of its runs pooled (seeds vary the training, the
        items are one sample of the benchmark: either can be the wider)."""
        seeds = self.summary().interval
        outcomes = [r.outcomes for r in self.runs.values() if r.outcomes]
        items = Outcomes.pooled(outcomes).interval() if len(outcomes) == len(self.runs) else None
        if seeds is None or items is None:
            chosen = seeds or items
            return (chosen.as_list(), chosen.method) if chosen else (None, None)
        return [min(seeds.low, items.low), max(seeds.high, items.high)], f"t over seeds and {items.method} over items"


def candidates(search: optuna.Study, repeats: optuna.Study | None = None) -> list[Candidate]:
    """Every objective with a complete search trial, with its runs over seeds (search and repeats)."""
    by_key: dict[tuple, Candidate] = {}
    by_trial: dict[int, Candidate] = {}
    for t in _complete(search):
        key = (objective_name(t), t.params.get("learning_rate"))
        c = by_key.setdefault(key, Candidate(key[0], dict(t.params), t.number, t.user_attrs.get(MLFLOW_RUN)))
        c.runs.setdefault(t.user_attrs.get(SEED), Run.of(t))
        by_trial[t.number] = c
    for t in _complete(repeats):
        c = by_trial.get(t.user_attrs[OF_TRIAL])
        if c is not None:
            c.runs.setdefault(t.user_attrs[SEED], Run.of(t))
            c.confirmed |= t.user_attrs[STAGE] == "confirm"
    return list(by_key.values())


def ranked(cands: list[Candidate]) -> list[Candidate]:
    """Best first by the mean over all of their seeds; after a confirmation stage its finalists come first."""
    return sorted(cands, key=lambda c: (not c.confirmed, -c.summary().mean))


def _per_objective(order: list[Candidate]) -> list[Candidate]:
    """The first candidate of each objective in `order`: an objective run with several learning rates shows
    its best."""
    first: dict[str, Candidate] = {}
    for c in order:
        first.setdefault(c.objective, c)
    return list(first.values())


def comparison(a: Candidate, b: Candidate) -> dict | None:
    """`a - b` paired on the seeds both ran and the items both were scored on; None without per-item outcomes."""
    seeds = [s for s, r in a.runs.items()
             if r.outcomes and s in b.runs and b.runs[s].outcomes and r.outcomes.same_items(b.runs[s].outcomes)]
    if not seeds:
        return None
    c = compare([a.runs[s].outcomes for s in seeds], [b.runs[s].outcomes for s in seeds])
    return {"objective": b.objective, "difference": c.difference, "ci": c.interval.as_list(),
            "method": c.interval.method, "seeds": seeds, "p_value": c.p_value, "decided": c.decided}


def pair_summary(study: optuna.Study, model: str, domain: str, repeats: optuna.Study | None = None) -> dict:
    """The pair's objectives over their seeds, the best one, and how sure that is.

    `scores[name]` is an objective's mean over its seeds; `objectives[name]` adds its spread, its 95%
    interval, its per-seed scores and the MLflow run of its search trial. The best is the first of `ranked`;
    `vs_nll` and `vs_runner_up` are paired comparisons (difference, interval) with NLL and with the second;
    `decided` says whether the interval of `vs_runner_up` excludes 0, and `verdict` says it in a sentence.
    """
    order = ranked(candidates(study, repeats))
    objectives: dict[str, dict] = {}
    for c in _per_objective(order):
        s = c.summary()
        ci, method = c.interval()
        objectives[c.objective] = {
            "score": s.mean, "std": s.std, "ci": ci, "ci_method": method,
            "seeds": {str(seed): r.score for seed, r in c.runs.items()},
            "n_items": next((r.outcomes.n for r in c.runs.values() if r.outcomes), None),
            "confirmed": c.confirmed, "mlflow_run_id": c.mlflow_run}
    best = order[0] if order else None
    nll = next((c for c in order if c.objective == NLL), None)
    vs_nll = comparison(best, nll) if best and nll and nll is not best else None
    vs_runner_up = comparison(best, order[1]) if len(order) > 1 else None
    probe = study.user_attrs.get("probe", {})
    summary = {
        "model": model, "domain": domain, "continuum": probe.get("continuum"),
        "probe_mean_p": probe.get("probe_mean_p"),
        "best_objective": best.objective if best else None,
        "best_score": objectives[best.objective]["score"] if best else None,
        "best_ci": objectives[best.objective]["ci"] if best else None,
        "scores": {name: o["score"] for name, o in objectives.items()},
        "objectives": objectives,
        "vs_nll": vs_nll, "vs_runner_up": vs_runner_up,
        "decided": bool(vs_runner_up and vs_runner_up["decided"]),
        "seeds": sorted({s for c in order for s in c.runs if s is not None}),
        "trials": len(_complete(study)),
        "stopped_early": len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
        "failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
    }
    summary["verdict"] = verdict(summary, len(order))
    return summary


def _points(c: dict) -> str:
    low, high = c["ci"]
    return f"{100 * c['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] points"


def verdict(summary: dict, objectives: int) -> str:
    """"best: X, ahead of NLL by d [lo, hi]" or "tie: X and Y cannot be told apart on these items"."""
    best, nll, up = summary["best_objective"], summary["vs_nll"], summary["vs_runner_up"]
    if best is None:
        return "no objective scored yet"
    if objectives == 1:
        return f"best: {best} (the only objective scored)"
    if up is None:
        return f"best: {best} (no per-item outcomes recorded to compare it with)"
    runner_up = up["objective"]
    if not summary["decided"]:
        where = "these items" + (f" and {len(up['seeds'])} seeds" if len(up["seeds"]) > 1 else "")
        text = f"tie: {best} and {runner_up} cannot be told apart on {where} ({best} - {runner_up}: {_points(up)})"
        return text + (f"; {best} - NLL: {_points(nll)}" if nll and runner_up != NLL else "")
    said = []
    if nll:
        said.append(f"ahead of NLL by {_points(nll)}" if nll["decided"]
                    else f"not told apart from NLL ({_points(nll)})")
    if runner_up != NLL or not nll:
        said.append(f"ahead of the runner-up {runner_up} by {_points(up)}")
    return f"best: {best}, " + ", ".join(said)


def alpha_points(search: optuna.Study, repeats: optuna.Study | None = None) -> list[tuple[float, float]]:
    """(place on the alpha axis, mean score over seeds) of the pair's objectives, sorted by alpha."""
    return sorted((objective_of(c.params).effective_alpha, c.summary().mean) for c in candidates(search, repeats))


def objective_table(summary: dict) -> list[dict]:
    """The pair summary's objectives as rows (MLflow's results table), best first: the mean score over its
    seeds with its 95% interval beside it, how many seeds the mean is over, its place on the alpha axis, its
    cut (where it has one) and the MLflow run of its search trial. A new column is a new key."""
    rows = []
    for name, o in summary["objectives"].items():
        obj, (low, high) = parse_objective(name), o["ci"] or (None, None)
        rows.append({"objective": name, "score": o["score"], "ci_low": low, "ci_high": high, "seeds": len(o["seeds"]),
                     "alpha": obj.effective_alpha, "threshold": obj.threshold, "mlflow_run_id": o["mlflow_run_id"]})
    return rows
