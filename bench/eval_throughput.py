"""Evaluation throughput: completions per second of the generation backends on one checkpoint.

    python bench/eval_throughput.py                      # hf on this machine: batch 1 vs batch 32, tiny model
    python bench/eval_throughput.py --hidden 256 --layers 4 --prompts 128 --new-tokens 32
    python bench/eval_throughput.py --backend vllm       # vLLM vs hf, same ~100M-parameter checkpoint

hf: target batched (32) >= 4x batch 1, on the kit's tiny model (untrained; prompts are synthetic addition
problems). vllm: a Llama-shaped model of ~100M parameters (random weights, the kit's tokenizer) and
`--prompts 128` prompts, hf at batch 64 against vLLM given them all at once; every completion is exactly
`--new-tokens` long (hf `min_new_tokens`, vLLM `ignore_eos`), greedy. Target on a GPU: vLLM >= 10x hf.
Each backend is timed once after a warm-up on a few prompts (`--repeats` for the best of several).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphasweep.config import EvalConfig
from alphasweep.evaluation.backends import HFBackend, VLLMBackend
from alphasweep.synthetic import problems
from alphasweep.tinykit import build_base


class FixedLengthHF(HFBackend):
    """hf generation that never stops before `max_new_tokens` (same work as vLLM with `ignore_eos`)."""

    def _generation_config(self, n: int):
        gen = super()._generation_config(n)
        gen.min_new_tokens = gen.max_new_tokens
        return gen


class FixedLengthVLLM(VLLMBackend):
    def sampling_params(self, n: int):
        return {**super().sampling_params(n), "ignore_eos": True}


def llama_100m(out_dir: Path) -> str:
    """A Llama-shaped checkpoint of ~100M parameters with random weights and the kit's tokenizer:
    16 layers, 768 wide, 12 heads of 64 (4 KV heads), MLP 2048."""
    path = out_dir / "llama-100m"
    if (path / "config.json").exists():
        return str(path)
    tok = AutoTokenizer.from_pretrained(build_base(out_dir, steps=0))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


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
    ap.add_argument("--hidden", type=int, default=256, help="hf: the tiny model's width")
    ap.add_argument("--layers", type=int, default=4, help="hf: the tiny model's depth")
    ap.add_argument("--prompts", type=int, default=None, help="default: 64 (hf), 128 (vllm)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 16 (hf), 64 (vllm)")
    ap.add_argument("--repeats", type=int, default=None, help="default: 2 (hf), 1 (vllm)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--model-dir", default=None, help="where the model is built (default: a temp dir)")
    args = ap.parse_args()
    vllm = args.backend == "vllm"
    n_prompts = args.prompts or (128 if vllm else 64)
    new_tokens = args.new_tokens or (64 if vllm else 16)
    repeats = args.repeats or (1 if vllm else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="alphasweep-bench-"))
    if vllm:
        model, label = llama_100m(out_dir), "Llama ~100M (16 x 768, random weights)"
    else:
        model = str(build_base(out_dir, hidden=args.hidden, layers=args.layers, steps=0))
        label = f"tiny Llama hidden={args.hidden} layers={args.layers}"
    prompts = [p for p, _ in problems("addition", n_prompts, seed=1)]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: {label}; {n_prompts} prompts, {new_tokens} new tokens each, greedy; device: {device}")

    rows = []
    base = dict(max_new_tokens=new_tokens, temperature=0.0)
    for bs in (64,) if vllm else (1, 32):
        hf = (FixedLengthHF if vllm else HFBackend)(EvalConfig(backend="hf", batch_size=bs, **base))
        hf.load(model)
        rows.append((f"hf batch {bs}", *measure(hf, prompts, repeats)))
        hf.close()
    if vllm:
        vb = FixedLengthVLLM(EvalConfig(backend="vllm", gpu_memory_utilization=0.3, **base))
        t0 = time.perf_counter()
        vb.load(model)
        print(f"vllm engine start: {time.perf_counter() - t0:.1f}s")
        rows.append(("vllm", *measure(vb, prompts, repeats)))
        vb.close()

    ref = rows[0][1]
    print(f"{'run':<12} {'completions/s':>14} {'seconds':>8} {'speed-up':>9}")
    for name, cps, secs in rows:
        print(f"{name:<12} {cps:>14.1f} {secs:>8.2f} {cps / ref:>8.1f}x")
    if vllm:
        print(f"vllm / hf batch 64: {rows[-1][1] / rows[0][1]:.1f}x (target >= 10x on a GPU)")
    else:
        print(f"batched / batch 1: {rows[1][1] / rows[0][1]:.1f}x (target >= 4x)")


if __name__ == "__main__":
    main()
