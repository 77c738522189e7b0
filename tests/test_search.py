"""The search space and the Optuna searcher on a real Optuna RDB storage (no cluster needed)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from alphasweep import compat
from alphasweep.config import ConfigError, SearchSpec
from alphasweep.orchestrator.results import pair_summary
from alphasweep.orchestrator.space import PairSearch, SearchSpace, objective_of, point_of, searched, warm_points
from alphasweep.orchestrator.sweep import fail_stale_trials


def test_space_draws_alpha_only_for_general_and_a_cut_only_for_thresholds():
    search = SearchSpec(families=["nll", "p", "dft", "general", "top_logp", "bottom_quantile_p"],
                        alpha={"low": -1, "high": 16}, threshold={"low": 0.1, "high": 0.9})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: SearchSpace(search)(t) or 0.0, n_trials=100)
    seen = set()
    for t in study.trials:
        family = t.params["family"]
        seen.add(family)
        expected = {"family"} | ({"alpha"} if family == "general" else set()) | (
            {"threshold"} if family in ("top_logp", "bottom_quantile_p") else set())
        assert set(t.params) == expected
        obj = objective_of(t.params)  # every draw is a valid objective
        assert obj.family == family
        if family == "general":
            assert -1 <= t.params["alpha"] <= 16
    assert seen == set(search.families)


def test_enqueued_names_become_points_and_foreign_families_are_refused():
    search = SearchSpec(families=["nll", "p", "general", "top_p"])
    assert point_of("original", search) == {"family": "nll"}
    assert point_of("GeneralFamily-4", search) == {"family": "general", "alpha": 4.0}
    assert point_of("OnlyTopP-0.5", search) == {"family": "top_p", "threshold": 0.5}
    assert objective_of(point_of("OnlyTopP-0.5", search)).name == "OnlyTopP-0.5"
    with pytest.raises(ConfigError, match="dft.*not in search.families"):
        point_of("dft", search)


def _searcher(storage, name="m/d", points=None):
    return PairSearch(SearchSpace(SearchSpec(families=["nll", "p", "general"])), metric="score", mode="max",
                      points_to_evaluate=points, study_name=name, storage=storage,
                      sampler=optuna.samplers.TPESampler(seed=0), constants={"train_learning_rate": 1e-3, "seed": 0})


def test_trials_stopped_early_reach_optuna_as_pruned_not_complete(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = _searcher(storage, points=[{"family": "p"}])
    first = searcher.suggest("t1")
    assert first["family"] == "p" and first["optuna_trial"] == 0 and first["train_learning_rate"] == 1e-3
    second = searcher.suggest("t2")
    assert objective_of(second).name != "p"  # a repeat of the running `p` would have been redrawn

    # training reports carry the intermediate signal, never the search metric: no KeyError
    for step, nll in ((4, 2.0), (8, 1.5)):
        searcher.on_trial_result("t1", {"step": step, "heldout_nll": nll, "training_iteration": step // 4})
        searcher.on_trial_result("t2", {"step": step, "heldout_nll": nll + 1, "training_iteration": step // 4})
    searcher.on_trial_result("t2", {"step": 9, "loss": 0.1, "training_iteration": 3})
    searcher.on_trial_complete("t1", {"score": 0.75, "step": 8})
    searcher.on_trial_complete("t2", {"step": 8, "heldout_nll": 2.5})  # ASHA stopped it: no score

    study = optuna.load_study(study_name="m/d", storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state == TrialState.COMPLETE and by_number[0].value == 0.75
    pruned = by_number[second["optuna_trial"]]
    assert pruned.state == TrialState.PRUNED and pruned.value is None and pruned.intermediate_values == {}
    summary = pair_summary(study, "m", "d")
    assert summary["trials"] == 1 and summary["stopped_early"] == 1 and summary["best_objective"] == "p"


def test_trials_left_running_by_a_dead_driver_are_marked_failed(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = _searcher(storage)
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", {"score": 0.5})
    assert fail_stale_trials(storage, "m/d") == 1
    states = [t.state for t in optuna.load_study(study_name="m/d", storage=storage).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    assert fail_stale_trials(storage, "no/such-study") == 0


def test_a_proposal_that_repeats_an_objective_is_redrawn(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = PairSearch(SearchSpace(SearchSpec(families=["nll", "p", "general"])), metric="score", mode="max",
                          points_to_evaluate=[{"family": "nll"}, {"family": "p"}], study_name="m/d",
                          storage=storage, sampler=optuna.samplers.RandomSampler(seed=0), constants={})
    names = []
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        names.append(objective_of(config).name)
        searcher.on_trial_complete(f"t{i}", {"score": 0.1 * i})
    assert len(set(names)) == 6, names  # nll and p ran once each; later draws are new alphas
    study = optuna.load_study(study_name="m/d", storage=storage)
    skipped = [t for t in study.trials if "skipped" in t.user_attrs]
    assert skipped and all(t.state == TrialState.FAIL for t in skipped)
    assert pair_summary(study, "m", "d")["failed"] == 0


def test_a_sampler_stuck_on_a_run_objective_falls_back_to_random_draws(tmp_path):
    """A sampler that only ever proposes `original` (as a TPE sure of NLL does): after a few redraws the
    proposal comes from random draws; where every objective has run, a repeat runs rather than nothing."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    stuck = optuna.samplers.PartialFixedSampler({"family": "nll"}, optuna.samplers.TPESampler(seed=0))
    searcher = PairSearch(SearchSpace(SearchSpec(families=["nll", "general"])), metric="score", mode="max",
                          points_to_evaluate=[{"family": "nll"}], study_name="m/d", storage=storage,
                          sampler=stuck, constants={})
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", {"score": 0.9})
    config = searcher.suggest("t1")
    assert objective_of(config).family == "general"
    assert compat.searcher_study(searcher).sampler is stuck
    study = optuna.load_study(study_name="m/d", storage=storage)
    assert sum("skipped" in t.user_attrs for t in study.trials) >= 5

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o2.db")
    searcher = PairSearch(SearchSpace(SearchSpec(families=["nll", "p"])), metric="score", mode="max",
                          points_to_evaluate=[{"family": "nll"}, {"family": "p"}], study_name="m/d",
                          storage=storage, sampler=optuna.samplers.TPESampler(seed=0), constants={})
    for i in range(2):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"score": 0.5})
    config = searcher.suggest("t2")  # both objectives have run: the last redraw runs as a repeat
    assert objective_of(config).name in ("original", "p") and "optuna_trial" in config


def test_warm_start_runs_the_probes_suggestions_in_searched_families_then_the_enqueued_baselines():
    search = SearchSpec(families=["nll", "p", "general", "top_logp"], enqueue=["original", "p"])
    strong = ["p", "GeneralFamily-4", "OnlyTopP-0.5"]  # top_p is not searched: its searched twin runs instead
    assert searched("OnlyTopP-0.5", search) == "OnlyTopLogP-0.5" and searched("dft", search) is None
    names = [objective_of(p).name for p in warm_points(search, strong)]
    assert names == ["p", "GeneralFamily-4", "OnlyTopLogP-0.5", "original"]
    assert [objective_of(p).name for p in warm_points(search, strong, tried={"p", "original"})] == [
        "GeneralFamily-4", "OnlyTopLogP-0.5"]
    no_probe = search.model_copy(update={"probe_warm_start": False})
    assert [objective_of(p).name for p in warm_points(no_probe, strong)] == ["original", "p"]
    assert searched("OnlyBottomLogP-0.2", SearchSpec(families=["nll", "bottom_p"])) == "OnlyBottomP-0.2"
