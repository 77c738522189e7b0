"""Evaluation throughput: completions per second of the generation backends on a tiny model.

    python bench/eval_throughput.py                      # hf on this machine: batch 1 vs batch 32
    python bench/eval_throughput.py --hidden 256 --layers 4 --prompts 128 --new-tokens 32
    python bench/eval_throughput.py --backend vllm       # on a GPU: vLLM vs hf on the same checkpoint

Targets: hf batched (32) >= 4x hf at batch 1; vLLM >= 10x hf (batched) on a GPU. The model is untrained
and prompts are synthetic addition problems, so every completion runs to `--new-tokens` tokens (an
untrained model rarely emits EOS); completions/s and the best wall time over the prompts are printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphasweep.config import EvalConfig
from alphasweep.evaluation.backends import HFBackend, VLLMBackend
from alphasweep.synthetic import problems
from alphasweep.tinykit import build_base


def measure(backend, prompts: list[str], repeats: int) -> tuple[float, float]:
    """(completions/s, seconds for all prompts), best of `repeats` after a warm-up on a few prompts."""
    backend.generate(prompts[:4])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.generate(prompts)
        best = min(best, time.perf_counter() - t0)
    return len(prompts) / best, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--model-dir", default=None, help="where the tiny model is built (default: a temp dir)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="alphasweep-bench-"))
    model = str(build_base(out_dir, hidden=args.hidden, layers=args.layers, steps=0))
    prompts = [p for p, _ in problems("addition", args.prompts, seed=1)]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: tiny Llama hidden={args.hidden} layers={args.layers}; {args.prompts} prompts, "
          f"{args.new_tokens} new tokens each, greedy; device: {device}")

    rows = []
    base = dict(max_new_tokens=args.new_tokens, temperature=0.0)
    for bs in (1, 32) if args.backend == "hf" else (32,):
        hf = HFBackend(EvalConfig(backend="hf", batch_size=bs, **base))
        hf.load(model)
        rows.append((f"hf batch {bs}", *measure(hf, prompts, args.repeats)))
        hf.close()
    if args.backend == "vllm":
        vb = VLLMBackend(EvalConfig(backend="vllm", gpu_memory_utilization=0.3, **base))
        vb.load(model)
        rows.append(("vllm", *measure(vb, prompts, args.repeats)))
        vb.close()

    ref = rows[0][1]
    print(f"{'run':<12} {'completions/s':>14} {'seconds':>8} {'speed-up':>9}")
    for name, cps, secs in rows:
        print(f"{name:<12} {cps:>14.1f} {secs:>8.2f} {cps / ref:>8.1f}x")
    if args.backend == "hf":
        print(f"batched / batch 1: {rows[1][1] / rows[0][1]:.1f}x (target >= 4x)")
    else:
        print(f"vllm / hf batch 32: {rows[-1][1] / rows[0][1]:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
