"""Capability probe: where a (model, domain) pair sits on the model-capability continuum.

The base model's probability of each target token of a sample of the SFT completions tells how much it
already knows the domain. Cut points on the mean target probability (documented in the README):

    mean p >= 0.50  -> strong        (prior-leaning objectives first, the most prior-leaning first: OnlyTopP-0.5,
                                     GeneralFamily-4, p)
    mean p <= 0.20  -> weak          (NLL first, then a small alpha)
    otherwise       -> intermediate  (NLL, a middle alpha and p)

Li et al. (arXiv 2510.00526) place Qwen2.5-Math on math at the strong end and Llama on figlet puzzles at
the weak end with the same statistic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import AutoModelForCausalLM

from alphasweep.config import DataSpec
from alphasweep.data import collate, load_sft_data
from alphasweep.objectives.loss import target_log_prob
from alphasweep.tokenizer import load_tokenizer

STRONG_AT, WEAK_AT = 0.5, 0.2
SUGGESTIONS = {
    "strong": ["OnlyTopP-0.5", "GeneralFamily-4", "p"],
    "intermediate": ["original", "GeneralFamily-0.5", "p"],
    "weak": ["original", "GeneralFamily-0.1"],
}


@dataclass
class ProbeResult:
    tokens: int
    mean_p: float
    median_p: float
    q25_p: float
    q75_p: float
    share_above_half: float
    mean_nll: float
    continuum: str
    suggestions: list[str]

    def metrics(self) -> dict[str, float]:
        return {f"probe_{k}": float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}


def continuum_of(mean_p: float) -> str:
    return "strong" if mean_p >= STRONG_AT else "weak" if mean_p <= WEAK_AT else "intermediate"


@torch.no_grad()
def probe_capability(model_path: str, data: DataSpec, *, max_length: int = 256, sample: int = 256,
                     batch_size: int = 16, seed: int = 0) -> ProbeResult:
    """Token probabilities of the base model on `sample` SFT rows (completion tokens only)."""
    tokenizer = load_tokenizer(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if device == "cuda" else torch.float32).to(device).eval()
    rows = load_sft_data(data.model_copy(update={"heldout": 0}), tokenizer, max_length, seed=seed).train[:sample]
    logps = []
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i : i + batch_size], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps.append(target_log_prob(logits, batch["labels"], batch["loss_mask"]).cpu())
    logp = torch.cat(logps)
    if not logp.numel():
        raise ValueError(f"probe: no completion tokens in the sample of {data.path}")
    p = logp.exp()
    q25, q50, q75 = torch.quantile(p, torch.tensor([0.25, 0.5, 0.75])).tolist()
    mean_p = float(p.mean())
    position = continuum_of(mean_p)
    return ProbeResult(
        tokens=int(p.numel()), mean_p=mean_p, median_p=q50, q25_p=q25, q75_p=q75,
        share_above_half=float((p > 0.5).float().mean()), mean_nll=float(-logp.mean()),
        continuum=position, suggestions=list(SUGGESTIONS[position]),
    )
