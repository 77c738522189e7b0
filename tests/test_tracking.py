"""The MLflow side of a sweep on a real sqlite store: run params, the parent's config and results table."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from alphasweep.objectives import parse_objective
from alphasweep.orchestrator import tracking


@pytest.mark.parametrize("name, alpha, threshold", [
    ("original", 0.0, None), ("p", 1.0, None), ("dft", 1.0, None), ("GeneralFamily-0.498", 0.498, None),
    ("OnlyTopLogP-0.474", 0.0, 0.474), ("OnlyBottomP-0.3", 1.0, 0.3), ("TopQuantileLogP-0.2", 0.0, 0.2),
])
def test_every_run_has_a_numeric_alpha_and_a_threshold_only_with_a_cut(name, alpha, threshold):
    params = tracking.run_params(parse_objective(name), 1e-3)
    assert params["alpha"] == alpha and params.get("threshold") == threshold
    assert ("threshold" in params) == (threshold is not None)
    assert params["objective"] == name and params["learning_rate"] == 1e-3


def test_parent_run_holds_the_pairs_config_and_a_results_table(tmp_path):
    client, exp_id = tracking.open_experiment(f"sqlite:///{tmp_path}/m.db", "e", tmp_path / "artifacts")
    config = {"model": {"name": "tiny", "path": "/m"}, "train": {"steps": 8, "learning_rate": 0.001},
              "search": {"families": ["nll", "top_logp"], "learning_rate": None}}
    parent = tracking.open_parent_run(client, exp_id, "tiny", "add", config)
    rows = [{"objective": "OnlyTopLogP-0.474", "score": 0.93, "ci_low": 0.88, "ci_high": 0.96, "seeds": 1,
             "alpha": 0.0, "threshold": 0.474, "mlflow_run_id": "abc"},
            {"objective": "original", "score": 0.5, "ci_low": 0.43, "ci_high": 0.57, "seeds": 1, "alpha": 0.0,
             "threshold": None, "mlflow_run_id": None}]
    verdict = "best: OnlyTopLogP-0.474, ahead of NLL by +43.0 [+35.5, +50.0] points"
    tracking.log_results(client, parent, rows, exp_id, verdict)

    run = client.get_run(parent)
    assert run.data.params == {"model.name": "tiny", "model.path": "/m", "train.steps": "8",
                               "train.learning_rate": "0.001", "search.families": "nll, top_logp"}
    assert run.data.tags[tracking.BEST_RUN_TAG] == "abc"
    note = run.data.tags[tracking.NOTE_TAG]
    assert "**Best objective: OnlyTopLogP-0.474** (score 0.93 [0.88, 0.96])" in note and verdict in note
    assert f"(#/experiments/{exp_id}/runs/abc)" in note
    table = json.loads((tmp_path / "artifacts" / parent / "artifacts" / "results.json").read_text())
    assert table["columns"] == ["objective", "score", "ci_low", "ci_high", "seeds", "alpha", "threshold",
                                "mlflow_run_id"]
    assert table["data"][0][:7] == ["OnlyTopLogP-0.474", 0.93, 0.88, 0.96, 1, 0.0, 0.474]
    assert {"path": "results.json", "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])

    # a resumed sweep reopens the same parent, keeps its params and replaces its config file
    assert tracking.open_parent_run(client, exp_id, "tiny", "add", {**config, "budget": {"trials": 9}}) == parent
    assert "budget" in (tmp_path / "artifacts" / parent / "artifacts" / "config.yaml").read_text()


def test_the_printed_link_opens_the_model_training_view_with_the_shared_columns(tmp_path):
    client, exp_id = tracking.open_experiment(f"sqlite:///{tmp_path}/m.db", "e", tmp_path / "artifacts")
    tracking.share_view(client, exp_id)
    serve, url = tracking.ui_command(f"sqlite:///{tmp_path}/m.db", exp_id)
    assert serve == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/m.db --port 5000"
    assert url == (f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs?workflowType=machine_learning"
                   f"&viewStateShareKey={tracking.VIEW_KEY}")
    view = json.loads(MlflowClient(f"sqlite:///{tmp_path}/m.db").get_experiment(exp_id)
                      .tags[f"mlflow.sharedViewState.{tracking.VIEW_KEY}"])
    assert view["selectedColumns"][:2] == ["metrics.`score`", "params.`alpha`"]
    assert tracking.ui_command("http://mlflow:5000", "3") == (None, "http://mlflow:5000/#/experiments/3/runs?"
                                                                    "workflowType=machine_learning&viewStateShareKey="
                                                                    f"{tracking.VIEW_KEY}")


def test_a_repeats_run_name_says_its_stage_and_seed():
    p = parse_objective("p")
    assert tracking.run_name(p, "tiny/add", 3) == "p | tiny/add #3"
    assert tracking.run_name(p, "tiny/add", 1, "confirm", 2) == "p | tiny/add confirm #1, seed 2"
