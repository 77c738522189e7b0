"""The objectives' loss: `objective_loss` over a model's logits, for every family of the registry.

The loss is the sum of f(p) over the tokens that the mask and any cut select, divided by their number
(the paper's normalisation), computed from a chunked `log p(target)` that never holds a float32
[tokens x vocab] log-softmax: fused Triton kernels on CUDA, chunks of rows elsewhere. The same function
runs on every training path (padded, packed, DDP, FSDP).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from alphasweep.objectives.registry import Objective

try:  # CUDA builds of torch ship Triton; without it CUDA falls back to the eager path.
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# Elements of [tokens x vocab] per chunk of the eager path (CPU; CUDA without Triton): a float32 chunk
# (4 MiB) stays in cache and adds next to nothing to peak memory; its few ops still take long enough that
# per-op overhead does not count.
CHUNK_ELEMENTS = 2**20


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
    kind = objective.spec.loss
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
    spec = objective.spec
    chosen = logp
    if spec.side is not None and p.numel():
        cut = _quantile(p, objective.threshold) if spec.param == "quantile" else objective.threshold
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
