"""The training loop on a real local Ray cluster, run both ways: inside a Tune trial (one worker) and by Ray
Train workers (DDP and FSDP): training, determinism, the benchmark signal, failure recovery, config errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from ray import tune
from ray.util.state import list_actors
from transformers import AutoModelForCausalLM, AutoTokenizer

from alphasweep.config import BenchmarkSpec, DataSpec, EvalConfig, TrainConfig
from alphasweep.evaluation.actor import Evaluator
from alphasweep.objectives import parse_objective
from alphasweep.workers.setup import TrainJob
from alphasweep.workers.signals import SignalSpec
from alphasweep.workers.trainer import build_trainer, final_checkpoint_path, train_in_trial

RUNNERS = ["tune", "ray_train"]


@dataclass
class Run:
    history: list[dict]  # the reports of the attempt that finished
    checkpoint: str  # its final checkpoint


def _job(model, data, objective="GeneralFamily-8", heldout=32, signal=None, **train) -> TrainJob:
    settings = dict(steps=24, batch_size=16, learning_rate=2e-3, max_length=32, workers=2, report_every=4,
                    eval_every=8, warmup_steps=2)
    settings.update(train)
    return TrainJob(model_path=str(model), objective=parse_objective(objective),
                    data=DataSpec(path=str(data), heldout=heldout), train=TrainConfig(**settings), signal=signal)


def _fit(tmp_path, model, data, objective="GeneralFamily-8", heldout=32, signal=None, **train) -> Run:
    """A Ray Train run (`build_trainer`), any number of workers."""
    job = _job(model, data, objective, heldout, signal, **train)
    result = build_trainer(job, storage_path=str(tmp_path / "ray"), name=f"run-{time.monotonic_ns()}").fit()
    return Run(result.return_value, final_checkpoint_path(result))


def _fit_in_trial(tmp_path, model, data, objective="GeneralFamily-8", heldout=32, signal=None, **train) -> Run:
    """The loop inside a Tune trial that holds the worker's CPU, as a one-worker sweep trial runs it, with
    Tune's retries (`train.max_failures`)."""
    job = _job(model, data, objective, heldout, signal, **{"workers": 1, **train})

    def trial(config):
        tune.report({"final_checkpoint": train_in_trial(job)})

    grid = tune.Tuner(
        tune.with_resources(trial, {"CPU": job.train.cpus_per_worker}),
        run_config=tune.RunConfig(name=f"trial-{time.monotonic_ns()}", storage_path=str(tmp_path / "tune"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=job.train.max_failures)),
    ).fit()
    result = grid[0]
    assert result.error is None, result.error
    rows = [json.loads(line) for line in (Path(result.path) / "result.json").read_text().splitlines()]
    reports = [r for r in rows if "loss" in r]
    last_attempt = [r for r in reports if r["resumes"] == reports[-1]["resumes"]]
    return Run(last_attempt, result.metrics["final_checkpoint"])


def _run(runner, *args, **kwargs) -> Run:
    return (_fit_in_trial if runner == "tune" else _fit)(*args, **kwargs)


def test_ddp_training_lowers_loss_and_checkpoint_generates(ray_local, tmp_path, addition_model, recode_files):
    """`p` on the demo's intermediate domain, where the base gives each target ~0.25: a loss with room to fall
    on every numeric path."""
    run = _fit(tmp_path, addition_model, recode_files[0], "p")
    history = run.history
    assert [h["step"] for h in history][-1] == 24
    assert history[-1]["loss"] < history[0]["loss"]
    heldout = [h["heldout_nll"] for h in history if "heldout_nll" in h]
    assert len(heldout) == 3 and all(0 < v < 20 for v in heldout)
    assert 0 < history[-1]["mean_p"] <= 1 and history[-1]["selected_share"] == 1.0
    path = run.checkpoint
    assert (Path(path) / "trainer_state.pt").exists()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tok("12+34=", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert re.fullmatch(r"\d+", answer), answer  # the saved weights and tokenizer still write a number


def test_fsdp_follows_the_ddp_loss_curve_and_saves_a_full_checkpoint(ray_local, tmp_path, addition_model,
                                                                     recode_files):
    """FSDP2 on 2 CPU workers (gloo), with gradient accumulation and an odd held-out set (the ranks' shards
    differ in size): same seed, same data order, so the curve is DDP's up to float reduction order."""
    runs = {strategy: _fit(tmp_path, addition_model, recode_files[0], "p", heldout=33, strategy=strategy,
                           micro_batch_size=4, steps=12)
            for strategy in ("ddp", "fsdp")}
    curves = {k: [(h["step"], h["loss"], h.get("heldout_nll")) for h in r.history] for k, r in runs.items()}
    assert [c[0] for c in curves["fsdp"]] == [4, 8, 12]
    for (_, ddp_loss, ddp_nll), (_, fsdp_loss, fsdp_nll) in zip(curves["ddp"], curves["fsdp"], strict=True):
        assert fsdp_loss == pytest.approx(ddp_loss, rel=1e-3)
        assert (fsdp_nll is None) == (ddp_nll is None)
        assert ddp_nll is None or fsdp_nll == pytest.approx(ddp_nll, rel=1e-3)
    saved = AutoModelForCausalLM.from_pretrained(runs["fsdp"].checkpoint)
    reference = AutoModelForCausalLM.from_pretrained(runs["ddp"].checkpoint)
    for (name, got), want in zip(saved.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("runner", RUNNERS)
def test_benchmark_signal_scores_the_model_in_training_as_the_evaluator_scores_its_checkpoint(
        ray_local, tmp_path, addition_model, addition_files, runner):
    """The intermediate signal for ASHA: accuracy on a benchmark subset, generated inside the worker. At
    the last step it equals what the evaluator gives the saved checkpoint on the same items."""
    bench = BenchmarkSpec(name="addition", path=str(addition_files[1]), format="exact")
    eval_cfg = EvalConfig(max_new_tokens=6, batch_size=16)
    run = _run(runner, tmp_path, addition_model, addition_files[0], "original", workers=1, steps=8, report_every=4,
               eval_every=4, learning_rate=1e-4, signal=SignalSpec((bench,), 24, eval_cfg))
    scores = {h["step"]: h["signal_score"] for h in run.history if "signal_score" in h}
    assert sorted(scores) == [4, 8]
    final = Evaluator(eval_cfg, log=None).evaluate(run.checkpoint, [bench], limit=24)
    assert final["n"]["addition"] == 24 and final["mean_score"] >= 0.8  # the base: 24/24 on every numeric path
    assert abs(scores[8] - final["mean_score"]) <= 1 / 24  # same weights; at most a near-tie decoded differently


def test_same_seed_gives_the_same_loss_curve_on_either_runner(ray_local, tmp_path, tiny_model, addition_files):
    """One worker: the Tune trial and a Ray Train worker run the same loop on the same data order."""
    def curve(runner, seed=0):
        run = _run(runner, tmp_path, tiny_model, addition_files[0], "original", workers=1, steps=12, seed=seed)
        return [(h["step"], h["loss"]) for h in run.history]

    in_trial = curve("tune")
    assert [step for step, _ in in_trial] == [4, 8, 12]
    assert curve("tune") == in_trial
    assert curve("ray_train") == in_trial
    assert [loss for _, loss in curve("tune", seed=1)] != [loss for _, loss in in_trial]


def _actor_counts(ray_local) -> dict[str, int]:
    """Actors of this test's cluster by class (named by address: other Ray clusters may share the machine)."""
    counts: dict[str, int] = {}
    for actor in list_actors(address=ray_local.get_runtime_context().gcs_address, limit=10_000):
        counts[actor.class_name] = counts.get(actor.class_name, 0) + 1
    return counts


def test_a_ray_train_run_starts_no_ray_data_actor(ray_local, tmp_path, tiny_model, addition_files):
    """The loop reads its own files: Ray Data's per-run DatasetManager process would be pure start-up cost."""
    _fit(tmp_path, tiny_model, addition_files[0], "original", workers=1, steps=2, report_every=1)
    classes = _actor_counts(ray_local)
    assert "RayTrainWorker" in classes and "DatasetManager" not in classes


def test_a_run_in_a_tune_trial_starts_no_ray_train_process(ray_local, tmp_path, tiny_model, addition_files):
    """What the Tune path saves: no Train controller, worker, synchronisation actor or report queue per run."""
    before = _actor_counts(ray_local)
    _fit_in_trial(tmp_path, tiny_model, addition_files[0], "original", steps=2, report_every=1)
    new = {name: n - before.get(name, 0) for name, n in _actor_counts(ray_local).items() if n > before.get(name, 0)}
    assert len(new) == 1 and sum(new.values()) == 1, new  # the trial's own actor, nothing else


def test_epochs_and_warmup_ratio_set_the_schedule(ray_local, tmp_path, tiny_model, addition_files):
    """1 epoch of 480 training rows (512 less 32 held out) at 32 a step is 15 steps; a 0.2 warm-up is 3 of them."""
    run = _fit_in_trial(tmp_path, tiny_model, addition_files[0], "original", steps=None, epochs=1, batch_size=32,
                        warmup_steps=None, warmup_ratio=0.2, report_every=1, learning_rate=1e-3)
    lr = {h["step"]: h["lr"] for h in run.history}
    assert sorted(lr) == list(range(1, 16))
    assert lr[1] < lr[2] < lr[3] == pytest.approx(1e-3) and lr[4] < lr[3]  # the peak right after warm-up
    assert lr[15] == pytest.approx(1e-4)  # the cosine's floor (min_lr_ratio 0.1) at the last step


def test_threshold_objective_reports_selected_share(ray_local, tmp_path, addition_model, addition_files):
    history = _fit_in_trial(tmp_path, addition_model, addition_files[0], "TopQuantileP-0.5", steps=4,
                            report_every=2).history
    assert all(0.4 <= h["selected_share"] <= 0.6 for h in history)


def _training_process(runner: str, storage: Path) -> int | None:
    """Once a checkpoint of step 8 is stored: the pid of the process running the loop (the Tune trial's actor,
    `ray::ImplicitFunc`, or a RayTrainWorker) among the processes of the Ray cluster this test process started.
    The trial's checkpoint directory is written by the trial itself before its report returns; the driver's
    `result.json` may lag behind a fast trial by its whole run."""
    if runner == "tune":
        if not any(storage.glob("*/*/checkpoint_000000")):
            return None
        title = "ImplicitFunc"
    else:
        if not any("checkpoint_000008" in p.read_text() for p in storage.glob("*/checkpoint_manager_snapshot.json")):
            return None
        title = "RayTrainWorker"
    for proc in psutil.Process().children(recursive=True):  # ours only: other Ray clusters may share the machine
        with contextlib.suppress(psutil.Error):
            if any(title in part for part in proc.cmdline()):
                return proc.pid
    return None


def _kill_after_first_checkpoint(runner: str, storage: Path, killed: list) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        pid = _training_process(runner, storage)
        if pid:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.2)


@pytest.mark.parametrize("runner", RUNNERS)
def test_worker_failure_resumes_from_last_checkpoint(ray_local, tmp_path, tiny_model, addition_files, runner):
    killed: list[int] = []
    storage = tmp_path / ("tune" if runner == "tune" else "ray")
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(runner, storage, killed))
    killer.start()
    steps = 200 if runner == "tune" else 40  # reports reach Tune at once, Ray Train's controller polls (0.5 s)
    run = _run(runner, tmp_path, tiny_model, addition_files[0], "original", steps=steps, checkpoint_every=8,
               max_failures=2, report_every=4)
    killer.join()
    assert killed, "no training process was found to kill"
    history = run.history  # the attempt that finished, after the restart
    assert history[0]["resumes"] == 1 and history[0]["step"] > 8, history
    assert history[-1]["step"] == steps
    assert torch.load(Path(run.checkpoint) / "trainer_state.pt", weights_only=False)["step"] == steps


@pytest.mark.parametrize(
    "override, message",
    [
        ("--objective=GeneralFamily-99", "alpha"),
        ("--set=domains.0.train.path=/nonexistent/train.jsonl",
         "domains.0.train.path: data file not found: /nonexistent/train.jsonl"),
        ("--set=train.learning_rate=-1", "train.learning_rate"),
        ("--set=train.epochs=1", "train.epochs: give steps or epochs, not both"),
        ("--set=train.warmup_ratio=0.1", "train.warmup_ratio: give warmup_steps or warmup_ratio, not both"),
        ("--set=train.runner=tune", "train.runner: tune runs one worker inside the trial; workers: 2"),
        ("--set=train.micro_batch_size=3", "train.workers: batch_size 32 over 2 worker(s) is 16 sequences each"),
    ],
)
def test_bad_train_config_is_one_line_error(tmp_path, tiny_model, addition_files, override, message):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"name: bad\noutput_dir: {tmp_path}/out\nmodels: [{{name: m, path: {tiny_model}}}]\n"
        "train: {steps: 10, warmup_steps: 2, batch_size: 32, workers: 2}\n"
        f"domains: [{{name: d, train: {{path: {addition_files[0]}}}, "
        f"benchmarks: [{{name: x, path: {addition_files[1]}, format: exact}}]}}]\n"
    )
    proc = subprocess.run([sys.executable, "-m", "alphasweep.cli", "train", "--config", str(config), override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
