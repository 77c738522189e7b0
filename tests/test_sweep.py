"""The sweep end to end on a real local Ray cluster, real Optuna storage and a real MLflow server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from alphasweep.config import SearchSpec
from alphasweep.objectives import parse_objective
from alphasweep.orchestrator.space import objective_of, warm_points
from alphasweep.synthetic import write_task_files
from local_services import mlflow_server as mlflow_server_at


@pytest.fixture(scope="module")
def cipher_files(kit_dir):
    return write_task_files("cipher", kit_dir / "cipher", n_train=256, n_test=32, seed=0)


def _config(tmp_path: Path, model: Path, addition, cipher, **over) -> Path:
    cfg = {
        "name": "e2e",
        "output_dir": str(tmp_path / "out"),
        "models": [{"name": "tiny", "path": str(model)}],
        "domains": [
            {"name": "addition", "train": {"path": str(addition[0]), "heldout": 16},
             "benchmarks": [{"name": "addition", "path": str(addition[1]), "format": "exact"}]},
            {"name": "cipher", "train": {"path": str(cipher[0]), "heldout": 16},
             "benchmarks": [{"name": "cipher", "path": str(cipher[1]), "format": "exact"}]},
        ],
        "search": {"families": ["nll", "p", "general"], "enqueue": ["original", "p"]},
        "budget": {"trials_per_pair": 3, "max_concurrent": 2},
        "train": {"steps": 8, "batch_size": 8, "learning_rate": 3e-3, "max_length": 24, "workers": 1,
                  "report_every": 4, "eval_every": 4},
        "eval": {"max_new_tokens": 6, "batch_size": 32, "limit": 16},
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alphasweep.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kw)


def _ray_env(ray_local) -> dict:
    """Sweeps attach to the test's cluster: one Ray instance on the machine, as on a laptop."""
    return {"RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    with mlflow_server_at(["server", "--backend-store-uri", f"sqlite:///{root}/m.db", "--artifacts-destination",
                           str(root / "artifacts"), "--workers", "1"], root) as uri:
        yield uri


def _runs(uri: str, name: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_two_pairs_three_trials_end_to_end_on_an_mlflow_server(
        ray_local, tmp_path, tiny_model, addition_files, cipher_files, mlflow_server):
    config = _config(tmp_path, tiny_model, addition_files, cipher_files, tracking={"mlflow_uri": mlflow_server},
                     scheduler={"kind": "none", "signal": "benchmark", "signal_limit": 8})
    raw = yaml.safe_load(config.read_text())  # a model's own learning rate; a benchmark with two metrics
    raw["models"][0]["train_overrides"] = {"learning_rate": 2e-3}
    raw["domains"][1]["benchmarks"][0].update(scorer="exact_similarity", metric="similarity")
    config.write_text(yaml.safe_dump(raw))
    proc = _cli("sweep", str(config), env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "best objective" in proc.stdout and "mlflow" in proc.stdout.lower()

    runs = _runs(mlflow_server, "e2e")
    parents = [r for r in runs if r.data.tags.get("alphasweep.kind") == "pair"]
    children = [r for r in runs if r.data.tags.get("alphasweep.kind") == "trial"]
    assert len(parents) == 2 and len(children) == 6
    parent_ids = {r.info.run_id for r in parents}
    client = MlflowClient(mlflow_server)
    for r in children:
        # alpha, a number, on every run (the UI plots every run against it); no threshold without a cut
        assert set(r.data.params) == {"objective", "family", "alpha", "learning_rate"}
        assert float(r.data.params["alpha"]) == parse_objective(r.data.params["objective"]).effective_alpha
        assert [m.step for m in client.get_metric_history(r.info.run_id, "score")] == [8]  # the last step
        assert r.data.tags["mlflow.parentRunId"] in parent_ids
        assert {"model", "domain", "tune_trial_id", "optuna_trial"} <= set(r.data.tags)
        assert "score" in r.data.metrics and "loss" in r.data.metrics and r.info.status == "FINISHED"
        assert 0 <= r.data.metrics["signal_score"] <= 1 and r.data.metrics["startup_s"] > 0
        assert float(r.data.params["learning_rate"]) == 2e-3  # the model's train_overrides
        if r.data.tags["domain"] == "cipher":  # the score follows the metric the benchmark names
            assert {"cipher.exact_match", "cipher.similarity"} <= set(r.data.metrics)
            assert r.data.metrics["score"] == r.data.metrics["score.cipher"] == r.data.metrics["cipher.similarity"]
        else:
            assert not any(k.startswith("addition.") for k in r.data.metrics)
        assert r.data.metrics["score_ci_low"] <= r.data.metrics["score"] <= r.data.metrics["score_ci_high"]
        assert r.data.tags["stage"] == "search" and r.data.tags["seed"] == "0"
    for r in parents:
        assert "probe_mean_p" in r.data.metrics and r.info.status == "FINISHED"

    storage = f"sqlite:///{tmp_path}/out/optuna.db"
    studies = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    assert set(studies) == {"tiny/addition", "tiny/cipher"}
    search = SearchSpec(families=["nll", "p", "general"], enqueue=["original", "p"])
    for name in studies:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(trials) == 3
        # the warm start ran first: the probe's suggestions, then the enqueued NLL and p
        warm = [objective_of(p).name for p in warm_points(search, study.user_attrs["probe"]["suggestions"])]
        assert [objective_of(t.params).name for t in trials] == warm[:3] and {"original", "p"} <= set(warm)

    report = json.loads(_cli("report", str(tmp_path / "out"), "--json").stdout)
    assert report["mlflow_uri"] == mlflow_server and report["optuna_storage"] == storage
    for pair in report["pairs"]:
        study = optuna.load_study(study_name=f"{pair['model']}/{pair['domain']}", storage=storage)
        assert pair["trials"] == 3 and pair["best_score"] == study.best_value
        mlflow_scores = {r.data.params["objective"]: r.data.metrics["score"] for r in children
                         if r.data.tags["domain"] == pair["domain"]}
        assert pair["scores"] == pytest.approx(mlflow_scores)
        # one seed, one benchmark of 16 items scored once: Wilson intervals and exact McNemar comparisons
        for o in pair["objectives"].values():
            assert o["ci_method"] == "wilson" and o["n_items"] == 16 and o["ci"][0] <= o["score"] <= o["ci"][1]
        up, best = pair["vs_runner_up"], pair["best_objective"]
        assert up["method"] == "exact McNemar" and up["ci"][0] <= up["difference"] <= up["ci"][1]
        assert up["difference"] == pytest.approx(pair["scores"][best] - pair["scores"][up["objective"]])
        assert pair["decided"] is up["decided"] is (up["ci"][0] > 0)
        assert (pair["vs_nll"] is None) is (best == "original")
        assert pair["verdict"].startswith("best: " if pair["decided"] else "tie: ")
        parent = next(r for r in parents if r.data.tags["domain"] == pair["domain"])
        assert parent.data.tags["verdict"] == pair["verdict"] and f"{pair['domain']}: {pair['verdict']}" in proc.stdout
        # the parent's results table: the mean over seeds with its interval beside it, best first
        (tmp_path / pair["domain"]).mkdir()
        table = json.loads(Path(client.download_artifacts(parent.info.run_id, "results.json",
                                                          str(tmp_path / pair["domain"]))).read_text())
        assert table["columns"][:5] == ["objective", "score", "ci_low", "ci_high", "seeds"]
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        assert [r["objective"] for r in rows] == list(pair["objectives"]) and rows[0]["objective"] == best
        for r in rows:
            assert [r["score"], r["ci_low"], r["ci_high"]] == pytest.approx(
                [pair["scores"][r["objective"]], *pair["objectives"][r["objective"]]["ci"]])


@pytest.mark.parametrize("runner", ["tune", "ray_train"])
def test_asha_stops_a_trial_early_and_every_store_says_so(ray_local, tmp_path, tiny_model, addition_files,
                                                          cipher_files, runner):
    """ASHA on held-out NLL, one trial at a time: the untrained base barely moves under `p` (its gradient
    weight p is tiny where p is small), so at the first rung `p` is behind NLL and is stopped. The stopped
    trial is PRUNED with no value in Optuna, KILLED with `stopped_early` in MLflow, counted by the report.
    With `tune` each trial holds both CPUs of the test cluster, so the trial after the stopped one starts only
    if the stopped one gave them back. (With `ray_train` the stopped run's workers are freed by Ray Train's
    placement-group cleaner, whose State API query fails on a machine running several Ray instances, as
    shared test machines do; so there each worker takes one CPU and the next trial fits beside a leak.)"""
    config = _config(tmp_path, tiny_model, addition_files, cipher_files,
                     budget={"trials_per_pair": 3, "max_concurrent": 1},
                     search={"families": ["nll", "p", "general"], "enqueue": ["original", "p"],
                             "probe_warm_start": False},
                     scheduler={"kind": "asha", "grace_steps": 4, "reduction_factor": 2},
                     train__steps=12, train__report_every=4, train__eval_every=4,
                     train__cpus_per_worker=2 if runner == "tune" else 1, train__runner=runner)
    raw = yaml.safe_load(config.read_text())
    raw["domains"] = raw["domains"][:1]
    config.write_text(yaml.safe_dump(raw))
    proc = _cli("sweep", str(config), env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"#1 p: stopped early at step 4\b", proc.stdout), proc.stdout[-3000:]

    study = optuna.load_study(study_name="tiny/addition", storage=f"sqlite:///{tmp_path}/out/optuna.db")
    by_family = {t.params["family"]: t for t in study.trials}
    states = [(t.number, t.params, t.state) for t in study.trials]
    assert by_family["nll"].state == TrialState.COMPLETE and by_family["nll"].value is not None, states
    # a stopped trial's value is its last signal, the held-out NLL negated: below any accuracy
    assert by_family["p"].state == TrialState.PRUNED and by_family["p"].value < 0
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3, proc.stdout[-3000:]

    runs = {r.data.params["objective"]: r for r in _runs(f"sqlite:///{tmp_path}/out/mlflow.db", "e2e")
            if r.data.tags.get("alphasweep.kind") == "trial"}
    assert runs["p"].info.status == "KILLED" and runs["p"].data.tags["stopped_early"] == "true"
    assert "score" not in runs["p"].data.metrics and "heldout_nll" in runs["p"].data.metrics
    assert runs["original"].info.status == "FINISHED" and runs["original"].data.tags["stopped_early"] == "false"

    pair = json.loads(_cli("report", str(tmp_path / "out"), "--json").stdout)["pairs"][0]
    assert pair["stopped_early"] >= 1 and "p" not in pair["scores"] and pair["best_objective"] != "p"


def _trial_pid_after_a_checkpoint(ray_dir: Path) -> int | None:
    """The pid of a Tune trial whose report carrying a checkpoint the driver has taken (its `result.json`)."""
    for path in ray_dir.glob("*/*/result.json"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("checkpoint_dir_name"):
                return row["pid"]
    return None


def test_a_trial_whose_process_dies_resumes_from_its_checkpoint(ray_local, tmp_path, tiny_model, addition_files,
                                                                 cipher_files):
    """A one-worker trial trains in the Tune trial itself: kill its process after its first checkpoint, and
    Tune's FailureConfig restarts it from that checkpoint; it finishes as one trial, one MLflow run."""
    config = _config(tmp_path, tiny_model, addition_files, cipher_files,
                     budget={"trials_per_pair": 1, "max_concurrent": 1},
                     train__steps=400, train__checkpoint_every=8, train__report_every=8, train__eval_every=400,
                     train__max_failures=1)
    raw = yaml.safe_load(config.read_text())
    raw["domains"] = raw["domains"][:1]
    config.write_text(yaml.safe_dump(raw))
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "alphasweep.cli", "sweep", str(config)],
                                  env={**os.environ, **_ray_env(ray_local)}, stdout=out, stderr=subprocess.STDOUT)
    deadline, killed = time.time() + 600, None
    while killed is None and time.time() < deadline and driver.poll() is None:
        killed = _trial_pid_after_a_checkpoint(tmp_path / "out" / "ray")
        time.sleep(0.2)
    assert killed, "no trial reported a checkpoint before the sweep ended"
    os.kill(killed, signal.SIGKILL)
    assert driver.wait(timeout=900) == 0, log.read_text()[-3000:]

    trials = optuna.load_study(study_name="tiny/addition", storage=f"sqlite:///{tmp_path}/out/optuna.db").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]
    runs = [r for r in _runs(f"sqlite:///{tmp_path}/out/mlflow.db", "e2e")
            if r.data.tags.get("alphasweep.kind") == "trial"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "score" in runs[0].data.metrics
    client = MlflowClient(f"sqlite:///{tmp_path}/out/mlflow.db")
    resumes = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "resumes")}
    assert resumes[400] == 1 and min(step for step, n in resumes.items() if n == 1) > 8, resumes


def test_killed_sweep_resumes_without_duplicates(ray_local, tmp_path, tiny_model, addition_files, cipher_files):
    config = _config(tmp_path, tiny_model, addition_files, cipher_files, budget={"trials_per_pair": 3,
                                                                                 "max_concurrent": 1})
    raw = yaml.safe_load(config.read_text())
    raw["domains"] = raw["domains"][:1]  # one pair is enough to show resume; the e2e test runs two
    config.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path}/out/optuna.db"
    driver = subprocess.Popen([sys.executable, "-m", "alphasweep.cli", "sweep", str(config)],
                              env={**os.environ, **_ray_env(ray_local)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill it once the first trial is done and the second is running
        time.sleep(1)
        try:
            trials = optuna.load_study(study_name="tiny/addition", storage=storage).get_trials()
        except Exception:  # noqa: BLE001 - the study, or its database, is still being created
            continue
        states = [t.state for t in trials]
        if TrialState.COMPLETE in states and TrialState.RUNNING in states:
            break
    assert driver.poll() is None, "the sweep ended before the test could interrupt it"
    driver.kill()
    driver.wait()

    proc = _cli("sweep", str(config), env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 2 and "--resume" in proc.stderr  # an unfinished sweep is not resumed silently

    proc = _cli("sweep", str(config), "--resume", env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "interrupted trial(s) marked failed" in proc.stdout
    runs = _runs(f"sqlite:///{tmp_path}/out/mlflow.db", "e2e")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trials = optuna.load_study(study_name="tiny/addition", storage=storage).get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3, proc.stdout[-3000:]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    finished = [r for r in runs if r.data.tags.get("alphasweep.kind") == "trial" and r.info.status == "FINISHED"]
    numbers = [r.data.tags["optuna_trial"] for r in finished]
    assert len(numbers) == len(set(numbers)) == 3

    proc = _cli("sweep", str(config), "--extend", "1", env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = optuna.load_study(study_name="tiny/addition", storage=storage).get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 4

    # A broken input given to --resume over the finished sweep changes nothing, byte for byte: it is stopped
    # before Ray starts. (A broken benchmark file used to pass, and the pair's run was reopened and re-logged.)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "1+1=", "completion": "2", "answer": "2"}\n{"prompt": \n')
    stores = [tmp_path / "out" / name for name in ("optuna.db", "mlflow.db", "sweep.yaml")]
    before = [p.read_bytes() for p in stores]
    for field in ("domains.0.train.path", "domains.0.benchmarks.0.path"):
        proc = _cli("sweep", str(config), "--resume", "--set", f"{field}={broken}", env=_ray_env(ray_local),
                    timeout=300)
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"{broken}: line 2: not valid JSON" in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert [p.read_bytes() for p in stores] == before, field


def test_seeds_and_a_confirmation_stage_survive_a_kill_resume_and_extend(ray_local, tmp_path, tiny_model,
                                                                        addition_files, cipher_files):
    """`seeds: [0, 1]` and `confirm: {top_k: 1, seeds: 1}` on one pair with two objectives, one trial at a time:
    killed while the confirmation trains, resumed, then extended by one search trial."""
    config = _config(tmp_path, tiny_model, addition_files, cipher_files, seeds=[0, 1],
                     confirm={"top_k": 1, "seeds": 1}, budget={"trials_per_pair": 2, "max_concurrent": 1})
    raw = yaml.safe_load(config.read_text())
    raw["domains"] = raw["domains"][:1]
    config.write_text(yaml.safe_dump(raw))
    storage, mlflow_uri = f"sqlite:///{tmp_path}/out/optuna.db", f"sqlite:///{tmp_path}/out/mlflow.db"

    def repeats(*states):
        study = optuna.load_study(study_name="tiny/addition/repeats", storage=storage)
        return [(t.user_attrs["stage"], t.user_attrs["seed"]) for t in study.get_trials(states=states)]

    driver = subprocess.Popen([sys.executable, "-m", "alphasweep.cli", "sweep", str(config)],
                              env={**os.environ, **_ray_env(ray_local)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 900
    while time.time() < deadline and driver.poll() is None:  # kill it while the confirmation trains
        time.sleep(1)
        try:
            if ("confirm", 2) in repeats(TrialState.RUNNING):
                break
        except Exception:  # noqa: BLE001 - the database, or the repeats study, is still being created
            continue
    assert driver.poll() is None, "the sweep ended before the test could interrupt it"
    driver.kill()
    driver.wait()
    assert sorted(repeats(TrialState.COMPLETE)) == [("seeds", 1), ("seeds", 1)]

    proc = _cli("sweep", str(config), env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 2 and "--resume" in proc.stderr  # an unfinished stage is not resumed silently
    proc = _cli("sweep", str(config), "--resume", env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 interrupted trial(s) marked failed" in proc.stdout and "confirm stage: 1 run(s)" in proc.stdout
    assert sorted(repeats(TrialState.COMPLETE)) == [("confirm", 2), ("seeds", 1), ("seeds", 1)]
    assert repeats(TrialState.FAIL) == [("confirm", 2)]
    search = optuna.load_study(study_name="tiny/addition", storage=storage)
    assert len(search.trials) == 2 and {t.user_attrs["seed"] for t in search.trials} == {0}  # no repeat in it

    trials = [r for r in _runs(mlflow_uri, "e2e") if r.data.tags.get("alphasweep.kind") == "trial"]
    finished = sorted((r.data.tags["stage"], r.data.tags["seed"]) for r in trials if r.info.status == "FINISHED")
    assert finished == [("confirm", "2"), ("search", "0"), ("search", "0"), ("seeds", "1"), ("seeds", "1")]
    # the killed confirmation's run, if it had started, is FAILED, not left RUNNING
    assert {(r.data.tags["stage"], r.info.status) for r in trials if r.info.status != "FINISHED"} <= {
        ("confirm", "FAILED")}
    assert all(r.data.tags["mlflow.parentRunId"] for r in trials)

    pair = json.loads(_cli("report", str(tmp_path / "out"), "--json").stdout)["pairs"][0]
    best = pair["objectives"][pair["best_objective"]]
    assert best["confirmed"] and set(best["seeds"]) == {"0", "1", "2"} and pair["seeds"] == [0, 1, 2]
    assert best["score"] == pytest.approx(sum(best["seeds"].values()) / 3)
    # the envelope of the t interval over seeds and the interval over items of the 3 runs pooled
    assert best["ci_method"] in ("t over seeds and wilson over items", "t over seeds and bootstrap over items")
    assert best["ci"][0] <= best["score"] <= best["ci"][1]
    other = next(o for name, o in pair["objectives"].items() if name != pair["best_objective"])
    assert not other["confirmed"] and set(other["seeds"]) == {"0", "1"}
    assert pair["vs_runner_up"]["seeds"] == [0, 1] and isinstance(pair["decided"], bool) and pair["verdict"]

    proc = _cli("sweep", str(config), "--extend", "1", env=_ray_env(ray_local), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(search.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert sorted(repeats(TrialState.COMPLETE)).count(("seeds", 1)) == 3  # the new objective got its second seed
    assert _cli("sweep", str(config), env=_ray_env(ray_local), timeout=900).returncode == 0  # finished: reports


@pytest.mark.parametrize(
    "over, message",
    [
        ({"search": {"families": ["nll", "banana"]}}, "search.families: unknown family 'banana'"),
        ({"search": {"alpha": {"low": 4, "high": 1}}}, "search.alpha: low (4.0) must be below high (1.0)"),
        ({"domains": [{"name": "d", "train": {"path": "/nonexistent/x.jsonl"},
                       "benchmarks": [{"name": "b", "path": "/nonexistent/b.jsonl", "format": "exact"}]}]},
         "domains.0.train.path: data file not found: /nonexistent/x.jsonl"),
        ({"tracking": {"mlflow_uri": "http://127.0.0.1:9"}}, "tracking server http://127.0.0.1:9 is unreachable"),
    ],
)
def test_bad_sweep_config_fails_before_any_trial(tmp_path, tiny_model, addition_files, cipher_files, over, message):
    config = _config(tmp_path, tiny_model, addition_files, cipher_files, **over)
    proc = _cli("sweep", str(config), env={"RAY_ADDRESS": ""}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()  # stopped before anything was written
