"""The one way a model's tokenizer is loaded: for training, the capability probe and generation alike."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer(path: str, padding_side: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model, padding with EOS when it has no pad token of its own (Llama-style
    bases have none, and every path pads batches)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
