"""Seeds, the confirmation stage and the pair summary's intervals, on a real Optuna storage, driven through the
sweep's own searchers as Tune would drive them (no cluster: each trial's result is made up here)."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from alphasweep.config import SearchSpec, SweepConfig
from alphasweep.orchestrator.repeats import RepeatSearch, missing_confirmations, missing_seeds, pending
from alphasweep.orchestrator.results import load_study, objective_table, pair_summary, repeats_study_name
from alphasweep.orchestrator.space import MLFLOW_RUN, PairSearch, SearchSpace, objective_of, point_of
from alphasweep.orchestrator.sweep import fail_stale_trials
from alphasweep.stats import Outcomes

ACCURACY = {"original": 0.45, "p": 0.70, "GeneralFamily-4": 0.72}  # what each objective scores, give or take
NAME = "tiny/d"


def _cfg(**over) -> SweepConfig:
    return SweepConfig.model_validate({
        "name": "t", "output_dir": "/tmp/unused", "models": [{"name": "tiny", "path": "m"}],
        "domains": [{"name": "d", "train": {"path": "x.jsonl"}, "benchmarks": [{"name": "b", "path": "b.jsonl"}]}],
        "search": {"families": ["nll", "p", "general"], "enqueue": list(ACCURACY)}, **over})


def _result(config: dict, rng) -> dict:
    """A scored run: 200 items, each right with the objective's accuracy (per seed, a fresh draw)."""
    outcomes = Outcomes(1, {"b": (rng.random(200) < ACCURACY[objective_of(config).name]).astype(int).tolist()})
    return {"score": outcomes.score(), "items": json.dumps(outcomes.to_json())}


def _search(storage, cfg: SweepConfig, rng) -> optuna.Study:
    search = cfg.search
    searcher = PairSearch(SearchSpace(search), metric="score", mode="max", study_name=NAME, storage=storage,
                          points_to_evaluate=[point_of(n, search) for n in search.enqueue],
                          sampler=optuna.samplers.TPESampler(seed=0), constants={"seed": cfg.sweep_seeds()[0]})
    for i in range(len(search.enqueue)):
        config = searcher.suggest(f"s{i}")
        searcher.annotate(f"s{i}", MLFLOW_RUN, f"run of {objective_of(config).name}")
        searcher.on_trial_complete(f"s{i}", _result(config, rng))
    return load_study(storage, NAME)


def _repeat(storage, todo, rng, fail: str | None = None) -> optuna.Study:
    """Drive a RepeatSearch over `todo` as Tune would; the objective named `fail` crashes."""
    study = optuna.create_study(study_name=repeats_study_name(NAME), storage=storage, direction="maximize",
                                load_if_exists=True)
    searcher = RepeatSearch(study, todo, constants={"train_learning_rate": 1e-3})
    for i in range(len(todo)):
        config = searcher.suggest(f"r{i}")
        searcher.annotate(f"r{i}", MLFLOW_RUN, f"run of a repeat of {objective_of(config).name}")
        assert config["seed"] == todo[i].seed and config["stage"] == todo[i].stage
        crashed = objective_of(config).name == fail
        searcher.on_trial_complete(f"r{i}", None if crashed else _result(config, rng), error=crashed)
    assert searcher.suggest("done") == RepeatSearch.FINISHED
    return study


def test_seeds_then_confirmation_choose_the_best_by_its_mean_and_keep_the_sampler_out_of_it(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    cfg = _cfg(seeds=[0, 1, 2], confirm={"top_k": 1, "seeds": 1})
    rng = np.random.default_rng(0)
    study = _search(storage, cfg, rng)
    assert {t.user_attrs["seed"] for t in study.trials} == {0}

    todo = missing_seeds(cfg, study, None)
    assert [(r.candidate.objective, r.seed) for r in todo] == [(n, s) for n in ACCURACY for s in (1, 2)]
    assert missing_confirmations(cfg, study, None)[0].seed == 3  # new seeds follow the sweep's
    repeats = _repeat(storage, todo, rng, fail="p")  # p's two repeats crash: they stay missing
    assert [(r.candidate.objective, r.seed) for r in missing_seeds(cfg, study, repeats)] == [("p", 1), ("p", 2)]
    assert pending(cfg, storage, NAME) == 2
    repeats = _repeat(storage, missing_seeds(cfg, study, repeats), rng)

    finalists = missing_confirmations(cfg, study, repeats)
    assert [(r.candidate.objective, r.seed, r.stage) for r in finalists] in (
        [("GeneralFamily-4", 3, "confirm")], [("p", 3, "confirm")])
    repeats = _repeat(storage, finalists, rng)
    assert pending(cfg, storage, NAME) == 0
    # the search study holds one trial per objective: the sampler never saw a repeat
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert {t.user_attrs["stage"] for t in repeats.get_trials(states=(TrialState.COMPLETE,))} == {"seeds", "confirm"}

    summary = pair_summary(study, "tiny", "d", repeats)
    best = summary["best_objective"]
    assert best == finalists[0].candidate.objective and summary["objectives"][best]["confirmed"]
    assert set(summary["objectives"][best]["seeds"]) == {"0", "1", "2", "3"} and summary["seeds"] == [0, 1, 2, 3]
    nll = summary["objectives"]["original"]
    assert nll["score"] == pytest.approx(np.mean(list(nll["seeds"].values())))
    assert nll["std"] == pytest.approx(np.std(list(nll["seeds"].values()), ddof=1))
    assert nll["ci_method"] == "t over seeds and bootstrap over items" and nll["ci"][0] < nll["score"] < nll["ci"][1]
    assert summary["scores"] == {n: o["score"] for n, o in summary["objectives"].items()}
    # MLflow's results table: the summary's means with their intervals beside them, linked to the search runs
    rows = objective_table(summary)
    assert [r["objective"] for r in rows] == list(summary["objectives"]) and rows[0]["objective"] == best
    for r in rows:
        o = summary["objectives"][r["objective"]]
        assert ([r["score"], [r["ci_low"], r["ci_high"]], r["seeds"]]) == [o["score"], o["ci"], len(o["seeds"])]
        assert r["mlflow_run_id"] == f"run of {r['objective']}"
    assert rows[0]["seeds"] == 4 and list(rows[0])[:4] == ["objective", "score", "ci_low", "ci_high"]
    assert repeats.trials[0].user_attrs[MLFLOW_RUN].startswith("run of a repeat of ")

    # ahead of NLL by ~27 points on every seed: decided; p and GeneralFamily-4 (2 points apart): a tie
    vs_nll, vs_up = summary["vs_nll"], summary["vs_runner_up"]
    assert vs_nll["seeds"] == [0, 1, 2] and vs_nll["decided"] and vs_nll["ci"][0] > 0.1
    assert vs_nll["method"] == "paired bootstrap over items and t over 3 seeds"
    assert vs_up["objective"] in ("p", "GeneralFamily-4") and vs_up["objective"] != best
    assert not vs_up["decided"] and summary["decided"] is False
    assert summary["verdict"].startswith(f"tie: {best} and {vs_up['objective']} cannot be told apart on these "
                                         "items and 3 seeds")


def test_one_seed_uses_wilson_and_mcnemar_and_says_best_ahead_of_nll(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    cfg = _cfg(search={"families": ["nll", "general"], "enqueue": ["original", "GeneralFamily-4"]})
    study = _search(storage, cfg, np.random.default_rng(1))
    assert missing_seeds(cfg, study, None) == [] and missing_confirmations(cfg, study, None) == []
    summary = pair_summary(study, "tiny", "d", load_study(storage, repeats_study_name(NAME)))
    best = summary["objectives"]["GeneralFamily-4"]
    assert summary["best_objective"] == "GeneralFamily-4" and best["ci_method"] == "wilson" and best["n_items"] == 200
    assert summary["best_ci"] == best["ci"] and best["ci"][0] < best["score"] < best["ci"][1]
    vs_nll = summary["vs_nll"]
    assert vs_nll == summary["vs_runner_up"] and vs_nll["method"] == "exact McNemar" and vs_nll["p_value"] < 0.05
    assert vs_nll["difference"] == pytest.approx(best["score"] - summary["scores"]["original"])
    assert summary["decided"] and summary["verdict"].startswith("best: GeneralFamily-4, ahead of NLL by +")


def test_a_repeat_left_running_by_a_dead_driver_is_failed_and_run_again(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    cfg = _cfg(seeds=[0, 1])
    rng = np.random.default_rng(2)
    study = _search(storage, cfg, rng)
    repeats = optuna.create_study(study_name=repeats_study_name(NAME), storage=storage, direction="maximize")
    searcher = RepeatSearch(repeats, missing_seeds(cfg, study, None), constants={})
    config = searcher.suggest("r0")  # the driver dies while it trains
    assert repeats.trials[0].state == TrialState.RUNNING and config["stage"] == "seeds"
    assert len(missing_seeds(cfg, study, repeats)) == 3  # RUNNING is not done
    assert fail_stale_trials(storage, repeats_study_name(NAME)) == 1
    _repeat(storage, missing_seeds(cfg, study, repeats), rng)
    assert pending(cfg, storage, NAME) == 0


def test_seeds_and_confirm_in_the_config():
    assert _cfg().sweep_seeds() == [0] and _cfg(train={"seed": 7}).sweep_seeds() == [7]
    cfg = _cfg(seeds=[3, 1], confirm={"top_k": 2, "seeds": 2})
    assert cfg.sweep_seeds() == [3, 1] and cfg.confirm_seeds() == [4, 5] and _cfg().confirm_seeds() == []
    with pytest.raises(ValueError, match="seeds must be distinct"):
        _cfg(seeds=[1, 1])
    assert SearchSpec().probe_warm_start  # the default warm start is unchanged
