"""Seconds per checkpoint of the vLLM evaluator backend: one engine start, then weight reloads.

    python bench/vllm_reload.py                  # 6 checkpoints of a tiny Llama (128 wide, 3 layers)
    python bench/vllm_reload.py --checkpoints 10 --hidden 256

The checkpoints share an architecture and tokenizer but not their weights (different seeds), as a sweep's
trials do. For each one the backend loads it (the first starts the engine, the others reload its weights
into the running engine) and generates 64 greedy completions. Target: <= 3 s per checkpoint after the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphasweep.config import EvalConfig
from alphasweep.evaluation.backends import VLLMBackend
from alphasweep.synthetic import problems
from alphasweep.tinykit import build_base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=128, help="width (4 heads: 128 gives vLLM's head size 32)")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--model-dir", default=None, help="where the checkpoints are built (default: a temp dir)")
    args = ap.parse_args()

    out_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="alphasweep-bench-"))
    paths = [str(build_base(out_dir, hidden=args.hidden, layers=args.layers, steps=0, seed=i))
             for i in range(args.checkpoints)]
    prompts = [p for p, _ in problems("addition", 64, seed=1)]
    backend = VLLMBackend(EvalConfig(backend="vllm", max_new_tokens=8))
    print(f"{args.checkpoints} checkpoints of a tiny Llama (hidden={args.hidden}, layers={args.layers}); "
          "64 greedy completions each")
    print(f"{'checkpoint':<11} {'load s':>7} {'generate s':>11} {'total s':>8}  how")
    totals = []
    try:
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            backend.load(path)
            t1 = time.perf_counter()
            backend.generate(prompts)
            t2 = time.perf_counter()
            totals.append(t2 - t0)
            print(f"{i + 1:<11} {t1 - t0:>7.2f} {t2 - t1:>11.2f} {t2 - t0:>8.2f}  {backend.load_note}")
    finally:
        backend.close()
    print(f"vllm per checkpoint after the first: median {statistics.median(totals[1:]):.2f} s (target <= 3), "
          f"first (engine start) {totals[0]:.1f} s")


if __name__ == "__main__":
    main()
