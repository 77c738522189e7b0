"""The Ray Train worker on a real local Ray cluster: DDP and FSDP training, determinism, failure recovery."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from ray.util.state import list_actors
from transformers import AutoModelForCausalLM, AutoTokenizer

from alphasweep.config import DataSpec, TrainConfig
from alphasweep.evaluation.actor import Evaluator
from alphasweep.tinykit import build_base
from alphasweep.workers.trainer import build_trainer, final_checkpoint_path


def _fit(tmp_path, model, data, objective="GeneralFamily-8", heldout=32, signal=None, **train):
    settings = dict(steps=24, batch_size=16, learning_rate=2e-3, max_length=32, workers=2, report_every=4,
                    eval_every=8, warmup_steps=2)
    settings.update(train)
    trainer = build_trainer(
        model_path=str(model), data=DataSpec(path=str(data), heldout=heldout), train=TrainConfig(**settings),
        objective=objective, storage_path=str(tmp_path / "ray"), name=f"run-{time.monotonic_ns()}", signal=signal,
    )
    return trainer.fit()


@pytest.fixture(scope="module")
def half_trained_model(kit_dir):
    """Pretrained briefly on addition (mean p ~0.4): GeneralFamily-8's weight p^8 is neither ~0 nor ~1."""
    return build_base(kit_dir, pretrain_tasks={"addition": 3000}, steps=300)


def test_ddp_training_lowers_loss_and_checkpoint_generates(ray_local, tmp_path, half_trained_model, addition_files):
    result = _fit(tmp_path, half_trained_model, addition_files[0])
    history = result.return_value
    assert [h["step"] for h in history][-1] == 24
    assert history[-1]["loss"] < history[0]["loss"]
    heldout = [h["heldout_nll"] for h in history if "heldout_nll" in h]
    assert len(heldout) == 3 and all(0 < v < 20 for v in heldout)  # GeneralFamily-8 need not lower NLL
    assert 0 < history[-1]["mean_p"] <= 1 and history[-1]["selected_share"] == 1.0
    path = final_checkpoint_path(result)
    assert (Path(path) / "trainer_state.pt").exists()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tok("12+34=", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert re.fullmatch(r"\d+", answer), answer  # the saved weights and tokenizer still write a number


def test_fsdp_follows_the_ddp_loss_curve_and_saves_a_full_checkpoint(ray_local, tmp_path, half_trained_model,
                                                                     addition_files):
    """FSDP2 on 2 CPU workers (gloo), with gradient accumulation and an odd held-out set (the ranks' shards
    differ in size): same seed, same data order, so the curve is DDP's up to float reduction order."""
    runs = {strategy: _fit(tmp_path, half_trained_model, addition_files[0], heldout=33, strategy=strategy,
                           micro_batch_size=4, steps=12)
            for strategy in ("ddp", "fsdp")}
    curves = {k: [(h["step"], h["loss"], h.get("heldout_nll")) for h in r.return_value] for k, r in runs.items()}
    assert [c[0] for c in curves["fsdp"]] == [4, 8, 12]
    for (_, ddp_loss, ddp_nll), (_, fsdp_loss, fsdp_nll) in zip(curves["ddp"], curves["fsdp"], strict=True):
        assert fsdp_loss == pytest.approx(ddp_loss, rel=1e-3)
        assert (fsdp_nll is None) == (ddp_nll is None)
        assert ddp_nll is None or fsdp_nll == pytest.approx(ddp_nll, rel=1e-3)
    saved = AutoModelForCausalLM.from_pretrained(final_checkpoint_path(runs["fsdp"]))
    reference = AutoModelForCausalLM.from_pretrained(final_checkpoint_path(runs["ddp"]))
    for (name, got), want in zip(saved.state_dict().items(), reference.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_benchmark_signal_scores_the_model_in_training_as_the_evaluator_scores_its_checkpoint(
        ray_local, tmp_path, addition_model, addition_files):
    """The intermediate signal for ASHA: accuracy on a benchmark subset, generated inside the worker. At
    the last step it equals what the evaluator gives the saved checkpoint on the same items."""
    bench = {"name": "addition", "path": str(addition_files[1]), "format": "exact"}
    eval_cfg = {"max_new_tokens": 6, "batch_size": 16}
    result = _fit(tmp_path, addition_model, addition_files[0], "original", workers=1, steps=8, report_every=4,
                  eval_every=4, learning_rate=1e-4, signal={"benchmarks": [bench], "limit": 24, "eval": eval_cfg})
    scores = {h["step"]: h["signal_score"] for h in result.return_value if "signal_score" in h}
    assert sorted(scores) == [4, 8]
    final = Evaluator(eval_cfg, log=None).evaluate(final_checkpoint_path(result), [bench], limit=24)
    assert final["n"]["addition"] == 24 and final["mean_score"] > 0.3  # the trained twin solves most sums
    assert abs(scores[8] - final["mean_score"]) <= 1 / 24  # same weights; at most a near-tie decoded differently


def test_same_seed_gives_the_same_loss_curve(ray_local, tmp_path, tiny_model, addition_files):
    curves = [[(h["step"], h["loss"]) for h in
               _fit(tmp_path, tiny_model, addition_files[0], "original", workers=1, steps=12).return_value]
              for _ in range(2)]
    assert curves[0] == curves[1]
    other = _fit(tmp_path, tiny_model, addition_files[0], "original", workers=1, steps=12, seed=1).return_value
    assert [h["loss"] for h in other] != [loss for _, loss in curves[0]]


def test_a_run_starts_no_ray_data_actor(ray_local, tmp_path, tiny_model, addition_files):
    """The loop reads its own files: Ray Data's per-run DatasetManager process would be pure start-up cost."""
    _fit(tmp_path, tiny_model, addition_files[0], "original", workers=1, steps=2, report_every=1)
    actors = list_actors(address=ray_local.get_runtime_context().gcs_address, limit=1000)  # other clusters may run
    classes = {a.class_name for a in actors}
    assert "RayTrainWorker" in classes and "DatasetManager" not in classes


def test_threshold_objective_reports_selected_share(ray_local, tmp_path, addition_model, addition_files):
    history = _fit(tmp_path, addition_model, addition_files[0], "TopQuantileP-0.5", workers=1, steps=4,
                   report_every=2).return_value
    assert all(0.4 <= h["selected_share"] <= 0.6 for h in history)


def _kill_a_worker_after_first_checkpoint(storage: Path, killed: list) -> None:
    """Wait until Ray Train has registered a checkpoint, then SIGKILL one RayTrainWorker process."""
    deadline = time.time() + 240
    while time.time() < deadline and not any(
        "checkpoint_000008" in p.read_text() for p in storage.glob("*/checkpoint_manager_snapshot.json")
    ):
        time.sleep(0.2)
    for proc in psutil.process_iter(["cmdline"]):
        if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
            return


def test_worker_failure_resumes_from_last_checkpoint(ray_local, tmp_path, tiny_model, addition_files):
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(tmp_path / "ray", killed))
    killer.start()
    result = _fit(tmp_path, tiny_model, addition_files[0], "original", steps=40, checkpoint_every=8,
                  max_failures=2, report_every=4)
    killer.join()
    assert killed, "no RayTrainWorker process was found to kill"
    history = result.return_value  # the attempt that finished, after the restart
    assert history[0]["resumes"] == 1 and history[0]["step"] > 8, history
    assert history[-1]["step"] == 40
    assert torch.load(Path(final_checkpoint_path(result)) / "trainer_state.pt", weights_only=False)["step"] == 40


@pytest.mark.parametrize(
    "override, message",
    [
        ("--objective=GeneralFamily-99", "alpha"),
        ("--set=domains.0.train.path=/nonexistent/train.jsonl",
         "domains.0.train.path: data file not found: /nonexistent/train.jsonl"),
        ("--set=train.learning_rate=-1", "train.learning_rate"),
    ],
)
def test_bad_train_config_is_one_line_error(tmp_path, tiny_model, addition_files, override, message):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"name: bad\noutput_dir: {tmp_path}/out\nmodels: [{{name: m, path: {tiny_model}}}]\n"
        f"domains: [{{name: d, train: {{path: {addition_files[0]}}}, "
        f"benchmarks: [{{name: x, path: {addition_files[1]}, format: exact}}]}}]\n"
    )
    proc = subprocess.run([sys.executable, "-m", "alphasweep.cli", "train", "--config", str(config), override],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
