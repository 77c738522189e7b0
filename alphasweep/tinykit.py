"""Tiny Llama-style base models with a locally trained tokenizer, so every path runs offline.

The models are saved with `save_pretrained` and loaded back with `from_pretrained`, exactly like a hub
model (vLLM can load them too). `build_base` optionally pretrains the model on synthetic tasks so that
it holds a real prior on some domains and none on others; the result is cached under a directory named
by the hash of everything that determines the weights, so a second call reuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from alphasweep.synthetic import TASKS, problems

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}" + EOS + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_EXTRA_TEXT = (
    "The quick brown fox jumps over the lazy dog. Question: what is the answer? "
    "So the answer is $\\boxed{42}$. #### 7 (A) (B) (C) (D) (E) user assistant system"
)
_KIT_VERSION = 4  # bump when the recipe below changes, to invalidate cached bases


def train_tokenizer(texts: list[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with single-digit and single-letter tokens, a chat template and BOS/EOS/PAD."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([  # every digit and letter a token of its own
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex("[A-Za-z]"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    roles = ["<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *roles],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # Like Llama's tokenizer: encoding a text prepends BOS, so prompts at training and generation agree.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, additional_special_tokens=roles
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


HEAD_DIM = 32  # vLLM's CPU attention supports head dims 32 and 64, not 24


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast, *, hidden: int = 64, layers: int = 3) -> LlamaConfig:
    if hidden % HEAD_DIM:
        raise ValueError(f"hidden={hidden}: must be a multiple of the head dimension {HEAD_DIM}")
    heads = hidden // HEAD_DIM
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _pretrain(model, tokenizer, rows: list[tuple[str, str]], *, steps: int, batch_size: int, lr: float,
              warmup_steps: int, seed: int) -> None:
    """NLL on the answer and EOS of `BOS prompt answer EOS` sequences: gives the base model its prior. The
    prompts are random draws, so a loss on them would only add noise: without it the base learns addition
    in about half the steps (docs/continuum-setting.md)."""
    gen = torch.Generator().manual_seed(seed)
    encoded = [([*tokenizer.encode(p + a), tokenizer.eos_token_id], len(tokenizer.encode(p))) for p, a in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(encoded), (batch_size,), generator=gen).tolist()
        width = max(len(encoded[i][0]) for i in idx)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        for row, i in enumerate(idx):
            seq, answer_at = encoded[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, answer_at : len(seq)] = torch.tensor(seq[answer_at:])
        for g in opt.param_groups:  # linear warm-up, cosine decay to 10%
            g["lr"] = lr * min(1.0, (step + 1) / (warmup_steps + 1)) * (
                0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def build_base(
    out_dir: str | Path,
    *,
    pretrain_tasks: dict[str, int] | None = None,
    exclude: dict[str, list[str]] | None = None,
    steps: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    warmup_steps: int = 0,
    hidden: int = 64,
    layers: int = 3,
    seed: int = 0,
    rebuild: bool = False,
) -> Path:
    """Build (or reuse from the cache) a tiny base model directory loadable with `from_pretrained`.

    `pretrain_tasks` maps a synthetic task to a number of distinct problems the base is pretrained on
    for `steps` steps; `exclude` lists prompts per task to keep out of pretraining (held-out benchmarks).
    The tokenizer is trained on every task's text, so a task the base never saw is still tokenizable.
    """
    recipe = dict(
        version=_KIT_VERSION, pretrain_tasks=pretrain_tasks or {}, steps=steps, batch_size=batch_size,
        lr=lr, warmup_steps=warmup_steps, hidden=hidden, layers=layers, seed=seed,
        exclude=hashlib.sha256(json.dumps(exclude or {}, sort_keys=True).encode()).hexdigest(),
    )
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(out_dir) / f"base-{key}"
    if (path / "recipe.json").exists() and not rebuild:
        return path
    shutil.rmtree(path, ignore_errors=True)
    started = time.time()
    random.seed(seed)
    torch.manual_seed(seed)
    texts = [p + a for task in TASKS for p, a in problems(task, 2000, seed=99)] + [_EXTRA_TEXT] * 20
    tokenizer = train_tokenizer(texts)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, hidden=hidden, layers=layers))
    if steps and pretrain_tasks:
        rows = [row for task, n in pretrain_tasks.items()
                for row in problems(task, n, seed=seed, exclude=(exclude or {}).get(task, []))]
        _pretrain(model, tokenizer, rows, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                  seed=seed)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "recipe.json").write_text(json.dumps({**recipe, "seconds": round(time.time() - started, 1)}, indent=2))
    try:
        tmp.rename(path)  # atomic: a half-built base is never reused
    except OSError:  # another process finished the same base first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "recipe.json").exists():
            raise
    return path
