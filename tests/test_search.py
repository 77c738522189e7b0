"""The search space and the Optuna searcher on a real Optuna RDB storage (no cluster needed)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search import Searcher

from alphasweep.config import ConfigError, SearchSpec
from alphasweep.objectives import parse_objective
from alphasweep.orchestrator.results import pair_summary
from alphasweep.orchestrator.space import (
    ObjectiveSampler,
    PairSearch,
    SearchSpace,
    objective_of,
    point_of,
    searched,
    warm_points,
)
from alphasweep.orchestrator.sweep import fail_stale_trials


def test_every_trial_has_every_parameter_and_stores_what_it_trains_with():
    """Every trial carries the same parameters (so importance compares like with like): the family, its place on
    the alpha axis, and a cut where the family has one (no cut otherwise); searched values have 3 significant
    digits, so the stored parameters name exactly the objective trained."""
    search = SearchSpec(families=["nll", "p", "dft", "general", "top_logp", "bottom_quantile_p"],
                        alpha={"low": -1, "high": 16}, threshold={"low": 0.1, "high": 0.9})
    space = SearchSpace(search)
    study = optuna.create_study(sampler=ObjectiveSampler(space, optuna.samplers.RandomSampler(seed=0)))
    study.optimize(lambda t: space(t) or 0.0, n_trials=60)
    assert set(space.distributions) == {"family", "alpha", "min_p", "max_quantile"}
    seen = set()
    for t in study.trials:
        obj = objective_of(t.params)
        seen.add(obj.family)
        assert set(t.params) == set(space.distributions)
        assert t.params["alpha"] == obj.effective_alpha
        assert t.params["min_p"] == (obj.threshold if obj.family == "top_logp" else 0.0)
        assert t.params["max_quantile"] == (obj.threshold if obj.family == "bottom_quantile_p" else 1.0)
        assert objective_of(t.params) == parse_objective(obj.name)  # the name says the stored values exactly
        for value in (obj.alpha, obj.threshold):
            assert value is None or value == float(f"{value:.3g}")
        if obj.family == "general":
            assert -1 <= obj.alpha <= 16
    assert seen == set(search.families)
    parameterless = [t for t in study.trials if t.params["family"] in ("nll", "p", "dft")]
    assert len(parameterless) == 3  # each ran once; later draws went to families with something left to try


def test_enqueued_names_become_points_and_foreign_families_are_refused():
    search = SearchSpec(families=["nll", "p", "general", "top_p"])
    assert point_of("original", search) == {"family": "nll", "alpha": 0.0, "min_p": 0.0}
    assert point_of("GeneralFamily-4", search) == {"family": "general", "alpha": 4.0, "min_p": 0.0}
    assert point_of("OnlyTopP-0.5", search) == {"family": "top_p", "alpha": 1.0, "min_p": 0.5}
    assert objective_of(point_of("OnlyTopP-0.5", search)).name == "OnlyTopP-0.5"
    with pytest.raises(ConfigError, match="dft.*not in search.families"):
        point_of("dft", search)
    assert SearchSpace(search).distributions["alpha"].log is False  # NLL's 0 has no place on a log axis
    assert SearchSpace(SearchSpec(families=["general"])).distributions["alpha"].log is True


def _searcher(storage, name="m/d", points=None, signal=None):
    return PairSearch(SearchSpace(SearchSpec(families=["nll", "p", "general"])), metric="score", mode="max",
                      points_to_evaluate=points, study_name=name, storage=storage, signal=signal,
                      sampler=optuna.samplers.TPESampler(seed=0), constants={"train_learning_rate": 1e-3, "seed": 0})


def test_trials_stopped_early_reach_optuna_as_pruned_not_complete(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = _searcher(storage, points=[point_of("p", SearchSpec())], signal=("heldout_nll", "min"))
    first = searcher.suggest("t1")
    assert first["family"] == "p" and first["optuna_trial"] == 0 and first["train_learning_rate"] == 1e-3
    second = searcher.suggest("t2")
    assert objective_of(second).name != "p"  # the running `p` is not proposed again

    # training reports carry the scheduler's signal, never the search metric: no KeyError
    for step, nll in ((4, 2.0), (8, 1.5)):
        searcher.on_trial_result("t1", {"step": step, "heldout_nll": nll, "training_iteration": step // 4})
    searcher.on_trial_result("t2", {"step": 4, "heldout_nll": 3.0, "training_iteration": 1})
    searcher.on_trial_result("t2", {"step": 6, "loss": 0.1, "training_iteration": 2})
    searcher.on_trial_complete("t1", {"score": 0.75})
    # ASHA stopped it on its report at step 8, which Tune passes only to on_trial_complete: no score
    searcher.on_trial_complete("t2", {"step": 8, "heldout_nll": 2.5, "training_iteration": 3})

    study = optuna.load_study(study_name="m/d", storage=storage)
    by_number = {t.number: t for t in study.trials}
    assert by_number[0].state == TrialState.COMPLETE and by_number[0].value == 0.75
    pruned = by_number[second["optuna_trial"]]
    # a stopped trial's value is its last signal, oriented like the score (NLL negated): below any accuracy
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {4: -3.0, 8: -2.5}
    assert pruned.value == -2.5
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


def test_no_objective_is_proposed_twice_and_no_proposal_fails(tmp_path):
    """TPE soon prefers the best objective it has seen; when that is a parameterless one already run (NLL), the
    sampler takes the nearest untried point instead, so the study never holds a failed or repeated trial."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = PairSearch(SearchSpace(SearchSpec(families=["nll", "p", "general"])), metric="score", mode="max",
                          points_to_evaluate=[point_of("original", SearchSpec()), point_of("p", SearchSpec())],
                          study_name="m/d", storage=storage, constants={},
                          sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True,
                                                             n_startup_trials=2))
    names = []
    for i in range(10):
        config = searcher.suggest(f"t{i}")
        names.append(objective_of(config).name)
        searcher.on_trial_complete(f"t{i}", {"score": 0.9 if i == 0 else 0.1 * (i % 5)})  # NLL is best
    assert len(set(names)) == 10, names
    study = optuna.load_study(study_name="m/d", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 10
    assert [t.user_attrs["objective"] for t in study.trials] == names


def test_a_finite_space_ends_the_search_once_every_objective_has_run(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    search = SearchSpec(families=["nll", "p"])
    searcher = PairSearch(SearchSpace(search), metric="score", mode="max",
                          points_to_evaluate=[point_of("original", search)], study_name="m/d", storage=storage,
                          sampler=optuna.samplers.TPESampler(seed=0), constants={})
    for i in range(2):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"score": 0.5})
    assert searcher.suggest("t2") == Searcher.FINISHED
    study = optuna.load_study(study_name="m/d", storage=storage)
    assert sorted(objective_of(t.params).name for t in study.trials) == ["original", "p"]


def test_warm_start_runs_the_probes_suggestions_in_searched_families_then_the_enqueued_baselines():
    search = SearchSpec(families=["nll", "p", "general", "top_logp"], enqueue=["original", "p"])
    strong = ["OnlyTopP-0.5", "GeneralFamily-4", "p"]  # top_p is not searched: its searched twin runs instead
    assert searched("OnlyTopP-0.5", search) == "OnlyTopLogP-0.5" and searched("dft", search) is None
    names = [objective_of(p).name for p in warm_points(search, strong)]
    assert names == ["OnlyTopLogP-0.5", "GeneralFamily-4", "p", "original"]
    assert [objective_of(p).name for p in warm_points(search, strong, tried={"p", "original"})] == [
        "OnlyTopLogP-0.5", "GeneralFamily-4"]
    no_probe = search.model_copy(update={"probe_warm_start": False})
    assert [objective_of(p).name for p in warm_points(no_probe, strong)] == ["original", "p"]
    assert searched("OnlyBottomLogP-0.2", SearchSpec(families=["nll", "bottom_p"])) == "OnlyBottomP-0.2"


def test_the_schedulers_signal_becomes_intermediate_values_higher_is_better(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db")
    searcher = PairSearch(SearchSpace(SearchSpec()), metric="score", mode="max", study_name="m/d", storage=storage,
                          sampler=optuna.samplers.RandomSampler(seed=0), constants={}, signal=("heldout_nll", "min"))
    searcher.suggest("a")
    for step, nll in ((4, 2.0), (8, 1.5)):
        searcher.on_trial_result("a", {"step": step, "heldout_nll": nll, "training_iteration": step // 4})
    searcher.on_trial_result("a", {"step": 9, "loss": 0.1, "training_iteration": 3})
    searcher.annotate("a", "mlflow_run_id", "abc")
    searcher.on_trial_complete("a", {"score": 0.75})
    (trial,) = optuna.load_study(study_name="m/d", storage=storage).trials
    assert trial.intermediate_values == {4: -2.0, 8: -1.5} and trial.value == 0.75
    assert trial.user_attrs["mlflow_run_id"] == "abc"
