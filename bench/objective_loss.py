"""Time and peak memory of `objective_loss` (forward + backward) against `cross_entropy` and a naive loss
that materialises a float32 `log_softmax` of the whole batch.

All three compute the mean NLL of every token, so their losses must agree. Each (variant, vocab) runs in
a fresh subprocess so that its peak memory is its own: the RSS high-water mark (`ru_maxrss`) on CPU,
`torch.cuda.max_memory_allocated` on CUDA, both minus what was held before the first step (the logits).
The logits' gradient is part of every variant's peak. Targets: <= 1.10x cross_entropy's time and <= 0.5x
the naive peak.

    python bench/objective_loss.py                      # CPU, float32, vocab 32768 and 152064, 8192 tokens
    python bench/objective_loss.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import psutil
import torch
import torch.nn.functional as F

from alphasweep.objectives import CHUNK_ELEMENTS, objective_loss, parse_objective

DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
NLL = parse_objective("original")


VARIANTS = ("cross_entropy", "objective_loss", "naive_fp32")


def _loss(variant: str, logits, labels, mask, chunk_elements: int):
    if variant == "cross_entropy":
        return F.cross_entropy(logits, labels)
    if variant == "objective_loss":
        return objective_loss(logits, labels, mask, NLL, chunk_elements=chunk_elements)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, labels[:, None]).squeeze(1)  # naive_fp32
    return -logp[mask].mean()


def _memory_now(device: str) -> int:
    return torch.cuda.memory_allocated() if device == "cuda" else psutil.Process().memory_info().rss


def _peak(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def worker(args: argparse.Namespace) -> dict:
    """One variant at one vocab size, in this process."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, vocab = args.device, args.vocab
    logits = torch.randn(args.tokens, vocab, device=device, dtype=DTYPES[args.dtype]).requires_grad_()
    labels = torch.randint(0, vocab, (args.tokens,), device=device)
    mask = torch.ones(args.tokens, dtype=torch.bool, device=device)
    _sync(device)
    before = _memory_now(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats + 1):  # the first step warms up
        start = time.perf_counter()
        loss = _loss(args.variant, logits, labels, mask, args.chunk_elements)
        loss.backward()
        _sync(device)
        times.append(time.perf_counter() - start)
        logits.grad = None
    return {"ms": 1e3 * min(times[1:]), "peak_mib": (_peak(device) - before) / 2**20, "loss": loss.item()}


def measure(args: argparse.Namespace, vocab: int) -> dict[str, dict]:
    """Every variant at one vocab size, each in a fresh subprocess: {variant: {ms, peak_mib, loss}}."""
    common = [f"--device={args.device}", f"--dtype={args.dtype}", f"--tokens={args.tokens}"]
    common += [f"--repeats={args.repeats}", f"--chunk-elements={args.chunk_elements}", f"--threads={args.threads or 0}"]
    results = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, f"--variant={variant}", f"--vocab={vocab}", *common]
        done = subprocess.run(command, check=False, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{variant} at vocab {vocab} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def parser() -> argparse.ArgumentParser:
    """The bench's options; `parser().parse_args([...])` gives `measure` its settings."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[32768, 152064])
    ap.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up; the best counts")
    ap.add_argument("--chunk-elements", type=int, default=CHUNK_ELEMENTS, help="eager path only (no Triton)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's); 1 steadies a busy CPU")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set in subprocesses
    ap.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.variant:
        print(json.dumps(worker(args)))
        return

    print(
        f"device={args.device} dtype={args.dtype} tokens={args.tokens} chunk_elements={args.chunk_elements}"
        f" threads={args.threads or torch.get_num_threads()}"
    )
    print(f"{'variant':<15} {'vocab':>7} {'ms':>9} {'peak MiB':>9} {'x CE time':>9} {'x naive mem':>11} {'loss':>8}")
    for vocab in args.vocabs:
        results = measure(args, vocab)
        ce, naive = results["cross_entropy"], results["naive_fp32"]
        for variant, r in results.items():
            time_ratio, mem_ratio = r["ms"] / ce["ms"], r["peak_mib"] / naive["peak_mib"]
            print(
                f"{variant:<15} {vocab:>7} {r['ms']:>9.1f} {r['peak_mib']:>9.0f} {time_ratio:>9.2f} {mem_ratio:>11.2f}"
                f" {r['loss']:>8.4f}"
            )
        ours = results["objective_loss"]
        met = ours["ms"] <= 1.10 * ce["ms"] and ours["peak_mib"] <= 0.5 * naive["peak_mib"]
        print(f"vocab {vocab}: targets {'met' if met else 'MISSED'} (<= 1.10x CE time, <= 0.5x naive peak)")


if __name__ == "__main__":
    main()
