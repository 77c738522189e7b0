"""The stages after the search: objectives it ran, trained again with other seeds.

- seeds (`seeds: [s0, s1, ...]`): the search trains every objective with the first seed; this stage trains
  each with every further seed, so the report averages over seeds.
- confirm (`confirm: {top_k, seeds}`): the top-k objectives by their mean over the sweep's seeds are
  trained with `confirm.seeds` new seeds; the best objective is the finalist with the best mean over all
  of its seeds (`results.pair_summary`).

A seed sets the training seed and so the data order and held-out split (`train.seed`). Repeats are kept out
of the search's study, so its sampler learns only from the search trials, one per objective: each repeat
is a trial of the pair's repeats study (`<model>/<domain>/repeats`), which no sampler reads, holding the
search trial it repeats, its seed and stage as user attributes. As in the search, a repeat is RUNNING while
it trains and COMPLETE once scored: `--resume` fails those a killed driver left RUNNING and runs what is
still missing, and `--extend` adds search trials whose repeats follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from alphasweep.config import SweepConfig
from alphasweep.orchestrator.results import OF_TRIAL, STAGE, Candidate, candidates, load_study, repeats_study_name
from alphasweep.orchestrator.space import SEED, record_run


@dataclass(frozen=True)
class Repeat:
    """One run to add: the search trial's objective (its params) with another seed."""

    candidate: Candidate
    seed: int
    stage: str  # "seeds" or "confirm"

    def config(self) -> dict:
        return {**self.candidate.params, "seed": self.seed, "stage": self.stage}


def missing_seeds(cfg: SweepConfig, search: optuna.Study, repeats: optuna.Study | None) -> list[Repeat]:
    """Every objective the search ran, with each of the sweep's further seeds it still lacks."""
    return [Repeat(c, seed, "seeds") for c in candidates(search, repeats) for seed in cfg.sweep_seeds()[1:]
            if seed not in c.runs]


def missing_confirmations(cfg: SweepConfig, search: optuna.Study, repeats: optuna.Study | None) -> list[Repeat]:
    """The finalists (top-k by the mean over the sweep's seeds) with each confirmation seed they still lack."""
    if cfg.confirm is None:
        return []
    sweep_seeds = set(cfg.sweep_seeds())
    ranked = sorted(candidates(search, repeats), key=lambda c: -c.summary(sweep_seeds).mean)
    return [Repeat(c, seed, "confirm") for c in ranked[: cfg.confirm.top_k] for seed in cfg.confirm_seeds()
            if seed not in c.runs]


def pending(cfg: SweepConfig, storage: optuna.storages.BaseStorage, name: str) -> int:
    """How many repeats the pair still needs, as things stand (confirmation waits for the seeds stage)."""
    search = load_study(storage, name)
    if search is None:
        return 0
    repeats = load_study(storage, repeats_study_name(name))
    return len(missing_seeds(cfg, search, repeats) or missing_confirmations(cfg, search, repeats))


class RepeatSearch(Searcher):
    """A Tune searcher that hands out a fixed list of repeats and records each as a trial of the repeats study."""

    def __init__(self, study: optuna.Study, todo: list[Repeat], constants: dict):
        super().__init__(metric="score", mode="max")
        self.study, self._todo, self._constants = study, list(todo), constants
        self._live: dict[str, optuna.Trial] = {}

    def suggest(self, trial_id: str) -> dict | None:
        if not self._todo:
            return Searcher.FINISHED
        repeat = self._todo.pop(0)
        trial = self.study.ask()
        trial.set_user_attr(OF_TRIAL, repeat.candidate.trial)
        trial.set_user_attr(SEED, repeat.seed)
        trial.set_user_attr(STAGE, repeat.stage)
        self._live[trial_id] = trial
        return {**repeat.config(), **self._constants, "optuna_trial": trial.number}

    def annotate(self, trial_id: str, key: str, value) -> None:
        """A user attribute on the repeat's trial (e.g. its MLflow run id)."""
        if trial_id in self._live:
            self._live[trial_id].set_user_attr(key, value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._live.pop(trial_id)
        if result and result.get("score") is not None:
            record_run(trial, result)
            self.study.tell(trial, result["score"])
        else:
            self.study.tell(trial, state=TrialState.FAIL)
