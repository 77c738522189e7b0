"""2-worker DDP and FSDP steps with the objective loss, in real gloo processes.

With each rank normalising by its own selected tokens (and a quantile cut being its own shard's), DDP's
gradient average is the mean over shards of each shard's loss gradient, not the gradient of one loss over
the batch; `train.loss_normalization: global_tokens` gives the latter.
"""

import contextlib
import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaConfig, LlamaForCausalLM

from alphasweep.objectives import objective_loss, parse_objective
from alphasweep.workers.loop import forward_backward

WORLD = 2
VOCAB = 6  # small, with spread-out logits below, so that p^8 still carries gradient
OBJECTIVES = ["GeneralFamily-8", "TopQuantileLogP-0.3", "original"]


def _batch():
    """4 sequences of 12 tokens, masks of uneven length, -100 where masked off (as a collator leaves it)."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (4, 12), generator=generator)
    labels = torch.randint(0, VOCAB, (4, 12), generator=generator)
    mask = torch.arange(12) >= torch.tensor([[2], [5], [7], [3]])
    return tokens, labels.masked_fill(~mask, -100), mask


def _shard(rank, *tensors):
    size = tensors[0].shape[0] // WORLD
    return [t[rank * size : (rank + 1) * size] for t in tensors]


def _worker(rank, rendezvous, strategy):
    # A file rendezvous: no TCP store owned by rank 0 that could go away while rank 1 still tears down.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(VOCAB, 16), torch.nn.Tanh(), torch.nn.Linear(16, VOCAB))
    with torch.no_grad():
        model[2].weight.mul_(8)
    reference = copy.deepcopy(model)
    if strategy == "ddp":
        wrapped = DistributedDataParallel(model)
    else:
        wrapped = fully_shard(model)  # FSDP2: each parameter a DTensor sharded over the 2 ranks
    tokens, labels, mask = _batch()
    for name in OBJECTIVES:
        objective = parse_objective(name)
        wrapped.zero_grad()
        shard_tokens, shard_labels, shard_mask = _shard(rank, tokens, labels, mask)
        objective_loss(wrapped(shard_tokens), shard_labels, shard_mask, objective).backward()

        reference.zero_grad()
        for shard in range(WORLD):
            shard_tokens, shard_labels, shard_mask = _shard(shard, tokens, labels, mask)
            (objective_loss(reference(shard_tokens), shard_labels, shard_mask, objective) / WORLD).backward()
        for got, want in zip(model.parameters(), reference.parameters(), strict=True):
            assert want.grad.abs().max() > 1e-3, name
            grad = got.grad.full_tensor() if isinstance(got.grad, DTensor) else got.grad
            torch.testing.assert_close(grad, want.grad, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    dist.barrier()  # neither rank tears gloo down while the other is still in a collective
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_gradient_is_mean_of_shard_gradients(tmp_path, strategy):
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), strategy), nprocs=WORLD, join=True)


# `train.loss_normalization`: the loop's step (`forward_backward`) on a real tiny Llama, 2 gloo ranks with
# 2 micro-batches each (gradient accumulation), against the whole global batch computed at once.
NORMALIZED = ["original", "GeneralFamily-8", "OnlyTopP-0.3"]  # a fixed cut: the same tokens selected at any batch size


def _llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # spread-out probabilities, so that p^8 and the cut matter
    return model


def _global_batch(rows=8, width=12):
    """Rows with masks of very uneven length, so that a mean per micro-batch and a mean per token differ."""
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, VOCAB, (rows, width), generator=generator)
    starts = torch.tensor([[1], [9], [4], [10], [2], [8], [6], [11]])[:rows]
    mask = torch.arange(width) >= starts
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.roll(ids, -1, 1),
            "loss_mask": mask}


def _rows(batch, start, stop):
    return {k: v[start:stop] for k, v in batch.items()}


def _grads(model):
    return [p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad.clone() for p in model.parameters()]


def _reference(batch, objective, parts):
    """Loss and gradients of the mean over `parts` equal slices of `batch`, each a mean over its own selected
    tokens (parts=1: the whole batch at once)."""
    model = _llama()
    size = batch["input_ids"].shape[0] // parts
    total = 0.0
    for i in range(parts):
        part = _rows(batch, i * size, (i + 1) * size)
        loss = objective_loss(model(input_ids=part["input_ids"]).logits, part["labels"], part["loss_mask"], objective)
        (loss / parts).backward()
        total += float(loss) / parts
    return total, _grads(model)


def _normalization_worker(rank, rendezvous, strategy):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    batch = _global_batch()
    mine = _rows(batch, rank * 4, rank * 4 + 4)
    micro_batches = [_rows(mine, 0, 2), _rows(mine, 2, 4)]
    for name in NORMALIZED:
        objective = parse_objective(name)
        for normalization, parts in (("global_tokens", 1), ("per_micro_batch", 4)):
            model = _llama()
            wrapped = DistributedDataParallel(model) if strategy == "ddp" else fully_shard(model)
            stats = forward_backward(wrapped, micro_batches, objective, normalization, torch.device("cpu"),
                                     contextlib.nullcontext(), WORLD)
            want_loss, want_grads = _reference(batch, objective, parts)
            if normalization == "global_tokens":  # the loss of the whole batch, on every rank
                assert stats["loss"] == pytest.approx(want_loss, rel=1e-5), name
            label = f"{name} {normalization}"
            for got, want in zip(_grads(model), want_grads, strict=True):
                torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4, msg=lambda m, label=label: f"{label}: {m}")
        whole, per_micro = _reference(batch, objective, 1)[1], _reference(batch, objective, 4)[1]
        assert any((a - b).abs().max() > 1e-4 for a, b in zip(whole, per_micro, strict=True)), name  # they differ
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_global_tokens_normalization_equals_the_whole_batch_at_once(tmp_path, strategy):
    """2 workers x 2 accumulation steps: global_tokens gives the loss and gradients of the whole global batch
    computed at once; per_micro_batch gives the mean of the 4 micro-batches' own means."""
    mp.spawn(_normalization_worker, args=(str(tmp_path / "rendezvous"), strategy), nprocs=WORLD, join=True)


def test_one_micro_batch_gives_the_same_loss_either_way():
    batch = _global_batch(rows=4)
    for name in NORMALIZED:
        results = {}
        for normalization in ("per_micro_batch", "global_tokens"):
            model = _llama()
            stats = forward_backward(model, [batch], parse_objective(name), normalization, torch.device("cpu"),
                                     contextlib.nullcontext(), 1)
            results[normalization] = stats["loss"], _grads(model)
        (loss_a, grads_a), (loss_b, grads_b) = results.values()
        assert loss_a == pytest.approx(loss_b, rel=1e-6), name
        for a, b in zip(grads_a, grads_b, strict=True):
            torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
