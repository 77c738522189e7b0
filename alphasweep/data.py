"""SFT data: rows from a hub id or a local file, tokenized with loss on completion tokens only.

Two row formats: `prompt_completion` (raw `prompt + completion + EOS`, as the base model reads text, the
prompt wrapped in the model's `prompt_template` when it has one) and chat `messages` (rendered with the
tokenizer's chat template; loss on every assistant turn).
Bad rows raise a `DataError` naming the file, line (or row) and field, or are skipped and counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from alphasweep.config import DataSpec
from alphasweep.rows import DataError, Row, check_sft_row, field_value, load_rows


@dataclass
class Example:
    input_ids: list[int]
    loss_mask: list[bool]  # True where the token is a target (completion / assistant turn)


@dataclass
class SFTData:
    train: list[Example]
    heldout: list[Example]
    stats: dict[str, int] = field(default_factory=dict)  # rows, skipped, truncated


def load_sft_rows(spec: DataSpec) -> list[Row]:
    """The rows of the SFT data a spec names, with their places (see `alphasweep.rows.load_rows`)."""
    return load_rows(spec.path, split=spec.split, subset=spec.subset, what="data")


def _encode_prompt_completion(row: dict, spec: DataSpec, tok) -> Example:
    text = field_value(row, spec.prompt_field)
    if spec.prompt_template:
        text = spec.prompt_template.format(prompt=text)
    prompt = tok(text)["input_ids"]  # adds BOS where the tokenizer does
    completion = tok(field_value(row, spec.completion_field), add_special_tokens=False)["input_ids"]
    completion.append(tok.eos_token_id)
    return Example(prompt + completion, [False] * len(prompt) + [True] * len(completion))


def _encode_messages(row: dict, spec: DataSpec, tok) -> Example:
    """Render the conversation prefix by prefix, so each assistant turn's tokens are the targets."""
    messages = row[spec.messages_field]
    ids: list[int] = []
    mask: list[bool] = []

    def render(upto: int, generation_prompt: bool) -> list[int]:
        text = tok.apply_chat_template(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)
        return tok(text, add_special_tokens=False)["input_ids"]

    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = render(i, True), render(i + 1, False)
        ids, mask = ids + before[len(ids):], mask + [False] * (len(before) - len(ids))
        mask += [True] * (len(after) - len(ids))
        ids = after
    return Example(ids, mask)


def tokenize_rows(rows: list[Row], tokenizer, spec: DataSpec, max_length: int,
                  source: str) -> tuple[list[Example], dict]:
    """Check and tokenize rows; truncate to `max_length` and count what was truncated or skipped."""
    if spec.format == "messages" and not tokenizer.chat_template:
        raise DataError(f"{source}: format 'messages' needs a tokenizer with a chat template")
    encode = _encode_prompt_completion if spec.format == "prompt_completion" else _encode_messages
    examples, skipped, truncated = [], 0, 0
    for where, row in rows:
        try:
            check_sft_row(row, spec)
        except DataError as e:
            if spec.skip_bad_rows:
                skipped += 1
                continue
            raise DataError(f"{source}: {where}: {e}") from None
        ex = encode(row, spec, tokenizer)
        if len(ex.input_ids) > max_length:
            truncated += 1
            ex = Example(ex.input_ids[:max_length], ex.loss_mask[:max_length])
        examples.append(ex)
    if not examples:
        raise DataError(f"{source}: no usable rows (skipped {skipped})")
    return examples, {"rows": len(rows), "skipped": skipped, "truncated": truncated}


def load_sft_data(spec: DataSpec, tokenizer, max_length: int, seed: int = 0) -> SFTData:
    """Load, tokenize, shuffle with `seed`, and hold out `spec.heldout` rows for held-out NLL."""
    examples, stats = tokenize_rows(load_sft_rows(spec), tokenizer, spec, max_length, spec.path)
    random.Random(seed).shuffle(examples)
    n_heldout = min(spec.heldout, len(examples) // 5)
    return SFTData(train=examples[n_heldout:], heldout=examples[:n_heldout], stats=stats)


def pack(examples: list[Example], max_length: int) -> list[Example]:
    """Concatenate examples into rows of at most `max_length` tokens (fewer pad tokens, same targets)."""
    rows, ids, mask = [], [], []
    for ex in examples:
        if ids and len(ids) + len(ex.input_ids) > max_length:
            rows.append(Example(ids, mask))
            ids, mask = [], []
        ids, mask = ids + ex.input_ids, mask + ex.loss_mask
    if ids:
        rows.append(Example(ids, mask))
    return rows


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. `labels[t]` is the token after position t and `loss_mask[t]` whether
    it is a target, so both align with the model's full logits (no copy of a shifted logits view)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    target = torch.zeros((len(examples), width), dtype=torch.bool)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        target[row, :n] = torch.tensor(e.loss_mask)
        attention[row, :n] = 1
    labels = torch.full_like(ids, pad_id)
    labels[:, :-1] = ids[:, 1:]
    loss_mask = torch.zeros_like(target)
    loss_mask[:, :-1] = target[:, 1:]
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "loss_mask": loss_mask}
