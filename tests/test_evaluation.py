"""The evaluator end to end on tiny models: hf backend, the Ray actor, memory, failures, errors.

The vllm backend has its own tests (test_vllm.py). GPU checks are marked `gpu` and skipped without one.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import threading
import time
import weakref
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before Ray is imported: it reads the mode at import

import psutil
import pytest
import ray
import torch
from ray.exceptions import RayActorError
from transformers import AutoTokenizer

from alphasweep.config import BenchmarkSpec, EvalConfig
from alphasweep.evaluation.actor import Evaluator, evaluate_with_timeout, get_evaluator
from alphasweep.evaluation.backends import encode_prompt, resolve_checkpoint
from alphasweep.evaluation.benchmarks import benchmark_from_string, load_benchmark
from alphasweep.evaluation.runner import format_table, run_eval

CFG = dict(backend="hf", max_new_tokens=5, batch_size=32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models are overhead-bound: one thread is as fast, and far faster when the CPUs are shared
    (several torch threads per process on 2 busy cores slowed training here ~15x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_mod():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def finetuned_model(addition_model) -> Path:
    """conftest's base pretrained on addition, its test problems held out: it solves most of them."""
    return addition_model


@pytest.fixture(scope="module")
def addition_bench(addition_files) -> BenchmarkSpec:
    return BenchmarkSpec(name="addition", path=str(addition_files[1]), format="exact")


def _named(ray, name: str, **cfg):
    """A fresh evaluator actor for one test (named actors outlive a test otherwise)."""
    return get_evaluator(EvalConfig(**{**CFG, **cfg}), name=name)


# ---------------------------------------------------------------- quality through the actor


def test_finetuned_model_beats_untrained_twin_through_the_actor(ray_mod, finetuned_model, tiny_model, addition_bench):
    actor = _named(ray_mod, "test-eval-quality")
    trained = evaluate_with_timeout(actor, str(finetuned_model), [addition_bench], 300)
    untrained = evaluate_with_timeout(actor, str(tiny_model), [addition_bench], 300)
    assert "error" not in trained and "error" not in untrained, (trained.get("error"), untrained.get("error"))
    assert trained["n"] == {"addition": 64} and untrained["n"] == {"addition": 64}
    scores = (trained["scores"]["addition"], untrained["scores"]["addition"])
    assert scores[0] >= 0.4 and scores[1] <= 0.05, scores
    assert trained["mean_score"] == trained["scores"]["addition"]
    rec = trained["records"][0]
    assert set(rec) >= {"benchmark", "prompt", "completion", "extracted", "gold", "correct"}
    assert rec["prompt"].endswith("=") and "<|user|>" not in rec["prompt"]  # exact: the raw prompt
    assert sum(r["correct"] for r in trained["records"]) == round(trained["scores"]["addition"] * 64)
    info = ray_mod.get(actor.info.remote())
    assert info["checkpoint"] == str(tiny_model.resolve()) and info["backend"] == "hf"
    ray_mod.kill(actor, no_restart=True)


# ---------------------------------------------------------------- model cache and memory


def test_model_is_loaded_once_per_checkpoint_and_freed_on_change(finetuned_model, tiny_model, addition_bench):
    ev = Evaluator(CFG, log=None)
    two = [addition_bench, BenchmarkSpec(name="addition-head", path=addition_bench.path, format="exact", limit=8)]
    result = ev.evaluate(str(finetuned_model), two)
    assert result["n"] == {"addition": 64, "addition-head": 8}
    model = ev.backend.model
    ev.evaluate(str(finetuned_model), [addition_bench], limit=4)
    assert ev.backend.model is model  # same checkpoint: no reload
    ref = weakref.ref(model)
    del model
    ev.evaluate(str(tiny_model), [addition_bench], limit=4)
    gc.collect()
    assert ref() is None  # the old model is gone, not just replaced
    assert ev.loaded() == str(tiny_model.resolve())
    ev.close()
    assert ev.loaded() is None


def test_host_memory_stays_flat_over_checkpoints(tmp_path, finetuned_model, addition_bench):
    checkpoints = [shutil.copytree(finetuned_model, tmp_path / f"ckpt{i}") for i in range(5)]
    ev = Evaluator(CFG, log=None)
    rss = []
    for ckpt in checkpoints:
        result = ev.evaluate(str(ckpt), [addition_bench], limit=32)
        assert ev.loaded() == str(ckpt.resolve()) and result["n"]["addition"] == 32
        gc.collect()
        rss.append(psutil.Process().memory_info().rss)
    growth = (rss[-1] - rss[1]) / 2**20
    assert growth < 50, f"RSS grew {growth:.1f} MiB over checkpoints 2..5: {[r >> 20 for r in rss]} MiB"
    ev.close()


# ---------------------------------------------------------------- failures


def test_actor_survives_crashes(ray_mod, tmp_path, finetuned_model, tiny_model, addition_bench):
    actor = _named(ray_mod, "test-eval-crash", max_restarts=3)
    assert "error" not in evaluate_with_timeout(actor, str(tiny_model), [addition_bench], 300)
    pid = ray_mod.get(actor.info.remote())["pid"]
    # 1. The actor process dies while a request is in flight: that request gets an error result.
    # The benchmark is a named pipe, so the test knows when `evaluate` is running: it is reading it.
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(evaluate_with_timeout(
        actor, str(tiny_model), [{"name": "pipe", "path": str(fifo), "format": "exact"}], 300)))
    worker.start()
    deadline = time.monotonic() + 120
    while True:  # opening the write end succeeds once the actor has opened the read end
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline and worker.is_alive(), result
            time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.close(fd)
    worker.join(60)
    assert "crashed" in result.get("error", ""), result
    # Ray restarts it; the next request waits for the restart and works, in a new process.
    result = evaluate_with_timeout(actor, str(finetuned_model), [addition_bench], 300)
    assert "error" not in result, result
    new_pid = ray_mod.get(actor.info.remote())["pid"]
    assert new_pid != pid
    # 2. A crash between requests (the process exits, injected with Ray's `__ray_call__`): the next request works.
    with pytest.raises(RayActorError):
        ray_mod.get(actor.__ray_call__.remote(lambda self: os._exit(1)))
    result = evaluate_with_timeout(actor, str(finetuned_model), [addition_bench], 300)
    assert "error" not in result and result["n"]["addition"] == 64, result
    ray_mod.kill(actor, no_restart=True)


def test_timeout_gives_an_error_and_the_next_request_works(ray_mod, finetuned_model, addition_bench):
    actor = _named(ray_mod, "test-eval-timeout", max_restarts=3)
    result = evaluate_with_timeout(actor, str(finetuned_model), [addition_bench], 0.05)  # a fresh actor: too short
    assert "timed out" in result.get("error", ""), result
    result = evaluate_with_timeout(actor, str(finetuned_model), [addition_bench], 300)
    assert "error" not in result, result
    assert result["n"]["addition"] == 64
    ray_mod.kill(actor, no_restart=True)


def test_user_errors_are_clear(ray_mod, tmp_path, tiny_model, addition_bench):
    ev = Evaluator(CFG, log=None)
    with pytest.raises(ValueError, match=r"unknown benchmark 'nope'.*gsm8k, math500, aime24, amc23"):
        ev.evaluate(str(tiny_model), ["nope"])
    with pytest.raises(ValueError, match="needs `format`"):
        ev.evaluate(str(tiny_model), [{"name": "mine", "path": addition_bench.path}])
    for missing in [str(tmp_path / "no-such-ckpt"), "runs/demo/trial3/checkpoint", "./ckpt"]:
        with pytest.raises(FileNotFoundError, match="checkpoint not found"):
            ev.evaluate(missing, [addition_bench])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ev.evaluate(str(tmp_path / "empty"), [addition_bench])
    assert resolve_checkpoint("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"  # a hub id passes through
    assert ev.loaded() is None  # nothing was loaded for bad requests
    with pytest.raises(FileNotFoundError, match="benchmark file not found"):
        ev.evaluate(str(tiny_model), [{"name": "x", "path": str(tmp_path / "x.jsonl"), "format": "exact"}])
    # Through the actor: an error result, and the actor lives on.
    actor = _named(ray_mod, "test-eval-errors")
    pid = ray_mod.get(actor.info.remote())["pid"]
    result = evaluate_with_timeout(actor, str(tmp_path / "no-such-ckpt"), [addition_bench], 120)
    assert result["error"].startswith("FileNotFoundError: checkpoint not found"), result
    result = evaluate_with_timeout(actor, str(tiny_model), [{"name": "nope"}], 120)
    assert result["error"].startswith("ValueError: unknown benchmark"), result
    assert ray_mod.get(actor.info.remote())["pid"] == pid
    ray_mod.kill(actor, no_restart=True)


# ---------------------------------------------------------------- prompts, sampling, CLI helpers


def test_prompt_rule(tiny_model, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    math_file = tmp_path / "m.jsonl"
    math_file.write_text(json.dumps({"problem": "What is 2+3?", "answer": "5"}) + "\n")
    math = load_benchmark({"name": "m", "path": str(math_file), "format": "math"})
    prompt = math.prompts(tok)[0]
    assert prompt.startswith(tok.bos_token + "<|user|>") and prompt.endswith("<|assistant|>")
    assert "\\boxed{}" in prompt
    ids = encode_prompt(tok, prompt)
    assert ids.count(tok.bos_token_id) == 1  # the template's BOS is not doubled
    raw = load_benchmark({"name": "m", "path": str(math_file), "format": "math", "use_chat_template": False})
    assert raw.prompts(tok)[0].startswith("What is 2+3?")
    exact_file = tmp_path / "e.jsonl"
    exact_file.write_text(json.dumps({"prompt": "12+34=", "answer": "46"}) + "\n")
    exact = load_benchmark({"name": "e", "path": str(exact_file), "scorer": "exact"})
    assert exact.prompts(tok) == ["12+34="]
    assert encode_prompt(tok, "12+34=") == tok("12+34=")["input_ids"]  # as training encodes it
    templ = load_benchmark({"name": "e", "path": str(exact_file), "scorer": "exact", "template": "Q {prompt} A"})
    assert templ.prompts(tok) == ["Q 12+34= A"]
    choice_file = tmp_path / "c.jsonl"
    choice_file.write_text(json.dumps({"question": "Pick", "options": {"A": "x", "B": "y"}, "answer": "y"}) + "\n")
    choice = load_benchmark({"name": "c", "path": str(choice_file), "format": "choice"})
    assert choice.items[0].gold == "B" and "A. x\nB. y" in choice.items[0].message


def test_sampling_keeps_every_sample(finetuned_model, addition_bench):
    ev = Evaluator({**CFG, "temperature": 1.0, "n_samples": 3}, log=None)
    result = ev.evaluate(str(finetuned_model), [addition_bench], limit=8)
    assert result["k"] == 3 and len(result["records"]) == 24
    assert {r["sample"] for r in result["records"]} == {0, 1, 2}
    assert 0 <= result["scores"]["addition"] <= result["pass_at_k"]["addition"] <= 1
    ev.close()


def test_run_eval_writes_records_and_table(tmp_path, finetuned_model, addition_files):
    out = tmp_path / "records.jsonl"
    result = run_eval(str(finetuned_model), [f"addition={addition_files[1]}"], limit=16, backend="hf",
                      max_new_tokens=5, out_path=out, log=None)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 16 and lines[0]["benchmark"] == "addition"
    table = format_table(result)
    assert "addition" in table and "16" in table and f"{result['scores']['addition']:.4f}" in table
    assert format_table({"error": "boom"}) == "error: boom"
    assert benchmark_from_string("gsm8k") == BenchmarkSpec(name="gsm8k")
    spec = benchmark_from_string(str(addition_files[1]))
    assert spec.format == "exact" and spec.name == addition_files[1].parent.name


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_hf_on_gpu_scores_and_frees_memory(tmp_path, finetuned_model, addition_bench):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.cuda.init()
    allocated_before, reserved_before = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    ev = Evaluator(CFG, log=None)
    allocated = []
    for i in range(3):
        ckpt = shutil.copytree(finetuned_model, tmp_path / f"ckpt{i}")
        result = ev.evaluate(str(ckpt), [addition_bench])
        assert result["scores"]["addition"] >= 0.4, result["scores"]  # bf16 on the GPU still solves them
        assert next(ev.backend.model.parameters()).dtype == torch.bfloat16
        allocated.append(torch.cuda.memory_allocated())
    assert max(allocated) - min(allocated) < 2**20, allocated  # one model at a time
    ev.close()
    assert torch.cuda.memory_allocated() - allocated_before < 2**20
    assert torch.cuda.memory_reserved() - reserved_before < 2**20
