"""SFT objectives of Li et al. (arXiv 2510.00526): the f_alpha family, thresholds, quantile cuts.

Every objective is a per-token loss f(p) of the target token's probability p. Its logit gradient is
-W(p) * (onehot - softmax) with the weight W(p) = -p f'(p), which is what sets objectives apart: NLL
weighs every token equally, `p` (alpha = 1) weighs tokens by how plausible the model already finds them.

Names (`parse_objective`) and families (`objective_from_params`, used by the search space):

| paper name              | family                 | per-token loss          | W(p)                  |
| ----------------------- | ---------------------- | ----------------------- | --------------------- |
| `original`, `nll`, `logp` | `nll`                | -log p                  | 1                     |
| `p`                     | `p`                    | 1 - p                   | p                     |
| `dft`                   | `dft`                  | -sg(p) log p            | p                     |
| `GeneralFamily-a`       | `general`              | (1 - p^a) / a           | p^a                   |
| `OnlyTopP-q`            | `top_p`                | 1 - p,   if p >= q      | p [p >= q]            |
| `OnlyBottomP-q`         | `bottom_p`             | 1 - p,   if p < q       | p [p < q]             |
| `OnlyTopLogP-q`         | `top_logp`             | -log p,  if p >= q      | [p >= q]              |
| `OnlyBottomLogP-q`      | `bottom_logp`          | -log p,  if p < q       | [p < q]               |
| `TopQuantileP-r`        | `top_quantile_p`       | 1 - p,   if p >= cut_r  | p                     |
| `BottomQuantileP-r`     | `bottom_quantile_p`    | 1 - p,   if p < cut_r   | p                     |
| `TopQuantileLogP-r`     | `top_quantile_logp`    | -log p,  if p >= cut_r  | 1                     |
| `BottomQuantileLogP-r`  | `bottom_quantile_logp` | -log p,  if p < cut_r   | 1                     |

sg is stop-gradient. Top keeps p >= cut and Bottom keeps p < cut, so a Top and a Bottom objective with the
same cut partition the tokens. cut_r is the r-quantile (linear interpolation, as `torch.quantile`) of the
detached probabilities of the micro-batch's masked tokens, so `TopQuantile*-r` trains on the top 1 - r share
of them; their W(p) leaves the indicator out, since the cut is only known per batch. Ranges: alpha in
[-1, 16] with |alpha| >= 1e-8 (closer to 0 the family is NLL to float32 precision: use `original`); q and r
in (0, 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import torch
from torch import Tensor

try:  # CUDA builds of torch ship Triton; without it CUDA falls back to the eager path.
    import triton
    import triton.language as tl
except ImportError:
    triton = None

ALPHA_RANGE = (-1.0, 16.0)
MIN_ABS_ALPHA = 1e-8
# Elements of [tokens x vocab] per chunk of the eager path (CPU; CUDA without Triton): a float32 chunk
# (4 MiB) stays in cache and adds next to nothing to peak memory; its few ops still take long enough that
# per-op overhead does not count.
CHUNK_ELEMENTS = 2**20


@dataclass(frozen=True)
class _Spec:
    paper: str  # the paper's name, or its prefix before `-<param>`
    loss: str  # "logp" (-log p), "p" (1 - p), "dft" or "general"
    side: str | None = None  # "top" or "bottom" for thresholded families
    quantile: bool = False  # the cut is a quantile of the batch, not a fixed probability


_SPECS = {
    "nll": _Spec("original", "logp"),
    "p": _Spec("p", "p"),
    "dft": _Spec("dft", "dft"),
    "general": _Spec("GeneralFamily", "general"),
    "top_p": _Spec("OnlyTopP", "p", "top"),
    "bottom_p": _Spec("OnlyBottomP", "p", "bottom"),
    "top_logp": _Spec("OnlyTopLogP", "logp", "top"),
    "bottom_logp": _Spec("OnlyBottomLogP", "logp", "bottom"),
    "top_quantile_p": _Spec("TopQuantileP", "p", "top", True),
    "bottom_quantile_p": _Spec("BottomQuantileP", "p", "bottom", True),
    "top_quantile_logp": _Spec("TopQuantileLogP", "logp", "top", True),
    "bottom_quantile_logp": _Spec("BottomQuantileLogP", "logp", "bottom", True),
}
FAMILIES = tuple(_SPECS)
_PLAIN_NAMES = {"original": "nll", "nll": "nll", "logp": "nll", "p": "p", "dft": "dft"}
_PREFIXES = {spec.paper.lower(): family for family, spec in _SPECS.items() if family == "general" or spec.side}
_ACCEPTED = (
    "accepted names: original, nll, logp, p, dft, GeneralFamily-<alpha>, "
    + ", ".join(f"{spec.paper}-<{'r' if spec.quantile else 'q'}>" for spec in _SPECS.values() if spec.side)
    + f"; alpha in [{ALPHA_RANGE[0]:g}, {ALPHA_RANGE[1]:g}] with |alpha| >= {MIN_ABS_ALPHA:g} (nearer 0 it is NLL:"
    " use original), q and r in (0, 1)"
)

Num = TypeVar("Num", Tensor, float)


def _format(x: float) -> str:
    """Shortest text that parses back to exactly x (`repr`), without a trailing `.0`."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class Objective:
    """One SFT objective: a family, plus alpha for `general` or the cut for thresholded families."""

    family: str
    alpha: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        spec = _SPECS.get(self.family)
        if spec is None:
            raise ValueError(f"unknown objective family {self.family!r}; accepted families: {', '.join(FAMILIES)}")
        if (self.alpha is not None) != (spec.loss == "general"):
            raise ValueError(f"family {self.family!r} {'needs' if spec.loss == 'general' else 'takes no'} alpha")
        if (self.threshold is not None) != (spec.side is not None):
            raise ValueError(f"family {self.family!r} {'needs' if spec.side else 'takes no'} threshold")
        if self.alpha is not None:
            alpha = float(self.alpha)
            if not (ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1] and abs(alpha) >= MIN_ABS_ALPHA):
                raise ValueError(f"alpha={self.alpha!r} out of range; {_ACCEPTED}")
            object.__setattr__(self, "alpha", alpha)
        if self.threshold is not None:
            threshold = float(self.threshold)
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"threshold={self.threshold!r} out of range; {_ACCEPTED}")
            object.__setattr__(self, "threshold", threshold)

    @property
    def _spec(self) -> _Spec:
        return _SPECS[self.family]

    @property
    def name(self) -> str:
        """The paper's name; `parse_objective(o.name) == o`."""
        param = self.alpha if self.alpha is not None else self.threshold
        return self._spec.paper if param is None else f"{self._spec.paper}-{_format(param)}"

    def params(self) -> dict[str, str | float | None]:
        """Flat parameters for experiment tracking."""
        return {"family": self.family, "alpha": self.alpha, "threshold": self.threshold}

    def weight(self, p: Num) -> Num:
        """W(p) = -p f'(p) for p in (0, 1]: how strongly a token of probability p pulls on the logits."""
        spec = self._spec
        exponent = {"logp": 0.0, "p": 1.0, "dft": 1.0, "general": self.alpha}[spec.loss]
        base = p**exponent
        if spec.side is None or spec.quantile:
            return base
        return base * ((p >= self.threshold) if spec.side == "top" else (p < self.threshold))


def parse_objective(name: str) -> Objective:
    """Objective from a paper name such as `original`, `p`, `GeneralFamily-0.5` or `OnlyTopP-0.1` (any case)."""
    text = name.strip().lower()
    if text in _PLAIN_NAMES:
        return Objective(_PLAIN_NAMES[text])
    prefix, _, param = text.partition("-")
    family = _PREFIXES.get(prefix)
    if family is None or not param:
        raise ValueError(f"unknown objective {name!r}; {_ACCEPTED}")
    try:
        value = float(param)
    except ValueError:
        raise ValueError(f"objective {name!r}: {param!r} is not a number; {_ACCEPTED}") from None
    return objective_from_params(family, **{"alpha" if family == "general" else "threshold": value})


def objective_from_params(family: str, alpha: float | None = None, threshold: float | None = None) -> Objective:
    """Objective from search-space parameters; the one of alpha and threshold the family does not use is ignored."""
    spec = _SPECS.get(family)
    if spec is None:
        raise ValueError(f"unknown objective family {family!r}; accepted families: {', '.join(FAMILIES)}")
    return Objective(
        family,
        alpha=alpha if spec.loss == "general" else None,
        threshold=threshold if spec.side else None,
    )


if triton is not None:

    @triton.jit
    def _logsumexp_kernel(logits, stride, rows, lse, vocab, BLOCK: tl.constexpr):
        """lse[i] = logsumexp(logits[rows[i]]) in float32, one pass with a running max."""
        i = tl.program_id(0)
        row = logits + tl.load(rows + i) * stride
        top = tl.full((), float("-inf"), tl.float32)
        total = tl.zeros((), tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(row + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
            new_top = tl.maximum(top, tl.max(x, 0))
            total = total * tl.exp(top - new_top) + tl.sum(tl.exp(x - new_top), 0)
            top = new_top
        tl.store(lse + i, top + tl.log(total))

    @triton.jit
    def _scaled_softmax_kernel(logits, grad, stride, rows, lse, scale, vocab, BLOCK: tl.constexpr):
        """grad[rows[i]] = scale[i] * softmax(logits[rows[i]]), in grad's dtype."""
        i = tl.program_id(0)
        offset = tl.load(rows + i) * stride
        row_lse = tl.load(lse + i)
        row_scale = tl.load(scale + i)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(logits + offset + cols, mask=cols < vocab).to(tl.float32)
            value = row_scale * tl.exp(x - row_lse)
            tl.store(grad + offset + cols, value.to(grad.dtype.element_ty), mask=cols < vocab)


def _triton_launch(logits: Tensor) -> dict[str, int] | None:
    """Launch settings where the fused Triton kernels apply (CUDA, Triton installed), else None."""
    if triton is None or not logits.is_cuda:
        return None
    block = min(4096, triton.next_power_of_2(logits.shape[1]))
    return {"BLOCK": block, "num_warps": 8 if block >= 2048 else 4}


def _rows_target_logp(logits: Tensor, rows: Tensor, targets: Tensor, chunk_rows: int) -> tuple[Tensor, Tensor | None]:
    """Float32 log softmax(logits[rows])[targets] of 2-D contiguous logits, and the rows' logsumexp where
    the Triton kernel computes it (None on the eager path, whose backward recomputes the softmax whole)."""
    launch = _triton_launch(logits)
    if launch is not None:
        lse = torch.empty(rows.numel(), dtype=torch.float32, device=logits.device)
        if rows.numel():
            _logsumexp_kernel[(rows.numel(),)](logits, logits.stride(0), rows, lse, logits.shape[1], **launch)
        return logits[rows, targets].float() - lse, lse
    logp = torch.empty(rows.numel(), dtype=torch.float32, device=logits.device)
    for i in range(0, rows.numel(), chunk_rows):
        idx, part = rows[i : i + chunk_rows], slice(i, i + chunk_rows)
        chunk = torch.log_softmax(logits[idx], -1, dtype=torch.float32)
        logp[part] = chunk.gather(1, targets[part, None]).squeeze(1)
    return logp, None


def _rows_scaled_softmax(logits: Tensor, rows: Tensor, lse: Tensor | None, scale: Tensor, chunk_rows: int) -> Tensor:
    """A tensor like logits holding scale * softmax in the given rows and 0 in the others."""
    grad = torch.empty_like(logits) if rows.numel() == logits.shape[0] else torch.zeros_like(logits)
    launch = _triton_launch(logits)
    if launch is not None:
        if rows.numel():
            args = (logits, grad, logits.stride(0), rows, lse, scale, logits.shape[1])
            _scaled_softmax_kernel[(rows.numel(),)](*args, **launch)
        return grad
    for i in range(0, rows.numel(), chunk_rows):
        idx, part = rows[i : i + chunk_rows], slice(i, i + chunk_rows)
        chunk = torch.softmax(logits[idx], -1, dtype=torch.float32).mul_(scale[part, None])
        grad.index_copy_(0, idx, chunk.to(grad.dtype))
    return grad


class _TargetLogProb(torch.autograd.Function):
    """log softmax(logits)[label] for chosen rows of 2-D contiguous logits.

    Autograd through `log_softmax(...).gather(...)` would keep a float32 [rows x vocab] tensor alive from
    forward to backward; this keeps only per-row floats and recomputes the softmax in backward, where
    d log p / d logits = onehot - softmax. On CUDA, two Triton kernels each read the logits once (and
    backward writes the gradient once); elsewhere eager code goes through `chunk_rows` rows at a time.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, rows: Tensor, chunk_rows: int) -> Tensor:
        targets = labels[rows]
        logp, lse = _rows_target_logp(logits, rows, targets, chunk_rows)
        ctx.save_for_backward(logits, rows, targets, logp, lse)
        ctx.chunk_rows = chunk_rows
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp: Tensor) -> tuple[Tensor, None, None, None]:
        logits, rows, targets, logp, lse = ctx.saved_tensors
        grad = _rows_scaled_softmax(logits, rows, lse, (-grad_logp).contiguous(), ctx.chunk_rows)
        # g * (1 - p) at the targets, from log p: exact where p is close to 1.
        grad[rows, targets] = (-grad_logp * torch.expm1(logp)).to(grad.dtype)
        return grad, None, None, None


def target_log_prob(
    logits: Tensor, labels: Tensor, loss_mask: Tensor, *, chunk_elements: int = CHUNK_ELEMENTS
) -> Tensor:
    """Float32 log-probability of each masked token's label, in row-major order of the mask.

    logits [..., T, V] in any float dtype, labels [..., T] (ignored where the mask is off), loss_mask
    [..., T]. Differentiable, without any float32 [tokens x vocab] tensor: fused Triton kernels on CUDA,
    elsewhere chunks of `chunk_elements` (default `CHUNK_ELEMENTS`). Logits whose rows do not flatten to
    a view (say `logits[:, :-1]`) get copied first: shift the labels rather than the logits.
    """
    vocab = logits.shape[-1]
    rows = loss_mask.reshape(-1).nonzero().squeeze(1)
    chunk_rows = max(1, chunk_elements // vocab)
    flat = logits.reshape(-1, vocab).contiguous()  # a no-op for logits straight from a model
    return _TargetLogProb.apply(flat, labels.reshape(-1).long(), rows, chunk_rows)


def _quantile(values: Tensor, r: float) -> Tensor:
    """`torch.quantile(values, r)` (linear interpolation) by sorting, free of quantile's 16M-element cap."""
    ordered = values.sort().values
    position = r * (values.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, values.numel() - 1)
    return torch.lerp(ordered[low], ordered[high], position - low)


def _token_loss(objective: Objective, logp: Tensor) -> Tensor:
    """f(p) per token, from float32 log p (stable for p down to 1e-30 and alpha down to -1)."""
    kind = objective._spec.loss
    if kind == "logp":
        return -logp
    if kind == "p":
        return -torch.expm1(logp)
    if kind == "dft":
        return -logp.detach().exp() * logp
    return -torch.expm1(objective.alpha * logp) / objective.alpha


def _selected_loss(
    logits: Tensor, labels: Tensor, loss_mask: Tensor, objective: Objective, chunk_elements: int
) -> tuple[Tensor, Tensor, int]:
    """The loss summed over the selected tokens, the detached p of the masked tokens and how many of them the
    objective selects."""
    logp = target_log_prob(logits, labels, loss_mask, chunk_elements=chunk_elements)
    p = logp.detach().exp()
    spec = objective._spec
    chosen = logp
    if spec.side is not None and p.numel():
        cut = _quantile(p, objective.threshold) if spec.quantile else objective.threshold
        chosen = logp[p >= cut] if spec.side == "top" else logp[p < cut]
    return _token_loss(objective, chosen).sum(), p, chosen.numel()


def objective_loss(
    logits: Tensor,
    labels: Tensor,
    loss_mask: Tensor,
    objective: Objective,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Tensor:
    """0-dim float32 loss: sum of f(p) over the tokens that the mask and any cut select, divided by their
    number (the paper's normalisation); 0 with a zero gradient when none is selected.

    logits [..., T, V] (any float dtype), labels [..., T] already aligned with logits (the caller shifts;
    values at masked-off positions are ignored), loss_mask [..., T] bool or 0/1.
    """
    loss, _, selected = _selected_loss(logits, labels, loss_mask, objective, chunk_elements)
    return loss / max(selected, 1)


def objective_loss_with_stats(
    logits: Tensor,
    labels: Tensor,
    loss_mask: Tensor,
    objective: Objective,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
    reduction: Literal["mean", "sum"] = "mean",
) -> tuple[Tensor, dict[str, float]]:
    """`objective_loss` plus statistics, as python floats: `selected` (tokens the mask and any cut select),
    `selected_share` (selected / masked tokens), `mean_p` (mean target probability of the masked tokens) and
    `tokens` (masked tokens), all 0 when no token is masked. `reduction="sum"` returns the loss summed over
    the selected tokens instead of their mean, for a caller that divides by the selected tokens of a larger
    batch (`selected` summed over its parts). Floats cost one wait for the device, which the loss already
    waits on once to find the masked rows, and spare the caller any tensor handling.
    """
    loss, p, selected = _selected_loss(logits, labels, loss_mask, objective, chunk_elements)
    masked = max(p.numel(), 1)
    if reduction == "mean":
        loss = loss / max(selected, 1)
    return loss, {"selected": float(selected), "selected_share": selected / masked, "mean_p": p.sum().item() / masked,
                  "tokens": float(p.numel())}


def plot_weights(
    objectives: Iterable[Objective | str],
    path: str | Path,
    *,
    points: int = 400,
    y_max: float = 2.0,
) -> Path:
    """Write a PNG of W(p) over p in (0, 1] for each objective, to compare how they weigh tokens.

    Draws on a bare matplotlib Figure (Agg), leaving pyplot's global state alone."""
    from matplotlib.figure import Figure

    p = torch.linspace(1.0 / points, 1.0, points, dtype=torch.float64)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for objective in objectives:
        objective = parse_objective(objective) if isinstance(objective, str) else objective
        ax.plot(p.numpy(), objective.weight(p).numpy(), label=objective.name)
    ax.set(xlabel="p (target-token probability)", ylabel="W(p) = -p f'(p)", xlim=(0, 1), ylim=(0, y_max))
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
