"""The parts of the offline GPU check, one per process: check.py runs `parts.py PART WORK_DIR [--dry-run]`.

Each part writes its figures to WORK_DIR/PART.json as it goes (`Figures`), so a part stopped at its time box
still leaves what it had measured. The sizes are the real ones (a ~1.5B-parameter Llama, vocab 152064) or,
with --dry-run, toy ones that run on a CPU in seconds and give the same keys.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from importlib.metadata import distributions, version
from pathlib import Path
from typing import Self

import objective_loss  # bench/objective_loss.py (check.py puts bench/ on PYTHONPATH)
import ray
import torch
import train_throughput  # bench/train_throughput.py
from bundle import closure_problems, project_requirements
from mlflow.tracking import MlflowClient
from packaging.utils import canonicalize_name
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from alphasweep.config import DataSpec, TrainConfig
from alphasweep.data import collate, load_sft_data
from alphasweep.objectives import parse_objective
from alphasweep.tinykit import train_tokenizer
from alphasweep.workers.setup import TrainJob

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SWEEP_CONFIG = HERE / "sweep.yaml"
OBJECTIVE = "original"  # NLL, the objective most trials run


@dataclass(frozen=True)
class Sizes:
    """What each part runs on: the model and batch of the throughput parts, the objective bench, the sweep."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq: int
    batch: int  # sequences per optimizer step
    micro: int  # sequences per forward
    steps: int
    warmup: int  # steps before the timed window (the Ray worker reports every `warmup` steps)
    cpus_per_worker: int
    objective_tokens: int
    objective_vocab: int
    objective_dtype: str
    objective_repeats: int
    sweep_overrides: tuple[str, ...] = ()


# Qwen2.5-1.5B's shape as a Llama (1.54B parameters with tied embeddings), at Qwen2's vocabulary. A micro-batch of
# 4 x 2048 tokens keeps the peak near 70 GB (fp32 weights, grads and AdamW state, ~4 MB of activations per token).
GPU = Sizes(hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab=152064, seq=2048, batch=16,
            micro=4, steps=11, warmup=3, cpus_per_worker=8, objective_tokens=8192, objective_vocab=152064,
            objective_dtype="bf16", objective_repeats=10)
DRY = Sizes(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=176, vocab=1024, seq=64, batch=4, micro=2,
            steps=4, warmup=2, cpus_per_worker=1, objective_tokens=256, objective_vocab=4096,
            objective_dtype="float32", objective_repeats=1,
            sweep_overrides=("demo.base.hidden=32", "demo.base.layers=1", "demo.tasks.addition.n_train=200",
                             "demo.tasks.addition.n_test=16", "train.steps=6", "train.batch_size=8",
                             "train.report_every=3", "train.eval_every=6", "train.cpus_per_worker=1",
                             "train.gpus_per_worker=0", "eval.num_gpus=0"))


class Figures:
    """A part's figures, rewritten to its JSON file at every `set`."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def set(self, **values) -> None:
        self.data.update(values)
        self.path.write_text(json.dumps(self.data, indent=2, default=str))


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def info(figures: Figures, sizes: Sizes, work: Path) -> None:
    """The machine, the packages the run imports, and the bf16 matrix-product rate (the MFU yardstick)."""
    figures.set(sizes=asdict(sizes), python=platform.python_version(), glibc="-".join(platform.libc_ver()),
                torch=torch.__version__, cuda=torch.version.cuda, cpus=os.cpu_count(),
                packages={n: version(n) for n in ("ray", "optuna", "mlflow-skinny", "pydantic", "datasets",
                                                  "math-verify", "transformers", "triton", "sqlalchemy")
                          if _installed(n)})
    site = os.environ.get("ALPHASWEEP_GPU_SITE")
    if site:
        bundled = {canonicalize_name(d.metadata["Name"]): d for d in distributions(path=[site])}
        machine = {}
        for dist in distributions():  # in sys.path order: the first of a name is the one imports get
            machine.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
        machine = {name: v for name, v in machine.items() if name not in bundled}
        problems, unverified = closure_problems(project_requirements(), bundled,
                                                {n: d.version for n, d in bundled.items()}, machine)
        figures.set(bundle=site, requirement_problems=problems, requirement_notes=unverified)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        figures.set(gpu=props.name, gpus=torch.cuda.device_count(), gpu_memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count)
    n, dtype = (8192, torch.bfloat16) if torch.cuda.is_available() else (512, torch.float32)
    a, b = (torch.randn(n, n, device=_device(), dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync()
    start, repeats = time.perf_counter(), 10
    for _ in range(repeats):
        a @ b
    _sync()
    figures.set(matmul={"n": n, "dtype": str(dtype).removeprefix("torch."),
                        "tflops": 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12})


def objective(figures: Figures, sizes: Sizes, work: Path) -> None:
    """`objective_loss` (Triton kernels on CUDA) against `cross_entropy` and a naive float32 log_softmax,
    forward + backward of the mean NLL: bench/objective_loss.py's measurement, each variant in its own process."""
    args = objective_loss.parser().parse_args(
        [f"--device={_device()}", f"--dtype={sizes.objective_dtype}", f"--tokens={sizes.objective_tokens}",
         f"--repeats={sizes.objective_repeats}"])
    figures.set(vocab=sizes.objective_vocab, tokens=sizes.objective_tokens, dtype=sizes.objective_dtype,
                triton=torch.cuda.is_available() and _installed("triton"))
    results = objective_loss.measure(args, sizes.objective_vocab)
    ce, ours, naive = results["cross_entropy"], results["objective_loss"], results["naive_fp32"]
    figures.set(variants=results, time_vs_cross_entropy=ours["ms"] / ce["ms"],
                memory_vs_naive_fp32=ours["peak_mib"] / naive["peak_mib"],
                loss_gap=max(abs(r["loss"] - ce["loss"]) for r in results.values()))


def train(figures: Figures, sizes: Sizes, work: Path) -> None:
    """Target tokens/s of the same steps in a plain loop and in one Ray Train worker (the project's loop),
    bench/train_throughput.py's two functions, on the ~1.5B model with bf16 autocast."""
    model, data = llama(work, sizes, figures), long_rows(work, sizes)
    tc = train_config(sizes, workers=1, strategy="ddp")
    figures.set(batch={"sequences": sizes.batch, "micro": sizes.micro, "seq": sizes.seq, "steps": sizes.steps,
                       "warmup": sizes.warmup}, objective=OBJECTIVE,
                tokens_per_target=tokens_per_target(model, data, sizes))
    torch.set_num_threads(sizes.cpus_per_worker)  # as many as the Ray worker gets
    plain = train_throughput.plain_loop(str(model), data, tc, OBJECTIVE, sizes.warmup, device=_device())
    figures.set(plain_target_tokens_per_s=plain)
    torch.cuda.empty_cache()
    via_ray = _ray_run(model, data, tc, sizes, work)
    figures.set(ray_worker_target_tokens_per_s=via_ray, ratio=via_ray / plain)


def fsdp(figures: Figures, sizes: Sizes, work: Path) -> None:
    """The loop's FSDP2 path (`train.strategy: fsdp`) on the same model, over every GPU (at least a world of 1)."""
    world = max(1, torch.cuda.device_count())
    model, data = llama(work, sizes, figures), long_rows(work, sizes)
    tc = train_config(sizes, workers=world, strategy="fsdp")
    figures.set(world=world, tokens_per_target=tokens_per_target(model, data, sizes))
    via_ray = _ray_run(model, data, tc, sizes, work)
    figures.set(target_tokens_per_s=via_ray, target_tokens_per_s_per_gpu=via_ray / world)


def sweep(figures: Figures, sizes: Sizes, work: Path) -> None:
    """`alphasweep sweep bench/gpu/sweep.yaml`: 2 one-worker trials (the loop in the Tune trial) + the hf
    evaluator, MLflow and Optuna on sqlite. Per trial: start-up overhead (`startup_s`), and the GPU's memory
    in use (every process) before the trial, after it and at its peak, sampled every 0.2 s."""
    out = work / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "alphasweep.cli", "sweep", str(SWEEP_CONFIG), "--set", f"output_dir={out}",
               *[arg for o in sizes.sweep_overrides for arg in ("--set", o)]]
    env = {**os.environ, "ALPHASWEEP_CACHE": str(work / "cache")}
    figures.set(command=" ".join(command[1:]))
    with GpuMemory() as memory, (work / "sweep.log").open("w") as log:
        started = time.time()
        done = subprocess.run(command, check=False, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        figures.set(wall_s=time.time() - started, exit_code=done.returncode)
    print("\n".join((work / "sweep.log").read_text(errors="replace").splitlines()[-40:]))  # into check.py's log
    trials = trial_records(out / "mlflow.db", memory.samples)
    startups = [t["startup_s"] for t in trials if t.get("startup_s") is not None]
    figures.set(trials=trials, startup_s_median=statistics.median(startups) if startups else None)
    after = [t["gpu_mib_after"] for t in trials if t["gpu_mib_after"] is not None]
    figures.set(gpu_mib_spread_after_trials=max(after) - min(after) if len(after) == len(trials) > 1 else None)
    if done.returncode:
        raise RuntimeError(f"alphasweep sweep exited with {done.returncode}:\n"
                           + (work / "sweep.log").read_text()[-3000:])


PARTS = {"info": info, "objective": objective, "train": train, "sweep": sweep, "fsdp": fsdp}


# ----------------------------------------------------------------------------------------------- helpers


def llama(work: Path, sizes: Sizes, figures: Figures) -> Path:
    """A random-weight Llama of `sizes` with the tinykit tokenizer, saved like a hub model (bf16 on a GPU),
    built once per run (train and fsdp share it). Its shape and training FLOPs per token go into `figures`."""
    path = work / "llama"
    if not (path / "shape.json").exists():
        tmp = work / "llama.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = train_tokenizer(["0123456789 +=#>" * 20] * 20)
        config = LlamaConfig(
            vocab_size=sizes.vocab, hidden_size=sizes.hidden, intermediate_size=sizes.intermediate,
            num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads, num_key_value_heads=sizes.kv_heads,
            max_position_embeddings=sizes.seq, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        with torch.device(_device()):
            model = AutoModelForCausalLM.from_config(
                config, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        matmul_params = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)
        matmul_params += model.lm_head.weight.numel()  # the output projection runs on every token, tied or not
        shape = {"params": sum(p.numel() for p in model.parameters()), "hidden": sizes.hidden,
                 "layers": sizes.layers, "heads": sizes.heads, "kv_heads": sizes.kv_heads, "vocab": sizes.vocab,
                 "seq": sizes.seq,
                 # PaLM's count: 6 per matmul parameter per token, plus attention's 12 * layers * hidden * seq
                 "flops_per_token": 6 * matmul_params + 12 * sizes.layers * sizes.hidden * sizes.seq}
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "shape.json").write_text(json.dumps(shape))
        del model
        torch.cuda.empty_cache()
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    figures.set(model=json.loads((path / "shape.json").read_text()))
    return path


def long_rows(work: Path, sizes: Sizes) -> DataSpec:
    """Rows of random digits longer than `sizes.seq`, so every sequence is truncated to exactly `seq` tokens
    (the tokenizer splits digits): a short prompt, the rest targets."""
    path = work / "digits.jsonl"
    if not path.exists():
        rng = random.Random(0)

        def digits(n: int) -> str:
            return "".join(rng.choice("0123456789") for _ in range(n))

        rows = [{"prompt": f"#{digits(7)}>", "completion": digits(sizes.seq)}
                for _ in range((sizes.steps + 1) * sizes.batch)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return DataSpec(path=str(path), heldout=0)


def tokens_per_target(model: Path, data: DataSpec, sizes: Sizes) -> float:
    """Tokens the model processes per target token (the loop counts targets; FLOPs go with every token)."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    batch = collate(load_sft_data(data, tokenizer, sizes.seq).train[: sizes.batch], tokenizer.pad_token_id)
    return batch["input_ids"].numel() / int(batch["loss_mask"].sum())


def train_config(sizes: Sizes, *, workers: int, strategy: str) -> TrainConfig:
    return TrainConfig(steps=sizes.steps, batch_size=sizes.batch * workers, micro_batch_size=sizes.micro,
                       max_length=sizes.seq, workers=workers, cpus_per_worker=sizes.cpus_per_worker,
                       gpus_per_worker=1 if torch.cuda.is_available() else 0, strategy=strategy,
                       learning_rate=1e-5, warmup_steps=0, report_every=sizes.warmup, eval_every=10**6)


def _ray_run(model: Path, data: DataSpec, tc: TrainConfig, sizes: Sizes, work: Path) -> float:
    """bench/train_throughput.py's Ray Train worker(s) on a Ray instance of their own; their storage (a full
    checkpoint) is removed after."""
    root = work / "ray-runs"
    job = TrainJob(model_path=str(model), objective=parse_objective(OBJECTIVE), data=data, train=tc)
    ray.init(num_cpus=int(tc.cpus_per_worker * max(1, tc.workers)), include_dashboard=False, log_to_driver=False)
    try:
        return train_throughput.ray_train_worker(job, sizes.warmup, root)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


class GpuMemory:
    """Samples the memory in use on every GPU (NVML: all processes, no CUDA context here) every 0.2 s.
    `samples` is a list of (time.time(), MiB); empty where there is no GPU or no NVML."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.samples, self._stop = every_s, [], threading.Event()
        self._handles = []
        try:
            import pynvml  # noqa: PLC0415 — nvidia-ml-py, on GPU machines only

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # noqa: BLE001 — no NVML library or no GPU: nothing to sample
            self._handles = []

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while self._handles and not self._stop.is_set():
            used = sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles)
            self.samples.append((time.time(), used / 2**20))
            self._stop.wait(self.every_s)


def trial_records(mlflow_db: Path, samples: list[tuple[float, float]]) -> list[dict]:
    """Per trial (MLflow child runs, in start order): objective, status, score, startup_s, seconds, and the GPU
    memory in use just before it started, just after it ended, and at its peak (None without samples)."""
    if not mlflow_db.exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{mlflow_db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=100)
            if r.data.tags.get("alphasweep.kind") == "trial"]
    records = []
    for run in sorted(runs, key=lambda r: r.info.start_time):
        start, end = run.info.start_time / 1e3, (run.info.end_time or 0) / 1e3 or None
        record = {"objective": run.data.params.get("objective"), "status": run.info.status,
                  "score": run.data.metrics.get("score"), "startup_s": run.data.metrics.get("startup_s"),
                  "seconds": end - start if end else None}
        before = [mib for t, mib in samples if t <= start]
        after = [mib for t, mib in samples if end and t >= end]
        during = [mib for t, mib in samples if start <= t <= (end or float("inf"))]
        record.update(gpu_mib_before=before[-1] if before else None, gpu_mib_after=after[0] if after else None,
                      gpu_mib_peak=max(during) if during else None)
        records.append(record)
    return records


def _installed(name: str) -> bool:
    try:
        version(name)
    except Exception:  # noqa: BLE001 — PackageNotFoundError, or broken metadata
        return False
    return True


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=PARTS)
    ap.add_argument("work", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU")
    args = ap.parse_args()
    sizes = DRY if args.dry_run else GPU
    PARTS[args.part](Figures(args.work / f"{args.part}.json"), sizes, args.work)


if __name__ == "__main__":
    main()
